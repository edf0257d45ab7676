"""The TrackingBackend CRD on a real API server: defaults, validation (OpenAPI and CEL),
immutability, the status subresource, kubectl explain and the printer columns."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from helpers import eventually

pytestmark = pytest.mark.bed

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "trackop.dev_trackingbackends.yaml"
GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
CRD_NAME = f"{PLURAL}.{GROUP}"
IMMUTABLE_DATABASE = "database is immutable: trackop never renames or moves a database"


@pytest.fixture
def crd(trackop_crd: dict) -> dict:
    return trackop_crd


@pytest.fixture
def custom(kube_api: client.ApiClient, crd: dict) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def kubectl(bed_info: dict, tmp_path: Path):
    binary = Path(bed_info["kubeconfig"]).parent / "kubectl"

    def run(*args: str) -> str:
        # A private cache dir: a stale OpenAPI/discovery cache must not hide the schema.
        result = subprocess.run(
            [str(binary), "--kubeconfig", bed_info["kubeconfig"], "--cache-dir", str(tmp_path / "kcache"), *args],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


def backend(name: str = "team-a") -> dict:
    """The smallest valid TrackingBackend."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrackingBackend",
        "metadata": {"name": name},
        "spec": {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}}},
    }


_DELETE = object()


def with_value(obj: dict, path: str, value) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return obj


def create(custom: client.CustomObjectsApi, namespace: str, obj: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)


def rejection(excinfo) -> str:
    exc = excinfo.value
    assert exc.status == 422, f"expected 422 Invalid, got {exc.status}: {exc.body}"
    return json.loads(exc.body)["message"]


def test_minimal_object_gets_defaults(custom, namespace):
    created = create(custom, namespace, backend())
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-a")
    for obj in (created, stored):
        spec = obj["spec"]
        external = spec["postgres"]["external"]
        assert external["port"] == 5432
        assert external["sslMode"] == "prefer"
        assert external["connectTimeoutSeconds"] == 5
        assert spec["postgres"]["driver"] == "psycopg"
        assert spec["schema"] == {"mlflowVersion": "3.17.2", "migration": "Inline"}
        assert spec["deletionPolicy"] == "Retain"
        # Derived by the operator, not by the API server.
        assert "database" not in spec["postgres"] and "role" not in spec["postgres"]


def test_password_secret_ref_key_defaults_to_password(custom, namespace):
    obj = with_value(backend(), "spec.postgres.passwordSecretRef", {"name": "own-password"})
    created = create(custom, namespace, obj)
    assert created["spec"]["postgres"]["passwordSecretRef"] == {"name": "own-password", "key": "password"}


HOSTILE = [
    # (id, path, value, field named in the message, expected fragment of the message)
    ("db-quote", "spec.postgres.database", "mlflow'x", "spec.postgres.database", "should match"),
    ("db-semicolon", "spec.postgres.database", "mlflow;drop", "spec.postgres.database", "should match"),
    ("db-comment", "spec.postgres.database", "mlflow--x", "spec.postgres.database", "should match"),
    ("db-space", "spec.postgres.database", "mlflow x", "spec.postgres.database", "should match"),
    ("db-uppercase", "spec.postgres.database", "MLflow", "spec.postgres.database", "should match"),
    ("db-unicode", "spec.postgres.database", "mlflöw", "spec.postgres.database", "should match"),
    ("db-64-chars", "spec.postgres.database", "a" * 64, "spec.postgres.database", "63"),
    ("db-postgres", "spec.postgres.database", "postgres", "spec.postgres.database", "must not be postgres"),
    ("db-template1", "spec.postgres.database", "template1", "spec.postgres.database", "template1"),
    ("role-pg-prefix", "spec.postgres.role", "pg_monitor", "spec.postgres.role", "reserved by PostgreSQL"),
    ("role-public", "spec.postgres.role", "public", "spec.postgres.role", "must not be postgres or public"),
    ("sslmode-bogus", "spec.postgres.external.sslMode", "bogus", "spec.postgres.external.sslMode", "Unsupported value"),
    ("port-0", "spec.postgres.external.port", 0, "spec.postgres.external.port", "greater than or equal to 1"),
    ("port-70000", "spec.postgres.external.port", 70000, "spec.postgres.external.port", "less than or equal to 65535"),
    ("no-admin-secret", "spec.postgres.external.adminSecretRef", _DELETE,
     "spec.postgres.external.adminSecretRef", "Required value"),
    ("admin-secret-bad-name", "spec.postgres.external.adminSecretRef", {"name": "Not_A_Name"},
     "spec.postgres.external.adminSecretRef.name", "should match"),
    ("host-injection", "spec.postgres.external.host", "pg.db.svc; DROP", "spec.postgres.external.host", "should match"),
    ("host-with-port", "spec.postgres.external.host", "pg.db.svc:5432", "spec.postgres.external.host", "should match"),
    ("migration-sometimes", "spec.schema.migration", "Sometimes", "spec.schema.migration", "Unsupported value"),
    ("mlflow-version-latest", "spec.schema.mlflowVersion", "latest", "spec.schema.mlflowVersion", "should match"),
    ("driver-pg8000", "spec.postgres.driver", "pg8000", "spec.postgres.driver", "Unsupported value"),
    ("deletion-purge", "spec.deletionPolicy", "Purge", "spec.deletionPolicy", "Unsupported value"),
]


