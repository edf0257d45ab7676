"""Fixtures of the end-to-end tests: the operator (``trackop run``) and backends on the bed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from kit import CHART_RELEASE, Admin, Backends, OperatorProcess, chart_service_account_kubeconfig, make_admin


@pytest.fixture(scope="session")
def operator_kubeconfig(bed_info: dict, trackop_crd: dict, kube_api) -> str:
    """The operator authenticates as the Helm chart's ServiceAccount, not as the bed's admin:
    every e2e test also proves the chart's RBAC is enough."""
    out = Path(tempfile.mkdtemp(prefix="trackop-sa-")) / "kubeconfig"
    return str(chart_service_account_kubeconfig(kube_api, bed_info["kubeconfig"], out))


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: str) -> OperatorProcess:
    # As the chart runs it: the webhook configurations owned by the chart's ClusterRole.
    proc = OperatorProcess(operator_kubeconfig, Path(tempfile.mkdtemp(prefix="trackop-operator-")),
                           base_args=["--webhook-owner-clusterrole", CHART_RELEASE])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def superuser_conn(bed_info: dict) -> psycopg.Connection:
    """Per test: a PostgreSQL outage test must not leave later tests a dead connection."""
    pg = bed_info["postgres"]
    conn = psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                           dbname="postgres", autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def admin(superuser_conn: psycopg.Connection) -> Admin:
    """A platform admin role with CREATEDB and CREATEROLE, not a superuser."""
    return make_admin(superuser_conn, "CREATEDB", "CREATEROLE")


@pytest.fixture
def backends(kube_api, namespace: str, bed_info: dict, operator: OperatorProcess) -> Backends:
    return Backends(kube_api, namespace, bed_info)
