"""GCS and Azure locations without a store: URIs (as MLflow parses them), names, workload
env, and the credential failures that are decided before any request."""

from __future__ import annotations

import json

import pytest
from mlflow.store.artifact.azure_blob_artifact_repo import AzureBlobArtifactRepository
from mlflow.store.artifact.gcs_artifact_repo import GCSArtifactRepository
from trackop_testbed.pod_env import expand

from trackop.api.validation import (
    validate_azure_account_name,
)
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

KEY = "dW5pdC10ZXN0LWtleS1ub3QtYS1yZWFsLWF6dXJlLWtleS0wMTIzNDU2Nzg5YWJjZGVm"


# ---- GCS -----------------------------------------------------------------------------------

def test_gcs_location_normalises_and_builds_the_uri():
    loc = GCSLocation("ml-artifacts", "/team-a//exp/", endpoint="http://fake-gcs.test.svc:4443/")
    assert loc.prefix == "team-a/exp"
    assert loc.endpoint == "http://fake-gcs.test.svc:4443"
    assert loc.uri == "gs://ml-artifacts/team-a/exp"
    assert GCSLocation("ml-artifacts").uri == "gs://ml-artifacts"
    assert GCSLocation("ml-artifacts", project="").project is None


def test_gcs_uri_is_what_mlflow_parses():
    loc = GCSLocation("ml-artifacts", "team-a")
    assert GCSArtifactRepository.parse_gcs_uri(loc.uri + "/exp/1/artifacts") == (
        "ml-artifacts", "team-a/exp/1/artifacts")


@pytest.mark.parametrize("name, why", [
    ("ab", "3 to 63"),
    ("a" * 64, "3 to 63"),
    ("ML-artifacts", "lowercase"),
    ("-abc", "start and end"),
    ("abc_", "start and end"),
    ("192.168.1.1", "IP address"),
    ("goog-artifacts", "goog"),
    ("my-google-bucket", "google"),
    ("a." + "b" * 64, "dot-separated"),
])
def test_gcs_invalid_bucket_names_name_the_field(name, why):
    with pytest.raises(ValueError) as excinfo:
        GCSLocation(name)
    assert "spec.artifacts.gcs.bucket" in str(excinfo.value) and why in str(excinfo.value)


def test_gcs_env_for_an_emulator_is_anonymous():
    loc = GCSLocation("ml-artifacts", "team-a", endpoint="http://fake-gcs:4443")
    assert gcs_client_env(loc) == {"STORAGE_EMULATOR_HOST": "http://fake-gcs:4443"}


def test_gcs_env_with_a_key_file_names_only_its_path():
    loc = GCSLocation("ml-artifacts", "team-a", project="ml-prod")
    assert gcs_client_env(loc, credentials_file="/var/run/trackop/gcs/serviceAccountKey") == {
        "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/trackop/gcs/serviceAccountKey",
        "GOOGLE_CLOUD_PROJECT": "ml-prod",
    }
    assert gcs_client_env(GCSLocation("ml-artifacts")) == {}, "workload identity: nothing to add"


def test_gcs_env_for_a_private_endpoint_keeps_authentication():
    loc = GCSLocation("ml-artifacts", endpoint="https://storage-psc.p.googleapis.com")
    env = gcs_client_env(loc, credentials_file="/k")
    # STORAGE_EMULATOR_HOST would make the client anonymous; API_ENDPOINT_OVERRIDE does not.
    assert env == {"API_ENDPOINT_OVERRIDE": "https://storage-psc.p.googleapis.com",
                   "GOOGLE_APPLICATION_CREDENTIALS": "/k"}


def _gcs_failure(credentials_json, **kwargs) -> ArtifactsError:
    with pytest.raises(ArtifactsError) as excinfo:
        check_gcs(GCSLocation("ml-artifacts", endpoint="http://127.0.0.1:9"), credentials_json, **kwargs)
    return excinfo.value


@pytest.mark.parametrize("text", [
    "{not json",
    json.dumps(["a list"]),
    json.dumps({"type": "authorized_user", "client_id": "x", "refresh_token": "secret-refresh-token"}),
    json.dumps({"type": "service_account", "client_email": "a@b", "private_key": "secret-not-a-pem",
                "token_uri": "https://oauth2.googleapis.com/token"}),
])
def test_gcs_malformed_key_file_is_invalid_credentials_without_its_content(text):
    exc = _gcs_failure(text, credentials_ref="ml/gcs-creds")
    assert exc.reason == "InvalidCredentials"
    assert "ml/gcs-creds" in exc.message and "serviceAccountKey" in exc.message
    assert "secret" not in exc.message
    assert exc.__cause__ is None and exc.__suppress_context__