@pytest.mark.parametrize(("path", "value", "field", "fragment"),
                         [pytest.param(*case[1:], id=case[0]) for case in HOSTILE])
def test_hostile_values_are_rejected(custom, namespace, path, value, field, fragment):
    with pytest.raises(client.ApiException) as excinfo:
        create(custom, namespace, with_value(backend(), path, value))
    message = rejection(excinfo)
    assert f"{field}:" in message, message
    assert fragment in message, message
    with pytest.raises(client.ApiException) as missing:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-a")
    assert missing.value.status == 404


@pytest.mark.parametrize("name", ["x" * 46, "Team-A", "1team", "team_a"])
def test_backend_names_that_cannot_name_a_service_are_rejected(custom, namespace, name):
    with pytest.raises(client.ApiException) as excinfo:
        create(custom, namespace, with_value(backend(), "metadata.name", name))
    message = rejection(excinfo)
    assert "metadata.name must be a DNS-1035 label of at most 45 characters" in message or \
        "metadata.name" in message, message


def test_ipv6_host_is_accepted(custom, namespace):
    created = create(custom, namespace, with_value(backend(), "spec.postgres.external.host", "fd00::5"))
    assert created["spec"]["postgres"]["external"]["host"] == "fd00::5"


def test_63_character_names_are_accepted(custom, namespace):
    name = "m" + "_0123456789" * 5 + "abcdefg"
    assert len(name) == 63
    obj = with_value(with_value(backend(), "spec.postgres.database", name), "spec.postgres.role", name)
    created = create(custom, namespace, obj)
    assert created["spec"]["postgres"]["database"] == name
    assert created["spec"]["postgres"]["role"] == name


def test_database_and_role_are_immutable(custom, namespace):
    obj = with_value(with_value(backend(), "spec.postgres.database", "mlflow_a"), "spec.postgres.role", "mlflow_a")
    create(custom, namespace, obj)

    def patch(body):
        with pytest.raises(client.ApiException) as excinfo:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-a", body)
        return rejection(excinfo)

    assert IMMUTABLE_DATABASE in patch({"spec": {"postgres": {"database": "mlflow_b"}}})
    assert "role is immutable" in patch({"spec": {"postgres": {"role": "mlflow_b"}}})
    # Removing it would make the operator fall back to the derived name: another database.
    assert "database can only be set when the TrackingBackend is created" in patch(
        {"spec": {"postgres": {"database": None}}})
    # An unrelated change still goes through, and the names are unchanged.
    changed = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "team-a", {"spec": {"postgres": {"external": {"port": 6432}}}})
    assert changed["spec"]["postgres"]["external"]["port"] == 6432
    assert changed["spec"]["postgres"]["database"] == "mlflow_a"
    assert changed["spec"]["postgres"]["role"] == "mlflow_a"


