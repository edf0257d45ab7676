"""check_gcs and check_azure against the bed's real emulators (fake-gcs-server, Azurite),
and the real MLflow client logging an artifact to each through the env trackop hands out."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from azure.storage.blob import BlobServiceClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from trackop_testbed.pod_env import expand
from trackop_testbed.procs import free_ports

from trackop.artifacts.azure import check_azure
from trackop.artifacts.common import ArtifactsError
from trackop.artifacts.gcs import check_gcs
from trackop.artifacts.locations import (
    AzureLocation,
    GCSLocation,
    azure_client_env,
    azure_connection_string,
    gcs_client_env,
)

pytestmark = pytest.mark.bed

# Whatever the developer's shell has must not steer the clients under test.
_CLOUD_ENV = (
    "STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCESS_KEY", "MLFLOW_TRACKING_URI", "HTTP_PROXY", "HTTPS_PROXY",
    "http_proxy", "https_proxy",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in _CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _closed_port_endpoint() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


# ---- Google Cloud Storage (fake-gcs-server) ----------------------------------------------

@pytest.fixture
def gcs(bed_info: dict) -> dict:
    return bed_info["gcs"]


@pytest.fixture
def gcs_client(gcs):
    return storage.Client(project=gcs["project"], credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs["endpoint"]})


@pytest.fixture
def gcs_bucket_name(gcs_client):
    """A unique bucket name; whatever bucket ends up with it is emptied and deleted afterwards."""
    name = f"trackop-t-{uuid.uuid4().hex[:12]}"
    yield name
    bucket = gcs_client.lookup_bucket(name)
    if bucket is not None:
        for blob in gcs_client.list_blobs(name):
            blob.delete()
        bucket.delete()


@pytest.fixture
def gcs_bucket(gcs_client, gcs_bucket_name) -> str:
    gcs_client.create_bucket(gcs_bucket_name)
    return gcs_bucket_name


def gcs_names(gcs_client, bucket: str) -> list[str]:
    return sorted(b.name for b in gcs_client.list_blobs(bucket))


def gcs_failure(loc: GCSLocation, credentials_json: str | None = None, **kwargs) -> ArtifactsError:
    with pytest.raises(ArtifactsError) as excinfo:
        check_gcs(loc, credentials_json, **kwargs)
    return excinfo.value


def test_gcs_existing_bucket_is_ok_and_leaves_no_probe(gcs, gcs_client, gcs_bucket):
    gcs_client.bucket(gcs_bucket).blob("team-a/keep.txt").upload_from_string(b"x")
    loc = GCSLocation(gcs_bucket, "/team-a//", endpoint=gcs["endpoint"])
    assert check_gcs(loc, None) == []
    assert gcs_names(gcs_client, gcs_bucket) == ["team-a/keep.txt"]


def test_gcs_missing_bucket_without_create_names_it(gcs, gcs_client, gcs_bucket_name):
    exc = gcs_failure(GCSLocation(gcs_bucket_name, "team-a", endpoint=gcs["endpoint"]))
    assert exc.reason == "BucketNotFound"
    assert gcs_bucket_name in exc.message and "createBucket: true" in exc.message
    assert gcs_client.lookup_bucket(gcs_bucket_name) is None  # and nothing was created


def test_gcs_missing_bucket_with_create_creates_it_once(gcs, gcs_client, gcs_bucket_name):
    loc = GCSLocation(gcs_bucket_name, "team-a", create_bucket=True, endpoint=gcs["endpoint"],
                      project=gcs["project"])
    assert check_gcs(loc, None) == [f"created bucket {gcs_bucket_name}"]
    assert gcs_client.lookup_bucket(gcs_bucket_name) is not None
    assert check_gcs(loc, None) == [], "a second check finds it and changes nothing"
    assert gcs_names(gcs_client, gcs_bucket_name) == []


def test_gcs_create_without_a_project_says_to_set_one(gcs, gcs_client, gcs_bucket_name):
    exc = gcs_failure(GCSLocation(gcs_bucket_name, create_bucket=True, endpoint=gcs["endpoint"]))
    assert exc.reason == "BucketCreateFailed"
    assert "spec.artifacts.gcs.project" in exc.message
    assert gcs_client.lookup_bucket(gcs_bucket_name) is None


def test_gcs_closed_port_is_unreachable_within_the_timeout(gcs_bucket_name):
    started = time.monotonic()
    exc = gcs_failure(GCSLocation(gcs_bucket_name, endpoint=_closed_port_endpoint()), timeout=2)
    assert exc.reason == "EndpointUnreachable"
    assert time.monotonic() - started < 10, "no retries past the timeout"


class _TokenServer:
    """A stand-in for oauth2.googleapis.com/token, the one Google service this machine
    cannot reach: it accepts every service-account assertion, or refuses every one."""

    def __init__(self, accept: bool) -> None:
        token_server = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                token_server.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if accept:
                    status, body = 200, {"access_token": "ya29.bed-token", "expires_in": 3600,
                                         "token_type": "Bearer"}
                else:
                    status, body = 400, {"error": "invalid_grant",
                                         "error_description": "Invalid JWT Signature."}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _service_account_json(token_uri: str, project: str) -> tuple[str, str]:
    """A real service-account key file (fresh RSA key); returns it and its private key PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account", "project_id": project, "private_key_id": uuid.uuid4().hex,
        "private_key": pem, "client_email": f"trackop@{project}.iam.gserviceaccount.com",
        "client_id": "1234567890", "token_uri": token_uri,
    }
    return json.dumps(info), pem


