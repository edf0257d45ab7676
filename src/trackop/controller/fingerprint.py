"""The drift fingerprint of a converged backend, and what moved since (pure).

See ``drift`` for why: these functions decide; the ``DriftChecker`` fetches and keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import conditions as cond
from ..api import connections
from ..api.v1alpha1 import COPY_LABEL, BackendSpec
from ..postgres import snapshot

Versions = Mapping[tuple[str, str], str]  # (namespace, name) -> resourceVersion


def eligible(spec: BackendSpec) -> bool:
    """Backends on an external server. A managed server's readiness is its pods', which
    change without any object of ours changing: those backends get the full check."""
    return spec.managed is None


def referenced_secrets(spec: BackendSpec) -> tuple[str, ...]:
    """The Secrets in the backend's namespace that a full reconcile reads."""
    names = [spec.postgres.admin_secret, spec.connection_secret]
    if spec.password_secret is not None:
        names.append(spec.password_secret.name)
    if spec.artifacts is not None and spec.artifacts.credentials_secret:
        names.append(spec.artifacts.credentials_secret)
    return tuple(dict.fromkeys(names))


def owned_objects(spec: BackendSpec) -> tuple[tuple[str, str], ...]:
    """(kind, name) of the objects trackop applies for the backend in its namespace."""
    if spec.tracking_server is None:
        return ()
    return (("services", spec.tracking_server_name), ("deployments", spec.tracking_server_name))


def fingerprint_of(spec: BackendSpec, admin_user: str, server: snapshot.ServerSnapshot, secret_versions: Versions,
                copies: Versions, objects: Mapping[tuple[str, str, str], str | None],
                namespaces_changes: int) -> dict[str, Any]:
    """What the full reconcile rests on, component by component (a name says what moved).

    ``copies`` holds this backend's Secret copies only; ``objects`` is keyed by (kind,
    namespace, name). Absent things are None, so a deletion is a difference too."""
    ns = spec.namespace
    return {
        "role": server.roles.get(spec.role),
        "admin role": server.roles.get(admin_user),
        "database": server.databases.get(spec.database),
        "server settings": server.settings,
        "secrets": tuple((name, secret_versions.get((ns, name))) for name in referenced_secrets(spec)),
        "secret copies": tuple(sorted(copies.items())),
        "tracking server objects": tuple((kind, name, objects.get((kind, ns, name)))
                                         for kind, name in owned_objects(spec)),
        "namespaces": namespaces_changes,
    }


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    return [key for key in before.keys() | now.keys() if before.get(key) != now.get(key)]


def budget_verdict(spec: BackendSpec, server: snapshot.ServerSnapshot) -> tuple[str, str, str] | None:
    """The ConnectionBudget condition the full reconcile would write now (None: the role
    or database is gone, which the fingerprint reports anyway)."""
    database_limit = server.database_limit(spec.database)
    role_limit = server.role_limit(spec.role)
    if database_limit is None or role_limit is None:
        return None
    tracking = spec.tracking_server
    budget = connections.connection_budget(
        spec.effective_tuning, tracking.replicas if tracking else 0, tracking.workers if tracking else 0,
        database_limit=database_limit, role_limit=role_limit, server_max_connections=server.max_connections,
        reserved_slots=server.reserved_slots, used_by_others=server.used_by_others(spec.database))
    found = connections.budget_condition(budget)
    return found.status, found.reason, found.message


def written_verdict(status: Mapping[str, Any]) -> tuple[str, str, str] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == cond.CONNECTION_BUDGET:
            return condition.get("status"), condition.get("reason"), condition.get("message")
    return None


def copies_by_backend(metadata: list[Mapping[str, Any]]) -> dict[str, dict[tuple[str, str], str]]:
    """The copies' versions by the backend they copy (the value of their COPY_LABEL)."""
    found: dict[str, dict[tuple[str, str], str]] = {}
    for m in metadata:
        label = (m.get("labels") or {}).get(COPY_LABEL)
        if label is not None:
            found.setdefault(label, {})[(m["namespace"], m["name"])] = m["resourceVersion"]
    return found


def versions_of(metadata: list[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    return {(m["namespace"], m["name"]): m["resourceVersion"] for m in metadata}
