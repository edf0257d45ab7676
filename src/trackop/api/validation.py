"""One validator per rule for the values of a spec (pure); ``parse`` calls every one.

The CRD's schema is the first line of validation; these check again, so an object that
reached the operator some other way (an older CRD, the webhook down under Ignore, a direct
etcd write) still cannot smuggle an unsafe identifier into SQL, nor a value that a builder,
an artifact location, a store client or the API server would refuse later: a spec that
parses builds every object (tests/unit/test_parsed_specs_build.py). Each raises
``SpecError`` naming the field. Compute resources and quantities are in ``resources``.

The artifact stores' naming rules (S3 buckets, Cloud Storage buckets, Azure containers
and storage accounts) are here too; the artifact locations call them as well.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .names import MAX_IDENTIFIER
from .v1alpha1 import MAX_BACKEND_NAME, SpecError

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")

_RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})

_RESERVED_ROLES = frozenset({"postgres", "public", "current_user", "session_user", "current_role", "none"})

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")

_BACKEND_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def check_backend_name(name: str) -> str:
    if not _BACKEND_NAME.fullmatch(name) or len(name) > MAX_BACKEND_NAME:
        raise SpecError("metadata.name", f"must be a DNS-1035 label of at most {MAX_BACKEND_NAME} characters "
                                         "(it names the backend's Service, Secret and Jobs)")
    return name


def check_host(host: object) -> str:
    """A DNS name or an IP address, never a host:port pair."""
    if isinstance(host, str) and len(host) <= 253:
        if _HOST_NAME.fullmatch(host):
            return host
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
    raise SpecError("spec.postgres.external.host", "must be a host name or an IP address (put the port in port)")


def check_identifier(field: str, value: str, reserved: frozenset[str]) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise SpecError(field, "must match ^[a-z_][a-z0-9_]*$ (lowercase letters, digits, underscore)")
    if len(value.encode()) > MAX_IDENTIFIER:
        raise SpecError(field, f"must be at most {MAX_IDENTIFIER} characters")
    if value in reserved:
        raise SpecError(field, f"{value!r} is reserved")
    return value


# ---- Kubernetes names and keys ---------------------------------------------------------------
# The patterns are the CRD's too (tests/unit/test_crd_file.py checks they are the same text):
# written in the part of the syntax that Python and RE2 (the API server's) read alike, and
# always used with fullmatch, so that '$' never admits a trailing newline.

# A DNS-1123 subdomain: Secret, ServiceAccount and StorageClass names.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A key of a Secret (Kubernetes' IsConfigMapKey).
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


def check_object_name(field: str, value: object) -> str:
    """A Kubernetes object name (DNS-1123 subdomain): what a Pod's secretKeyRef,
    serviceAccountName or a claim's storageClassName must be, or the API server refuses it."""
    if not isinstance(value, str) or len(value) > 253 or not re.fullmatch(OBJECT_NAME_PATTERN, value):
        raise SpecError(field, "must be a Kubernetes object name: at most 253 lowercase letters, digits, '-' and "
                               "'.', starting and ending with a letter or digit")
    return value


def check_secret_key(field: str, value: object) -> str:
    if (not isinstance(value, str) or len(value) > 253 or not re.fullmatch(SECRET_KEY_PATTERN, value)
            or value == "." or value.startswith("..")):
        raise SpecError(field, "must be a Secret key: at most 253 letters, digits, '-', '_' and '.', and not '.' "
                               "or starting with '..'")
    return value


# ---- container images ------------------------------------------------------------------------
# The reference grammar of the container registries (distribution/reference): an optional
# registry host, lowercase path components, an optional tag and an optional digest.
_IMAGE_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_IMAGE_HOST_LABEL = r"([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
IMAGE_PATTERN = (rf"^(({_IMAGE_HOST_LABEL}(\.{_IMAGE_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(:[0-9]+)?/)?"
                 rf"{_IMAGE_COMPONENT}(/{_IMAGE_COMPONENT})*"
                 r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?"
                 r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
MAX_IMAGE = 512


def check_image(field: str, value: object) -> str:
    """A container image reference by the registries' grammar: a kubelet refuses anything else
    (InvalidImageName), and the API server an empty one in a Deployment or Job."""
    if not isinstance(value, str) or len(value) > MAX_IMAGE or not re.fullmatch(IMAGE_PATTERN, value):
        raise SpecError(field, "must be a container image reference such as registry.example.com/team/mlflow:3.17.2 "
                               "(lowercase repository path; optional registry, :tag and @sha256:digest)")
    return value


# ---- artifact stores ---------------------------------------------------------------------------

S3_BUCKET_FIELD = "spec.artifacts.s3.bucket"
GCS_BUCKET_FIELD = "spec.artifacts.gcs.bucket"
AZURE_CONTAINER_FIELD = "spec.artifacts.azure.container"
AZURE_ACCOUNT_FIELD = "spec.artifacts.azure.storageAccount"

# S3 bucket naming rules (general purpose buckets).
_S3_BUCKET_CHARS = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"
S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Exactly what ipaddress.IPv4Address takes (no leading zeros), in a form CEL can say too.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}$"
# Cloud Storage bucket naming rules: a dotted name's parts are 1 to 63 characters, an undotted name 3 to 63.
_GCS_BUCKET_CHARS = r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$"
GCS_BUCKET_PARTS_PATTERN = r"^[^.]{1,63}(\.[^.]{1,63})*$"
# Azure Blob container and storage account naming rules.
AZURE_CONTAINER_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
AZURE_ACCOUNT_PATTERN = r"^[a-z0-9]{3,24}$"


