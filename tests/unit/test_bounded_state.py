"""What the operator keeps in memory stays bounded by what exists: admin sessions of rotated
or unused credentials are closed, reported pods that are gone are forgotten, the drift
checker's snapshots go with the last fingerprint that needs them; and kopf's executor is
sized for the handlers' bounded waits."""

from __future__ import annotations

import time
from types import SimpleNamespace

import kopf
import pytest

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL, PostgresEndpoint
from trackop.controller import kopf_settings
from trackop.controller.copies import SecretCopies
from trackop.controller.drift import Baseline, DriftChecker, needed_snapshots, server_key
from trackop.postgres import errors, sessions

SERVER = PostgresEndpoint("db", 5432, "disable", "pg-admin", 5)
OTHER_SERVER = PostgresEndpoint("db2", 5432, "disable", "pg-admin", 5)


# ---- admin sessions -----------------------------------------------------------------------

class FakeConnection:
    closed = False

    def __init__(self) -> None:
        self.info = SimpleNamespace(transaction_status=sessions.psycopg.pq.TransactionStatus.IDLE)

    def execute(self, *args):
        return None

    def close(self) -> None:
        self.closed = True


def key(server: PostgresEndpoint, user: str, password: str) -> tuple:
    return sessions.AdminSessions._key(server, user, password)


def test_stale_sessions_are_the_old_ones_and_with_a_rotation_the_other_passwords_of_the_same_admin():
    now, current = 100.0, key(SERVER, "admin", "new")
    young, old = (99.0, "young"), (10.0, "old")
    assert sessions.stale_sessions(current, [young, old], current, now, 60, rotated=True) == [old]
    assert sessions.stale_sessions(key(SERVER, "admin", "old-pw"), [young], current, now, 60, rotated=True) == [young]
    assert sessions.stale_sessions(key(SERVER, "admin", "old-pw"), [young], current, now, 60, rotated=False) == []
    assert sessions.stale_sessions(key(SERVER, "other", "pw"), [young], current, now, 60, rotated=True) == []
    assert sessions.stale_sessions(key(OTHER_SERVER, "admin", "pw"), [young], current, now, 60, rotated=True) == []


@pytest.fixture
def connections(monkeypatch) -> list[FakeConnection]:
    made: list[FakeConnection] = []

    def connect(server, user, password, dbname="postgres"):
        if password == "wrong":
            raise errors.PasswordRejected("rejected")
        made.append(FakeConnection())
        return made[-1]

    monkeypatch.setattr(sessions, "connect", connect)
    return made


def test_a_login_with_a_rotated_password_closes_the_sessions_of_the_old_one(connections):
    pool = sessions.AdminSessions()
    with pool.session(SERVER, "admin", "old"):
        pass
    with pool.session(OTHER_SERVER, "admin", "old"):
        pass
    old, other_server = connections
    with pytest.raises(errors.PasswordRejected):
        with pool.session(SERVER, "admin", "wrong"):
            pass
    assert not old.closed, "a failed login proves nothing: the kept session stays"
    with pool.session(SERVER, "admin", "new") as new:
        assert old.closed, "the session of the rotated password is closed at the first login with the new one"
    assert not new.closed and not other_server.closed
    assert list(pool._idle) == [key(OTHER_SERVER, "admin", "old"), key(SERVER, "admin", "new")]


def test_sessions_past_their_age_are_closed_under_any_key(connections):
    pool = sessions.AdminSessions(max_age=0.05)
    with pool.session(SERVER, "gone-admin", "pw"):
        pass
    time.sleep(0.06)
    with pool.session(OTHER_SERVER, "admin", "pw"):
        pass
    assert connections[0].closed and list(pool._idle) == [key(OTHER_SERVER, "admin", "pw")]


# ---- reported pods ------------------------------------------------------------------------

SPEC = parse("team", "tb", {"postgres": {"external": {"host": "db", "adminSecretRef": {"name": "pg-admin"}}}})


def pod(uid: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(uid=uid, name=f"pod-{uid}", namespace="team",
                                                    labels={INJECT_LABEL: "true"},
                                                    annotations={BACKEND_ANNOTATION: "tb"}))


def test_reported_pods_that_are_gone_are_forgotten():
    listed = [pod("a"), pod("b")]
    copies = SecretCopies(None, None, SimpleNamespace(get=lambda: listed), None)
    assert len(copies.missed_injections(SPEC)) == 2
    assert copies.missed_injections(SPEC) == [], "each pod once"
    listed[:] = [pod("b")]
    assert copies.missed_injections(SPEC) == [] and copies._reported_pods == {"b"}
    listed[:] = []
    copies.missed_injections(SPEC)
    assert copies._reported_pods == set()


# ---- the drift checker's snapshots --------------------------------------------------------

def baseline(namespace: str, name: str, server: PostgresEndpoint, password: str = "pw") -> Baseline:
    spec = parse(namespace, name, {"postgres": {"external": {"host": server.host,
                                                             "adminSecretRef": {"name": "pg-admin"}}},
                                   "server": {}})
    return Baseline(spec, 1, server, ("admin", password), {}, 0.0)


def test_the_snapshots_needed_are_those_of_the_remaining_fingerprints():
    kept = baseline("a", "tb", SERVER)
    needed = needed_snapshots([kept])
    assert server_key(SERVER, ("admin", "pw")) in needed and ("secrets", "a") in needed and ("copies",) in needed
    assert ("deployments",) in needed and ("services",) in needed
    assert server_key(SERVER, ("admin", "rotated")) not in needed and ("secrets", "b") not in needed
    assert needed_snapshots([]) == set()


def test_forgetting_a_backend_drops_the_snapshots_only_it_needed():
    drift = DriftChecker(None, None, ttl=30, full_interval=300)
    first, second = baseline("a", "tb", SERVER), baseline("b", "tb", OTHER_SERVER, "other")
    for found in (first, second):
        drift._baselines[(found.spec.namespace, found.spec.name)] = found
        for cache_key in needed_snapshots([found]):
            drift._cached(cache_key, lambda: None)
    drift._cached(server_key(SERVER, ("admin", "before-rotation")), lambda: None)
    drift.forget("a", "tb")
    assert set(drift._cache) == needed_snapshots([second])
    drift.forget("b", "tb")
    assert drift._cache == {} and drift._baselines == {}


# ---- kopf's executor ----------------------------------------------------------------------

def test_the_executor_has_room_for_the_bounded_waits_whatever_the_cpu_count():
    settings = kopf.OperatorSettings()
    kopf_settings.apply(settings)
    # kopf's default pool, min(32, CPUs + 4), would be 6 threads on a 2-CPU node.
    assert settings.execution.max_workers == kopf_settings.EXECUTOR_WORKERS == 32
    assert settings.execution.executor._max_workers == 32