def test_database_cannot_be_added_after_creation(custom, namespace):
    create(custom, namespace, backend())
    with pytest.raises(client.ApiException) as excinfo:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "team-a", {"spec": {"postgres": {"database": "elsewhere"}}})
    assert "database can only be set when the TrackingBackend is created" in rejection(excinfo)


def test_status_is_a_subresource(custom, namespace):
    created = create(custom, namespace, backend())
    assert "status" not in created
    status = {
        "observedGeneration": 1,
        "phase": "Ready",
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "Provisioned", "message": "ok",
            "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1,
        }],
        "database": {"host": "pg.db.svc", "port": 5432, "name": "mlflow_x", "role": "mlflow_x"},
        "schema": {"mlflowVersion": "3.17.2", "revision": "dc11669786a5"},
        "connectionSecret": "team-a-mlflow",
        "trackingUri": "http://team-a-mlflow.ns.svc:5000",
    }
    # Through the main resource, status is ignored.
    main = custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-a", {"status": status})
    assert "status" not in main
    # Through /status, it is stored as given (nothing pruned) and spec and generation stay.
    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "team-a", {"status": status, "spec": {"deletionPolicy": "Delete"}})
    assert patched["status"] == status
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-a")
    assert stored["status"] == status
    assert stored["spec"]["deletionPolicy"] == "Retain"
    assert stored["metadata"]["generation"] == created["metadata"]["generation"]
    # The status schema is enforced too.
    with pytest.raises(client.ApiException) as excinfo:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "team-a", {"status": {"phase": "Exploded"}})
    assert "status.phase:" in rejection(excinfo)


def test_kubectl_explain_documents_the_api(crd, kubectl):
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    def explained():
        try:
            return kubectl("explain", "trackingbackend.spec.postgres.external")
        except AssertionError:
            return None

    out = eventually(explained, "kubectl explain to know TrackingBackend")
    assert "adminSecretRef" in out
    assert "CREATEDB and" in out and "CREATEROLE" in out, out
    deeper = kubectl("explain", "tb.spec.postgres.database")
    assert "mlflow_<namespace>_<name>" in deeper
    assert "Immutable" in deeper


def test_printer_columns(kube_api, custom, namespace, kubectl):
    served = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(CRD_NAME)
    assert served.spec.names.short_names == ["tb"]
    assert served.spec.names.categories == ["trackop"]
    (version,) = served.spec.versions
    assert (version.name, version.served, version.storage) == (VERSION, True, True)
    columns = {c.name: (c.json_path, c.priority or 0) for c in version.additional_printer_columns}
    assert columns == {
        "Ready": ('.status.conditions[?(@.type=="Ready")].status', 0),
        "Reason": ('.status.conditions[?(@.type=="Ready")].reason', 0),
        "Database": (".status.database.name", 0),
        "Schema": (".status.schema.revision", 0),
        "Phase": (".status.phase", 1),
        "Tracking URI": (".status.trackingUri", 1),
        "Age": (".metadata.creationTimestamp", 0),
    }
    # And the JSONPaths pick the right values out of a real status.
    create(custom, namespace, backend())
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "team-a", {"status": {
        "phase": "Degraded",
        "conditions": [
            {"type": "DatabaseReady", "status": "True", "reason": "Created"},
            {"type": "Ready", "status": "False", "reason": "SchemaBehind"},
        ],
        "database": {"name": "mlflow_cols"}, "schema": {"revision": "dc11669786a5"},
        "trackingUri": "http://team-a-mlflow.x.svc:5000",
    }})
    header, row = kubectl("get", "tb", "-n", namespace, "-o", "wide").splitlines()
    assert header.split() == ["NAME", "READY", "REASON", "DATABASE", "SCHEMA", "PHASE", "TRACKING", "URI", "AGE"]
    assert row.split()[:7] == ["team-a", "False", "SchemaBehind", "mlflow_cols", "dc11669786a5", "Degraded",
                               "http://team-a-mlflow.x.svc:5000"]
    narrow = kubectl("get", "trackop", "-n", namespace).splitlines()[0]
    assert "PHASE" not in narrow and "READY" in narrow