def _store_name_error(field: str, name: object, what: str, why: str) -> SpecError:
    return SpecError(field, f"{name!r} is not a valid {what}: {why}")


def validate_bucket_name(name: object) -> None:
    """Raise ``SpecError`` naming ``spec.artifacts.s3.bucket`` unless ``name`` follows S3's rules."""

    def bad(why: str) -> SpecError:
        return _store_name_error(S3_BUCKET_FIELD, name, "S3 bucket name", why)

    if not isinstance(name, str) or not 3 <= len(name) <= 63:
        raise bad("it must be 3 to 63 characters long")
    if not re.fullmatch(_S3_BUCKET_CHARS, name):
        raise bad("use only lowercase letters, digits, '.' and '-', and start and end with a letter or digit")
    if ".." in name:
        raise bad("it must not contain two adjacent periods")
    if re.fullmatch(IPV4_PATTERN, name):
        raise bad("it must not be formatted as an IP address")
    if name.startswith(S3_RESERVED_PREFIXES):
        raise bad(f"names starting with {', '.join(S3_RESERVED_PREFIXES)} are reserved")
    if name.endswith(S3_RESERVED_SUFFIXES):
        raise bad(f"names ending with {', '.join(S3_RESERVED_SUFFIXES)} are reserved")


def validate_gcs_bucket_name(name: object) -> None:
    """Raise ``SpecError`` naming ``spec.artifacts.gcs.bucket`` unless ``name`` follows GCS's rules."""

    def bad(why: str) -> SpecError:
        return _store_name_error(GCS_BUCKET_FIELD, name, "Cloud Storage bucket name", why)

    if not isinstance(name, str) or not re.fullmatch(_GCS_BUCKET_CHARS, name):
        raise bad("use only lowercase letters, digits, '-', '_' and '.', and start and end with a letter or digit")
    if not (3 <= len(name) <= 222 and re.fullmatch(GCS_BUCKET_PARTS_PATTERN, name)):
        raise bad("it must be 3 to 63 characters long; a dotted name up to 222, each dot-separated part 1 to 63")
    if re.fullmatch(IPV4_PATTERN, name):
        raise bad("it must not be formatted as an IP address")
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        raise bad("names starting with 'goog' or containing 'google' are reserved")


def validate_azure_container_name(name: object) -> None:
    """Raise ``SpecError`` naming ``spec.artifacts.azure.container`` unless ``name`` follows Azure's rules."""
    what = "Azure container name"
    if not isinstance(name, str) or not 3 <= len(name) <= 63:
        raise _store_name_error(AZURE_CONTAINER_FIELD, name, what, "it must be 3 to 63 characters long")
    if not re.fullmatch(AZURE_CONTAINER_PATTERN, name):
        raise _store_name_error(AZURE_CONTAINER_FIELD, name, what, "use only lowercase letters, digits and single "
                                "'-' between them, starting and ending with a letter or digit")


def validate_azure_account_name(name: object) -> None:
    """Raise ``SpecError`` naming ``spec.artifacts.azure.storageAccount`` unless ``name`` is a storage account name."""
    if not isinstance(name, str) or not re.fullmatch(AZURE_ACCOUNT_PATTERN, name):
        raise _store_name_error(AZURE_ACCOUNT_FIELD, name, "storage account name",
                                "use 3 to 24 lowercase letters and digits")


# An http(s) URL of a host (DNS labels, an IPv4 address or a bracketed IPv6 address), an
# optional port (1 to 65535) and an optional path: no user:password@, query or fragment.
# Every store client takes that (botocore refuses host names whose labels are empty,
# start or end with '-' or exceed 63 characters).
_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
ENDPOINT_PATTERN = (rf"^https?://({_HOST_LABEL}(\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(:{_PORT})?"
                    r"(/[-A-Za-z0-9._~!$&()*+,;=:@%/]*)?$")
MAX_ENDPOINT = 2048


