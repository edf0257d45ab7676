"""Faults while backends provision: the operator SIGKILLed, PostgreSQL restarted, the API
server restarted, a migration interrupted halfway (the template's, and a database's own).
Each test ends with every backend Ready, the connection Secrets' passwords unchanged (and
working), no orphaned or extra role or database, and one migration per template plus
clones: the server's template database complete and written by exactly one Alembic run,
no template build left behind, and every backend database either a clone (no Alembic
write in it) or migrated in place by exactly one Alembic run (alembic_version: one row, at
head); and no failure in the operator's log that it did not turn into a condition or a
short retry.

The operator is the session's one OperatorProcess (a second would fight it over the
backends): these tests kill and restart that one and always leave it running."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from helpers import eventually
from kit import (
    GROUP,
    PLURAL,
    VERSION,
    Admin,
    Backends,
    OperatorProcess,
    assert_no_secret_leaks,
)
from kubernetes import client
from psycopg import sql

from trackop.api.names import default_database_name
from trackop.postgres import templates
from trackop.schema import revisions

pytestmark = pytest.mark.bed

FLEET = 20  # backends provisioning at once in the operator-kill test


# ---- observing ---------------------------------------------------------------------------

def superuser(bed_info: dict, dbname: str = "postgres") -> psycopg.Connection:
    """A fresh connection (a PostgreSQL restart kills the per-test fixture's)."""
    pg = bed_info["postgres"]
    return psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                           dbname=dbname, autocommit=True, connect_timeout=5)


def ready(backends: Backends) -> set[str]:
    items = backends.custom.list_namespaced_custom_object(GROUP, VERSION, backends.namespace, PLURAL)["items"]
    return {o["metadata"]["name"] for o in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in o.get("status", {}).get("conditions", []))}


def passwords(backends: Backends) -> dict[str, str]:
    """Backend name -> PGPASSWORD of every connection Secret in the namespace now."""
    found = {}
    for secret in backends.core.list_namespaced_secret(backends.namespace).items:
        name = secret.metadata.name
        if name.endswith("-mlflow") and secret.data and "PGPASSWORD" in secret.data:
            found[name.removesuffix("-mlflow")] = base64.b64decode(secret.data["PGPASSWORD"]).decode()
    return found


def schema_migrated_events(backends: Backends, name: str) -> list[str]:
    """The distinct SchemaMigrated messages. An API server killed while it stores an Event
    makes kopf post it again (the response was lost): the same message, duration included,
    twice. Two clones or migrations never say the same (and a second clone of one database
    is impossible: CREATE DATABASE refuses an existing name)."""
    return sorted({e.message for e in backends.events(name) if e.reason == "SchemaMigrated"})


def alembic_writes(bed_info: dict, database: str) -> tuple[int, int] | None:
    """(rows inserted, rows updated) into the alembic_version table that exists now.

    Alembic inserts the first revision and updates it once per later migration, in the one
    transaction of ``alembic upgrade``; a rolled-back run's table is gone with its counts.
    So a schema made by exactly one complete run shows (1, migrations - 1).
    """
    with superuser(bed_info, database) as conn:
        row = conn.execute("SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables "
                           "WHERE schemaname = 'public' AND relname = 'alembic_version'").fetchone()
    return tuple(row) if row and row[0] else None


def migrations() -> int:
    return len(revisions.known_revisions())


def template_oid(bed_info: dict) -> int | None:
    """The OID of the server's complete template for this MLflow's head (None: none)."""
    with superuser(bed_info) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s",
                           (templates.template_name(revisions.head_revision()),)).fetchone()
    return row[0] if row else None


def drop_template(bed_info: dict) -> None:
    """As docs/backend.md says to remove it; the next new backend makes it again."""
    with superuser(bed_info) as conn:
        for name in (templates.template_name(revisions.head_revision()),
                     templates.template_build_name(revisions.head_revision())):
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def template_alembic_writes(bed_info: dict) -> tuple[int, int] | None:
    """alembic_writes of the template. It is closed to connections: opened for this read only,
    once every backend is Ready (so no clone runs meanwhile)."""
    name = sql.Identifier(templates.template_name(revisions.head_revision()))
    with superuser(bed_info) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(name))
        try:
            return alembic_writes(bed_info, templates.template_name(revisions.head_revision()))
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name))