# ---- spec.postgres.managed ------------------------------------------------------------------

def managed_backend(name: str = "team-a", **managed) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend", "metadata": {"name": name},
            "spec": {"postgres": {"managed": managed}}}


def test_managed_gets_defaults(custom, namespace):
    created = create(custom, namespace, managed_backend())
    assert created["spec"]["postgres"]["managed"] == {
        "engine": "StatefulSet", "version": "17", "port": 5432, "instances": 1, "storage": {"size": "10Gi"}}


@pytest.mark.parametrize(("obj", "fragment"), [
    pytest.param(with_value(managed_backend(), "spec.postgres.external",
                            {"host": "pg", "adminSecretRef": {"name": "a"}}),
                 "set exactly one of external", id="both"),
    pytest.param(with_value(backend(), "spec.postgres.external", _DELETE), "set exactly one of external",
                 id="neither"),
    pytest.param(managed_backend(instances=3), "instances above 1 need engine CloudNativePG", id="sts-replicas"),
    pytest.param(managed_backend(engine="CloudNativePG", port=6432), "CloudNativePG always serves on 5432",
                 id="cnpg-port"),
    pytest.param(managed_backend(engine="Patroni"), "Unsupported value", id="engine"),
    pytest.param(managed_backend(version="9.6"), "should match", id="version"),
    pytest.param(managed_backend(storage={"size": "lots"}), "should match", id="storage-size"),
    pytest.param(managed_backend(name="a" * 44), "at most 43 characters with spec.postgres.managed", id="name"),
    pytest.param(with_value(managed_backend(), "spec.postgres.tuning", {"scope": "Server", "maxConnections": 3}),
                 "more than 3 (superuser_reserved_connections)", id="max-connections"),
])
def test_invalid_managed_specs_are_rejected(custom, namespace, obj, fragment):
    with pytest.raises(client.ApiException) as excinfo:
        create(custom, namespace, obj)
    message = rejection(excinfo)
    assert fragment in message, message


def test_managed_engine_version_and_statefulset_storage_are_immutable(custom, namespace):
    create(custom, namespace, managed_backend())

    def refused(body) -> str:
        with pytest.raises(client.ApiException) as excinfo:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-a", body)
        return rejection(excinfo)

    assert "engine is immutable" in refused({"spec": {"postgres": {"managed": {"engine": "CloudNativePG"}}}})
    assert "version is immutable" in refused({"spec": {"postgres": {"managed": {"version": "16"}}}})
    assert "storage is immutable" in refused({"spec": {"postgres": {"managed": {"storage": {"size": "20Gi"}}}}})
    assert "cannot be swapped" in refused({"spec": {"postgres": {"managed": None, "external": {
        "host": "pg", "adminSecretRef": {"name": "a"}}}}})
    # A change a running server can take goes through: new tuning, another image.
    changed = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "team-a",
        {"spec": {"postgres": {"managed": {"image": "docker.io/library/postgres:17.2"},
                               "tuning": {"scope": "Server", "maxConnections": 50}}}})
    assert changed["spec"]["postgres"]["managed"]["image"] == "docker.io/library/postgres:17.2"


def test_cloudnativepg_storage_can_grow(custom, namespace):
    create(custom, namespace, managed_backend(engine="CloudNativePG", instances=3))
    changed = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "team-a", {"spec": {"postgres": {"managed": {"storage": {"size": "20Gi"}}}}})
    assert changed["spec"]["postgres"]["managed"]["storage"]["size"] == "20Gi"


# ---- the store names and the values builders take: the API server refuses what parse refuses ----

def with_store(kind: str, **fields) -> dict:
    names = {"s3": {"bucket": "ok-bucket"}, "gcs": {"bucket": "ok-bucket"},
             "azure": {"container": "ok-container", "storageAccount": "acct1"}}
    return with_value(backend(), f"spec.artifacts.{kind}", {**names[kind], **fields})


