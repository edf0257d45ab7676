"""How trackop configures kopf: one place, so the fleet benchmark's empty-handler
baseline (bench/fleet_empty_operator.py) runs with exactly the operator's settings."""

from __future__ import annotations

import logging

import kopf

# kopf runs every sync handler in one thread pool. Its default size, min(32, CPUs + 4), is 6
# on a 2-CPU node (and os.cpu_count() sees the node's CPUs, not the pod's limit). Some
# handlers wait, bounded but long: for another session's template build (the template lock,
# up to 60 s, steps/template.py), for a child migration (its lock wait plus 120 s,
# schema/child.py), for the in-process migration lock (up to 60 s). Six backends created at
# once on a new server would hold all six threads while one builds the template, and every
# other backend's drift check, change and namespace event would wait behind them. The
# waits are sleeps and pipe reads, so a waiting thread costs no CPU and little memory; the
# pool is sized for them, independent of the CPU count. Not larger: the pool also bounds
# the operator's concurrent PostgreSQL sessions (one admin session per running reconcile),
# and 32 stays well inside a default max_connections of 100. Making the waits non-blocking
# instead would turn one wait into a full reconcile every few seconds per waiting backend
# (an admin login, catalog reads) and lose the "cloned at once" guarantee of concurrent
# first backends (tests/integration/test_schema_template.py).
EXECUTOR_WORKERS = 32


def apply(settings: kopf.OperatorSettings, *, verbose: bool = False, peering_lifetime: float = 0) -> None:
    # Our own Events only (one per step and per new failure); kopf's per-handler chatter
    # would add an Event on every resume and drift check.
    settings.posting.level = logging.CRITICAL + 10
    # Likewise in the log: no "Timer 'check_drift' succeeded" per backend per interval;
    # failures (WARNING and up) still show. `trackop run --verbose` shows everything.
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.persistence.finalizer = "trackop.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="trackop.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="trackop.dev", key="last-handled-configuration")
    settings.watching.server_timeout = 300
    settings.execution.max_workers = EXECUTOR_WORKERS
    if peering_lifetime:
        settings.peering.lifetime = int(peering_lifetime)
