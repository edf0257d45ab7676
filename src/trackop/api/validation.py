"""One validator per rule for values that reach SQL, DNS names or labels (pure).

The CRD's schema is the first line of validation; these check again, so an object that
reached the operator some other way (an older CRD, a direct etcd write) still cannot
smuggle an unsafe identifier into SQL. Each raises ``SpecError`` naming the field.
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
