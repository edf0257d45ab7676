"""Status conditions as the Kubernetes API conventions describe them (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

READY = "Ready"
DATABASE_READY = "DatabaseReady"
SCHEMA_READY = "SchemaReady"
ARTIFACTS_READY = "ArtifactsReady"
TUNING_APPLIED = "TuningApplied"
PENDING_RESTART = "PendingRestart"
CONNECTION_BUDGET = "ConnectionBudget"
SERVER_READY = "ServerReady"
POSTGRES_READY = "PostgresReady"  # spec.postgres.managed: the server trackop deploys


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(previous: Sequence[Mapping[str, Any]] | None, current: Iterable[Condition], generation: int,
          timestamp: str | None = None) -> list[dict[str, Any]]:
    """New condition list; ``lastTransitionTime`` moves only when a condition's status changes."""
    old = {c["type"]: c for c in previous or []}
    stamp = timestamp or now()
    merged = []
    for cond in current:
        before = old.get(cond.type)
        changed = before is None or before.get("status") != cond.status
        merged.append({
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": stamp if changed else before.get("lastTransitionTime", stamp),
            "observedGeneration": generation,
        })
    return merged


def phase(ready: bool, previous_phase: str | None) -> str:
    if ready:
        return "Ready"
    # Once a backend has been Ready, a failure is a degradation, not a first provisioning.
    return "Degraded" if previous_phase in ("Ready", "Degraded") else "Provisioning"


def reason_of(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> str | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond.get("reason")
    return None
