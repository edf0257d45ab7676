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


@pytest.mark.parametrize("name, why", [
    ("ab", "3 to 63"),
    ("a" * 64, "3 to 63"),
    ("ML-Artifacts", "lowercase"),
    ("ml_artifacts", "lowercase"),
    ("-bucket", "start and end"),
    ("bucket-", "start and end"),
    (".bucket", "start and end"),
    ("my..bucket", "adjacent periods"),
    ("192.168.5.4", "IP address"),
    ("xn--bucket", "reserved"),
    ("bucket-s3alias", "reserved"),
    ("has space", "lowercase"),
])
def test_invalid_bucket_names_name_the_field(name, why):
    with pytest.raises(ValueError) as excinfo:
        validate_bucket_name(name)
    assert "spec.artifacts.s3.bucket" in str(excinfo.value)
    assert why in str(excinfo.value)


@pytest.mark.parametrize("name", ["abc", "ml_artifacts", "a" * 63, "team.ml-artifacts.example", "0ab"])
def test_gcs_valid_bucket_names(name):
    validate_gcs_bucket_name(name)


@pytest.mark.parametrize("name", ["abc", "ml-artifacts", "a1-b2-c3", "0" * 63])
def test_azure_valid_container_names(name):
    validate_azure_container_name(name)


@pytest.mark.parametrize("name, why", [
    ("ab", "3 to 63"),
    ("a" * 64, "3 to 63"),
    ("a." + "b" * 64, "each dot-separated part"),
    ("a" * 100 + "." + "b" * 130, "up to 222"),
    ("My-Bucket", "lowercase"),
    ("10.0.0.1", "IP address"),
    ("goog-artifacts", "reserved"),
    ("my-google-bucket", "reserved"),
])
def test_gcs_invalid_bucket_names_name_the_field(name, why):
    with pytest.raises(ValueError) as excinfo:
        validate_gcs_bucket_name(name)
    assert str(excinfo.value).startswith("spec.artifacts.gcs.bucket: ")
    assert why in str(excinfo.value)


@pytest.mark.parametrize("name", ["a..b", "xn--abc", "192.168.1.1", "bucket\n"])
def test_the_names_of_the_issue_are_spec_errors(name):
    # SpecError (a ValueError): parse and the webhook refuse them naming the field.
    with pytest.raises(SpecError) as excinfo:
        validate_bucket_name(name)
    assert excinfo.value.field == "spec.artifacts.s3.bucket"


def test_a_dotted_quad_with_leading_zeros_is_no_ip_address():
    # As ipaddress (and the CRD's rule) reads it: 192.168.01.1 is a name, not an address.
    validate_bucket_name("192.168.01.1")
