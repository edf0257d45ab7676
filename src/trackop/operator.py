"""kopf handlers only: events in, reconcile calls out, status and Events back.

Every handler is a thin wrapper: parse the spec (api), run the Reconciler (reconcile),
write what it returned into status and Events. The drift timer runs the same sequence,
which is check-first and so costs one short round of catalog reads on a converged backend.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf
import urllib3
from kubernetes import client, config

from . import drift, kopf_settings, manifests, metrics, webhook
from .api import conditions as cond
from .api.parsing import parse
from .api.v1alpha1 import GROUP, PLURAL, VERSION, BackendSpec, SpecError
from .injection_service import InjectionService
from .kube import Kube
from .reconcile import MANAGED_ADDRESS_SERVICE, Outcome, Reconciler, StepFailed, injection_view
from .schema import migration, revisions

DRIFT_INTERVAL = float(os.environ.get("TRACKOP_DRIFT_INTERVAL", "60"))
# Between two full reconciles of a converged backend, the drift timer only compares its
# fingerprint with a shared snapshot (drift.py); 0 makes every drift check a full reconcile.
FULL_CHECK_INTERVAL = float(os.environ.get("TRACKOP_FULL_CHECK_INTERVAL") or 10 * DRIFT_INTERVAL)
MAX_RETRY_DELAY = 60.0
OPERATOR_NAMESPACE = os.environ.get("TRACKOP_NAMESPACE", "trackop-system")
# Set by `trackop run --webhook-address/--webhook-url/--webhook-failure-policy`.
WEBHOOK_ADDRESS = os.environ.get("TRACKOP_WEBHOOK_ADDRESS", "")
WEBHOOK_URL = os.environ.get("TRACKOP_WEBHOOK_URL", "")
WEBHOOK_FAILURE_POLICY = os.environ.get("TRACKOP_WEBHOOK_FAILURE_POLICY", "Ignore")
WEBHOOK_CERT_SECRET = os.environ.get("TRACKOP_WEBHOOK_CERT_SECRET", "")
WEBHOOK_SERVICE = os.environ.get("TRACKOP_WEBHOOK_SERVICE", "")
WEBHOOK_OWNER_CLUSTERROLE = os.environ.get("TRACKOP_WEBHOOK_OWNER_CLUSTERROLE", "")
METRICS_ADDRESS = os.environ.get("TRACKOP_METRICS_ADDRESS", "")
PEERING_LIFETIME = float(os.environ.get("TRACKOP_PEERING_LIFETIME") or 0)
MANAGED_POSTGRES_ADDRESS = os.environ.get("TRACKOP_MANAGED_POSTGRES_ADDRESS") or MANAGED_ADDRESS_SERVICE

_reconciler: Reconciler | None = None
_injection: InjectionService | None = None
INDEX = webhook.Index()
_specs: dict[tuple[str, str], BackendSpec] = {}
_namespace_labels: dict[str, dict[str, str]] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        # The drift checks of all backends share one LIST of namespaces and one of opted-in
        # pods per interval.
        _reconciler = Reconciler(Kube(_api_client()), OPERATOR_NAMESPACE, MANAGED_POSTGRES_ADDRESS,
                                 shared_list_ttl=DRIFT_INTERVAL, full_check_interval=FULL_CHECK_INTERVAL)
    return _reconciler


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    kopf_settings.apply(settings, verbose=bool(os.environ.get("TRACKOP_VERBOSE")), peering_lifetime=PEERING_LIFETIME)
    from .reconcile import SCHEMA_TEMPLATES  # TRACKOP_SCHEMA_TEMPLATES

    if not SCHEMA_TEMPLATES:
        # Every backend migrates in-process then: import MLflow once, not in the first reconcile.
        # With templates a child process builds each template and in-place migrations (managed
        # servers, clone fallbacks) import MLflow on first use: most operators never do.
        migration.preload()
    # The migration scripts' ids, read once now (no MLflow import), not by the first handlers.
    revisions.head_revision()
    if METRICS_ADDRESS:
        metrics.serve(METRICS_ADDRESS)
        logger.info("metrics served on http://%s/metrics", METRICS_ADDRESS)
    reconciler()
    if WEBHOOK_ADDRESS:
        global _injection
        _injection = InjectionService(reconciler().kube, INDEX, _index_view, address=WEBHOOK_ADDRESS,
                                      url=WEBHOOK_URL, failure_policy=WEBHOOK_FAILURE_POLICY,
                                      operator_namespace=OPERATOR_NAMESPACE, cert_secret=WEBHOOK_CERT_SECRET,
                                      service=WEBHOOK_SERVICE, owner_cluster_role=WEBHOOK_OWNER_CLUSTERROLE)
        _injection.start()
        logger.info("admission webhooks served on %s (failurePolicy %s)", WEBHOOK_ADDRESS, WEBHOOK_FAILURE_POLICY)
    logger.info("trackop ready: MLflow %s bundled, drift interval %.0fs", revisions.BUNDLED_MLFLOW_VERSION,
                DRIFT_INTERVAL)


def _lock_for(body: Mapping[str, Any]) -> threading.Lock:
    """One reconcile per backend at a time: kopf runs the drift timer next to the change
    handlers of the same object, and two reconciles would race to create the same Secret
    or migrate the same database (each is safe, but noisy and slower)."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _parse(body: Mapping[str, Any]) -> BackendSpec:
    meta = body["metadata"]
    return parse(meta["namespace"], meta["name"], body.get("spec") or {})


