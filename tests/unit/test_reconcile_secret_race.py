"""Two reconciles of one backend (the drift timer runs beside the create handler) both find
no connection Secret: the one whose create loses (409) adopts the winner's password instead
of failing with an unexpected exception (kopf's 60 s retry and a traceback)."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiException

from trackop.api.parsing import parse
from trackop.controller.outcome import Context
from trackop.controller.steps import connection_secret as connection_secret_step
from trackop.specs.connection_secret import connection_secret

SPEC = {"postgres": {"external": {"host": "db.example", "port": 5432, "adminSecretRef": {"name": "pg-admin"}}}}
OWNER = {"metadata": {"uid": "u-1", "name": "team", "namespace": "ns"}, "apiVersion": "trackop.dev/v1alpha1",
         "kind": "TrackingBackend"}


class RacingKube:
    """The first read finds nothing; by the create, another reconcile has made the Secret."""

    def __init__(self, winner: str | None) -> None:
        self.winner = winner
        self.reads = 0
        self.stored: dict[str, str] | None = None

    def read_secret_and_owners(self, namespace, name):
        self.reads += 1
        return (self.stored, {"u-1"}) if self.stored is not None else None

    def create_secret(self, body):
        if self.winner is None:
            raise ApiException(status=409, reason="Conflict")
        spec = parse("ns", "team", SPEC)
        self.stored = connection_secret(spec, self.winner, OWNER, None)["stringData"]
        raise ApiException(status=409, reason="Conflict")

    def update_secret(self, body):
        raise AssertionError("the winner's Secret is already right")


def test_the_losing_create_adopts_the_winners_password():
    kube = RacingKube(winner="the-password-of-the-other-reconcile")
    ctx = Context(parse("ns", "team", SPEC), OWNER, {})
    password, data = connection_secret_step.password(ctx, kube, None)
    assert password == data["PGPASSWORD"] == "the-password-of-the-other-reconcile"
    assert kube.reads == 2
    assert not any(reason == "ConnectionSecretCreated" for _, reason, _ in ctx.events)


def test_a_conflict_that_persists_is_raised_not_looped():
    ctx = Context(parse("ns", "team", SPEC), OWNER, {})
    with pytest.raises(ApiException):
        connection_secret_step.password(ctx, RacingKube(winner=None), None)