@pytest.mark.parametrize(("bucket", "fragment"), [
    ("a..b", "bucket must not contain two adjacent periods"),
    ("xn--abc", "S3 reserves those names"),
    ("192.168.1.1", "bucket must not be formatted as an IP address"),
])
def test_the_issue_s_s3_buckets_are_refused_naming_the_field(custom, namespace, bucket, fragment):
    with pytest.raises(client.ApiException) as excinfo:
        create(custom, namespace, with_store("s3", bucket=bucket))
    message = rejection(excinfo)
    assert "spec.artifacts.s3.bucket:" in message and fragment in message, message


NEW_RULES = [
    # (id, object, field named, fragment of the message)
    ("gcs-google", with_store("gcs", bucket="my-google-bucket"), "spec.artifacts.gcs.bucket", "reserves"),
    ("gcs-ip", with_store("gcs", bucket="10.0.0.1"), "spec.artifacts.gcs.bucket", "IP address"),
    ("gcs-long-part", with_store("gcs", bucket="a." + "b" * 64), "spec.artifacts.gcs.bucket", "parts are 1 to 63"),
    ("azure-double-hyphen", with_store("azure", container="a--b"), "spec.artifacts.azure.container", "should match"),
    ("endpoint-userinfo", with_store("s3", endpoint="http://user:pw@minio:9000"), "spec.artifacts.s3.endpoint",
     "should match"),
    ("endpoint-port", with_store("gcs", endpoint="http://fake-gcs:65536"), "spec.artifacts.gcs.endpoint",
     "should match"),
    ("prefix-dot-dot", with_store("azure", prefix="team-a/../team-b"), "spec.artifacts.azure.prefix",
     "'.' or '..' segments"),
    ("region-digits", with_store("s3", region="123"), "spec.artifacts.s3.region", "digits alone"),
    ("region-hyphen", with_store("s3", region="-"), "spec.artifacts.s3.region", "should match"),
    ("project", with_store("gcs", project="My_Project"), "spec.artifacts.gcs.project", "should match"),
    ("credentials-name", with_store("gcs", credentialsSecretRef={"name": "Keys"}),
     "spec.artifacts.gcs.credentialsSecretRef.name", "should match"),
    ("credentials-key", with_store("s3", credentialsSecretRef={"name": "keys", "accessKeyIdKey": ".."}),
     "spec.artifacts.s3.credentialsSecretRef.accessKeyIdKey", "must not be '.'"),
    ("password-key", with_value(backend(), "spec.postgres.passwordSecretRef", {"name": "pw", "key": "..x"}),
     "spec.postgres.passwordSecretRef.key", "must not be '.'"),
    ("server-image", with_value(backend(), "spec.server", {"image": " image with blanks "}), "spec.server.image",
     "should match"),
    ("schema-image", with_value(backend(), "spec.schema", {"image": "Team/MLflow:1"}), "spec.schema.image",
     "should match"),
    ("service-account", with_value(backend(), "spec.server", {"serviceAccountName": "Not_A_Name"}),
     "spec.server.serviceAccountName", "should match"),
    ("allowed-host-comma", with_value(backend(), "spec.server", {"allowedHosts": ["a.example.com,b.example.com"]}),
     "spec.server.allowedHosts[0]", "should match"),
    ("selector-in-without-values",
     with_value(backend(), "spec.injection", {"namespaceSelector": {"matchExpressions": [
         {"key": "team", "operator": "In"}]}}),
     "spec.injection.namespaceSelector.matchExpressions[0]", "In and NotIn need at least one value"),
    ("storage-size-zero", managed_backend(storage={"size": "0Gi"}), "spec.postgres.managed.storage.size",
     "size must be above zero"),
    ("storage-class", managed_backend(storage={"storageClassName": "Fast_SSD"}),
     "spec.postgres.managed.storage.storageClassName", "should match"),
    ("managed-image", managed_backend(image="postgres:17 "), "spec.postgres.managed.image", "should match"),
]


