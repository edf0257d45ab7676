"""A PostgreSQL session lost after it connected (the server restarted mid-reconcile) becomes a
ServerUnreachable condition retried on trackop's own backoff, not an unexpected exception
that kopf logs with a traceback and retries only after 60 s."""

from __future__ import annotations

import psycopg
import pytest

from trackop.api.parsing import parse
from trackop.controller.outcome import StepFailed
from trackop.controller.reconciler import Reconciler
from trackop.postgres import sessions

SPEC = {"postgres": {"external": {"host": "db.example", "port": 5432, "adminSecretRef": {"name": "pg-admin"}}}}
OWNER = {"metadata": {"uid": "u-1", "name": "team", "namespace": "ns"}, "apiVersion": "trackop.dev/v1alpha1",
         "kind": "TrackingBackend"}
ADMIN_PASSWORD = "admin-Pa55word-never-shown"


class FakeKube:
    def __init__(self) -> None:
        self.secrets = {("ns", "pg-admin"): {"username": "admin", "password": ADMIN_PASSWORD}}

    def read_secret(self, namespace, name):
        return self.secrets.get((namespace, name))

    def read_secret_and_owners(self, namespace, name):
        data = self.secrets.get((namespace, name))
        return (data, {"u-1"}) if data is not None else None

    def create_secret(self, body):
        self.secrets[(body["metadata"]["namespace"], body["metadata"]["name"])] = dict(body["stringData"])

    def secrets_by_label(self, selector):
        return {}

    def namespace_labels(self):
        return {}


class BrokenSession:
    """Connected, then the server went away: every statement fails as psycopg reports it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass

    def execute(self, *args, **kwargs):
        raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly\n"
                                       "\tThis probably means the server terminated abnormally")


@pytest.fixture
def broken(monkeypatch):
    monkeypatch.setattr(sessions, "connect", lambda *args, **kwargs: BrokenSession())


def test_a_lost_session_is_a_server_unreachable_condition(broken):
    outcome = Reconciler(FakeKube()).reconcile(parse("ns", "team", SPEC), OWNER, {})
    assert not outcome.ready and outcome.retry_after == 15
    failed = {c.type: c for c in outcome.conditions}
    assert failed["DatabaseReady"].status == "False" and failed["DatabaseReady"].reason == "ServerUnreachable"
    assert failed["Ready"].reason == "ServerUnreachable"
    assert "db.example:5432" in failed["Ready"].message and "server closed the connection" in failed["Ready"].message
    assert ("Warning", "ServerUnreachable", failed["Ready"].message) in outcome.events
    assert all(ADMIN_PASSWORD not in c.message for c in outcome.conditions)


def test_a_lost_session_while_deleting_is_retried(broken):
    spec = parse("ns", "team", {**SPEC, "deletionPolicy": "Delete"})
    with pytest.raises(StepFailed) as failure:
        Reconciler(FakeKube()).delete(spec, OWNER)
    assert failure.value.reason == "ServerUnreachable" and failure.value.retry_after == 15
