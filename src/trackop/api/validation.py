"""One validator per rule for values that reach SQL, DNS names or labels (pure).

The CRD's schema is the first line of validation; these check again, so an object that
reached the operator some other way (an older CRD, a direct etcd write) still cannot
smuggle an unsafe identifier into SQL. Each raises ``SpecError`` naming the field.

The artifact stores' naming rules (S3 buckets, Cloud Storage buckets, Azure containers
and storage accounts) are here too; they raise ``ValueError`` naming the field, as the
artifact locations that call them always have.
"""

from __future__ import annotations

import ipaddress
import re

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


# ---- artifact store names ------------------------------------------------------------------

S3_BUCKET_FIELD = "spec.artifacts.s3.bucket"
GCS_BUCKET_FIELD = "spec.artifacts.gcs.bucket"
AZURE_CONTAINER_FIELD = "spec.artifacts.azure.container"
AZURE_ACCOUNT_FIELD = "spec.artifacts.azure.account"

# S3 bucket naming rules (general purpose buckets).
_S3_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Cloud Storage bucket naming rules (the length rules are in the validator).
_GCS_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
# Azure Blob container and storage account naming rules.
_AZURE_CONTAINER_CHARS = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_AZURE_ACCOUNT_CHARS = re.compile(r"^[a-z0-9]{3,24}$")


def _is_ipv4_address(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def validate_bucket_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.s3.bucket`` unless ``name`` follows S3's rules."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{S3_BUCKET_FIELD} {name!r} is not a valid S3 bucket name: {why}")

    if not 3 <= len(name) <= 63:
        raise bad("it must be 3 to 63 characters long")
    if not _S3_BUCKET_CHARS.match(name):
        raise bad(
            "use only lowercase letters, digits, '.' and '-', "
            "and start and end with a letter or digit"
        )
    if ".." in name:
        raise bad("it must not contain two adjacent periods")
    if _is_ipv4_address(name):
        raise bad("it must not be formatted as an IP address")
    if name.startswith(_S3_RESERVED_PREFIXES):
        raise bad(f"names starting with {', '.join(_S3_RESERVED_PREFIXES)} are reserved")
    if name.endswith(_S3_RESERVED_SUFFIXES):
        raise bad(f"names ending with {', '.join(_S3_RESERVED_SUFFIXES)} are reserved")


def validate_gcs_bucket_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.gcs.bucket`` unless ``name`` follows GCS's rules."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{GCS_BUCKET_FIELD} {name!r} is not a valid Cloud Storage bucket name: {why}")

    if not _GCS_BUCKET_CHARS.match(name):
        raise bad("use only lowercase letters, digits, '-', '_' and '.', "
                  "and start and end with a letter or digit")
    if "." in name:
        if len(name) > 222 or any(not 1 <= len(part) <= 63 for part in name.split(".")):
            raise bad("a dotted name may be up to 222 characters, each dot-separated part 1 to 63")
    elif not 3 <= len(name) <= 63:
        raise bad("it must be 3 to 63 characters long")
    if _is_ipv4_address(name):
        raise bad("it must not be formatted as an IP address")
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        raise bad("names starting with 'goog' or containing 'google' are reserved")


def validate_azure_container_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.azure.container`` unless ``name`` follows Azure's rules."""
    if not 3 <= len(name) <= 63:
        raise ValueError(f"{AZURE_CONTAINER_FIELD} {name!r} is not a valid Azure container name: "
                         "it must be 3 to 63 characters long")
    if not _AZURE_CONTAINER_CHARS.match(name):
        raise ValueError(f"{AZURE_CONTAINER_FIELD} {name!r} is not a valid Azure container name: use "
                         "only lowercase letters, digits and single '-' between them, starting with a "
                         "letter or digit")


def validate_azure_account_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.azure.account`` unless ``name`` is a storage account name."""
    if not _AZURE_ACCOUNT_CHARS.match(name):
        raise ValueError(f"{AZURE_ACCOUNT_FIELD} {name!r} is not a valid storage account name: "
                         "use 3 to 24 lowercase letters and digits")