API_RETRY_DELAY = 5.0
FORBIDDEN_RETRY_DELAY = 15.0


def api_trouble(exc: BaseException) -> kopf.TemporaryError | None:
    """A retry soon, rather than after kopf's 60 s default for unexpected exceptions, when the
    API server did not answer (refused, reset, timed out), answered that it cannot serve yet
    (5xx), or refused (403: a missing permission, or an API server that restarted and has not
    loaded RBAC yet). No status can be written meanwhile; None for anything else."""
    if isinstance(exc, urllib3.exceptions.HTTPError) or (
            isinstance(exc, client.ApiException) and (exc.status or 0) >= 500):
        return kopf.TemporaryError(f"the Kubernetes API is unreachable ({type(exc).__name__}): retrying",
                                   delay=API_RETRY_DELAY)
    if isinstance(exc, client.ApiException) and exc.status == 403:
        try:
            detail = json.loads(exc.body or "{}").get("message", "")
        except ValueError:
            detail = ""
        return kopf.TemporaryError(
            f"the Kubernetes API refused a request (403 Forbidden: {detail[:300] or exc.reason}): the "
            "ServiceAccount lacks a permission the chart's ClusterRole grants, or the API server has "
            "just restarted and not loaded RBAC yet; retrying", delay=FORBIDDEN_RETRY_DELAY)
    return None


@contextmanager
def _retrying_api_trouble() -> Iterator[None]:
    """Turn API trouble (see :func:`api_trouble`) into kopf's retry soon; re-raise the rest."""
    try:
        yield
    except Exception as exc:
        retry_soon = api_trouble(exc)
        if retry_soon is not None:
            raise retry_soon from None
        raise


def _write(outcome: Outcome, body: Mapping[str, Any], status: Mapping[str, Any], patch: kopf.Patch) -> None:
    generation = body["metadata"].get("generation", 0)
    merged = cond.merge(status.get("conditions"), outcome.conditions, generation)
    new_status = {
        **outcome.status,
        "observedGeneration": generation,
        "phase": cond.phase(outcome.ready, status.get("phase")),
        "conditions": merged,
    }
    # Patch only what changed, so a converged drift check writes nothing at all.
    for key, value in new_status.items():
        if status.get(key) != value:
            patch.status[key] = value
    for event_type, reason, message in outcome.events:
        kopf.event(body, type=event_type, reason=reason, message=message)


def _run(handler: str, body: Mapping[str, Any], status: Mapping[str, Any], patch: kopf.Patch) -> Outcome:
    started = time.perf_counter()
    try:
        spec = _parse(body)
    except SpecError as error:
        outcome = Outcome(
            [cond.Condition(cond.READY, "False", "InvalidSpec", str(error))],
            events=[] if cond.reason_of(status.get("conditions"), cond.READY) == "InvalidSpec"
            else [("Warning", "InvalidSpec", str(error))],
        )
        _write(outcome, body, status, patch)
        metrics.observe_reconcile(handler, "invalid_spec", time.perf_counter() - started, "InvalidSpec")
        return outcome
    try:
        outcome = reconciler().reconcile(spec, body, status)
    except Exception as exc:
        metrics.observe_reconcile(handler, "error", time.perf_counter() - started)
        retry = api_trouble(exc)
        if retry is not None:
            # Backends converge within seconds of the API server coming back.
            raise retry from None
        raise
    _write(outcome, body, status, patch)
    failure = None if outcome.ready else next(
        (c.reason for c in outcome.conditions if c.type == cond.READY and c.status != "True"), None)
    metrics.observe_reconcile(handler, "ready" if outcome.ready else "not_ready", time.perf_counter() - started,
                              failure)
    return outcome


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_backend(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, retry: int, **_: Any) -> None:
    with _lock_for(body):
        outcome = _run("reconcile", body, status, patch)
    if outcome.retry_after is not None:
        factor = 2 ** min(retry, 4) if outcome.backoff else 1
        delay = min(outcome.retry_after * factor, MAX_RETRY_DELAY)
        # The condition already says why; kopf retries this handler after the delay.
        raise kopf.TemporaryError(outcome.conditions[-1].message, delay=delay)


