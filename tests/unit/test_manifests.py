"""trackop.manifests: the connection URI, the connection Secret and the migration Job (pure)."""

from __future__ import annotations

import copy
import json
import re
from urllib.parse import quote

import pytest
from helpers import deep_merge
from sqlalchemy.engine import make_url

from trackop import manifests
from trackop.api.names import migration_job_name
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec, SpecError

OWNER = {
    "apiVersion": "trackop.dev/v1alpha1",
    "kind": "TrackingBackend",
    "metadata": {"name": "team-a", "namespace": "ml-platform", "uid": "0b6a2c1e-1111-2222-3333-444455556666"},
}
PASSWORD = "p@ss:/w%rd#?&= ü"
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def make_spec(overrides: dict | None = None, namespace: str = "ml-platform", name: str = "team-a") -> BackendSpec:
    spec = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}}}
    return parse(namespace, name, deep_merge(spec, copy.deepcopy(overrides or {})))


SPEC = make_spec()


# ---- database_uri ------------------------------------------------------------------------

@pytest.mark.parametrize("password", [
    PASSWORD, "simple", "with space", "plus+sign", "back\\slash", "at@@", "'\"`", "%41", "ä€😀", "[::1]", "a/b?c=d#e",
])
def test_password_round_trips_through_sqlalchemy(password):
    url = make_url(manifests.database_uri(SPEC, password))
    assert url.password == password
    assert url.username == SPEC.role
    assert url.host == "pg.db.svc"
    assert url.port == 5432
    assert url.database == SPEC.database
    assert dict(url.query) == {"sslmode": "prefer"}


def test_raw_password_is_not_in_the_uri():
    uri = manifests.database_uri(SPEC, PASSWORD)
    assert PASSWORD not in uri
    assert quote(PASSWORD, safe="") in uri
    # The only '@' separates credentials from the host.
    assert uri.count("@") == 1


@pytest.mark.parametrize("driver, scheme", [("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")])
def test_scheme_follows_the_driver(driver, scheme):
    spec = make_spec({"postgres": {"driver": driver}})
    uri = manifests.database_uri(spec, "pw")
    assert uri.startswith(f"{scheme}://")
    assert make_url(uri).drivername == scheme


def test_uri_carries_port_and_ssl_mode():
    spec = make_spec({"postgres": {"external": {"port": 6543, "sslMode": "verify-full"}}})
    url = make_url(manifests.database_uri(spec, "pw"))
    assert url.port == 6543
    assert url.query["sslmode"] == "verify-full"


@pytest.mark.parametrize("host", ["fe80::1", "2001:db8::1"])
def test_ipv6_host_is_bracketed(host):
    spec = make_spec({"postgres": {"external": {"host": host}}})
    uri = manifests.database_uri(spec, PASSWORD)
    assert f"@[{host}]:5432/" in uri
    url = make_url(uri)
    assert url.host == host
    assert url.port == 5432
    assert url.password == PASSWORD


def test_ipv4_and_names_are_not_bracketed():
    for host in ("10.0.0.1", "pg.db.svc"):
        uri = manifests.database_uri(make_spec({"postgres": {"external": {"host": host}}}), "pw")
        assert f"@{host}:5432/" in uri


# ---- connection Secret -------------------------------------------------------------------

