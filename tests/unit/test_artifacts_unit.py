"""trackop.artifacts.s3 without a store: URIs, bucket names, workload env, error mapping.

The error mapping runs on a real botocore client whose responses come from botocore's
Stubber, for the cases the bed's MinIO (root credentials only) cannot produce: AWS's
body-less 403 on HEAD, a policy that denies writes, codes trackop does not know.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.stub import ANY, Stubber

from trackop.artifacts import s3
from trackop.artifacts.common import ArtifactsError, normalise_prefix
from trackop.artifacts.locations import S3Location, s3_client_env
from trackop.artifacts.s3 import check_s3

ACCESS_KEY = "AKIAUNITTESTKEY00001"
SECRET_KEY = "unit/test+secret/key/value/0123456789ab"


@pytest.mark.parametrize("raw, expected", [
    ("", ""),
    ("/", ""),
    ("team-a", "team-a"),
    ("/team-a", "team-a"),
    ("team-a/", "team-a"),
    ("//team-a//runs///x/", "team-a/runs/x"),
    ("a/b/c", "a/b/c"),
])
def test_normalise_prefix(raw, expected):
    assert normalise_prefix(raw) == expected


def test_location_normalises_and_builds_the_uri():
    loc = S3Location("ml-artifacts", "/team-a//exp/", "http://minio.minio.svc:9000/", "")
    assert loc.prefix == "team-a/exp"
    assert loc.endpoint == "http://minio.minio.svc:9000"
    assert loc.region == "us-east-1"
    assert loc.uri == "s3://ml-artifacts/team-a/exp"
    assert S3Location("ml-artifacts", "/").uri == "s3://ml-artifacts"
    assert S3Location("ml-artifacts").uri == "s3://ml-artifacts"


def test_location_rejects_an_invalid_bucket():
    with pytest.raises(ValueError, match="spec.artifacts.s3.bucket"):
        S3Location("Bad_Bucket")


def test_s3_client_env():
    assert s3_client_env(S3Location("b-1", endpoint="http://minio:9000/", region="eu-west-1")) == {
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1",
    }
    env = s3_client_env(S3Location("b-1"))
    assert env == {"AWS_DEFAULT_REGION": "us-east-1"}
    assert not any("KEY" in name for name in env)


# --- error mapping, on a stubbed client ---------------------------------------------------

LOC = S3Location("ml-artifacts", "team-a", "http://minio.example:9000")


@pytest.fixture
def stub(monkeypatch):
    client = boto3.client(
        "s3", endpoint_url=LOC.endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )
    monkeypatch.setattr(s3, "_client", lambda *args, **kwargs: client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def head_error(stubber, status, headers=None):
    # HEAD has no body: botocore only sees the status, as code "403"/"404".
    stubber.add_client_error("head_bucket", service_error_code=str(status), service_message="",
                             http_status_code=status, response_meta={"HTTPHeaders": headers or {}})


def run(location=LOC) -> ArtifactsError:
    with pytest.raises(ArtifactsError) as excinfo:
        check_s3(location, ACCESS_KEY, SECRET_KEY, credentials_ref="ml/s3-creds")
    exc = excinfo.value
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in str(exc) and secret not in exc.message
    return exc


def test_write_denied_is_access_denied_naming_the_permission(stub):
    stub.add_response("head_bucket", {}, {"Bucket": "ml-artifacts"})
    stub.add_client_error("put_object", "AccessDenied", "raw server text", 403)
    exc = run()
    assert exc.reason == "AccessDenied"
    assert "s3:PutObject" in exc.message and "arn:aws:s3:::ml-artifacts/team-a/*" in exc.message
    assert "raw server text" not in exc.message


def test_delete_denied_is_access_denied(stub):
    stub.add_response("head_bucket", {}, {"Bucket": "ml-artifacts"})
    stub.add_response("put_object", {}, {"Bucket": "ml-artifacts", "Key": ANY, "Body": ANY})
    stub.add_client_error("delete_object", "AccessDenied", "", 403)
    exc = run()
    assert exc.reason == "AccessDenied" and "s3:DeleteObject" in exc.message


def test_aws_bare_head_403_then_bad_signature_is_invalid_credentials(stub):
    head_error(stub, 403)
    stub.add_client_error("put_object", "SignatureDoesNotMatch", "echoes the request", 403)
    exc = run()
    assert exc.reason == "InvalidCredentials"
    assert "Secret ml/s3-creds" in exc.message and "echoes" not in exc.message


def test_head_denied_but_writable_asks_for_list_bucket(stub):
    head_error(stub, 403)
    stub.add_response("put_object", {}, {"Bucket": "ml-artifacts", "Key": ANY, "Body": ANY})
    stub.add_response("delete_object", {}, {"Bucket": "ml-artifacts", "Key": ANY})
    exc = run()
    assert exc.reason == "AccessDenied" and "s3:ListBucket" in exc.message


def test_minio_header_code_on_head_is_used(stub):
    head_error(stub, 403, {"x-minio-error-code": "InvalidAccessKeyId"})
    assert run().reason == "InvalidCredentials"


def test_unknown_code_is_probe_failed_with_the_code_only(stub):
    stub.add_response("head_bucket", {}, {"Bucket": "ml-artifacts"})
    stub.add_client_error("put_object", "SlowDown", "server said something long", 503)
    exc = run()
    assert exc.reason == "ProbeFailed" and "SlowDown" in exc.message
    assert "server said" not in exc.message


def test_probe_key_lives_under_the_prefix(stub):
    stub.add_response("head_bucket", {}, {"Bucket": "ml-artifacts"})
    keys = []
    stub.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: keys.append(params["Key"]))
    stub.add_response("put_object", {}, {"Bucket": "ml-artifacts", "Key": ANY, "Body": ANY})
    stub.add_response("delete_object", {}, {"Bucket": "ml-artifacts", "Key": ANY})
    assert check_s3(LOC, ACCESS_KEY, SECRET_KEY) == []
    assert len(keys) == 1 and keys[0].startswith("team-a/.trackop-probe-")


def test_create_race_is_success_and_region_sets_location_constraint(stub):
    loc = S3Location("ml-artifacts", "", "http://minio.example:9000", "eu-west-1", create_bucket=True)
    head_error(stub, 404)
    stub.add_client_error("create_bucket", "BucketAlreadyOwnedByYou", "", 409,
                          expected_params={"Bucket": "ml-artifacts",
                                           "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}})
    stub.add_response("put_object", {}, {"Bucket": "ml-artifacts", "Key": ANY, "Body": ANY})
    stub.add_response("delete_object", {}, {"Bucket": "ml-artifacts", "Key": ANY})
    assert check_s3(loc, ACCESS_KEY, SECRET_KEY) == ["created bucket ml-artifacts"]


def test_create_denied_is_bucket_create_failed(stub):
    loc = S3Location("ml-artifacts", endpoint="http://minio.example:9000", create_bucket=True)
    head_error(stub, 404)
    stub.add_client_error("create_bucket", "AccessDenied", "", 403,
                          expected_params={"Bucket": "ml-artifacts"})
    exc = run(loc)
    assert exc.reason == "BucketCreateFailed" and "s3:CreateBucket" in exc.message


def test_one_key_missing_is_no_credentials():
    with pytest.raises(ArtifactsError) as excinfo:
        check_s3(LOC, ACCESS_KEY, None, credentials_ref="ml/s3-creds")
    assert excinfo.value.reason == "NoCredentials"
    assert "ml/s3-creds" in excinfo.value.message and ACCESS_KEY not in excinfo.value.message


def test_no_credentials_anywhere_explains_workload_identity(monkeypatch, tmp_path):
    # An empty default chain: no env keys, no files, no container or instance metadata.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ArtifactsError) as excinfo:
        check_s3(LOC, None, None)
    assert excinfo.value.reason == "NoCredentials"
    assert "workload identity" in excinfo.value.message
    assert "credentialsSecretRef" in excinfo.value.message


def test_endpoint_userinfo_never_shows():
    assert s3._shown_endpoint("http://user:pw@minio:9000/") == "http://minio:9000/"
    assert s3._shown_endpoint(None, "eu-west-1") == "https://s3.eu-west-1.amazonaws.com"
