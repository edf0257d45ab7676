"""What the operator exports on /metrics (Prometheus text format).

One module owns the metric objects so their names and labels are defined once; the
handlers and the webhook server only call ``observe_*``. Label values are bounded sets
(handler names, condition reasons, outcomes), never object names: a fleet of backends must
not grow the series count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "trackop_reconciles_total", "Reconciles of TrackingBackends by handler and result "
    "(ready, not_ready, invalid_spec, error).", ["handler", "result"])
RECONCILE_SECONDS = Histogram(
    "trackop_reconcile_duration_seconds", "Time of one reconcile (or drift check) of a TrackingBackend.",
    ["handler"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
FAILURES = Counter(
    "trackop_reconcile_failures_total", "Reconciles that ended with Ready False, by the condition reason.",
    ["reason"])
DRIFT_CHECKS = Counter(
    "trackop_drift_checks_total", "Drift checks by result: unchanged (the fingerprint matched a shared "
    "snapshot, nothing else ran) or full (a full reconcile followed, counted in trackop_reconciles_total "
    "with handler drift).", ["result"])
DRIFT_CHECK_SECONDS = Histogram(
    "trackop_drift_check_duration_seconds", "Time of one fingerprint comparison, the full reconcile excluded.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
DRIFT_CHECK_CPU = Counter(
    "trackop_drift_check_cpu_seconds_total", "CPU time of the drift checks by result, the full reconcile "
    "included (the handler thread's own: kopf's timer and the watches are not in it).", ["result"])
ADMISSIONS = Counter(
    "trackop_webhook_admissions_total", "Admission requests answered, by webhook (mutate, validate) and outcome.",
    ["webhook", "outcome"])
ADMISSION_SECONDS = Histogram(
    "trackop_webhook_admission_duration_seconds", "Time to answer one admission request, TLS excluded.",
    ["webhook"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
CERT_ROTATIONS = Counter(
    "trackop_webhook_certificate_rotations_total", "Webhook serving certificates renewed or reloaded.")
BACKENDS = Gauge("trackop_backends", "TrackingBackends the webhook index knows.")


def serve(address: str) -> None:
    """Serve /metrics on HOST:PORT in a daemon thread."""
    host, _, port = address.rpartition(":")
    prometheus_client.start_http_server(int(port), addr=host or "0.0.0.0")


def observe_reconcile(handler: str, result: str, seconds: float, failure_reason: str | None = None) -> None:
    RECONCILES.labels(handler, result).inc()
    RECONCILE_SECONDS.labels(handler).observe(seconds)
    if failure_reason:
        FAILURES.labels(failure_reason).inc()


def observe_drift_check(unchanged: bool, seconds: float) -> None:
    DRIFT_CHECKS.labels("unchanged" if unchanged else "full").inc()
    DRIFT_CHECK_SECONDS.observe(seconds)


def observe_drift_cpu(unchanged: bool, seconds: float) -> None:
    DRIFT_CHECK_CPU.labels("unchanged" if unchanged else "full").inc(seconds)


@contextmanager
def admission_timer(webhook: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        ADMISSION_SECONDS.labels(webhook).observe(time.perf_counter() - started)
