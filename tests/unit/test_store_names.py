"""The artifact stores' naming rules (trackop.api.validation): S3 and Cloud Storage buckets,
Azure containers. The locations that call them are tested in test_artifacts*_unit.py."""

from __future__ import annotations

import pytest

from trackop.api.v1alpha1 import SpecError
from trackop.api.validation import validate_azure_container_name, validate_bucket_name, validate_gcs_bucket_name


@pytest.mark.parametrize("name", [
    "abc", "ml-artifacts", "my.bucket.name", "a" * 63, "0bucket9", "team-a.v2",
])
def test_valid_bucket_names(name):
    validate_bucket_name(name)


S3, GCS = (validate_bucket_name, "spec.artifacts.s3.bucket"), (validate_gcs_bucket_name, "spec.artifacts.gcs.bucket")


@pytest.mark.parametrize("store, name, why", [
    (S3, "ab", "3 to 63"),
    (S3, "a" * 64, "3 to 63"),
    (S3, "ML-Artifacts", "lowercase"),
    (S3, "ml_artifacts", "lowercase"),
    (S3, "-bucket", "start and end"),
    (S3, "bucket-", "start and end"),
    (S3, ".bucket", "start and end"),
    (S3, "my..bucket", "adjacent periods"),
    (S3, "192.168.5.4", "IP address"),
    (S3, "xn--bucket", "reserved"),
    (S3, "bucket-s3alias", "reserved"),
    (S3, "has space", "lowercase"),
    (GCS, "ab", "3 to 63"),
    (GCS, "a" * 64, "3 to 63"),
    (GCS, "a." + "b" * 64, "each dot-separated part"),
    (GCS, "a" * 100 + "." + "b" * 130, "up to 222"),
    (GCS, "My-Bucket", "lowercase"),
    (GCS, "10.0.0.1", "IP address"),
    (GCS, "goog-artifacts", "reserved"),
    (GCS, "my-google-bucket", "reserved"),
])
def test_invalid_bucket_names_name_the_field(store, name, why):
    rule, field = store
    with pytest.raises(ValueError) as excinfo:
        rule(name)
    assert str(excinfo.value).startswith(f"{field}: ")
    assert why in str(excinfo.value)


@pytest.mark.parametrize("name", ["abc", "ml_artifacts", "a" * 63, "team.ml-artifacts.example", "0ab"])
def test_gcs_valid_bucket_names(name):
    validate_gcs_bucket_name(name)


@pytest.mark.parametrize("name", ["abc", "ml-artifacts", "a1-b2-c3", "0" * 63])
def test_azure_valid_container_names(name):
    validate_azure_container_name(name)


@pytest.mark.parametrize("name", ["a..b", "xn--abc", "192.168.1.1", "bucket\n"])
def test_the_names_of_the_issue_are_spec_errors(name):
    # SpecError (a ValueError): parse and the webhook refuse them naming the field.
    with pytest.raises(SpecError) as excinfo:
        validate_bucket_name(name)
    assert excinfo.value.field == "spec.artifacts.s3.bucket"


def test_a_dotted_quad_with_leading_zeros_is_no_ip_address():
    # As ipaddress (and the CRD's rule) reads it: 192.168.01.1 is a name, not an address.
    validate_bucket_name("192.168.01.1")