@pytest.fixture
def token_server():
    servers: list[_TokenServer] = []

    def make(accept: bool) -> _TokenServer:
        servers.append(_TokenServer(accept))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_gcs_refused_service_account_key_is_invalid_credentials_without_the_key(
        gcs, gcs_bucket, token_server):
    tokens = token_server(accept=False)
    key_json, pem = _service_account_json(tokens.url, gcs["project"])
    exc = gcs_failure(GCSLocation(gcs_bucket, endpoint=gcs["endpoint"]), key_json,
                      credentials_ref="ml/gcs-creds")
    assert exc.reason == "InvalidCredentials"
    assert "ml/gcs-creds" in exc.message
    assert tokens.requests >= 1, "the key really was presented"
    body = pem.split("-----")[2].replace("\n", "")
    for secret in (body[:40], body[-40:], "Invalid JWT Signature"):
        assert secret not in exc.message and secret not in str(exc)


def test_gcs_unreachable_token_endpoint_is_named_as_such(gcs, gcs_bucket):
    key_json, _ = _service_account_json(f"{_closed_port_endpoint()}/token", gcs["project"])
    exc = gcs_failure(GCSLocation(gcs_bucket, endpoint=gcs["endpoint"]), key_json, timeout=2)
    assert exc.reason == "EndpointUnreachable" and "token endpoint" in exc.message


# ---- Azure Blob (Azurite) ------------------------------------------------------------------

@pytest.fixture
def azure(bed_info: dict) -> dict:
    return bed_info["azure"]


@pytest.fixture
def blob_service(azure) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azure["connection_string"])


@pytest.fixture
def container_name(blob_service):
    name = f"trackop-t-{uuid.uuid4().hex[:12]}"
    yield name
    client = blob_service.get_container_client(name)
    if client.exists():
        client.delete_container()


@pytest.fixture
def container(blob_service, container_name) -> str:
    blob_service.create_container(container_name)
    return container_name


def azure_location(azure: dict, container: str, prefix: str = "", create: bool = False,
                   endpoint: str | None = None) -> AzureLocation:
    return AzureLocation(container, prefix, azure["account"], create, endpoint or azure["endpoint"])


def blob_names(blob_service, container: str) -> list[str]:
    return sorted(b.name for b in blob_service.get_container_client(container).list_blobs())


def azure_failure(loc: AzureLocation, key: str | None, **kwargs) -> ArtifactsError:
    with pytest.raises(ArtifactsError) as excinfo:
        check_azure(loc, key, **kwargs)
    return excinfo.value


def test_azure_bed_has_its_own_account_not_the_well_known_one(azure):
    assert azure["account"] != "devstoreaccount1"
    assert azure["endpoint"].endswith("/" + azure["account"])
    assert len(base64.b64decode(azure["key"])) == 64


