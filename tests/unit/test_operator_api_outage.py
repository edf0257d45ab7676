"""A reconcile cut off by an API server outage is retried within seconds (kopf.TemporaryError
with a short delay), not treated as an unexpected exception that kopf retries after 60 s."""

from __future__ import annotations

import kopf
import pytest
import urllib3
from kubernetes import client

from trackop.controller import handlers, retry
from trackop.controller.outcome import Outcome
from trackop.controller.runtime import Runtime
from trackop.settings import Settings

BODY = {"metadata": {"namespace": "ns", "name": "team", "generation": 1},
        "spec": {"postgres": {"external": {"host": "db.example", "port": 5432, "adminSecretRef": {"name": "a"}}}}}


def memo(reconciler) -> kopf.Memo:
    """The handlers' memo around a stand-in reconciler (nothing here reaches an API server)."""
    return kopf.Memo(runtime=Runtime(Settings(), reconciler))


class Failing:
    kube = None

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def reconcile(self, *args):
        raise self.exc


@pytest.mark.parametrize("exc", [
    urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/ns/secrets/a", "Connection refused"),
    urllib3.exceptions.ProtocolError("Connection aborted."),
    client.ApiException(status=503, reason="Service Unavailable"),
])
def test_api_outage_is_a_short_temporary_error(exc):
    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.run(memo(Failing(exc)).runtime, "reconcile", BODY, {}, kopf.Patch())
    assert raised.value.delay == retry.API_RETRY_DELAY < 60
    assert "Kubernetes API is unreachable" in str(raised.value)


def test_forbidden_is_retried_and_says_why():
    # An API server that has just restarted refuses the ServiceAccount until it has loaded RBAC.
    exc = client.ApiException(status=403, reason="Forbidden")
    exc.body = ('{"kind":"Status","message":"secrets \\"pg-admin\\" is forbidden: User '
                '\\"system:serviceaccount:trackop-system:trackop\\" cannot get resource \\"secrets\\""}')
    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.run(memo(Failing(exc)).runtime, "reconcile", BODY, {}, kopf.Patch())
    assert raised.value.delay == retry.FORBIDDEN_RETRY_DELAY < 60
    assert 'secrets "pg-admin" is forbidden' in str(raised.value) and "RBAC" in str(raised.value)


@pytest.mark.parametrize("exc", [client.ApiException(status=404, reason="Not Found"),
                                 client.ApiException(status=422, reason="Unprocessable"), KeyError("bug")])
def test_other_errors_are_not_disguised(exc):
    with pytest.raises(type(exc)):
        handlers.run(memo(Failing(exc)).runtime, "reconcile", BODY, {}, kopf.Patch())


class FailingDelete:
    kube = None

    def delete(self, *args):
        raise urllib3.exceptions.MaxRetryError(None, "/api/v1/secrets", "Connection refused")


def test_deletion_during_an_api_outage_is_retried_soon():
    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.delete_backend(body=BODY, patch=kopf.Patch(), retry=0, memo=memo(FailingDelete()))
    assert raised.value.delay == retry.API_RETRY_DELAY


class NoFingerprint:
    def check(self, spec, body):
        return "no fingerprint since the last full reconcile"


class ForbiddenPodListing:
    def missed_injections(self, spec):
        raise client.ApiException(status=403, reason="Forbidden")


class ListingForbidden:
    """The drift check's reconcile succeeds; listing pods for missed injections is refused."""

    kube = None
    drift = NoFingerprint()
    copies = ForbiddenPodListing()

    def reconcile(self, *args):
        return Outcome([])


def test_the_missed_injection_check_is_retried_soon_too():
    state = memo(ListingForbidden())
    state.runtime.specs[("ns", "team")] = handlers._parse(BODY)
    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.check_drift(body=BODY, status={}, patch=kopf.Patch(), memo=state)
    assert raised.value.delay == retry.FORBIDDEN_RETRY_DELAY