def assert_one_template(backends: Backends, bed_info: dict, builders: list[str], oid_before: int | None,
                        stats: bool) -> None:
    """One migration per template: the template exists, complete, with no build left behind;
    a template that existed before the test is the same one (no rebuild); one made during the
    test was announced at most once (an Event is lost when the operator is killed right after
    the build) and written by exactly one Alembic run (``stats``)."""
    head = revisions.head_revision()
    with superuser(bed_info) as conn:
        found = conn.execute(
            """SELECT datname, shobj_description(oid, 'pg_database'), datistemplate, datallowconn FROM pg_database
               WHERE datname = ANY(%s)""", ([templates.template_name(head), templates.template_build_name(head)],)
        ).fetchall()
    assert found == [(templates.template_name(head), templates.template_marker(head), True, False)], found
    built = [e.message for name in builders for e in backends.events(name) if e.reason == "TemplateBuilt"]
    if oid_before is not None:
        assert template_oid(bed_info) == oid_before, "the template was rebuilt"
        assert built == []
        return
    assert len(built) <= 1, built
    if stats:
        writes = template_alembic_writes(bed_info)
        assert writes == (1, migrations() - 1), f"the template was written by more than one Alembic run: {writes}"


def assert_converged(backends: Backends, bed_info: dict, names: list[str], before: dict[str, str],
                     operator: OperatorProcess, admin: Admin, log_mark: int, timeout: float = 180,
                     stats: bool = True, template_before: int | None = None, cloned: bool = True,
                     builders: list[str] | None = None) -> None:
    """Every backend Ready; passwords as ``before`` and working; exactly the roles and
    databases of the specs; one row at head in alembic_version; one migration per template
    plus clones (``stats``: PostgreSQL's statistics survived, i.e. it did not crash;
    ``template_before``: the template's OID when the test began; ``cloned``: whether the
    operator clones; ``builders``: the backends that may have built today's template, all by
    default); every failure the operator met since ``log_mark`` was one it understood."""
    started = time.monotonic()
    eventually(lambda: ready(backends) >= set(names), f"all {len(names)} backends Ready", timeout=timeout,
               interval=0.5)
    print(f"all {len(names)} Ready {time.monotonic() - started:.1f}s after the fault")
    ns = backends.namespace
    head = revisions.head_revision()
    now = passwords(backends)
    assert set(now) == set(names)
    changed = [n for n, p in before.items() if now[n] != p]
    assert not changed, f"passwords regenerated for {changed}"

    expected = {default_database_name(ns, n): f"managed by trackop for TrackingBackend {ns}/{n}" for n in names}
    prefix = f"mlflow_{ns.replace('-', '_')}_"
    marker = f"managed by trackop for TrackingBackend {ns}/%"
    with superuser(bed_info) as conn:
        roles = dict(conn.execute(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE starts_with(rolname, %s) OR shobj_description(oid, 'pg_authid') LIKE %s",
            (prefix, marker)).fetchall())
        databases = {name: (comment, owner) for name, comment, owner in conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba) FROM pg_database "
            "WHERE starts_with(datname, %s) OR shobj_description(oid, 'pg_database') LIKE %s",
            (prefix, marker)).fetchall()}
    assert roles == expected, "orphaned, extra or unmarked roles"
    assert databases == {db: (comment, db) for db, comment in expected.items()}, "orphaned or extra databases"

    for name in names:
        secret = backends.connection_secret(name)
        with psycopg.connect(host=secret["PGHOST"], port=secret["PGPORT"], user=secret["PGUSER"],
                             password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], connect_timeout=5) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)], name
        events = schema_migrated_events(backends, name)
        assert len(events) <= 1, f"{name} migrated more than once: {events}"
        # A clone says so, a database migrated in place too (the Event can be lost when the
        # operator is killed right after the step).
        kinds = {event.split(" ", 1)[0] for event in events}
        assert kinds <= ({"cloned", "migrated"} if cloned else {"migrated"}), events
        if stats:
            if "migrated" in kinds or not cloned:
                # Statistics reach the view within a second of the migrating session's end.
                writes = eventually(lambda: alembic_writes(bed_info, secret["PGDATABASE"]), f"{name}: alembic stats")
                assert writes == (1, migrations() - 1), f"{name}: alembic_version written by more than one run: " \
                                                        f"{writes}"
            else:
                # A clone's schema came with the template's files: no Alembic run wrote in it.
                writes = alembic_writes(bed_info, secret["PGDATABASE"])
                assert writes in (None, (1, migrations() - 1)), f"{name}: alembic_version writes {writes}"
                if "cloned" in kinds:
                    assert writes is None, f"{name}: cloned, yet Alembic wrote in it: {writes}"
    if cloned:
        assert_one_template(backends, bed_info, builders or names, template_before, stats)
    assert_no_secret_leaks([admin.password, *now.values()], operator, backends, names[0])
    # An exception the reconciler did not turn into a condition leaves the status stale and
    # waits for kopf's 60 s retry.
    unexpected = [line for line in operator.logs()[log_mark:].splitlines() if "failed with an exception" in line]
    assert not unexpected, "\n".join(unexpected)


