"""The operator's /metrics endpoint, scraped from the running operator."""

from __future__ import annotations

import urllib.request

import pytest

from helpers import eventually
from kit import Admin, Backends, OperatorProcess

pytestmark = pytest.mark.bed


def _sum(samples: dict[str, float], prefix: str, *labels: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and all(label in k for label in labels))


def test_metrics_count_reconciles_failures_and_admissions(backends: Backends, admin: Admin, core_v1,
                                                          operator: OperatorProcess):
    before = operator.metrics()
    backends.admin_secret(admin)
    backends.apply("measured", backends.spec())
    backends.wait_ready("measured")
    backends.apply("unmeasurable", backends.spec(admin_secret="no-such-secret"))
    eventually(lambda: backends.get("unmeasurable").get("status", {}).get("phase"), "the failing backend's status")
    pod = {"metadata": {"name": "scraped", "labels": {"trackop.dev/inject": "true"},
                        "annotations": {"trackop.dev/backend": "measured"}},
           "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "python:3.11-slim",
                                                             "command": ["true"]}]}}
    core_v1.create_namespaced_pod(backends.namespace, pod)

    def grew(prefix: str, *labels: str) -> bool:
        return _sum(operator.metrics(), prefix, *labels) > _sum(before, prefix, *labels)

    eventually(lambda: grew("trackop_reconciles_total", 'handler="reconcile"', 'result="ready"'),
               "a counted successful reconcile")
    eventually(lambda: grew("trackop_reconcile_failures_total", 'reason="'), "a counted failure with its reason")
    assert grew("trackop_reconcile_duration_seconds_count", 'handler="reconcile"')
    # The drift timer of the Ready backend: fingerprint comparisons, and full ones among them.
    eventually(lambda: grew("trackop_drift_checks_total", 'result="unchanged"'), "a drift check that found nothing",
               timeout=30)
    assert grew("trackop_drift_check_duration_seconds_count")
    assert grew("trackop_drift_check_cpu_seconds_total", 'result="unchanged"')
    assert grew("trackop_webhook_admissions_total", 'webhook="mutate"', 'outcome="injected"')
    assert grew("trackop_webhook_admissions_total", 'webhook="validate"', 'outcome="allowed"')
    assert grew("trackop_webhook_admission_duration_seconds_count", 'webhook="mutate"')
    samples = operator.metrics()
    assert samples["trackop_backends"] >= 2
    assert "process_resident_memory_bytes" in samples

    # Labels are bounded sets: no object names, so a fleet does not grow the series count.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    for name in ("measured", "unmeasurable", "scraped", backends.namespace, admin.password):
        assert name not in text
