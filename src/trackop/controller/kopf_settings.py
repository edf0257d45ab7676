"""How trackop configures kopf: one place, so the fleet benchmark's empty-handler
baseline (bench/fleet_empty_operator.py) runs with exactly the operator's settings."""

from __future__ import annotations

import logging

import kopf


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
    if peering_lifetime:
        settings.peering.lifetime = int(peering_lifetime)