def killed(operator: OperatorProcess) -> None:
    operator.stop(kill=True)
    assert operator.process.returncode == -signal.SIGKILL


def ensure_running(operator: OperatorProcess) -> None:
    """Later tests share the session's operator: never leave it stopped."""
    if operator.process is None or operator.process.poll() is not None:
        operator.start()


# ---- 1. the operator SIGKILLed while a fleet provisions -----------------------------------

@pytest.mark.parametrize("seed", [1, 2])  # two kill patterns, drawn from the seed
def test_operator_sigkilled_while_a_fleet_provisions(seed: int, backends: Backends, admin: Admin,
                                                     operator: OperatorProcess, bed_info: dict):
    rng = random.Random(seed)
    names = [f"fleet-{i:02d}" for i in range(FLEET)]
    backends.admin_secret(admin)
    # No template: the first kill lands while it is built (or right after), and the first
    # backends wait for it.
    drop_template(bed_info)
    log_mark = len(operator.logs())
    before: dict[str, str] = {}
    try:
        for name in names:
            backends.apply(name, backends.spec())
        # First kill: a moment drawn from the seed early in provisioning (Secrets, roles,
        # databases, the first migrations).
        time.sleep(rng.uniform(0.2, 2.5))
        killed(operator)
        first = ready(backends)
        before.update(passwords(backends))
        operator.start()
        # Second kill: as soon as a number of backends drawn from the seed are Ready, at most
        # 8 of the 20. Cloned databases provision in a fraction of a second each, so a later
        # kill (a jitter, or a target near the end) found the whole fleet Ready in CI.
        target = min(max(len(first) + 1, rng.randint(3, 8)), FLEET - 1)
        eventually(lambda: len(ready(backends)) >= target, f"{target} backends Ready", timeout=120, interval=0.02)
        killed(operator)
        second = ready(backends)
        for name, password in passwords(backends).items():
            assert before.setdefault(name, password) == password, f"{name}: password changed across a restart"
        operator.start()
    finally:
        ensure_running(operator)
    print(f"seed {seed}: {len(first)} Ready at the first kill, {len(second)} at the second; "
          f"{len(before)} Secrets existed")
    assert len(first) < FLEET and len(second) < FLEET, "a kill landed after provisioning"
    assert_converged(backends, bed_info, names, before, operator, admin, log_mark, template_before=None)


# ---- 2. PostgreSQL restarted mid-provisioning ----------------------------------------------

def _ten_provisioning(backends: Backends, admin: Admin, operator: OperatorProcess, prefix: str,
                      ) -> tuple[list[str], int, set[str], dict[str, str]]:
    """Ten backends applied at once, returned as soon as 3 are Ready (the fault comes then):
    their names, the operator log's length before, the Ready ones and the passwords so far."""
    names = [f"{prefix}-{i:02d}" for i in range(10)]
    backends.admin_secret(admin)
    log_mark = len(operator.logs())
    for name in names:
        backends.apply(name, backends.spec())
    eventually(lambda: len(ready(backends)) >= 3, "3 backends Ready", timeout=90, interval=0.05)
    return names, log_mark, ready(backends), passwords(backends)


