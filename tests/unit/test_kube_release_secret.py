"""Kube.release_secret when the Secret goes between its read and its patch (the namespace is
being deleted): nothing to keep, no exception out of the delete handler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kubernetes import client

from trackop.kube.client import Kube


class FakeCore:
    def __init__(self, patch_status: int | None) -> None:
        self.patch_status = patch_status

    def read_namespaced_secret(self, name, namespace):
        return SimpleNamespace(metadata=SimpleNamespace(owner_references=[SimpleNamespace(uid="u1")]))

    def patch_namespaced_secret(self, name, namespace, body):
        if self.patch_status:
            raise client.ApiException(status=self.patch_status)


def _kube(core: FakeCore) -> Kube:
    kube = Kube.__new__(Kube)
    kube.core = core
    return kube


def test_a_secret_deleted_after_the_read_is_not_an_error():
    assert _kube(FakeCore(404)).release_secret("ns", "team-a-mlflow", "u1") is False


def test_a_released_secret_and_other_errors():
    assert _kube(FakeCore(None)).release_secret("ns", "team-a-mlflow", "u1") is True
    with pytest.raises(client.ApiException):
        _kube(FakeCore(500)).release_secret("ns", "team-a-mlflow", "u1")
