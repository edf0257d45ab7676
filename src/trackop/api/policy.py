"""What the platform admin allows tenants' TrackingBackends to use (pure).

Creating a TrackingBackend makes trackop deploy images and sign requests on the tenant's
behalf: a tracking server (and a migration Job) with the image and ServiceAccount the spec
names, and bucket checks against the endpoint it names. :class:`Policy` is the admin's
answer (the operator's Settings, the chart's ``policy`` and ``artifacts`` values); the
functions here say, for one spec, what it would break, naming the spec field. The
operator enforces it (no object applied, no request sent) and the validating webhook
refuses it at admission.

Patterns are shell-style (``fnmatch``: ``*``, ``?``, ``[...]``), matched whole and
case-sensitively for images and ServiceAccounts, case-insensitively for host names.
An empty list allows anything (the default: a single-tenant cluster needs no policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from .v1alpha1 import BackendSpec


@dataclass(frozen=True)
class Policy:
    # Off: without a credentials Secret the operator never signs a request with its own
    # cloud identity (boto3's chain, Application Default Credentials, DefaultAzureCredential).
    operator_cloud_identity: bool = False
    artifact_endpoints: tuple[str, ...] = ()   # host patterns spec.artifacts.*.endpoint may name
    images: tuple[str, ...] = ()               # image patterns of the tracking server and migration Job
    service_accounts: tuple[str, ...] = ()     # ServiceAccount name patterns of the tracking server


def matches_any(value: str, patterns: Iterable[str], *, fold_case: bool = False) -> bool:
    if fold_case:
        value, patterns = value.lower(), [p.lower() for p in patterns]
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def endpoint_host(url: str) -> str:
    """The host name of an endpoint URL (``''`` when it has none: not a URL)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def endpoint_allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """Whether an endpoint the tenant named may be sent requests; no patterns: any."""
    if not patterns:
        return True
    host = endpoint_host(url)
    return bool(host) and matches_any(host, patterns, fold_case=True)


def endpoint_refusal(field: str, url: str, patterns: tuple[str, ...]) -> str | None:
    """Why the endpoint in ``field`` may not be used, or None when it may."""
    if endpoint_allowed(url, patterns):
        return None
    host = endpoint_host(url) or "no host"
    return (f"{field} names host {host!r}, which is not among the artifact endpoints the platform admin "
            f"allows ({', '.join(patterns)}): use an allowed endpoint, or ask the admin to add it "
            "(trackop run --allowed-artifact-endpoint; chart value artifacts.allowedEndpoints)")


def image_refusal(field: str, image: str, policy: Policy) -> str | None:
    if not policy.images or matches_any(image, policy.images):
        return None
    return (f"{field} {image!r} is not among the images the platform admin allows ({', '.join(policy.images)}): "
            "use an allowed image, or ask the admin to add it (trackop run --allowed-image; chart value "
            "policy.allowedImages)")


def service_account_refusal(field: str, name: str | None, policy: Policy) -> str | None:
    """No ServiceAccount named is always allowed: the pod then gets none of its own (no token)."""
    if name is None or not policy.service_accounts or matches_any(name, policy.service_accounts):
        return None
    return (f"{field} {name!r} is not among the ServiceAccounts the platform admin allows "
            f"({', '.join(policy.service_accounts)}): use an allowed one, or ask the admin to add it "
            "(trackop run --allowed-service-account; chart value policy.allowedServiceAccounts)")


def server_refusal(spec: BackendSpec, policy: Policy) -> str | None:
    """Why the tracking server of ``spec`` may not be deployed, or None (also without one)."""
    server = spec.tracking_server
    if server is None:
        return None
    return (image_refusal("spec.server.image", server.image, policy)
            or service_account_refusal("spec.server.serviceAccountName", server.service_account, policy))


def migration_refusal(spec: BackendSpec, policy: Policy) -> str | None:
    """Why the migration Job of ``spec`` may not run, or None (also for Inline migration)."""
    if spec.migration != "Job":
        return None
    return image_refusal("spec.schema.image", spec.migration_image, policy)


def artifacts_refusal(spec: BackendSpec, policy: Policy) -> str | None:
    """Why the operator may not send requests to ``spec.artifacts``'s endpoint, or None.
    A store without an endpoint is its cloud's own public endpoint, always allowed."""
    store = spec.artifacts
    if store is None or not store.endpoint:
        return None
    return endpoint_refusal(f"{store.field}.endpoint", store.endpoint, policy.artifact_endpoints)


def refusals(spec: BackendSpec, policy: Policy) -> list[str]:
    """Everything in ``spec`` the policy refuses (for the validating webhook)."""
    found = (server_refusal(spec, policy), migration_refusal(spec, policy), artifacts_refusal(spec, policy))
    return [message for message in found if message]
