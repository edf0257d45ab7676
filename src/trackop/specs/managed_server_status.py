"""Verdicts on a managed PostgreSQL server (``spec.postgres.managed``), pure: whether its
StatefulSet or CloudNativePG Cluster is ready or stuck (a :class:`~.progress.Progress`, which
becomes the PostgresReady condition), and whether a new ``max_connections`` would leave the
backend short of connections (:func:`budget_shortfall`), checked before the server restarts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api import conditions as cond
from ..api import connections
from ..api.v1alpha1 import SUPERUSER_RESERVED_CONNECTIONS, BackendSpec
from .managed_server import parameters_from_args
from .progress import Progress, stalled


@dataclass(frozen=True)
class BudgetShortfall:
    max_connections: int
    usable: int
    required: int
    breakdown: Mapping[str, int]

    @property
    def message(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.breakdown.items())
        return (f"max_connections {self.max_connections} leaves {self.usable} connections after the "
                f"{SUPERUSER_RESERVED_CONNECTIONS} reserved for superusers, but this backend needs {self.required} "
                f"({parts}): the server keeps running with its current settings; raise "
                "spec.postgres.tuning.maxConnections or lower server replicas, workers, pool or expectedClients")


def budget_shortfall(spec: BackendSpec, wanted: Mapping[str, str]) -> BudgetShortfall | None:
    """Checked before the server is restarted with a new max_connections (lowering it is
    what can go wrong): a server that comes back with fewer slots than the tracking stack
    needs would refuse its clients with 'too many connections'."""
    if "max_connections" not in wanted:
        return None
    server = spec.tracking_server
    breakdown = connections.required_connections(spec.effective_tuning, server.replicas if server else 0,
                                            server.workers if server else 0)
    required = sum(breakdown.values())
    max_connections = int(wanted["max_connections"])
    usable = max_connections - SUPERUSER_RESERVED_CONNECTIONS
    if usable >= required:
        return None
    return BudgetShortfall(max_connections, usable, required, breakdown)


def statefulset_progress(spec: BackendSpec, body: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = (),
                         false_since: str | None = None, now: dt.datetime | None = None) -> Progress:
    """Ready once the controller has seen the latest template, the pod runs it and is ready;
    else Restarting or Starting, or stuck (specs.progress.stalled) with what ``pods`` (its
    one pod, when not ready) say. ``false_since``: when PostgresReady went False."""
    name = spec.managed.name
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    ready = status.get("readyReplicas") or 0
    current, update = status.get("currentRevision"), status.get("updateRevision")
    observed = (status.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    if observed and update and current == update and (status.get("updatedReplicas") or 0) >= 1 and ready >= 1:
        return Progress(cond.POSTGRES_READY, True, "Running",
                        f"PostgreSQL {spec.managed.version} ({name}-0) is ready at "
                        f"{spec.postgres.host}:{spec.postgres.port}")
    if current and update and current != update:
        containers = body["spec"]["template"]["spec"]["containers"]
        settings = {k: v for k, v in parameters_from_args(containers[0].get("args")).items()
                    if k not in ("port", "unix_socket_directories")}
        shown = ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "its new template"
        waiting = Progress(cond.POSTGRES_READY, False, "Restarting",
                           f"StatefulSet {name} is restarting PostgreSQL with {shown}")
    else:
        waiting = Progress(cond.POSTGRES_READY, False, "Starting",
                           f"StatefulSet {name}: {ready}/1 ready; waiting for PostgreSQL to start "
                           f"(kubectl describe pod {name}-0 -n {spec.namespace} if this lasts)")
    return _stalled(spec, waiting, body, pods, false_since, now)


def cluster_progress(spec: BackendSpec, body: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = (),
                     false_since: str | None = None, now: dt.datetime | None = None) -> Progress:
    """CloudNativePG reports a Ready condition; before it, its phase says what it is doing,
    and its instances' pods whether one is stuck."""
    name = spec.managed.name
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") == "True":
        return Progress(cond.POSTGRES_READY, True, "Running",
                        f"CloudNativePG Cluster {name}: {status.get('readyInstances', 0)}/"
                        f"{spec.managed.instances} instances ready, primary at "
                        f"{spec.postgres.host}:{spec.postgres.port}")
    phase = status.get("phase") or "not yet reconciled by CloudNativePG"
    waiting = Progress(cond.POSTGRES_READY, False, "Starting",
                       f"CloudNativePG Cluster {name}: {phase} ({status.get('readyInstances', 0)}/"
                       f"{spec.managed.instances} ready; is the CloudNativePG operator running?)")
    return _stalled(spec, waiting, body, pods, false_since, now)


def _stalled(spec: BackendSpec, waiting: Progress, body: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
             false_since: str | None, now: dt.datetime | None) -> Progress:
    if now is None:
        return waiting
    created = (body.get("metadata") or {}).get("creationTimestamp")
    return stalled(waiting, pods, [created, false_since], now,
                   "fix spec.postgres.managed (image, version, resources) as it says")
