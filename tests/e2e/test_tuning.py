"""Tuning and the connection budget on the bed's real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg import sql

from helpers import eventually
from kit import Admin, Backends

pytestmark = pytest.mark.bed


def as_role(secret: dict[str, str]) -> psycopg.Connection:
    return psycopg.connect(host=secret["PGHOST"], port=secret["PGPORT"], user=secret["PGUSER"],
                           password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], autocommit=True)


def test_database_scope_sets_work_mem_and_connection_limits_and_repairs_a_reset(backends: Backends, admin: Admin,
                                                                                superuser_conn):
    backends.admin_secret(admin)
    tuning = {"workMem": "16MB", "maintenanceWorkMem": "128MB", "maxConnections": 40}
    backends.apply("tuned", backends.spec(tuning=tuning))
    obj = backends.wait_ready("tuned")
    applied = backends.condition("tuned", "TuningApplied")
    assert applied["status"] == "True" and "work_mem=16MB" in applied["message"]
    assert "PendingRestart" not in {c["type"] for c in obj["status"]["conditions"]}
    secret = backends.connection_secret("tuned")
    with as_role(secret) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("16MB",)
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("128MB",)
    limits = superuser_conn.execute(
        "SELECT (SELECT datconnlimit FROM pg_database WHERE datname = %s), "
        "(SELECT rolconnlimit FROM pg_roles WHERE rolname = %s)", (secret["PGDATABASE"], secret["PGUSER"])).fetchone()
    assert limits == (40, 40)
    assert obj["status"]["connectionBudget"]["limit"] == 40

    superuser_conn.execute(sql.SQL("ALTER DATABASE {} RESET work_mem").format(sql.Identifier(secret["PGDATABASE"])))
    superuser_conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(sql.Identifier(secret["PGUSER"])))

    def repaired() -> bool:
        with as_role(secret) as conn:
            work_mem = conn.execute("SHOW work_mem").fetchone()[0]
        limit = superuser_conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s",
                                       (secret["PGUSER"],)).fetchone()[0]
        return work_mem == "16MB" and limit == 40

    eventually(repaired, "the hand reset to be repaired within the drift interval", timeout=30, interval=0.5)


def test_server_scope_needs_a_superuser(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    backends.apply("nosuper", backends.spec(tuning={"scope": "Server", "sharedBuffers": "256MB"}))
    cond = backends.wait_condition("nosuper", "TuningApplied", "False", "AdminNotSuperuser")
    assert "scope Database" in cond["message"]
    assert backends.condition("nosuper", "DatabaseReady")["status"] == "True"


def test_server_scope_reports_pending_restart_until_the_server_restarts(backends: Backends, bed_info, testbed,
                                                                        superuser_conn):
    pg = bed_info["postgres"]
    backends.secret("pg-admin", {"username": pg["user"], "password": pg["password"]})  # the bed's superuser
    backends.apply("server-scope", backends.spec(tuning={"scope": "Server", "sharedBuffers": "192MB",
                                                         "workMem": "8MB"}))
    try:
        cond = backends.wait_condition("server-scope", "PendingRestart", "True", "RestartNeeded")
        assert "shared_buffers" in cond["message"] and "work_mem" not in cond["message"]
        rows = dict(superuser_conn.execute(
            "SELECT name, pending_restart FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem')").fetchall())
        assert rows == {"shared_buffers": True, "work_mem": False}
        assert superuser_conn.execute("SHOW work_mem").fetchone() == ("8MB",), "reloaded, no restart needed"
        assert backends.condition("server-scope", "Ready")["status"] == "True", "a pending restart is not a failure"

        testbed.stop_component("postgres")
        testbed.start_component("postgres")
        backends.wait_condition("server-scope", "PendingRestart", "False", "NoRestartNeeded", timeout=90)
        with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                             dbname="postgres") as conn:
            assert conn.execute("SHOW shared_buffers").fetchone() == ("192MB",)
    finally:
        backends.delete("server-scope")
        eventually(lambda: backends.get("server-scope") is None, "the backend to go", timeout=60)
        with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET shared_buffers")
            conn.execute("ALTER SYSTEM RESET work_mem")
        testbed.stop_component("postgres")
        testbed.start_component("postgres")


def test_values_outside_the_servers_range_are_rejected_by_the_api_server(backends: Backends, admin: Admin):
    from kubernetes import client

    backends.admin_secret(admin)
    with pytest.raises(client.ApiException) as rejected:
        backends.apply("too-small", backends.spec(tuning={"workMem": "32kB"}))
    assert "spec.postgres.tuning.workMem" in json.loads(rejected.value.body)["message"]
    with pytest.raises(client.ApiException) as rejected:
        backends.apply("bad-unit", backends.spec(tuning={"workMem": "16XB"}))
    assert "spec.postgres.tuning.workMem" in json.loads(rejected.value.body)["message"]


LOAD_CLIENT = """
import os, sys, threading, mlflow
from mlflow.tracking import MlflowClient
client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
experiment = client.create_experiment("load-" + sys.argv[1])
run = client.create_run(experiment)
errors = []
def work(thread):
    try:
        for step in range(15):
            client.log_metric(run.info.run_id, f"m{thread}", step * 0.1, step=step)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(errors), errors[:1])
