"""drift.py's pure parts: what a fingerprint holds, how a change is named, the budget verdict
from a snapshot, and the snapshot cache's freshness rule."""

from __future__ import annotations

import time

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import COPY_LABEL
from trackop.controller import fingerprint, listing
from trackop.postgres import snapshot as server_snapshot

SPEC = parse("team", "tb", {"postgres": {"external": {"host": "db", "adminSecretRef": {"name": "pg-admin"}}}})
WITH_SERVER = parse("team", "tb", {
    "postgres": {"external": {"host": "db", "adminSecretRef": {"name": "pg-admin"}},
                 "passwordSecretRef": {"name": "own", "key": "pw"}},
    "server": {}})


def snapshot(role_limit: int = -1, sessions: dict[str, int] | None = None, max_connections: int = 100,
             settings: tuple = ()) -> server_snapshot.ServerSnapshot:
    role = (False, True, False, False, True, False, role_limit, None, False, None, SPEC.owner_marker, True)
    database = (SPEC.role, True, False, -1, "{}", False, None, SPEC.owner_marker)
    return server_snapshot.ServerSnapshot(
        roles={SPEC.role: role, "admin": (False,) * 6 + (-1,) + (None, False, None, None, True)},
        databases={SPEC.database: database}, settings=(max_connections, 3, (), settings),
        sessions=sessions or {}, max_connections=max_connections, reserved_slots=3)


def fp(spec=SPEC, server=None, secrets=None, copies=None, objects=None, changes=0):
    return fingerprint.fingerprint_of(spec, "admin", server or snapshot(), secrets or {}, copies or {}, objects or {},
                             changes)


def test_the_snapshot_reads_connection_limits_from_its_rows():
    server = snapshot(role_limit=40, sessions={SPEC.database: 2, "other": 5, "postgres": 1})
    assert server.role_limit(SPEC.role) == 40
    assert server.database_limit(SPEC.database) == -1
    assert server.role_limit("nobody") is None
    assert server.used_by_others(SPEC.database) == 6


def test_each_kind_of_change_is_named():
    base = fp(secrets={("team", "pg-admin"): "1", ("team", "tb-mlflow"): "2"})
    assert fingerprint.differences(base, fp(secrets={("team", "pg-admin"): "1", ("team", "tb-mlflow"): "2"})) == []
    assert fingerprint.differences(base, fp(server=snapshot(role_limit=5),
                                      secrets={("team", "pg-admin"): "1", ("team", "tb-mlflow"): "2"})) == ["role"]
    assert fingerprint.differences(base, fp(secrets={("team", "pg-admin"): "1"})) == ["secrets"]
    assert fingerprint.differences(base, fp(secrets={("team", "pg-admin"): "1", ("team", "tb-mlflow"): "2"},
                                      changes=1)) == ["namespaces"]
    assert sorted(fingerprint.differences(base, fp(server=snapshot(settings=(("shared_buffers", "1GB"),)),
                                             copies={("x", "c"): "9"}))) == \
        ["secret copies", "secrets", "server settings"]


def test_sessions_alone_do_not_change_a_fingerprint():
    assert fp(server=snapshot(sessions={"other": 50})) == fp(server=snapshot(sessions={}))


def test_a_dropped_role_or_database_is_a_difference():
    gone = snapshot()
    gone = server_snapshot.ServerSnapshot({}, {}, gone.settings, {}, 100, 3)
    assert sorted(fingerprint.differences(fp(), fp(server=gone))) == ["admin role", "database", "role"]
    assert fingerprint.budget_verdict(SPEC, gone) is None


def test_referenced_secrets_and_owned_objects_follow_the_spec():
    assert fingerprint.referenced_secrets(SPEC) == ("pg-admin", "tb-mlflow")
    assert fingerprint.referenced_secrets(WITH_SERVER) == ("pg-admin", "tb-mlflow", "own")
    assert fingerprint.owned_objects(SPEC) == ()
    assert fingerprint.owned_objects(WITH_SERVER) == (("services", "tb-mlflow"), ("deployments", "tb-mlflow"))
    # A missing object is None in the fingerprint, so its deletion is a change.
    with_objects = fp(spec=WITH_SERVER, objects={("services", "team", "tb-mlflow"): "7",
                                                 ("deployments", "team", "tb-mlflow"): "8"})
    assert fingerprint.differences(with_objects, fp(spec=WITH_SERVER, objects={("services", "team", "tb-mlflow"): "7"})) \
        == ["tracking server objects"]


def test_the_budget_verdict_moves_with_other_sessions_only_past_the_limit():
    tight = snapshot(max_connections=20)
    status, reason, _ = fingerprint.budget_verdict(SPEC, tight)
    assert (status, reason) == ("True", "WithinLimit")
    crowded = snapshot(max_connections=20, sessions={"other": 16})
    status, reason, message = fingerprint.budget_verdict(SPEC, crowded)
    assert (status, reason) == ("False", "OverBudget") and "in use by other sessions" in message
    written = {"conditions": [{"type": "Ready", "status": "True"},
                              {"type": "ConnectionBudget", "status": "True", "reason": "WithinLimit",
                               "message": fingerprint.budget_verdict(SPEC, tight)[2]}]}
    assert fingerprint.written_verdict(written) == fingerprint.budget_verdict(SPEC, snapshot(max_connections=20,
                                                                                 sessions={"other": 1}))
    assert fingerprint.written_verdict({}) is None


def test_copies_are_picked_by_their_label():
    listed = [{"namespace": "a", "name": "c", "resourceVersion": "1", "labels": {COPY_LABEL: "x"}},
              {"namespace": "b", "name": "c", "resourceVersion": "2", "labels": {COPY_LABEL: "y"}},
              {"namespace": "c", "name": "d", "resourceVersion": "3"}]
    assert fingerprint.copies_by_backend(listed) == {"x": {("a", "c"): "1"}, "y": {("b", "c"): "2"}}


def test_only_external_servers_get_the_fingerprint():
    managed = parse("team", "tb", {"postgres": {"managed": {}}})
    assert fingerprint.eligible(SPEC) and not fingerprint.eligible(managed)


def test_the_cache_fetches_once_per_ttl_and_again_for_a_newer_baseline():
    fetched = []
    cached = listing.SharedListing(lambda: fetched.append(1) or len(fetched), ttl=60)
    assert cached.get() == 1 and cached.get() == 1
    assert cached.get(not_before=time.monotonic()) == 2  # fetched before the caller's fingerprint
    assert cached.get() == 2

    def failing():
        raise RuntimeError("down")

    broken = listing.SharedListing(failing, ttl=60)
    for _ in range(2):
        try:
            broken.get()
        except RuntimeError:
            pass
        else:
            raise AssertionError("an error is not cached as a value")
