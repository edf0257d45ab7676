"""trackop.api.conditions: merging conditions and phases (pure)."""

from __future__ import annotations

import re

import pytest

from trackop.api import conditions
from trackop.api.conditions import Condition

T0 = "2024-01-01T00:00:00Z"
T1 = "2024-01-02T00:00:00Z"


def ready(status: str = "True", reason: str = "Ready", message: str = "ok") -> Condition:
    return Condition(conditions.READY, status, reason, message)


def test_merge_of_a_new_condition():
    merged = conditions.merge(None, [ready()], generation=3, timestamp=T0)
    assert merged == [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                       "lastTransitionTime": T0, "observedGeneration": 3}]


def test_merge_keeps_transition_time_when_status_is_unchanged():
    first = conditions.merge([], [ready()], 1, T0)
    second = conditions.merge(first, [ready(reason="StillReady", message="new message")], 2, T1)
    assert second[0]["lastTransitionTime"] == T0
    assert second[0]["reason"] == "StillReady"
    assert second[0]["message"] == "new message"
    assert second[0]["observedGeneration"] == 2


def test_merge_moves_transition_time_when_status_changes():
    first = conditions.merge([], [ready()], 1, T0)
    second = conditions.merge(first, [ready("False", "Broken", "down")], 1, T1)
    assert second[0]["lastTransitionTime"] == T1
    assert second[0]["status"] == "False"
    third = conditions.merge(second, [ready("Unknown", "Checking", "?")], 1, "2024-01-03T00:00:00Z")
    assert third[0]["lastTransitionTime"] == "2024-01-03T00:00:00Z"


def test_merge_is_per_type():
    previous = conditions.merge([], [ready(), Condition(conditions.DATABASE_READY, "True", "Created", "db")], 1, T0)
    merged = conditions.merge(previous, [ready("False", "X", "y"),
                                         Condition(conditions.DATABASE_READY, "True", "Exists", "db"),
                                         Condition(conditions.SCHEMA_READY, "False", "Migrating", "...")], 4, T1)
    by_type = {c["type"]: c for c in merged}
    assert by_type["Ready"]["lastTransitionTime"] == T1
    assert by_type["DatabaseReady"]["lastTransitionTime"] == T0
    assert by_type["SchemaReady"]["lastTransitionTime"] == T1
    assert {c["observedGeneration"] for c in merged} == {4}
    assert [c["type"] for c in merged] == ["Ready", "DatabaseReady", "SchemaReady"]


def test_merge_drops_conditions_no_longer_reported():
    previous = conditions.merge([], [ready(), Condition(conditions.SCHEMA_READY, "True", "Migrated", "")], 1, T0)
    merged = conditions.merge(previous, [ready()], 2, T1)
    assert [c["type"] for c in merged] == ["Ready"]


def test_merge_without_previous_time_uses_the_stamp():
    merged = conditions.merge([{"type": "Ready", "status": "True"}], [ready()], 1, T1)
    assert merged[0]["lastTransitionTime"] == T1


def test_merge_default_timestamp_is_rfc3339_utc():
    stamp = conditions.merge(None, [ready()], 1)[0]["lastTransitionTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", conditions.now())


def test_merge_does_not_mutate_previous():
    previous = [{"type": "Ready", "status": "True", "reason": "R", "message": "m",
                 "lastTransitionTime": T0, "observedGeneration": 1}]
    snapshot = [dict(c) for c in previous]
    conditions.merge(previous, [ready("False", "X", "y")], 2, T1)
    assert previous == snapshot


@pytest.mark.parametrize("ready_now, previous, expected", [
    (True, None, "Ready"),
    (True, "Provisioning", "Ready"),
    (True, "Degraded", "Ready"),
    (False, None, "Provisioning"),
    (False, "Pending", "Provisioning"),
    (False, "Provisioning", "Provisioning"),
    (False, "Ready", "Degraded"),
    (False, "Degraded", "Degraded"),
])
def test_phase(ready_now, previous, expected):
    assert conditions.phase(ready_now, previous) == expected


def test_reason_of():
    conds = conditions.merge(None, [ready("False", "AdminAuthenticationFailed", "x")], 1, T0)
    assert conditions.reason_of(conds, "Ready") == "AdminAuthenticationFailed"
    assert conditions.reason_of(conds, "SchemaReady") is None
    assert conditions.reason_of(None, "Ready") is None