sys.exit(1 if errors else 0)
"""


def test_clients_at_the_declared_budget_log_without_connection_errors(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    clients = 6
    # Each client may hold pool 1 + overflow 1 = 2 connections: 12, plus 2 for a migration
    # and 2 for the operator's checks = 16, exactly the limit.
    tuning = {"maxConnections": 16, "pool": {"size": 1, "maxOverflow": 1}, "expectedClients": clients}
    backends.apply("load", backends.spec(tuning=tuning))
    obj = backends.wait_ready("load")
    assert obj["status"]["connectionBudget"] == {"required": 16, "limit": 16}
    assert backends.condition("load", "ConnectionBudget")["status"] == "True"
    secret = backends.connection_secret("load")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           **{k: v for k, v in secret.items() if k.startswith("MLFLOW_")}}
    assert env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == "1"
    procs = [subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(clients)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    failures = [(out, err[-500:]) for code, out, err in results if code != 0]
    assert not failures, failures
    with as_role(secret) as conn:
        assert conn.execute("SELECT count(*) FROM metrics").fetchone() == (clients * 3 * 15,)


def test_a_budget_over_the_limit_is_flagged_before_any_client_fails(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    backends.apply("over", backends.spec(tuning={"maxConnections": 20, "expectedClients": 100}))
    cond = backends.wait_condition("over", "ConnectionBudget", "False", "OverBudget")
    assert "20" in cond["message"] and "expectedClients" in cond["message"]
    obj = backends.get("over")
    assert obj["status"]["connectionBudget"]["required"] > obj["status"]["connectionBudget"]["limit"] == 20


def test_a_converged_backend_writes_nothing_while_other_sessions_come_and_go(backends: Backends, admin: Admin,
                                                                             bed_info: dict, operator):
    """Drift checks of a converged backend leave it untouched, even though the sessions of
    other databases (which the budget's verdict counts) change between checks."""
    from kit import DRIFT_INTERVAL

    backends.admin_secret(admin)
    # Database and role limits above the server's max_connections: the server-wide term binds,
    # the one other sessions (here the superuser's, counted although the admin cannot see
    # their details) eat into.
    backends.apply("quiet", backends.spec(tuning={"maxConnections": 5000}))
    obj = backends.wait_ready("quiet")
    assert obj["status"]["connectionBudget"]["limit"] < 5000
    # Every drift check: the fingerprint comparisons (which compute the budget's verdict from
    # the shared snapshot) and the full reconciles among them.
    reconciles = lambda: sum(v for k, v in operator.metrics().items()  # noqa: E731
                             if k.startswith("trackop_drift_checks_total"))
    # Let a first drift check settle what the create handler wrote.
    first = reconciles()
    eventually(lambda: reconciles() > first, "a drift check", timeout=DRIFT_INTERVAL * 4)
    version = backends.get("quiet")["metadata"]["resourceVersion"]
    checks = reconciles()
    pg = bed_info["postgres"]
    held: list[psycopg.Connection] = []
    try:
        deadline, step = time.monotonic() + DRIFT_INTERVAL * 4, 0
        while time.monotonic() < deadline:  # 1 to 5 other sessions, a different number each moment
            step += 1
            while len(held) < step % 5 + 1:
                held.append(psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"],
                                            password=pg["password"], dbname="postgres"))
            while len(held) > step % 5 + 1:
                held.pop().close()
            time.sleep(0.7)
    finally:
        for conn in held:
            conn.close()
    assert reconciles() >= checks + 2, "drift checks ran meanwhile"
    assert backends.get("quiet")["metadata"]["resourceVersion"] == version, "a converged drift check wrote"
