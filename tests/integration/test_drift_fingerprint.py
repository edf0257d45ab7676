"""The drift timer's fingerprint check (drift.py) on the bed's real API server and PostgreSQL:
after a full reconcile, a converged backend is found unchanged (while other sessions come and
go), and each kind of drift the catalog or the API server can show is found as a change, by
name, without a full reconcile in between. The operator's own drift timer calls exactly
``Reconciler.drift.check``; the e2e suite shows the repairs end to end."""

from __future__ import annotations

import secrets
import time
import uuid

import psycopg
import pytest
from kubernetes import client
from psycopg import sql

from trackop.api import conditions as cond
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import COPY_LABEL
from trackop.controller import drift
from trackop.controller.reconciler import Reconciler
from trackop.kube.client import Kube
from trackop.postgres import catalog, plans, sessions, statements

pytestmark = pytest.mark.bed


class Fixture:
    def __init__(self, bed_info: dict, superuser: psycopg.Connection, kube_api: client.ApiClient,
                 namespace: str) -> None:
        self.pg = bed_info["postgres"]
        self.superuser = superuser
        self.core = client.CoreV1Api(kube_api)
        self.namespace = namespace
        self.admin, self.admin_password = f"adm_drift_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
        superuser.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
            sql.Identifier(self.admin), sql.Literal(self.admin_password)))
        self.core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name="pg-admin"),
            string_data={"username": self.admin, "password": self.admin_password}))
        # A real owner (the garbage collector deletes what a missing owner owns).
        owner = self.core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="owner")))
        self.owner = {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "owner", "namespace": namespace, "uid": owner.metadata.uid,
                                   "generation": 1}}
        self.spec = parse(namespace, "drifty", {"postgres": {"external": {
            "host": self.pg["host"], "port": self.pg["port"], "sslMode": "disable",
            "adminSecretRef": {"name": "pg-admin"}}}})
        self.reconciler = Reconciler(Kube(kube_api), "trackop-system", shared_list_ttl=0.2,
                                     full_check_interval=3600)
        self.status: dict = {}

    def reconcile(self) -> None:
        outcome = self.reconciler.reconcile(self.spec, self.owner, self.status)
        assert outcome.ready, [c for c in outcome.conditions if c.status != "True"]
        self.status = {**outcome.status, "conditions": cond.merge(self.status.get("conditions"),
                                                                   outcome.conditions, 1)}

    def check(self, generation: int = 1) -> str:
        time.sleep(0.15)  # older than the snapshots' TTL (0.1 s): each check reads anew
        return self.reconciler.drift.check(self.spec, {"metadata": {"generation": generation},
                                                       "status": self.status})

    def drop(self) -> None:
        with sessions.connect(self.spec.postgres, self.admin, self.admin_password) as conn:
            role = catalog.inspect_role(conn, self.spec.role)
            database = catalog.inspect_database(conn, self.spec.database)
            statements.apply(conn, plans.plan_drop(self.spec, role, database))
        sessions.ADMIN_SESSIONS.close_all()
        self.superuser.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                               (self.admin,))
        # The template database this admin may have built stays, the bed's superuser's now.
        self.superuser.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(self.admin)))
        self.superuser.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(self.admin)))
        self.superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(self.admin)))


@pytest.fixture
def backend(bed_info, superuser_conn, kube_api, namespace, trackop_crd):
    made = Fixture(bed_info, superuser_conn, kube_api, namespace)
    made.reconcile()
    yield made
    made.drop()


def test_a_converged_backend_is_unchanged_while_other_sessions_come_and_go(backend: Fixture):
    assert backend.check() == drift.UNCHANGED
    pg = backend.pg
    others = [psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                              dbname="postgres") for _ in range(3)]
    try:
        assert backend.check() == drift.UNCHANGED
    finally:
        for conn in others:
            conn.close()
    assert backend.check() == drift.UNCHANGED