def test_azure_existing_container_is_ok_and_leaves_no_probe(azure, blob_service, container):
    blob_service.get_container_client(container).upload_blob("team-a/keep.txt", b"x")
    assert check_azure(azure_location(azure, container, "/team-a//"), azure["key"]) == []
    assert blob_names(blob_service, container) == ["team-a/keep.txt"]


def test_azure_connection_string_works_too(azure, blob_service, container):
    loc = azure_location(azure, container, "team-a")
    assert check_azure(loc, None, connection_string=azure["connection_string"]) == []
    assert blob_names(blob_service, container) == []


def test_azure_connection_string_for_another_account_is_refused(azure, container):
    other = azure["connection_string"].replace(f"AccountName={azure['account']};", "AccountName=other1;")
    exc = azure_failure(azure_location(azure, container), None, connection_string=other)
    assert exc.reason == "InvalidCredentials" and "'other1'" in exc.message
    assert azure["key"] not in exc.message


def test_azure_missing_container_without_create_names_it(azure, blob_service, container_name):
    exc = azure_failure(azure_location(azure, container_name, "team-a"), azure["key"])
    assert exc.reason == "BucketNotFound"
    assert container_name in exc.message and "createContainer: true" in exc.message
    assert not blob_service.get_container_client(container_name).exists()


def test_azure_missing_container_with_create_creates_it_once(azure, blob_service, container_name):
    loc = azure_location(azure, container_name, "team-a", create=True)
    assert check_azure(loc, azure["key"]) == [f"created container {container_name}"]
    assert blob_service.get_container_client(container_name).exists()
    assert check_azure(loc, azure["key"]) == []
    assert blob_names(blob_service, container_name) == []


def test_azure_wrong_key_is_invalid_credentials_without_the_key(azure, container):
    wrong = base64.b64encode(uuid.uuid4().bytes * 4).decode()
    exc = azure_failure(azure_location(azure, container), wrong, credentials_ref="ml/azure-creds")
    assert exc.reason == "InvalidCredentials"
    assert "ml/azure-creds" in exc.message
    for secret in (wrong, azure["key"]):
        assert secret not in exc.message and secret not in str(exc)


def test_azure_key_that_is_not_base64_is_invalid_credentials(azure, container):
    exc = azure_failure(azure_location(azure, container), "not-base64!")
    assert exc.reason == "InvalidCredentials" and "not-base64!" not in exc.message


def test_azure_wrong_key_with_create_creates_nothing(azure, blob_service, container_name):
    wrong = base64.b64encode(b"w" * 64).decode()
    exc = azure_failure(azure_location(azure, container_name, create=True), wrong)
    assert exc.reason == "InvalidCredentials"
    assert not blob_service.get_container_client(container_name).exists()


def test_azure_closed_port_is_unreachable_within_the_timeout(azure, container_name):
    endpoint = f"{_closed_port_endpoint()}/{azure['account']}"
    started = time.monotonic()
    exc = azure_failure(azure_location(azure, container_name, endpoint=endpoint), azure["key"], timeout=2)
    assert exc.reason == "EndpointUnreachable"
    assert azure["key"] not in exc.message
    assert time.monotonic() - started < 10, "no retries past the timeout"


# ---- the real MLflow client, through the env trackop hands out ------------------------------