def test_gcs_empty_key_file_is_no_credentials():
    assert _gcs_failure("  ").reason == "NoCredentials"


def test_gcs_without_credentials_or_identity_is_no_credentials(monkeypatch, tmp_path):
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud login
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # not on GCE: skip the metadata server
    with pytest.raises(ArtifactsError) as excinfo:
        check_gcs(GCSLocation("ml-artifacts"), None)
    assert excinfo.value.reason == "NoCredentials"
    assert "spec.artifacts.gcs.credentialsSecretRef" in excinfo.value.message


# ---- Azure ---------------------------------------------------------------------------------

def test_azure_location_normalises_and_builds_the_uri():
    loc = AzureLocation("ml-artifacts", "/team-a//exp/", "mlstore01")
    assert loc.prefix == "team-a/exp"
    assert loc.uri == "wasbs://ml-artifacts@mlstore01.blob.core.windows.net/team-a/exp"
    assert loc.account_url == "https://mlstore01.blob.core.windows.net"
    assert AzureLocation("ml-artifacts", "", "mlstore01").uri == \
        "wasbs://ml-artifacts@mlstore01.blob.core.windows.net"
    emulated = AzureLocation("ml-artifacts", "", "mlstore01", True, "http://azurite:10000/mlstore01/")
    assert emulated.account_url == "http://azurite:10000/mlstore01"
    assert emulated.uri == "wasbs://ml-artifacts@mlstore01.blob.core.windows.net", \
        "the URI names the account; the endpoint reaches MLflow through the connection string"


def test_azure_uri_is_what_mlflow_parses():
    loc = AzureLocation("ml-artifacts", "team-a", "mlstore01")
    assert AzureBlobArtifactRepository.parse_wasbs_uri(loc.uri + "/exp/1/artifacts") == (
        "ml-artifacts", "mlstore01", "team-a/exp/1/artifacts", "blob.core.windows.net")


@pytest.mark.parametrize("name", ["ab", "a" * 64, "ML", "-abc", "abc-", "a--b", "a_b", "a.b"])
def test_azure_invalid_container_names_name_the_field(name):
    with pytest.raises(ValueError, match="spec.artifacts.azure.container"):
        AzureLocation(name, "", "mlstore01")


@pytest.mark.parametrize("name", ["ab", "a" * 25, "ML01", "ml-store", "ml_store", ""])
def test_azure_invalid_account_names_name_the_field(name):
    with pytest.raises(ValueError, match="spec.artifacts.azure.storageAccount"):
        AzureLocation("ml-artifacts", "", name)
    validate_azure_account_name("mlstore01")


def test_azure_env_on_azure_needs_only_the_key():
    assert azure_client_env(AzureLocation("ml-artifacts", "team-a", "mlstore01")) == {}


def test_azure_env_with_an_endpoint_refers_to_the_key_and_expands_like_kubernetes():
    loc = AzureLocation("ml-artifacts", "team-a", "mlstore01", False, "http://azurite:10000/mlstore01")
    env = azure_client_env(loc)
    assert env == {"AZURE_STORAGE_CONNECTION_STRING":
                   "DefaultEndpointsProtocol=http;AccountName=mlstore01;"
                   "AccountKey=$(AZURE_STORAGE_ACCESS_KEY);BlobEndpoint=http://azurite:10000/mlstore01;"}
    expanded = expand(env["AZURE_STORAGE_CONNECTION_STRING"], {"AZURE_STORAGE_ACCESS_KEY": KEY})
    assert expanded == azure_connection_string(loc, KEY)


def _azure_failure(key, **kwargs) -> ArtifactsError:
    loc = AzureLocation("ml-artifacts", "", "mlstore01", False, "http://127.0.0.1:9/mlstore01")
    with pytest.raises(ArtifactsError) as excinfo:
        check_azure(loc, key, **kwargs)
    return excinfo.value


def test_azure_empty_key_is_no_credentials():
    assert _azure_failure("").reason == "NoCredentials"


def test_azure_without_credentials_says_what_to_set():
    exc = _azure_failure(None)
    assert exc.reason == "NoCredentials" and "accountKey" in exc.message


@pytest.mark.parametrize("text", ["AccountKey=secret-value-1", "garbage secret-value-1"])
def test_azure_malformed_connection_string_is_invalid_credentials_without_it(text):
    exc = _azure_failure(None, connection_string=text, credentials_ref="ml/az")
    assert exc.reason == "InvalidCredentials" and "ml/az" in exc.message
    assert "secret-value-1" not in exc.message
