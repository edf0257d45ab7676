"""What every artifact store shares: the check's error, prefixes, and the common failures.

Every store's check raises ``ArtifactsError`` with the same condition reasons; the three
failures every store can meet (unreachable, credentials rejected, bucket or container
missing) are worded once here (:class:`StoreFailures`) and filled in by each store.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

#: What the write probe's object names start with (deleted right after the write).
PROBE_PREFIX = ".trackop-probe-"


class ArtifactsError(Exception):
    """A failed artifact store check: ``reason`` for the condition, ``message`` says the fix.

    Never holds a key, a secret or the server's raw error text.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class NotChecked(ArtifactsError):
    """The check was not made, on purpose: ``ArtifactsReady`` is Unknown with ``reason``."""


def normalise_prefix(prefix: str) -> str:
    """``/a//b/`` -> ``a/b``: no leading, trailing or doubled slashes; ``''`` stays ``''``.

    Why: MLflow joins the artifact root and run paths with ``/``, and S3 keys are
    literal, so ``a//b`` and ``a/b`` would be two different, equally valid-looking trees.
    """
    return "/".join(part for part in prefix.split("/") if part)


def probe_name(prefix: str) -> str:
    """A fresh name for the write probe, under ``prefix`` (already normalised)."""
    name = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    return f"{prefix}/{name}" if prefix else name


def shown_endpoint(endpoint: str) -> str:
    """``endpoint`` for messages, without any ``user:password@`` part."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def secret_named(credentials_ref: str | None) -> str:
    """The credentials Secret as messages name it: ``Secret ns/name`` when known."""
    return f"Secret {credentials_ref}" if credentials_ref else "the credentials Secret"


@dataclass(frozen=True)
class StoreFailures:
    """The three failures every store shares, worded once; each store fills in its fields.

    ``endpoint_fields`` are the spec fields to check when the store does not answer;
    ``credentials_fix`` says how to fix rejected credentials (``credentials_subject``
    ``credentials_verb`` rejected); ``create_field`` lets trackop create what is missing.
    """

    endpoint_fields: str
    credentials_fix: str
    create_field: str
    credentials_subject: str = "the credentials"
    credentials_verb: str = "were"

    def unreachable(self, shown: str) -> ArtifactsError:
        return ArtifactsError(
            "EndpointUnreachable",
            f"could not reach {shown} (connection refused, DNS, TLS or timeout): check {self.endpoint_fields}, "
            "the store's Service and any NetworkPolicy",
        )

    def credentials_rejected(self, credentials_ref: str | None, detail: str) -> ArtifactsError:
        return ArtifactsError(
            "InvalidCredentials",
            f"{self.credentials_subject} in {secret_named(credentials_ref)} {self.credentials_verb} rejected "
            f"({detail}): {self.credentials_fix}",
        )

    def missing(self, what: str, where: str = "") -> ArtifactsError:
        return ArtifactsError(
            "BucketNotFound",
            f"{what} does not exist{where}: create it, or set {self.create_field}: true to let trackop create it",
        )