@pytest.mark.parametrize("shutdown", ["fast", "crash"])
def test_postgres_restarted_mid_provisioning(shutdown: str, backends: Backends, admin: Admin,
                                             operator: OperatorProcess, bed_info: dict, testbed):
    template_before = template_oid(bed_info)
    names, log_mark, at_fault, before = _ten_provisioning(backends, admin, operator, "pg")
    # Fast shutdown (SIGINT) aborts every open transaction (migrations included) and closes
    # every session; a crash (SIGQUIT: immediate shutdown) stops without a checkpoint and
    # the server recovers from its WAL. Either way it comes back on the same port and data.
    testbed.restart_component("postgres", signal.SIGINT if shutdown == "fast" else signal.SIGQUIT)
    for name, password in passwords(backends).items():
        assert before.setdefault(name, password) == password
    print(f"PostgreSQL {shutdown} restart with {len(at_fault)} of {len(names)} Ready")
    assert len(at_fault) < len(names), "PostgreSQL restarted after provisioning"
    # Crash recovery resets PostgreSQL's statistics: no count of Alembic's writes then.
    assert_converged(backends, bed_info, names, before, operator, admin, log_mark, stats=shutdown == "fast",
                     template_before=template_before)


# ---- 3. the API server restarted mid-provisioning ------------------------------------------

def test_api_server_restarted_mid_provisioning(backends: Backends, admin: Admin, operator: OperatorProcess,
                                               bed_info: dict, testbed, core_v1: client.CoreV1Api):
    template_before = template_oid(bed_info)
    names, log_mark, at_fault, before = _ten_provisioning(backends, admin, operator, "api")
    # SIGKILL: no graceful goodbye to watchers; same arguments, port and certificates.
    try:
        testbed.restart_component("kube-apiserver", signal.SIGKILL)
    except BaseException:
        testbed.start_component("kube-apiserver")  # never leave the rest of the session without one
        raise
    print(f"API server restarted with {len(at_fault)} of {len(names)} Ready")
    assert len(at_fault) < len(names), "the API server restarted after provisioning"
    assert_converged(backends, bed_info, names, before, operator, admin, log_mark, template_before=template_before)
    assert operator.process.poll() is None, "the operator exited instead of reconnecting"

    # kube-controller-manager reconnected by itself: it still makes a new namespace's
    # default ServiceAccount.
    probe = f"t-kcm-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=probe)))
    try:
        eventually(lambda: core_v1.list_namespaced_service_account(probe, field_selector="metadata.name=default")
                   .items, "kube-controller-manager to create the default ServiceAccount", timeout=60)
    finally:
        core_v1.delete_namespace(probe)


# ---- 4. a migration interrupted halfway ----------------------------------------------------

MLFLOW_SCRIPT = """
import json, os
from mlflow.tracking import MlflowClient
client = MlflowClient(os.environ["MLFLOW_BACKEND_STORE_URI"])
run = client.create_run(client.create_experiment("after-fault-" + os.urandom(4).hex()))
client.log_metric(run.info.run_id, "loss", 0.25)
print(json.dumps({"run_id": run.info.run_id, "metrics": client.get_run(run.info.run_id).data.metrics}))
"""


def _land_inside_migration(bed_info: dict, database: str) -> tuple[psycopg.Connection, int, str] | None:
    """Hold a lock that MLflow's upgrade will wait for partway through its transaction.

    The operator creates MLflow's initial tables (committed), then runs every Alembic
    migration in one transaction; the first ALTER of ``experiments`` comes about a quarter
    of the way in. An ACCESS SHARE lock on ``experiments`` taken as soon as the table
    exists makes that ALTER wait, with the earlier migrations applied but uncommitted.
    Returns the lock's connection, and the waiting backend's pid and query; None if the
    migration got past that point first.
    """
    with superuser(bed_info) as conn:
        eventually(lambda: conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone(),
                   f"database {database}", timeout=60, interval=0.02)
    spy = superuser(bed_info, database)
    deadline = time.monotonic() + 30
    while spy.execute("SELECT to_regclass('public.experiments')").fetchone()[0] is None:
        assert time.monotonic() < deadline, "MLflow's initial tables never appeared"
    spy.autocommit = False
    spy.execute("SET lock_timeout = '200ms'")
    try:
        spy.execute("LOCK TABLE public.experiments IN ACCESS SHARE MODE")
    except psycopg.errors.LockNotAvailable:
        spy.close()
        return None
    mine = spy.info.backend_pid
    with superuser(bed_info) as observer:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = observer.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = %s AND %s = ANY(pg_blocking_pids(pid))",
                (database, mine)).fetchone()
            if waiting:
                return spy, waiting[0], waiting[1]
            if spy.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0] is not None:
                break  # committed already: the migration was past the ALTER before the lock
            time.sleep(0.01)
    spy.close()
    return None


