"""Fixtures of the end-to-end tests: the operator (``trackop run``) and backends on the bed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

import kit
from kit import CHART_RELEASE, Admin, Backends, OperatorProcess, chart_service_account_kubeconfig, make_admin


@pytest.fixture(scope="session")
def operator_kubeconfig(bed_info: dict, trackop_crd: dict, kube_api) -> str:
    """The operator authenticates as the Helm chart's ServiceAccount, not as the bed's admin:
    every e2e test also proves the chart's RBAC is enough."""
    out = Path(tempfile.mkdtemp(prefix="trackop-sa-")) / "kubeconfig"
    return str(chart_service_account_kubeconfig(kube_api, bed_info["kubeconfig"], out))


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: str) -> OperatorProcess:
    # As the chart runs it: the webhook configurations owned by the chart's ClusterRole. The
    # bed has no Service network: the operator reaches managed servers at their pod's IP.
    proc = OperatorProcess(operator_kubeconfig, Path(tempfile.mkdtemp(prefix="trackop-operator-")),
                           base_args=["--webhook-owner-clusterrole", CHART_RELEASE,
                                      "--managed-postgres-address", "pod"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def admin(superuser_conn: psycopg.Connection) -> Admin:
    """A platform admin role with CREATEDB and CREATEROLE, not a superuser."""
    return make_admin(superuser_conn, "CREATEDB", "CREATEROLE")


@pytest.fixture
def backends(kube_api, namespace: str, bed_info: dict, operator: OperatorProcess) -> Backends:
    return Backends(kube_api, namespace, bed_info)


# Fixtures whose namespaces are deleted when they are torn down.
_NAMESPACE_FIXTURES = ("namespace", "other_namespace", "unlabelled_namespace")


@pytest.fixture(autouse=True)
def record_for_secret_sweep(request: pytest.FixtureRequest):
    """After each test, before its namespaces are deleted: their Events, TrackingBackend
    statuses and Secrets, for tests/e2e/test_zz_secret_sweep.py.

    The namespace fixtures are requested here, during this fixture's setup, so they are
    torn down after it (pytest tears down in reverse order of setup): the snapshot sees the
    namespace before its deletion starts."""
    namespaces = [request.getfixturevalue(name) for name in _NAMESPACE_FIXTURES if name in request.fixturenames]
    kube_api = request.getfixturevalue("kube_api") if namespaces else None
    yield
    for name in namespaces:
        kit.snapshot_for_sweep(kube_api, name, request.node.nodeid)
