"""One backend's object never breaks the operator for the others: the webhook index leaves
out a backend whose view raises (and keeps every other), a step that raises what none
expects becomes a ReconcileError condition with backoff, a namespace event's copy sync
fails for one backend only, and a webhook startup that fails releases its port, so the
next attempt binds it again."""

from __future__ import annotations

import logging
import socket
import threading
from types import SimpleNamespace

import kopf
import pytest
import urllib3

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import SpecError
from trackop.controller import handlers
from trackop.controller.reconciler import Reconciler
from trackop.controller.runtime import Runtime
from trackop.controller.steps import connection_secret
from trackop.settings import Settings
from trackop.webhook.index import Index
from trackop.webhook.index_watch import IndexWatch
from trackop.webhook.injection import BackendView
from trackop.webhook.service import InjectionService

from unit.test_reconcile_connection_lost import ADMIN_PASSWORD, OWNER, SPEC, FakeKube


def body(namespace: str, name: str, spec: dict | None = None) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": "1"}, "spec": spec or {}}


# ---- the webhook index --------------------------------------------------------------------

class ListingKube:
    def __init__(self, backends: list[dict]) -> None:
        self.backends = backends

    def listing(self, kind: str):
        return (self.backends if kind == "backends" else []), "7"


def view_or_raise(found: dict):
    meta = found["metadata"]
    if meta["name"] == "broken":
        raise ValueError("'a..b' is not a valid S3 bucket name")
    return BackendView(meta["namespace"], meta["name"], "Direct", None, ("MLFLOW_TRACKING_URI",)), None


def test_a_backend_whose_view_raises_is_left_out_and_every_other_is_indexed(caplog):
    index = Index()
    watch = IndexWatch(ListingKube([body("a", "broken"), body("b", "good")]), index, view_or_raise)
    with caplog.at_level(logging.WARNING):
        watch.prime()
        watch.prime()  # a relist: the same cause is not logged again
    assert index.backend("b", "good") is not None
    assert index.backend("a", "broken") is None
    assert "a..b" in watch.broken[("a", "broken")]
    lines = [r.getMessage() for r in caplog.records if "left out of the webhook index" in r.getMessage()]
    assert len(lines) == 1 and "a/broken" in lines[0] and "a..b" in lines[0]


def test_a_watch_event_of_a_broken_backend_drops_only_it_and_a_fix_brings_it_back():
    index = Index()
    watch = IndexWatch(ListingKube([body("a", "broken"), body("b", "good")]), index, view_or_raise)
    watch.prime()
    watch._apply("backends", "MODIFIED", body("b", "good"))
    assert index.backend("b", "good") is not None
    fixed = body("a", "broken")
    watch.view_of = lambda found: (BackendView("a", "broken", "Direct", None, ()), None)
    watch._apply("backends", "MODIFIED", fixed)
    assert index.backend("a", "broken") is not None and ("a", "broken") not in watch.broken
    watch._apply("backends", "DELETED", fixed)
    assert index.backend("a", "broken") is None and not watch.broken


def test_a_broken_backend_deleted_while_the_watch_was_down_is_forgotten_by_the_relist():
    kube = ListingKube([body("a", "broken"), body("b", "good")])
    watch = IndexWatch(kube, Index(), view_or_raise)
    watch.prime()
    kube.backends = [body("b", "good")]
    watch.prime()
    assert watch.broken == {}


# ---- the reconcile ------------------------------------------------------------------------

def test_a_step_that_raises_the_unexpected_becomes_a_condition_with_backoff(monkeypatch):
    def refuses(ctx, kube, bucket_keys):
        ctx.secrets.add(ADMIN_PASSWORD)
        raise ValueError(f"'a..b' is not a valid S3 bucket name (near {ADMIN_PASSWORD})")

    monkeypatch.setattr(connection_secret, "password", refuses)
    outcome = Reconciler(FakeKube()).reconcile(parse("ns", "team", SPEC), OWNER, {})
    conditions = {c.type: c for c in outcome.conditions}
    assert conditions["DatabaseReady"].status == "False" and conditions["DatabaseReady"].reason == "ReconcileError"
    ready = conditions["Ready"]
    assert ready.reason == "ReconcileError" and "'a..b' is not a valid S3 bucket name" in ready.message
    assert "ValueError in test_one_backend_cannot_break_others.py:" in ready.message
    assert ADMIN_PASSWORD not in ready.message, "the message is redacted like every step's"
    assert outcome.retry_after == 30 and outcome.backoff
    assert [e for e in outcome.events if e[:2] == ("Warning", "ReconcileError")], "one Warning for the new cause"
    again = Reconciler(FakeKube()).reconcile(parse("ns", "team", SPEC), OWNER,
                                             {"conditions": [{"type": "Ready", "reason": "ReconcileError"}]})
    assert not [e for e in again.events if e[0] == "Warning"], "no Warning per retry of the same cause"