@pytest.mark.parametrize("where", ["template", "database"])
def test_migration_interrupted_halfway_converges_once(where: str, backends: Backends, admin: Admin,
                                                      operator: OperatorProcess, bed_info: dict):
    """``template``: the first backend's reconcile builds the server's template and is killed
    inside MLflow's migrations there; ``database``: the operator clones nothing
    (TRACKOP_SCHEMA_TEMPLATES=off) and is killed inside a backend database's own migration,
    the path existing databases and upgrades still take."""
    backends.admin_secret(admin)
    if where == "database":
        operator.restart(extra_env={"TRACKOP_SCHEMA_TEMPLATES": "off"})
    try:
        _interrupt_a_migration(where, backends, admin, operator, bed_info)
    finally:
        if where == "database":
            ensure_running(operator)
            operator.restart()  # the session's operator clones again


def _interrupt_a_migration(where: str, backends: Backends, admin: Admin, operator: OperatorProcess,
                           bed_info: dict) -> None:
    log_mark = len(operator.logs())
    names: list[str] = []
    landed = None
    try:
        for attempt in range(3):  # the lock races the migration; it wins nearly always
            name = f"mig-{attempt}"
            if where == "template":
                if names:  # the last attempt's backend is cloned from the template it built: let it finish
                    backends.wait_ready(names[-1])
                drop_template(bed_info)
                database = templates.template_build_name(revisions.head_revision())
            else:
                database = default_database_name(backends.namespace, name)
            names.append(name)
            backends.apply(name, backends.spec())
            landed = _land_inside_migration(bed_info, database)
            if landed:
                break
        assert landed, "never got inside a migration in 3 attempts"
        spy, migrating_pid, query = landed
        print(f"inside the migration of {database} for {name} (attempt {len(names)}): waiting at {query!r}")
        assert query.lstrip().upper().startswith("ALTER TABLE"), query  # inside the upgrade
        killed(operator)
        spy.rollback()  # the waiting ALTER runs, then its session finds its client gone
        spy.close()
        with superuser(bed_info) as observer:
            eventually(lambda: not observer.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                                    (migrating_pid,)).fetchone(),
                       "the killed operator's migrating session to end", timeout=30)
        with superuser(bed_info, database) as conn:
            # All or nothing: the interrupted upgrade left no revision behind, only the
            # initial tables committed before it.
            assert conn.execute("SELECT to_regclass('public.alembic_version')").fetchone() == (None,)
            assert conn.execute("SELECT to_regclass('public.experiments')").fetchone()[0] is not None
        if where == "template":
            assert template_oid(bed_info) is None  # never published: it was not complete
        assert name not in ready(backends)
        before = passwords(backends)
        assert name in before
        operator.start()
    finally:
        ensure_running(operator)
    assert_converged(backends, bed_info, names, before, operator, admin, log_mark,
                     template_before=None, cloned=where == "template", builders=[name])
    (event,) = schema_migrated_events(backends, name)
    if where == "template":
        # The interrupted build was dropped and made again; this backend is a clone of it.
        assert event.startswith("cloned the MLflow schema"), event
        assert [e.reason for e in backends.events(name)].count("TemplateBuilt") == 1
    else:
        assert event.startswith("migrated the MLflow schema from"), event

    # The schema is usable: the real MLflow client logs a run through the Secret's URI.
    secret = backends.connection_secret(name)
    result = subprocess.run(
        [sys.executable, "-c", MLFLOW_SCRIPT],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
             "MLFLOW_BACKEND_STORE_URI": secret["MLFLOW_BACKEND_STORE_URI"]},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["metrics"] == {"loss": 0.25}
