"""The baseline of bench/bench_fleet.py: kopf with empty handlers on the same CRD.

The same kopf settings as trackop's startup handler (finalizer, annotation storages, no
per-handler Events, watch timeout), the same handler kinds (sync create/resume, a delete
handler so kopf adds the finalizer, a timer at the drift interval), but the create
handler only writes Ready=True into status and the timer does nothing. Run as

    python -m kopf run --standalone -n 'NAMESPACE-GLOB' bench/fleet_empty_operator.py
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import kopf

from trackop.controller import kopf_settings

GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
INTERVAL = float(os.environ.get("TRACKOP_DRIFT_INTERVAL", "60"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    kopf_settings.apply(settings)  # exactly trackop's


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_backend(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = body["metadata"].get("generation", 0)
    patch.status["observedGeneration"] = generation
    patch.status["phase"] = "Ready"
    patch.status["conditions"] = [{"type": "Ready", "status": "True", "reason": "Ready", "message": "empty handler",
                                   "lastTransitionTime": now, "observedGeneration": generation}]


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, initial_delay=INTERVAL, idle=INTERVAL / 2)
def check_drift(**_: Any) -> None:
    pass


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_backend(**_: Any) -> None:
    pass