def check_endpoint(field: str, value: object) -> str:
    bad = SpecError(field, "must be an http(s) URL of a host name or IP address with an optional port and path, "
                           "such as http://minio.minio.svc:9000 (no user:password@, query or fragment)")
    if not isinstance(value, str) or len(value) > MAX_ENDPOINT or not re.fullmatch(ENDPOINT_PATTERN, value):
        raise bad
    try:
        parts = urlsplit(value)  # cannot fail on what the pattern took, but for a bracketed host's address
        if "[" in parts.netloc:
            ipaddress.IPv6Address(parts.hostname)
    except ValueError:
        raise bad from None
    if len(parts.hostname) > 253:
        raise bad
    return value


# Characters safe in S3 keys, GCS object names and Azure blob names alike.
PREFIX_PATTERN = r"^[A-Za-z0-9!_.*'()/-]*$"
# '.' and '..' segments: normalised away by some clients, so they could name another backend's prefix.
DOT_SEGMENT_PATTERN = r"(^|/)\.\.?(/|$)"
MAX_PREFIX = 512


def check_prefix(field: str, value: object) -> str:
    """The prefix, normalised (``/a//b/`` -> ``a/b``)."""
    if not isinstance(value, str) or len(value) > MAX_PREFIX or not re.fullmatch(PREFIX_PATTERN, value):
        raise SpecError(field, "must be at most 512 letters, digits and !_.*'()/- characters")
    if re.search(DOT_SEGMENT_PATTERN, value):
        raise SpecError(field, "must not have '.' or '..' segments: they could name another backend's prefix")
    return "/".join(part for part in value.split("/") if part)


# botocore's own rule for region names (a host label, not all digits), in lowercase.
REGION_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def check_region(field: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(REGION_PATTERN, value) or value.isdigit():
        raise SpecError(field, "must be a region name such as eu-west-1 (lowercase letters, digits and '-', not "
                               "digits alone)")
    return value


# A project id (6 to 30 lowercase letters, digits and '-', starting with a letter), or a
# legacy domain-scoped one (example.com:my-project).
GCS_PROJECT_PATTERN = r"^([a-z0-9][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$"


def check_gcs_project(field: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > 64 or not re.fullmatch(GCS_PROJECT_PATTERN, value):
        raise SpecError(field, "must be a Google Cloud project id: 6 to 30 lowercase letters, digits and '-', "
                               "starting with a letter (or domain:project-id)")
    return value


# ---- the tracking server and injection -------------------------------------------------------

# One entry of MLFLOW_SERVER_ALLOWED_HOSTS, a comma-separated list.
ALLOWED_HOST_PATTERN = r"^[^\t\n\v\f\r ,]+$"
MAX_ALLOWED_HOSTS = 32


def check_allowed_hosts(field: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ALLOWED_HOSTS:
        raise SpecError(field, f"must be a list of at most {MAX_ALLOWED_HOSTS} host names or patterns")
    for host in value:
        if not isinstance(host, str) or len(host) > 253 or not re.fullmatch(ALLOWED_HOST_PATTERN, host):
            raise SpecError(field, f"{host!r} must be a host name or fnmatch pattern of at most 253 characters, "
                                   "without blanks or commas")
    return tuple(value)


_SET_OPERATORS = ("In", "NotIn")
_EXISTENCE_OPERATORS = ("Exists", "DoesNotExist")


def check_label_selector(field: str, value: object) -> Mapping[str, Any]:
    """A Kubernetes LabelSelector, well formed, so that matching it never raises."""
    if not isinstance(value, Mapping):
        raise SpecError(field, "must be an object")
    unknown = sorted(set(value) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise SpecError(field, f"unknown field(s) {', '.join(map(str, unknown))}: use matchLabels and matchExpressions")
    labels = value.get("matchLabels")
    if labels is not None and not (isinstance(labels, Mapping)
                                   and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise SpecError(f"{field}.matchLabels", "must map label keys to string values")
    expressions = value.get("matchExpressions")
    if expressions is None:
        return value
    if not isinstance(expressions, list):
        raise SpecError(f"{field}.matchExpressions", "must be a list")
    for requirement in expressions:
        where = f"{field}.matchExpressions"
        if not isinstance(requirement, Mapping) or not isinstance(requirement.get("key"), str) \
                or not requirement["key"]:
            raise SpecError(where, "every requirement needs a key")
        operator, values = requirement.get("operator"), requirement.get("values")
        if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise SpecError(where, f"{requirement['key']}: values must be a list of strings")
        if operator in _SET_OPERATORS and not values:
            raise SpecError(where, f"{requirement['key']} {operator} needs at least one value")
        if operator in _EXISTENCE_OPERATORS and values:
            raise SpecError(where, f"{requirement['key']} {operator} takes no values")
        if operator not in (*_SET_OPERATORS, *_EXISTENCE_OPERATORS):
            raise SpecError(where, f"{requirement['key']}: unknown operator {operator!r} (In, NotIn, Exists, "
                                   "DoesNotExist)")
    return value