@pytest.mark.parametrize(("obj", "field", "fragment"), [pytest.param(*case[1:], id=case[0]) for case in NEW_RULES])
def test_the_values_builders_refuse_are_refused_naming_the_field(custom, namespace, obj, field, fragment):
    with pytest.raises(client.ApiException) as excinfo:
        create(custom, namespace, obj)
    message = rejection(excinfo)
    assert f"{field}:" in message and fragment in message, message


# Values on both sides of each rule the CRD mirrors: the API server (a dry run) and parse agree.
AGREEMENT = [
    ("spec.artifacts.s3", "bucket", ["ok-bucket", "a.b-c", "a..b", "xn--abc", "192.168.1.1", "192.168.01.1",
                                     "999.1.1.1", "x-s3alias", "sthree-x", "b.mrap", "ab", "Ab-c", "a" * 63]),
    ("spec.artifacts.gcs", "bucket", ["ok_bucket", "a.b.c", "goog-x", "x-google", "g00gle", "1.2.3.4",
                                      "a" * 63, "a" * 64, "a." + "b" * 63, "a." + "b" * 64, "a" * 100 + "." + "b" * 63]),
    ("spec.artifacts.azure", "container", ["ok-container", "a-b-c", "a--b", "-ab", "ab-", "abc", "ab"]),
    ("spec.artifacts.s3", "endpoint", ["http://minio:9000", "https://a.b.c/", "http://[::1]:9000/x",
                                       "http://a..b", "http://-a", "http://user@a", "http://a:0", "http://a:65535",
                                       "http://a:65536", "http://a?x", "ftp://a", f"http://{'a' * 63}.b",
                                       f"http://{'a' * 64}.b"]),
    ("spec.artifacts.s3", "prefix", ["team-a", "a/b", "/a//b/", "a..b", "..", "a/./b", "./a", "a/.", "a/..b"]),
    ("spec.artifacts.s3", "region", ["us-east-1", "a", "1a", "12", "-", "a-", "a" * 63]),
    ("spec.artifacts.gcs", "project", ["trackop-testbed", "example.com:my-proj", "ab", "a" * 30, "a" * 31,
                                       "project-", "1project"]),
    ("spec.server", "image", ["mlflow", "ghcr.io/mlflow/mlflow:v3.17.2", "localhost:5000/a__b/c:t",
                              "x@sha256:" + "a" * 64, "MLflow", "a:b:c", "x:", " x"]),
    ("spec.server", "serviceAccountName", ["", "mlflow", "a.b", "A", "a_b", "a..b"]),
    ("spec.postgres.passwordSecretRef", "key", ["password", ".x", "x..", ".", "..", "..x", "a b"]),
]


@pytest.mark.parametrize(("parent", "key", "value"),
                         [pytest.param(p, k, v, id=f"{p}.{k}={v[:40]}") for p, k, values in AGREEMENT for v in values])
def test_the_api_server_and_parse_agree(custom, namespace, parent, key, value):
    from trackop.api.parsing import parse
    from trackop.api.v1alpha1 import SpecError

    names = {"spec.artifacts.s3": {"bucket": "ok-bucket"}, "spec.artifacts.gcs": {"bucket": "ok-bucket"},
             "spec.artifacts.azure": {"container": "ok-container", "storageAccount": "acct1"},
             "spec.postgres.passwordSecretRef": {"name": "pw"}, "spec.server": {}}
    obj = with_value(backend(), parent, {**names[parent], key: value})
    try:
        parse(namespace, "team-a", obj["spec"])
        parsed = None
    except SpecError as error:
        parsed = error.field
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj, dry_run="All")
        served = None
    except client.ApiException as exc:
        assert exc.status == 422, exc.body
        served = json.loads(exc.body)["message"]
    assert (parsed is None) == (served is None), f"parse: {parsed}; API server: {served}"
    if served is not None:
        assert f"{parent}.{key}:" in served and parsed == f"{parent}.{key}", (parsed, served)