def test_api_trouble_still_goes_to_the_handler_for_its_quick_retry(monkeypatch):
    def unreachable(ctx, kube, bucket_keys):
        raise urllib3.exceptions.MaxRetryError(None, "/api", "refused")

    monkeypatch.setattr(connection_secret, "password", unreachable)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        Reconciler(FakeKube()).reconcile(parse("ns", "team", SPEC), OWNER, {})


def test_a_parse_that_crashes_is_an_invalid_spec(monkeypatch):
    def crashes(namespace, name, spec):
        raise TypeError("'int' object is not subscriptable")

    monkeypatch.setattr(handlers, "parse", crashes)
    with pytest.raises(SpecError, match="could not be read .TypeError"):
        handlers._parse(body("a", "odd"))
    assert handlers.index_view(body("a", "odd")) is None


# ---- namespace events ---------------------------------------------------------------------

class CopiesThatFailFor:
    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.synced: list[str] = []

    def sync(self, spec, data):
        if spec.name == self.failing:
            raise ValueError("a builder refused this backend")
        self.synced.append(spec.name)


def namespace_runtime(copies: CopiesThatFailFor, names: list[str]) -> Runtime:
    kube = SimpleNamespace(read_secret=lambda namespace, name: {"MLFLOW_TRACKING_URI": "x"})
    reconciler = SimpleNamespace(kube=kube, copies=copies, namespaces=SimpleNamespace(invalidate=lambda: None))
    runtime = Runtime(Settings(), reconciler)
    selecting = {**SPEC, "injection": {"namespaceSelector": {"matchLabels": {"team": "a"}}}}
    runtime.specs = {("ns", name): parse("ns", name, selecting) for name in names}
    runtime.namespace_labels["new"] = {}
    return runtime


def namespace_event(runtime: Runtime) -> None:
    handlers.track_namespace(event={"type": "MODIFIED"}, body={"metadata": {"name": "new", "labels": {"team": "a"}}},
                             memo=SimpleNamespace(runtime=runtime))


def test_a_namespace_event_places_the_other_backends_copies_when_one_fails(caplog):
    copies = CopiesThatFailFor("second")
    runtime = namespace_runtime(copies, ["first", "second", "third"])
    with caplog.at_level(logging.WARNING):
        namespace_event(runtime)
    assert copies.synced == ["first", "third"]
    assert any("ns/second" in r.getMessage() and "ValueError" in r.getMessage() for r in caplog.records)
    assert not runtime.lock_of(("ns", "second")).locked(), "the lock is released after a failure"


def test_a_namespace_event_syncs_under_the_backends_lock_and_skips_one_being_reconciled():
    copies = CopiesThatFailFor("")
    runtime = namespace_runtime(copies, ["busy", "idle"])
    seen_locked = []
    copies.sync = lambda spec, data: seen_locked.append((spec.name, runtime.lock_of(("ns", spec.name)).locked()))
    with runtime.lock_of(("ns", "busy")):  # a reconcile of "busy" runs right now
        namespace_event(runtime)
    assert seen_locked == [("idle", True)]


# ---- the webhook startup ------------------------------------------------------------------

class CertificatesUnwritable:
    """Lists fine, but the certificate Secret can neither be read nor written: the startup
    fails after the webhook server has bound its port."""

    def listing(self, kind):
        return [], "1"

    def watch(self, kind, version):
        threading.Event().wait(0.05)
        return iter(())

    def ensure_namespace(self, name):
        pass

    def read_secret_encoded(self, namespace, name):
        raise RuntimeError("the certificate Secret is unreadable")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_failed_start_releases_the_port():
    port = free_port()
    service = InjectionService(CertificatesUnwritable(), Index(), lambda found: None, address=f"127.0.0.1:{port}",
                               url="", failure_policy="Ignore", operator_namespace="trackop-system")
    with pytest.raises(RuntimeError, match="unreadable"):
        service.start()
    assert service._stop.is_set(), "the index watch's threads are told to end"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises EADDRINUSE if the failed start kept it


def test_the_startup_is_retried_soon_and_the_retry_binds_again():
    port = free_port()
    settings = Settings().replace(webhook_address=f"127.0.0.1:{port}")
    runtime = SimpleNamespace(settings=settings, kube=CertificatesUnwritable(), index=Index(), injection=None)
    for _attempt in range(2):  # the second attempt fails for the same cause, not "Address already in use"
        with pytest.raises(kopf.TemporaryError) as failure:
            handlers._start_webhooks(runtime, logging.getLogger("test"))
        assert "unreadable" in str(failure.value) and "Address already in use" not in str(failure.value)
        assert failure.value.delay == handlers.WEBHOOK_START_RETRY_SECONDS
        assert runtime.injection is None