@kopf.timer(GROUP, VERSION, PLURAL, interval=DRIFT_INTERVAL, initial_delay=DRIFT_INTERVAL,
            idle=DRIFT_INTERVAL / 2)
def check_drift(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    if body["metadata"].get("deletionTimestamp"):
        return
    lock = _lock_for(body)
    if not lock.acquire(blocking=False):
        return  # a change handler is reconciling this backend right now; the next interval checks
    try:
        cpu = time.thread_time()  # this thread's CPU: the check's own cost, for the metrics
        unchanged = _unchanged(body)
        if not unchanged:
            _run("drift", body, status, patch)
        metrics.observe_drift_cpu(unchanged, time.thread_time() - cpu)
    finally:
        lock.release()
    spec = _specs.get((body["metadata"]["namespace"], body["metadata"]["name"]))
    if spec is not None:
        with _retrying_api_trouble():
            missed = reconciler().missed_injections(spec)
        for event_type, reason, message in missed:
            kopf.event(body, type=event_type, reason=reason, message=message)


def _unchanged(body: Mapping[str, Any]) -> bool:
    """The fingerprint check (drift.py): True when nothing the backend rests on moved."""
    started = time.perf_counter()
    try:
        spec = _parse(body)
    except SpecError:
        return False
    verdict = reconciler().drift.check(spec, body)
    metrics.observe_drift_check(verdict == drift.UNCHANGED, time.perf_counter() - started)
    if verdict == drift.UNCHANGED:
        return True
    level = logging.INFO if verdict.startswith("changed") or "verdict" in verdict else logging.DEBUG
    logging.getLogger(__name__).log(level, "%s/%s: full drift check: %s", spec.namespace, spec.name, verdict)
    return False


@kopf.on.cleanup()
def stop_webhooks(**_: Any) -> None:
    if _injection is not None:
        _injection.stop()


def _index_view(body: Mapping[str, Any]) -> tuple[webhook.BackendView, tuple[str, int, str]] | None:
    """What the webhook index keeps of a TrackingBackend; None for an invalid spec."""
    try:
        spec = _parse(body)
    except SpecError:
        return None
    return injection_view(spec, manifests.secret_keys(spec)), (spec.postgres.host, spec.postgres.port, spec.database)


@kopf.on.event(GROUP, VERSION, PLURAL)
def track_backend(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """The parsed specs the drift timer and namespace events act on (the webhook's index
    is fed by its own watch: see injection_service.IndexWatch)."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        spec = _parse(body)
    except SpecError:
        spec = None
    if event["type"] == "DELETED" or spec is None:
        _specs.pop(key, None)
        if event["type"] == "DELETED":
            with _locks_guard:
                _locks.pop(key, None)
    else:
        _specs[key] = spec


@kopf.on.event("", "v1", "namespaces")
def track_namespace(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    name = body["metadata"]["name"]
    if event["type"] is not None:
        # Added, relabelled, terminating or gone: the next copy placement lists again.
        reconciler().namespaces.invalidate()
    if event["type"] == "DELETED":
        _namespace_labels.pop(name, None)
        return
    labels = dict(body["metadata"].get("labels") or {})
    before = _namespace_labels.get(name)
    _namespace_labels[name] = labels
    if event["type"] is None or before == labels:
        return  # the initial listing: every backend's own reconcile places its copies
    # A new namespace, or new labels: copies for backends that select namespaces by label.
    for spec in list(_specs.values()):
        if spec.namespace_selector is None:
            continue
        data = reconciler().kube.read_secret(spec.namespace, spec.connection_secret)
        if data:
            reconciler().sync_copies(spec, data)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_backend(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
    patch.status["phase"] = "Deleting"
    try:
        spec = _parse(body)
    except SpecError:
        return  # nothing was ever provisioned from an invalid spec
    try:
        with _lock_for(body), _retrying_api_trouble():
            events = reconciler().delete(spec, body)
    except StepFailed as failure:
        kopf.event(body, type="Warning", reason=failure.reason, message=failure.message)
        raise kopf.TemporaryError(failure.message, delay=min(failure.retry_after * 2 ** min(retry, 4),
                                                             MAX_RETRY_DELAY)) from None
    for event_type, reason, message in events:
        kopf.event(body, type=event_type, reason=reason, message=message)
