"""trackop.artifacts.s3.check_s3 against the bed's real MinIO (no mocks)."""

from __future__ import annotations

import time
import uuid

import pytest
from trackop_testbed.procs import free_ports

from trackop.artifacts.common import ArtifactsError
from trackop.artifacts.locations import S3Location
from trackop.artifacts.s3 import check_s3

pytestmark = pytest.mark.bed


@pytest.fixture
def s3(bed_info: dict) -> dict:
    return bed_info["s3"]


@pytest.fixture
def bucket_name(s3_client):
    """A unique bucket name; whatever bucket ends up with it is emptied and deleted afterwards."""
    name = f"trackop-t-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        s3_client.head_bucket(Bucket=name)
    except s3_client.exceptions.ClientError:
        return
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def bucket(s3_client, bucket_name) -> str:
    s3_client.create_bucket(Bucket=bucket_name)
    return bucket_name


def location(s3: dict, bucket: str, prefix: str = "", create: bool = False) -> S3Location:
    return S3Location(bucket, prefix, s3["endpoint"], s3["region"], create)


def all_keys(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def failure(loc: S3Location, access_key: str | None, secret_key: str | None, **kwargs) -> ArtifactsError:
    with pytest.raises(ArtifactsError) as excinfo:
        check_s3(loc, access_key, secret_key, **kwargs)
    return excinfo.value


def test_existing_bucket_is_ok_and_leaves_no_probe(s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="team-a/keep.txt", Body=b"x")
    assert check_s3(location(s3, bucket, "team-a"), s3["access_key"], s3["secret_key"]) == []
    assert all_keys(s3_client, bucket) == ["team-a/keep.txt"]


def test_nested_prefix_works(s3, s3_client, bucket):
    loc = location(s3, bucket, "/team-a//exp/runs/")
    assert loc.uri == f"s3://{bucket}/team-a/exp/runs"
    assert check_s3(loc, s3["access_key"], s3["secret_key"]) == []
    assert all_keys(s3_client, bucket) == []


def test_missing_bucket_without_create_names_it(s3, s3_client, bucket_name):
    exc = failure(location(s3, bucket_name), s3["access_key"], s3["secret_key"])
    assert exc.reason == "BucketNotFound"
    assert bucket_name in exc.message and "createBucket: true" in exc.message
    with pytest.raises(s3_client.exceptions.ClientError):
        s3_client.head_bucket(Bucket=bucket_name)  # and nothing was created


def test_missing_bucket_with_create_creates_it_once(s3, s3_client, bucket_name):
    loc = location(s3, bucket_name, "team-a", create=True)
    assert check_s3(loc, s3["access_key"], s3["secret_key"]) == [f"created bucket {bucket_name}"]
    s3_client.head_bucket(Bucket=bucket_name)
    assert check_s3(loc, s3["access_key"], s3["secret_key"]) == []
    assert all_keys(s3_client, bucket_name) == []


def test_wrong_secret_key_is_invalid_credentials_without_keys(s3, bucket):
    wrong_secret = "wrong-" + uuid.uuid4().hex
    exc = failure(location(s3, bucket), s3["access_key"], wrong_secret, credentials_ref="ml/s3-creds")
    assert exc.reason == "InvalidCredentials"
    assert "the credentials in Secret ml/s3-creds were rejected" in exc.message
    for secret in (s3["access_key"], s3["secret_key"], wrong_secret):
        assert secret not in str(exc) and secret not in exc.message
    assert exc.__cause__ is None and exc.__suppress_context__  # raised `from None`


def test_wrong_secret_key_on_missing_bucket_is_still_invalid_credentials(s3, bucket_name):
    # MinIO checks the signature before the bucket: bad keys must not read as "not found".
    exc = failure(location(s3, bucket_name, create=True), s3["access_key"], "wrong-secret")
    assert exc.reason == "InvalidCredentials"


def test_unknown_access_key_is_invalid_credentials(s3, bucket):
    unknown = "NOSUCHKEY" + uuid.uuid4().hex[:11].upper()
    exc = failure(location(s3, bucket), unknown, s3["secret_key"])
    assert exc.reason == "InvalidCredentials"
    for secret in (unknown, s3["secret_key"]):
        assert secret not in str(exc) and secret not in exc.message


def test_closed_port_is_endpoint_unreachable_quickly(s3, bucket):
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    loc = S3Location(bucket, "team-a", endpoint, s3["region"])
    started = time.monotonic()
    exc = failure(loc, s3["access_key"], s3["secret_key"], timeout=2)
    assert time.monotonic() - started < 5
    assert exc.reason == "EndpointUnreachable"
    assert endpoint in exc.message
    assert s3["secret_key"] not in exc.message
