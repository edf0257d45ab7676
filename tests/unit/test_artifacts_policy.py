"""The platform admin's policy for tenants' buckets, before any request: no operator
identity without the admin's consent, and no request to an endpoint the admin does not
allow. A throwaway listener on 127.0.0.1 stands in for the tenant's endpoint and records
what reaches it."""

from __future__ import annotations

import json

import pytest
from helpers import RecordingListener, make_spec

from trackop.api.policy import Policy, endpoint_allowed
from trackop.artifacts.check import check_store
from trackop.artifacts.common import ArtifactsError, NotChecked
from trackop.artifacts.gcs import check_gcs
from trackop.artifacts.locations import GCSLocation

AMBIENT_KEY_ID = "AKIAOPERATORSOWNKEY01"


@pytest.fixture
def ambient_aws_identity(monkeypatch, tmp_path):
    """The operator's own AWS credentials in its environment (as IRSA or a node role would give)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AMBIENT_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operators-own-secret-key")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def s3_store(endpoint: str, **extra):
    return make_spec({"artifacts": {"s3": {"bucket": "tenant-bucket", "endpoint": endpoint, **extra}}}).artifacts


def test_without_a_secret_the_operators_identity_signs_nothing(ambient_aws_identity):
    with RecordingListener() as listener:
        with pytest.raises(NotChecked) as skipped:
            check_store(s3_store(listener.url), None, None, Policy())
    assert listener.requests == [], "nothing is sent with the operator's identity"
    assert skipped.value.reason == "ServerIdentity"
    message = skipped.value.message
    assert "spec.artifacts.s3.credentialsSecretRef" in message and "serviceAccountName" in message
    assert AMBIENT_KEY_ID not in message


def test_the_admin_can_allow_the_operators_identity(ambient_aws_identity):
    """The contrast: turned on, the same check signs with the ambient key (and the listener says 403)."""
    with RecordingListener() as listener:
        with pytest.raises(ArtifactsError) as failed:
            check_store(s3_store(listener.url), None, None, Policy(operator_cloud_identity=True))
    assert listener.requests, "the check reached the endpoint"
    assert all(AMBIENT_KEY_ID in headers.get("Authorization", "") for _, _, headers in listener.requests)
    assert not isinstance(failed.value, NotChecked)


@pytest.mark.parametrize("store", [
    {"s3": {"bucket": "tenant-bucket", "createBucket": True}},
    {"gcs": {"bucket": "tenant-bucket", "createBucket": True}},
    {"azure": {"container": "tenant", "storageAccount": "tenantacct", "createContainer": True}},
])
def test_creating_a_bucket_without_a_secret_is_refused(store, ambient_aws_identity):
    spec = make_spec({"artifacts": store})
    with pytest.raises(ArtifactsError) as refused:
        check_store(spec.artifacts, None, None, Policy())
    field = next(iter(store))
    create = "createContainer" if field == "azure" else "createBucket"
    assert refused.value.reason == "CreateNeedsCredentials"
    assert f"spec.artifacts.{field}.{create}" in refused.value.message
    assert f"spec.artifacts.{field}.credentialsSecretRef" in refused.value.message


def test_a_gcs_emulator_is_reached_anonymously_which_is_no_identity():
    """An endpoint without a Secret is an emulator: no credentials at all, so the policy
    lets the check run (and the listener sees no Authorization header)."""
    store = make_spec({"artifacts": {"gcs": {"bucket": "tenant-bucket"}}}).artifacts
    with RecordingListener() as listener:
        spec = make_spec({"artifacts": {"gcs": {"bucket": "tenant-bucket", "endpoint": listener.url}}})
        with pytest.raises(ArtifactsError):
            check_store(spec.artifacts, None, None, Policy())
    assert listener.requests and not any("Authorization" in h for _, _, h in listener.requests)
    with pytest.raises(NotChecked):
        check_store(store, None, None, Policy())  # Google's own endpoint: that would be an identity


def test_an_endpoint_the_admin_does_not_allow_gets_no_request():
    with RecordingListener() as listener:
        with pytest.raises(ArtifactsError) as refused:
            check_store(s3_store(listener.url), ("AKIATENANT", "tenant-secret"), "ns/s3-creds",
                        Policy(artifact_endpoints=("*.amazonaws.com", "minio.minio.svc")))
    assert listener.requests == []
    assert refused.value.reason == "EndpointNotAllowed"
    assert "spec.artifacts.s3.endpoint" in refused.value.message and "'127.0.0.1'" in refused.value.message
    assert "tenant-secret" not in refused.value.message


def test_an_allowed_endpoint_is_checked():
    with RecordingListener() as listener:
        with pytest.raises(ArtifactsError) as failed:
            check_store(s3_store(listener.url), ("AKIATENANT", "tenant-secret"), "ns/s3-creds",
                        Policy(artifact_endpoints=("127.0.0.*",)))
    assert listener.requests and failed.value.reason != "EndpointNotAllowed"


def test_a_key_files_token_uri_must_be_allowed_too():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with RecordingListener() as listener:
        key = json.dumps({"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com",
                          "private_key_id": "1", "private_key": pem, "token_uri": f"{listener.url}/token"})
        with pytest.raises(ArtifactsError) as refused:
            check_gcs(GCSLocation("tenant-bucket"), key, credentials_ref="ns/gcs",
                      allowed_endpoints=("storage.googleapis.com",))
    assert listener.requests == []
    assert refused.value.reason == "EndpointNotAllowed" and "token_uri" in refused.value.message
    assert "PRIVATE" not in refused.value.message


@pytest.mark.parametrize("url, patterns, allowed", [
    ("http://minio.minio.svc:9000", (), True),
    ("http://minio.minio.svc:9000", ("minio.minio.svc",), True),
    ("https://S3.EU-WEST-1.amazonaws.com", ("*.amazonaws.com",), True),
    ("http://evil.example.com", ("*.amazonaws.com",), False),
    ("http://amazonaws.com.evil.example", ("*.amazonaws.com",), False),
    ("http://user:pw@10.0.0.1:9000", ("minio.minio.svc",), False),
    ("minio:9000", ("minio",), False),  # not a URL: no host
])
def test_endpoint_patterns_match_the_host(url, patterns, allowed):
    assert endpoint_allowed(url, patterns) is allowed