def test_connection_secret_data_keys_and_values():
    data = manifests.connection_secret_data(SPEC, PASSWORD)
    assert set(data) == {"MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "PGHOST", "PGPORT", "PGDATABASE",
                         "PGUSER", "PGPASSWORD", "PGSSLMODE",
                         # Direct mode (no server): each client's pool is kept to the budgeted size.
                         "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"}
    assert (data["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"], data["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]) == ("2", "3")
    assert all(isinstance(value, str) for value in data.values())
    assert data["MLFLOW_BACKEND_STORE_URI"] == manifests.database_uri(SPEC, PASSWORD)
    assert data["MLFLOW_TRACKING_URI"] == data["MLFLOW_BACKEND_STORE_URI"]
    assert data["PGHOST"] == "pg.db.svc"
    assert data["PGPORT"] == "5432"
    assert data["PGDATABASE"] == SPEC.database
    assert data["PGUSER"] == SPEC.role
    assert data["PGPASSWORD"] == PASSWORD  # raw, for libpq
    assert data["PGSSLMODE"] == "prefer"


def test_ipv6_pghost_is_not_bracketed():
    spec = make_spec({"postgres": {"external": {"host": "fe80::1"}}})
    assert manifests.connection_secret_data(spec, "pw")["PGHOST"] == "fe80::1"


def test_connection_secret_body():
    body = manifests.connection_secret(SPEC, PASSWORD, OWNER)
    assert body["apiVersion"] == "v1" and body["kind"] == "Secret" and body["type"] == "Opaque"
    meta = body["metadata"]
    assert meta["name"] == "team-a-mlflow" == SPEC.connection_secret
    assert meta["namespace"] == "ml-platform"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "trackop",
        "trackop.dev/backend": "team-a",
        "app.kubernetes.io/component": "connection",
    }
    assert meta["ownerReferences"] == [{
        "apiVersion": "trackop.dev/v1alpha1", "kind": "TrackingBackend", "name": "team-a",
        "uid": OWNER["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
    }]
    assert body["stringData"] == manifests.connection_secret_data(SPEC, PASSWORD)
    assert "psycopg" in meta["annotations"]["trackop.dev/driver"]
    # Nothing secret outside stringData.
    outside = json.dumps({k: v for k, v in body.items() if k != "stringData"}, ensure_ascii=False)
    assert PASSWORD not in outside and quote(PASSWORD, safe="") not in outside


def test_driver_annotation_follows_the_driver():
    body = manifests.connection_secret(make_spec({"postgres": {"driver": "psycopg2"}}), "pw", OWNER)
    assert body["metadata"]["annotations"]["trackop.dev/driver"].startswith("postgresql+psycopg2://")
    assert "psycopg2" in body["metadata"]["annotations"]["trackop.dev/driver"]


@pytest.mark.parametrize("name", ["n" * 45, "a-" * 22 + "b"])
def test_label_values_are_valid_for_a_long_backend_name(name):
    spec = make_spec(name=name)
    for body in (manifests.connection_secret(spec, "pw", OWNER), manifests.migration_job(spec, OWNER)):
        for value in body["metadata"]["labels"].values():
            assert len(value) <= 63 and _LABEL_VALUE.fullmatch(value), value
        assert body["metadata"]["labels"]["trackop.dev/backend"] == name
        # Object names: DNS-1123 subdomains; the Job's name is also its pods' job-name label value.
        assert len(body["metadata"]["name"]) <= 63 and _DNS1123_LABEL.fullmatch(body["metadata"]["name"])


def test_a_backend_name_too_long_for_labels_never_reaches_the_manifests():
    with pytest.raises(SpecError) as info:
        make_spec(name="n" * 46)
    assert info.value.field == "metadata.name"


# ---- migration Job -----------------------------------------------------------------------

JOB_SPEC = make_spec({"schema": {"migration": "Job", "mlflowVersion": "3.17.2"}})


def _container(job: dict) -> dict:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_migration_job_runs_mlflow_db_upgrade_from_the_secret():
    job = manifests.migration_job(JOB_SPEC, OWNER)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == migration_job_name("team-a", "3.17.2 ghcr.io/mlflow/mlflow:v3.17.2")
    assert job["metadata"]["name"] == JOB_SPEC.migration_job
    assert job["metadata"]["namespace"] == "ml-platform"
    assert job["metadata"]["labels"]["trackop.dev/mlflow-version"] == "3.17.2"
    assert job["metadata"]["labels"]["trackop.dev/backend"] == "team-a"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    container = _container(job)
    assert container["image"] == "ghcr.io/mlflow/mlflow:v3.17.2"
    assert container["command"] == ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {
        "name": "team-a-mlflow", "key": "MLFLOW_BACKEND_STORE_URI"}}}


def test_migration_job_image_follows_the_version_and_override():
    job = manifests.migration_job(make_spec({"schema": {"mlflowVersion": "3.18.0"}}), OWNER)
    assert _container(job)["image"] == "ghcr.io/mlflow/mlflow:v3.18.0"
    assert job["metadata"]["name"] != manifests.migration_job(JOB_SPEC, OWNER)["metadata"]["name"]
    custom = make_spec({"schema": {"image": "registry.local/mlflow:pinned"}})
    custom_job = manifests.migration_job(custom, OWNER)
    assert _container(custom_job)["image"] == "registry.local/mlflow:pinned"
    # Another image is another Job: a failed Job of the old image stays for its logs.
    assert custom_job["metadata"]["name"] != manifests.migration_job(JOB_SPEC, OWNER)["metadata"]["name"]
    assert custom_job["metadata"]["name"] == custom.migration_job


def test_migration_job_never_holds_the_password():
    job = manifests.migration_job(JOB_SPEC, OWNER)
    text = json.dumps(job, ensure_ascii=False)
    assert PASSWORD not in text
    assert quote(PASSWORD, safe="") not in text
    assert "postgresql" not in text  # no URI at all, only the reference to the Secret
    assert "value" not in {k for e in _container(job)["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI" for k in e}


def test_migration_job_limits():
    job = manifests.migration_job(JOB_SPEC, OWNER)
    assert job["spec"]["backoffLimit"] == manifests.MIGRATION_JOB_BACKOFF_LIMIT
    assert 0 <= job["spec"]["backoffLimit"] <= 6
    assert job["spec"]["ttlSecondsAfterFinished"] == manifests.MIGRATION_JOB_TTL_SECONDS > 0
    assert job["spec"]["activeDeadlineSeconds"] == manifests.MIGRATION_JOB_DEADLINE_SECONDS > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_job_is_restricted():
    pod = manifests.migration_job(JOB_SPEC, OWNER)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container({"spec": {"template": {"spec": pod}}})
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc or sc["privileged"] is False
    # A read-only root needs a writable HOME: /tmp must be a mounted volume.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] in mounts
    assert mounts[env["HOME"]] in {v["name"] for v in pod["volumes"]}
    assert "memory" in container["resources"]["limits"]


def test_migration_job_pod_labels():
    job = manifests.migration_job(JOB_SPEC, OWNER)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "trackop"