def test_role_and_database_drift_is_found_by_name(backend: Fixture):
    role, database = sql.Identifier(backend.spec.role), sql.Identifier(backend.spec.database)
    backend.superuser.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(role))
    assert backend.check() == "changed: role"
    backend.reconcile()  # repairs it, and fingerprints the repaired state
    assert backend.check() == drift.UNCHANGED

    backend.superuser.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '1MB'").format(database))
    assert backend.check() == "changed: database"
    backend.reconcile()
    assert backend.check() == drift.UNCHANGED

    backend.superuser.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(database))
    assert backend.check() == "changed: database"
    backend.reconcile()
    backend.superuser.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 3").format(role))
    assert backend.check() == "changed: role"
    backend.reconcile()
    backend.superuser.execute(sql.SQL("ALTER ROLE {} NOCREATEDB").format(sql.Identifier(backend.admin)))
    assert backend.check() == "changed: admin role"
    backend.superuser.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(backend.admin)))


def test_a_dropped_role_or_database_is_a_change(backend: Fixture):
    with sessions.connect(backend.spec.postgres, backend.admin, backend.admin_password) as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(backend.spec.database)))
    assert backend.check() == "changed: database"
    backend.reconcile()
    assert backend.check() == drift.UNCHANGED


def test_secret_and_copy_changes_are_found_by_name(backend: Fixture):
    ns = backend.namespace
    backend.core.patch_namespaced_secret(backend.spec.connection_secret, ns, {"metadata": {"labels": {"x": "y"}}})
    assert backend.check() == "changed: secrets"
    backend.reconcile()
    assert backend.check() == drift.UNCHANGED

    backend.core.delete_namespaced_secret(backend.spec.connection_secret, ns)
    assert backend.check() == "changed: secrets"
    backend.reconcile()  # a new Secret with a new password, which the login check sets on the role
    assert backend.check() == drift.UNCHANGED

    backend.core.patch_namespaced_secret("pg-admin", ns, {"stringData": {"note": "rotated"}})
    assert backend.check() == "changed: secrets"
    backend.reconcile()

    copies = [s for s in backend.core.list_secret_for_all_namespaces(label_selector=COPY_LABEL).items
              if s.metadata.namespace == ns]
    assert len(copies) == 1  # the backend's own namespace always gets one
    backend.core.delete_namespaced_secret(copies[0].metadata.name, ns)
    assert backend.check() == "changed: secret copies"
    backend.reconcile()
    assert backend.check() == drift.UNCHANGED


def test_spec_interval_and_budget_verdict_send_a_backend_to_the_full_reconcile(backend: Fixture):
    assert backend.check(generation=2) == "the spec changed"
    backend.status["conditions"] = [
        {**c, "message": "stale"} if c["type"] == cond.CONNECTION_BUDGET else c for c in backend.status["conditions"]]
    assert backend.check() == "the connection budget's verdict moved"
    backend.reconcile()
    backend.reconciler.drift.full_interval = 0.1
    assert backend.check() == "the full-check interval passed"


def test_without_a_fingerprint_every_check_is_full(backend: Fixture):
    backend.reconciler.drift.forget(backend.namespace, "drifty")
    assert backend.check() == "no fingerprint since the last full reconcile"
    off = Reconciler(backend.reconciler.kube, "trackop-system", shared_list_ttl=0.2, full_check_interval=0)
    off.reconcile(backend.spec, backend.owner, backend.status)
    assert off.drift.check(backend.spec, {"metadata": {"generation": 1}, "status": backend.status}) \
        == "no fingerprint since the last full reconcile"


def test_a_server_that_cannot_be_reached_sends_the_backend_to_the_full_reconcile(backend: Fixture):
    backend.superuser.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(backend.admin)))
    sessions.ADMIN_SESSIONS.close_all()
    try:
        assert backend.check().startswith("the snapshot failed")
    finally:
        backend.superuser.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(backend.admin)))
