"""Kube.ensure_namespace under the chart's RBAC: it must not try a create when the
namespace exists (the operator may list namespaces but not create them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kubernetes import client

from trackop.kube.client import Kube


class FakeCore:
    def __init__(self, existing: set[str], create_status: int | None = None) -> None:
        self.existing = existing
        self.create_status = create_status
        self.created: list[str] = []
        self.selectors: list[str] = []

    def list_namespace(self, field_selector: str = ""):
        self.selectors.append(field_selector)
        name = field_selector.removeprefix("metadata.name=")
        return SimpleNamespace(items=[SimpleNamespace(name=name)] if name in self.existing else [])

    def create_namespace(self, body):
        if self.create_status:
            raise client.ApiException(status=self.create_status)
        self.created.append(body.metadata.name)


def kube_with(core: FakeCore) -> Kube:
    kube = Kube.__new__(Kube)
    kube.core = core
    return kube


def test_an_existing_namespace_is_only_listed():
    core = FakeCore({"trackop-system"}, create_status=403)  # a create would be refused
    kube_with(core).ensure_namespace("trackop-system")
    assert core.selectors == ["metadata.name=trackop-system"]
    assert core.created == []


def test_a_missing_namespace_is_created():
    core = FakeCore(set())
    kube_with(core).ensure_namespace("trackop-system")
    assert core.created == ["trackop-system"]


def test_a_namespace_created_in_between_is_fine():
    kube_with(FakeCore(set(), create_status=409)).ensure_namespace("trackop-system")


def test_other_create_errors_surface():
    with pytest.raises(client.ApiException):
        kube_with(FakeCore(set(), create_status=403)).ensure_namespace("trackop-system")
