"""kopf handlers only: events in, reconcile calls out, status and Events back.

Every handler is a thin wrapper: parse the spec, run the Reconciler, write what it
returned into status and Events. The drift timer first compares the backend's
fingerprint (drift.py) and runs the same sequence only when something moved. The
handlers are registered by :func:`registry` with the intervals of the operator's
Settings; what they share is the :class:`Runtime` in kopf's memo.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from .. import metrics
from ..api import conditions as cond
from ..api.parsing import parse
from ..api.v1alpha1 import GROUP, PLURAL, VERSION, BackendSpec, SpecError
from ..kube.errors import ApiException, refusal_message
from ..schema import migration, revisions
from ..settings import Settings
from ..specs.connection_secret import placeholder_data
from ..webhook.injection import BackendView, backend_view
from ..webhook.service import InjectionService
from . import kopf_settings
from .drift import DEFERRED, UNCHANGED, deferral
from .outcome import Outcome, StepFailed, unexpected_failure
from .retry import api_trouble, retry_delay, retrying_api_trouble
from .runtime import Runtime

log = logging.getLogger(__name__)

WEBHOOK_START_RETRY_SECONDS = 10.0


def registry(settings: Settings) -> kopf.OperatorRegistry:
    """The handlers, registered with the intervals ``settings`` gives."""
    found = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)
    # kopf's default registry logs in through the kubernetes client by itself; an own one says so.
    kopf.on.login(registry=found)(kopf.login_via_client)
    kopf.on.startup(registry=found)(configure)
    kopf.on.cleanup(registry=found)(stop_webhooks)
    kopf.on.resume(*resource, registry=found)(reconcile_backend)
    kopf.on.create(*resource, registry=found)(reconcile_backend)
    kopf.on.update(*resource, field="spec", registry=found)(reconcile_backend)
    kopf.timer(*resource, interval=settings.drift_interval, initial_delay=settings.drift_interval,
               idle=settings.drift_interval / 2, registry=found)(check_drift)
    kopf.on.event(*resource, registry=found)(track_backend)
    kopf.on.event("", "v1", "namespaces", registry=found)(track_namespace)
    kopf.on.delete(*resource, registry=found)(delete_backend)
    return found


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    options = runtime.settings
    kopf_settings.apply(settings, verbose=options.verbose, peering_lifetime=options.peering_lifetime)
    if not options.schema_templates:
        # Every backend migrates in-process then: import MLflow once, not in the first reconcile.
        # With templates a child process builds each template and in-place migrations (managed
        # servers, clone fallbacks) import MLflow on first use: most operators never do.
        migration.preload()
    revisions.head_revision()  # the migration scripts' ids, read once now (no MLflow import), not by the first handlers
    if options.metrics_address and not runtime.metrics_served:
        # Once: a startup retried after a later failure must not bind the port again.
        metrics.serve(options.metrics_address)
        runtime.metrics_served = True
        logger.info("metrics served on http://%s/metrics", options.metrics_address)
    if options.webhook.address:
        _start_webhooks(runtime, logger)
    logger.info("trackop ready: MLflow %s bundled, drift interval %.0fs", revisions.BUNDLED_MLFLOW_VERSION,
                options.drift_interval)


def _start_webhooks(runtime: Runtime, logger: logging.Logger) -> None:
    """Serve the admission webhooks. A start that fails has released what it bound (the
    port, the index watch's threads): kopf retries the startup soon and the retry binds
    again, instead of failing with "Address already in use" every minute."""
    options = runtime.settings
    hooks = options.webhook
    if runtime.injection is not None:
        runtime.injection.stop()  # left by an earlier attempt (a start that raised released itself)
        runtime.injection = None
    try:
        service = InjectionService(
            runtime.kube, runtime.index, index_view, address=hooks.address, url=hooks.url,
            failure_policy=hooks.failure_policy, operator_namespace=options.operator_namespace,
            cert_secret=hooks.cert_secret, service=hooks.service, owner_cluster_role=hooks.owner_cluster_role,
            rotation_check_seconds=hooks.rotation_check_seconds, renew_before=hooks.renew_before,
            limits=hooks.limits, policy=options.policy, copy_scope=options.secret_scope)
        service.start()
    except Exception as exc:
        detail = refusal_message(exc) if isinstance(exc, ApiException) else str(exc)
        raise kopf.TemporaryError(
            f"the admission webhooks could not start ({type(exc).__name__}: {detail[:300]}); "
            f"retrying in {WEBHOOK_START_RETRY_SECONDS:.0f}s", delay=WEBHOOK_START_RETRY_SECONDS) from None
    runtime.injection = service
    logger.info("admission webhooks served on %s (failurePolicy %s)", hooks.address, hooks.failure_policy)


def stop_webhooks(memo: kopf.Memo, **_: Any) -> None:
    if memo.runtime.injection is not None:
        memo.runtime.injection.stop()


def _parse(body: Mapping[str, Any]) -> BackendSpec:
    """The parsed spec; SpecError for anything ``parse`` cannot read, a crash of the parse
    itself included: one backend's object never raises anything else into a handler."""
    meta = body["metadata"]
    try:
        return parse(meta["namespace"], meta["name"], body.get("spec") or {})
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError("spec", f"could not be read ({type(exc).__name__}: {str(exc)[:300]})") from None


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


def run(runtime: Runtime, handler: str, body: Mapping[str, Any], status: Mapping[str, Any],
        patch: kopf.Patch) -> Outcome:
    """Parse, reconcile, write status and Events; the outcome for the handler's retry."""
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
        outcome = runtime.reconciler.reconcile(spec, body, status)
    except Exception as exc:
        metrics.observe_reconcile(handler, "error", time.perf_counter() - started)
        retry = api_trouble(exc)
        if retry is not None:
            # Backends converge within seconds of the API server coming back.
            raise retry from None
        raise
    _write(outcome, body, status, patch)
    if outcome.retry_after is not None and not outcome.backoff:
        # A wait for progress, looked at again at its pace (every full reconcile is a role
        # login and a bucket probe): the drift timer keeps to it.
        runtime.reconciler.drift.defer(spec.namespace, spec.name, deferral(outcome.retry_after, handler == "reconcile"),
                                       body["metadata"].get("generation"))
    failure = None if outcome.ready else next(
        (c.reason for c in outcome.conditions if c.type == cond.READY and c.status != "True"), None)
    metrics.observe_reconcile(handler, "ready" if outcome.ready else "not_ready", time.perf_counter() - started,
                              failure)
    return outcome


def reconcile_backend(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, retry: int, memo: kopf.Memo,
                      **_: Any) -> None:
    runtime: Runtime = memo.runtime
    with runtime.lock_for(body):
        outcome = run(runtime, "reconcile", body, status, patch)
    if outcome.retry_after is not None:
        # The condition already says why; kopf retries this handler after the delay.
        raise kopf.TemporaryError(outcome.conditions[-1].message,
                                  delay=retry_delay(outcome.retry_after, retry, outcome.backoff))


def check_drift(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if body["metadata"].get("deletionTimestamp"):
        return
    lock = runtime.lock_for(body)
    if not lock.acquire(blocking=False):
        return  # a change handler is reconciling this backend right now; the next interval checks
    try:
        cpu = time.thread_time()  # this thread's CPU: the check's own cost, for the metrics
        unchanged = _unchanged(runtime, body)
        if not unchanged:
            run(runtime, "drift", body, status, patch)
        metrics.observe_drift_cpu(unchanged, time.thread_time() - cpu)
    finally:
        lock.release()
    spec = runtime.specs.get((body["metadata"]["namespace"], body["metadata"]["name"]))
    if spec is not None:
        with retrying_api_trouble():
            missed = runtime.reconciler.copies.missed_injections(spec)
        for event_type, reason, message in missed:
            kopf.event(body, type=event_type, reason=reason, message=message)


def _unchanged(runtime: Runtime, body: Mapping[str, Any]) -> bool:
    """The fingerprint check (drift.py): True when nothing the backend rests on moved."""
    started = time.perf_counter()
    try:
        spec = _parse(body)
    except SpecError:
        return False
    verdict = runtime.reconciler.drift.check(spec, body)
    if verdict == DEFERRED:
        return True  # waiting for progress: the handler's own retry looks at its pace
    metrics.observe_drift_check(verdict == UNCHANGED, time.perf_counter() - started)
    if verdict == UNCHANGED:
        return True
    level = logging.INFO if verdict.startswith("changed") or "verdict" in verdict else logging.DEBUG
    log.log(level, "%s/%s: full drift check: %s", spec.namespace, spec.name, verdict)
    return False


def index_view(body: Mapping[str, Any]) -> tuple[BackendView, tuple[str, int, str]] | None:
    """What the webhook index keeps of a TrackingBackend; None for an invalid spec."""
    try:
        spec = _parse(body)
    except SpecError:
        return None
    return backend_view(spec, placeholder_data(spec)), (spec.postgres.host, spec.postgres.port, spec.database)


def track_backend(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The parsed specs the drift timer and namespace events act on (the webhook's index
    is fed by its own watch: see webhook.index_watch.IndexWatch)."""
    runtime: Runtime = memo.runtime
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        spec = _parse(body)
    except SpecError:
        spec = None
    if event["type"] == "DELETED" or spec is None:
        runtime.specs.pop(key, None)
        if event["type"] == "DELETED":
            runtime.forget_lock(key)
            # What the drift timer kept for it: its fingerprint and the snapshots only it used.
            runtime.reconciler.drift.forget(*key)
    else:
        runtime.specs[key] = spec


def track_namespace(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    name = body["metadata"]["name"]
    if event["type"] is not None:
        # Added, relabelled, terminating or gone: the next copy placement lists again.
        runtime.reconciler.namespaces.invalidate()
    if event["type"] == "DELETED":
        runtime.namespace_labels.pop(name, None)
        return
    labels = dict(body["metadata"].get("labels") or {})
    before = runtime.namespace_labels.get(name)
    runtime.namespace_labels[name] = labels
    if event["type"] is None or before == labels:
        return  # the initial listing: every backend's own reconcile places its copies
    # A new namespace, or new labels: copies for backends that select namespaces by label.
    for spec in list(runtime.specs.values()):
        if spec.namespace_selector is not None:
            _sync_copies(runtime, spec)


def _sync_copies(runtime: Runtime, spec: BackendSpec) -> None:
    """One backend's copies after a namespace change, under its lock like every reconcile.
    A backend being reconciled right now is skipped: that reconcile, or its drift timer's
    next check (which sees the namespaces change), places the copies. A failure stays
    with this backend and the other backends' copies are still placed."""
    lock = runtime.lock_of((spec.namespace, spec.name))
    if not lock.acquire(blocking=False):
        return
    try:
        data = runtime.kube.read_secret(spec.namespace, spec.connection_secret)
        if data:
            runtime.reconciler.copies.sync(spec, data)
    except Exception as exc:
        log.warning("%s/%s: placing the Secret copies after a namespace change failed (%s); the "
                    "backend's next reconcile places them", spec.namespace, spec.name, type(exc).__name__)
    finally:
        lock.release()


def delete_backend(body: kopf.Body, patch: kopf.Patch, retry: int, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    patch.status["phase"] = "Deleting"
    try:
        spec = _parse(body)
    except SpecError:
        return  # nothing was ever provisioned from an invalid spec
    try:
        with runtime.lock_for(body), retrying_api_trouble():
            events = runtime.reconciler.delete(spec, body)
    except StepFailed as failure:
        kopf.event(body, type="Warning", reason=failure.reason, message=failure.message)
        raise kopf.TemporaryError(failure.message, delay=retry_delay(failure.retry_after, retry)) from None
    except kopf.TemporaryError:
        raise
    except Exception as exc:
        # What no deletion step expects: a Warning naming it and our backoff, not kopf's traceback.
        failure = unexpected_failure("Deletion", exc)
        log.warning("%s/%s: deletion failed: %s", spec.namespace, spec.name, failure.message)
        kopf.event(body, type="Warning", reason=failure.reason, message=failure.message)
        raise kopf.TemporaryError(failure.message, delay=retry_delay(failure.retry_after, retry)) from None
    for event_type, reason, message in events:
        kopf.event(body, type=event_type, reason=reason, message=message)