def _log_one_artifact(tmp_path: Path, artifact_root: str) -> tuple[str, str]:
    """Log ``model/weights.txt`` to a fresh experiment rooted at ``artifact_root``; return
    (run artifact URI, content)."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment(f"exp-{uuid.uuid4().hex[:8]}", artifact_location=artifact_root)
    run = client.create_run(experiment)
    content = f"weights of {run.info.run_id}\n"
    local = tmp_path / "weights.txt"
    local.write_text(content)
    client.log_artifact(run.info.run_id, str(local), artifact_path="model")
    listed = [f.path for f in client.list_artifacts(run.info.run_id, "model")]
    assert listed == ["model/weights.txt"], "MLflow lists what it wrote"
    back = Path(client.download_artifacts(run.info.run_id, "model/weights.txt", str(tmp_path / "dl")))
    assert back.read_text() == content, "MLflow reads back what it wrote"
    client.set_terminated(run.info.run_id)
    return run.info.artifact_uri, content


def test_mlflow_logs_to_the_gcs_emulator_through_gcs_client_env(
        gcs, gcs_client, gcs_bucket, tmp_path, monkeypatch):
    loc = GCSLocation(gcs_bucket, "team-a", endpoint=gcs["endpoint"])
    assert check_gcs(loc, None) == []
    env = gcs_client_env(loc)
    assert env == {"STORAGE_EMULATOR_HOST": gcs["endpoint"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    artifact_uri, content = _log_one_artifact(tmp_path, loc.uri + "/exp")
    assert artifact_uri.startswith(f"gs://{gcs_bucket}/team-a/exp/")
    key = artifact_uri.removeprefix(f"gs://{gcs_bucket}/") + "/model/weights.txt"
    assert gcs_names(gcs_client, gcs_bucket) == [key]
    assert gcs_client.bucket(gcs_bucket).blob(key).download_as_bytes().decode() == content


def test_mlflow_logs_with_a_service_account_key_through_a_private_endpoint(
        gcs, gcs_client, gcs_bucket, tmp_path, monkeypatch, token_server):
    """The credentialed path: a key file (GOOGLE_APPLICATION_CREDENTIALS) and an endpoint
    (API_ENDPOINT_OVERRIDE). fake-gcs-server accepts any token; the token itself comes
    from a local stand-in for Google's token endpoint."""
    tokens = token_server(accept=True)
    key_json, _ = _service_account_json(tokens.url, gcs["project"])
    loc = GCSLocation(gcs_bucket, "team-b", endpoint=gcs["endpoint"])
    assert check_gcs(loc, key_json, timeout=5) == []
    assert tokens.requests == 1

    key_file = tmp_path / "secret" / "serviceAccountKey"  # as a Secret volume would mount it
    key_file.parent.mkdir()
    key_file.write_text(key_json)
    env = gcs_client_env(loc, credentials_file=str(key_file))
    assert env == {"API_ENDPOINT_OVERRIDE": gcs["endpoint"], "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    artifact_uri, content = _log_one_artifact(tmp_path, loc.uri + "/exp")
    # MLflow builds a client per operation (log, list, download), each fetching a token.
    assert tokens.requests > 1, "MLflow authenticated with the key file"
    key = artifact_uri.removeprefix(f"gs://{gcs_bucket}/") + "/model/weights.txt"
    assert key.startswith("team-b/exp/")
    assert gcs_client.bucket(gcs_bucket).blob(key).download_as_bytes().decode() == content


def test_mlflow_logs_to_azurite_through_azure_client_env(
        azure, blob_service, container, tmp_path, monkeypatch):
    loc = azure_location(azure, container, "team-a")
    assert check_azure(loc, azure["key"]) == []
    template = azure_client_env(loc)
    assert set(template) == {"AZURE_STORAGE_CONNECTION_STRING"}
    assert azure["key"] not in json.dumps(template), "the key travels only through the Secret"

    # As the pod would get it: the key from a secretKeyRef first, then the template,
    # expanded the way the kubelet expands $(VAR) from earlier variables.
    pod_env = {"AZURE_STORAGE_ACCESS_KEY": azure["key"]}
    for name, value in template.items():
        pod_env[name] = expand(value, pod_env)
    assert pod_env["AZURE_STORAGE_CONNECTION_STRING"] == azure_connection_string(loc, azure["key"])
    for name, value in pod_env.items():
        monkeypatch.setenv(name, value)

    artifact_uri, content = _log_one_artifact(tmp_path, loc.uri + "/exp")
    prefix = f"wasbs://{container}@{azure['account']}.blob.core.windows.net/"
    assert artifact_uri.startswith(prefix + "team-a/exp/")
    key = artifact_uri.removeprefix(prefix) + "/model/weights.txt"
    assert blob_names(blob_service, container) == [key]
    data = blob_service.get_container_client(container).download_blob(key).readall()
    assert data.decode() == content
