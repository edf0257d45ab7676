"""No container trackop builds carries a secret in its argv: every password, key and URI
with a password reaches the process through its environment, never as a ``$(VAR)`` the
kubelet expands into command or args (readable in /proc/<pid>/cmdline on the node)."""

from __future__ import annotations

import json

import pytest
from helpers import OWNER, argv_secret_references, make_spec, secret_env_names

from trackop.specs import managed_server, migration_job, tracking_server

CREDENTIALS = {"credentialsSecretRef": {"name": "store-creds"}}
STORES = {
    "s3": {"s3": {"bucket": "ml-artifacts", "endpoint": "http://minio:9000", **CREDENTIALS}},
    "gcs": {"gcs": {"bucket": "ml-artifacts", **CREDENTIALS}},
    "azure": {"azure": {"container": "ml-artifacts", "storageAccount": "mlstore", "endpoint": "http://azurite:10000",
                        **CREDENTIALS}},
}


def _containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _built() -> dict[str, list[dict]]:
    """Every container trackop builds, by where it comes from."""
    built = {"migration Job": _containers(migration_job.migration_job(
        make_spec({"schema": {"migration": "Job"}}), OWNER)["spec"]["template"])}
    for kind, store in STORES.items():
        for serve in (True, False):
            spec = make_spec({"artifacts": store, "server": {"serveArtifacts": serve}})
            built[f"tracking server ({kind}, serveArtifacts {serve})"] = _containers(
                tracking_server.deployment(spec, OWNER)["spec"]["template"])
    managed = make_spec({"postgres": {"external": None, "managed": {},
                                      "tuning": {"scope": "Server", "maxConnections": 200}}})
    built["managed StatefulSet"] = _containers(managed_server.statefulset(
        managed, OWNER, managed_server.parameters(managed))["spec"]["template"])
    return built


@pytest.mark.parametrize("where", sorted(_built()))
def test_no_secret_reference_in_command_or_args(where):
    for container in _built()[where]:
        assert argv_secret_references(container) == [], f"{where}: {container['name']} expands a secret into argv"


def test_the_containers_do_carry_secrets_in_their_env():
    """What the guard above protects is there: the same containers get secrets, by env."""
    built = _built()
    assert "MLFLOW_BACKEND_STORE_URI" in secret_env_names(built["migration Job"][0])
    assert {"MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY"} <= secret_env_names(
        built["tracking server (s3, serveArtifacts True)"][0])
    # The Azure connection string refers to the key by $(VAR): an env value, expanded into env.
    azure = built["tracking server (azure, serveArtifacts True)"][0]
    assert "AZURE_STORAGE_CONNECTION_STRING" in secret_env_names(azure)
    assert "POSTGRES_PASSWORD" in secret_env_names(built["managed StatefulSet"][0])


@pytest.mark.parametrize("where", sorted(_built()))
def test_no_uri_or_password_literal_in_command_or_args(where):
    for container in _built()[where]:
        argv = json.dumps([*container.get("command", []), *container.get("args", [])])
        assert "postgresql://" not in argv and "postgresql+" not in argv and "@" not in argv
        assert "PASSWORD" not in argv.upper() and "AccountKey" not in argv
