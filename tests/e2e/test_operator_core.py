"""The operator core end to end: ``trackop run`` against the bed's API server and PostgreSQL,
checked in the catalog and through the real MLflow client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from urllib.parse import quote

import psycopg
import pytest
from argv_sweep import workload_argvs
from helpers import eventually
from kit import Admin, Backends, assert_no_secret_leaks, make_admin
from psycopg import sql

from trackop.api.names import default_database_name
from trackop.schema import revisions
from trackop.specs import migration_job

pytestmark = pytest.mark.bed

MLFLOW_SCRIPT = """
import json, os, mlflow
from mlflow.tracking import MlflowClient
client = MlflowClient(os.environ["MLFLOW_BACKEND_STORE_URI"])
experiment = client.create_experiment("seed-" + os.urandom(4).hex())
run = client.create_run(experiment)
client.log_param(run.info.run_id, "alpha", "0.5")
client.log_metric(run.info.run_id, "rmse", 0.78)
back = client.get_run(run.info.run_id)
print(json.dumps({"run_id": run.info.run_id, "params": back.data.params, "metrics": back.data.metrics}))
"""


def run_mlflow_client(env: dict[str, str]) -> dict:
    """The real MLflow client in a fresh process that sees only ``env`` (plus PATH and HOME)."""
    result = subprocess.run(
        [sys.executable, "-c", MLFLOW_SCRIPT],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def connect_as(secret: dict[str, str]) -> psycopg.Connection:
    return psycopg.connect(host=secret["PGHOST"], port=secret["PGPORT"], user=secret["PGUSER"],
                           password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], autocommit=True)


def test_backend_becomes_ready_and_mlflow_logs_a_run(backends: Backends, admin: Admin, superuser_conn, operator):
    backends.admin_secret(admin)
    backends.apply("team-a", backends.spec())
    obj = backends.wait_ready("team-a")

    database = default_database_name(backends.namespace, "team-a")
    assert database.startswith(f"mlflow_{backends.namespace.replace('-', '_')}_team_a_")
    status = obj["status"]
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["database"] == {"host": "127.0.0.1", "port": backends.pg["port"], "name": database, "role": database}
    assert status["schema"] == {"mlflowVersion": "3.17.2", "revision": revisions.head_revision()}
    assert status["connectionSecret"] == "team-a-mlflow"
    assert {c["type"] for c in status["conditions"]} == {"Ready", "DatabaseReady", "SchemaReady", "ConnectionBudget"}
    assert status["connectionBudget"]["required"] > 0 and status["connectionBudget"]["limit"] > 0

    # The catalog: a LOGIN role and nothing more, owning a database closed to PUBLIC.
    role = superuser_conn.execute(
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
        "FROM pg_roles WHERE rolname = %s", (database,)).fetchone()
    assert role == (True, False, False, False, False, False)
    owner, public_connect = superuser_conn.execute(
        "SELECT pg_get_userbyid(datdba), has_database_privilege('public', oid, 'CONNECT') "
        "FROM pg_database WHERE datname = %s", (database,)).fetchone()
    assert (owner, public_connect) == (database, False)

    secret = backends.connection_secret("team-a")
    assert set(secret) == {"MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "PGHOST", "PGPORT", "PGDATABASE",
                           "PGUSER", "PGPASSWORD", "PGSSLMODE", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
                           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"}
    assert len(secret["PGPASSWORD"]) >= 32
    with connect_as(secret) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (revisions.head_revision(),)

    # The real MLflow client, given only the Secret's URI, logs a run and reads it back.
    logged = run_mlflow_client({"MLFLOW_BACKEND_STORE_URI": secret["MLFLOW_BACKEND_STORE_URI"]})
    assert logged["params"] == {"alpha": "0.5"} and logged["metrics"] == {"rmse": 0.78}
    with connect_as(secret) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (logged["run_id"],)).fetchone() == (1,)
        assert conn.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'alpha'",
                            (logged["run_id"],)).fetchone() == ("0.5",)
        # Tables belong to the role, not the admin.
        owners = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert owners == [(database,)]

    reasons = [e.reason for e in backends.events("team-a")]
    assert {"ConnectionSecretCreated", "RoleReconciled", "DatabaseReconciled", "SchemaMigrated"} <= set(reasons)
    assert_no_secret_leaks([secret["PGPASSWORD"], admin.password], operator, backends, "team-a")


def test_reapply_and_restart_keep_the_password_and_add_no_events(backends: Backends, admin: Admin,
                                                                 superuser_conn, operator):
    backends.admin_secret(admin)
    backends.apply("stable", backends.spec())
    backends.wait_ready("stable")
    password = backends.connection_secret("stable")["PGPASSWORD"]
    # Let the first drift checks pass, then count.
    time.sleep(4)
    events_before = len(backends.events("stable"))
    version_before = backends.get("stable")["metadata"]["resourceVersion"]

    backends.patch("stable", {"spec": backends.spec()})  # a re-apply of the same spec
    operator.restart()
    time.sleep(3 * 3)  # three drift intervals after the resume

    assert backends.connection_secret("stable")["PGPASSWORD"] == password
    assert len(backends.events("stable")) == events_before, [e.message for e in backends.events("stable")]
    database = default_database_name(backends.namespace, "stable")
    assert superuser_conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (database,)).fetchone() == (1,)
    assert backends.get("stable")["status"]["phase"] == "Ready"
    # A converged backend is not rewritten by the drift timer.
    assert backends.get("stable")["metadata"]["resourceVersion"] == version_before


HOSTILE_PASSWORD = "p@ss:/w%rd#?&=+ ;'\"--\\ ü"


def test_own_password_with_uri_separators_and_a_neighbour_left_untouched(backends: Backends, admin: Admin, operator):
    backends.admin_secret(admin)
    backends.apply("neighbour", backends.spec())
    backends.wait_ready("neighbour")
    neighbour = backends.connection_secret("neighbour")

    backends.secret("own-password", {"password": HOSTILE_PASSWORD})
    suffix = "_" + backends.namespace.replace("-", "_")
    long_name = "x" * (63 - len(suffix)) + suffix  # PostgreSQL's limit, unique per test
    backends.apply("hostile", backends.spec(database=long_name, passwordSecretRef={"name": "own-password"}))
    backends.wait_ready("hostile")
    secret = backends.connection_secret("hostile")
    assert secret["PGPASSWORD"] == HOSTILE_PASSWORD and secret["PGDATABASE"] == long_name
    logged = run_mlflow_client({"MLFLOW_BACKEND_STORE_URI": secret["MLFLOW_BACKEND_STORE_URI"]})
    assert logged["params"] == {"alpha": "0.5"}
    with connect_as(neighbour) as conn:  # the other backend still logs in with its own password
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    assert_no_secret_leaks([HOSTILE_PASSWORD, admin.password], operator, backends, "hostile")


def test_rotating_the_own_password_secret_updates_role_and_connection_secret(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    backends.secret("own", {"password": "first-password-0123456789"})
    backends.apply("rotating", backends.spec(passwordSecretRef={"name": "own"}))
    backends.wait_ready("rotating")
    backends.secret("own", {"password": "second-password-0123456789"})
    eventually(lambda: backends.connection_secret("rotating")["PGPASSWORD"] == "second-password-0123456789",
               "the connection Secret to follow the rotation", timeout=30)

    # The Secret is written first (a password is never only in the role), the role right after.
    def logs_in() -> bool:
        try:
            with connect_as(backends.connection_secret("rotating")) as conn:
                return conn.execute("SELECT current_user").fetchone()[0].startswith("mlflow_")
        except psycopg.OperationalError:
            return False

    eventually(logs_in, "the role to take the rotated password", timeout=30)


def test_admin_secret_missing_then_created(backends: Backends, admin: Admin):
    backends.apply("late", backends.spec())
    cond = backends.wait_condition("late", "DatabaseReady", "False", "AdminSecretMissing")
    assert "pg-admin" in cond["message"] and "username and password" in cond["message"]
    assert backends.get("late")["status"]["phase"] == "Provisioning"
    backends.admin_secret(admin)
    backends.wait_ready("late", timeout=120)


def test_wrong_admin_password_is_reported_without_leaking_and_recovers(backends: Backends, admin: Admin, operator):
    wrong = "Wr0ng-" + admin.password
    backends.secret("pg-admin", {"username": admin.user, "password": wrong})
    backends.apply("badpass", backends.spec())
    cond = backends.wait_condition("badpass", "Ready", "False", "AdminAuthenticationFailed")
    assert admin.user in cond["message"] and "Secret" in cond["message"]
    assert_no_secret_leaks([wrong, admin.password], operator, backends, "badpass")
    backends.admin_secret(admin)
    backends.wait_ready("badpass", timeout=120)


def test_admin_without_createdb_is_told_what_to_grant(backends: Backends, superuser_conn):
    weak = make_admin(superuser_conn, "CREATEROLE")
    backends.admin_secret(weak)
    backends.apply("weak", backends.spec())
    cond = backends.wait_condition("weak", "Ready", "False", "AdminLacksPrivileges")
    assert "CREATEDB" in cond["message"] and weak.user in cond["message"]
    superuser_conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(weak.user)))
    backends.wait_ready("weak", timeout=120)


def test_database_owned_by_another_role_is_never_taken_over(backends: Backends, admin: Admin, superuser_conn):
    taken = f"taken_{backends.namespace.replace('-', '_')}"
    superuser_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(taken)))
    backends.admin_secret(admin)
    backends.apply("squatter", backends.spec(database=taken, role=f"r_{taken}"))
    cond = backends.wait_condition("squatter", "DatabaseReady", "False", "DatabaseOwnedByOtherRole")
    assert taken in cond["message"] and "postgres" in cond["message"]
    owner = superuser_conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                   (taken,)).fetchone()
    assert owner == ("postgres",)


def test_postgres_outage_during_provisioning_recovers_by_itself(backends: Backends, admin: Admin, testbed):
    backends.admin_secret(admin)
    testbed.stop_component("postgres")
    try:
        backends.apply("outage", backends.spec())
        cond = backends.wait_condition("outage", "DatabaseReady", "False", "ServerUnreachable")
        assert "127.0.0.1" in cond["message"]
    finally:
        testbed.start_component("postgres")
    backends.wait_ready("outage", timeout=120)


def test_drift_is_repaired(backends: Backends, admin: Admin, superuser_conn):
    backends.admin_secret(admin)
    backends.apply("drift", backends.spec())
    backends.wait_ready("drift")
    secret = backends.connection_secret("drift")
    role = sql.Identifier(secret["PGUSER"])
    superuser_conn.execute(sql.SQL("ALTER ROLE {} CREATEDB PASSWORD 'changed-by-hand'").format(role))
    superuser_conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(secret["PGDATABASE"])))

    def repaired() -> bool:
        createdb = superuser_conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s",
                                          (secret["PGUSER"],)).fetchone()[0]
        public = superuser_conn.execute("SELECT has_database_privilege('public', oid, 'CONNECT') FROM pg_database "
                                        "WHERE datname = %s", (secret["PGDATABASE"],)).fetchone()[0]
        return not createdb and not public

    eventually(repaired, "role attributes and PUBLIC CONNECT to be restored", timeout=30)
    eventually(lambda: _logs_in(secret), "the password to be restored", timeout=30)


def _logs_in(secret: dict[str, str]) -> bool:
    try:
        with connect_as(secret):
            return True
    except psycopg.OperationalError:
        return False


def test_schema_newer_than_target_is_never_downgraded(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    backends.apply("newer", backends.spec())
    backends.wait_ready("newer")
    secret = backends.connection_secret("newer")
    with connect_as(secret) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    cond = backends.wait_condition("newer", "SchemaReady", "False", "SchemaNewerThanTarget", timeout=30)
    assert "ffffffffffff" in cond["message"]
    assert backends.get("newer")["status"]["phase"] == "Degraded"
    with connect_as(secret) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("ffffffffffff",)
        conn.execute("UPDATE alembic_version SET version_num = %s", (revisions.head_revision(),))
    backends.wait_ready("newer", timeout=30)


def test_inline_refuses_another_mlflow_version(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    backends.apply("other-version", {**backends.spec(), "schema": {"mlflowVersion": "3.1.0"}})
    cond = backends.wait_condition("other-version", "SchemaReady", "False", "VersionNotBundled")
    assert "3.17.2" in cond["message"] and "Job" in cond["message"]
    # The database itself is provisioned; only the schema waits.
    assert backends.condition("other-version", "DatabaseReady")["status"] == "True"


def test_job_migration_runs_mlflow_db_upgrade(backends: Backends, admin: Admin, kubelet, kube_api):
    from kubernetes import client

    backends.admin_secret(admin)
    backends.apply("by-job", {**backends.spec(), "schema": {"migration": "Job"}})
    backends.wait_condition("by-job", "SchemaReady", "False", "Migrating")
    jobs = client.BatchV1Api(kube_api).list_namespaced_job(backends.namespace).items
    assert len(jobs) == 1
    container = jobs[0].spec.template.spec.containers[0]
    assert container.image == "ghcr.io/mlflow/mlflow:v3.17.2"
    # MLflow's own command in-process, the URI read from the env: never in the argv.
    assert container.command == migration_job.UPGRADE_COMMAND and not container.args
    assert container.env[0].value_from.secret_key_ref.name == "by-job-mlflow"
    argvs, references = workload_argvs(kube_api, backends.namespace)
    assert references == []
    password = backends.connection_secret("by-job")["PGPASSWORD"]
    assert argvs and not any(password in text or quote(password, safe="") in text for _, text in argvs)
    assert jobs[0].spec.backoff_limit is not None and jobs[0].spec.ttl_seconds_after_finished is not None

    finished = kubelet.run_job(backends.namespace, jobs[0].metadata.name)
    assert finished.status.succeeded == 1
    obj = backends.wait_ready("by-job", timeout=60)
    assert obj["status"]["schema"]["revision"] == revisions.head_revision()


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_deletion_policy(backends: Backends, admin: Admin, superuser_conn, policy: str):
    backends.admin_secret(admin)
    name = f"del-{policy.lower()}"
    backends.apply(name, {**backends.spec(), "deletionPolicy": policy})
    backends.wait_ready(name)
    secret = backends.connection_secret(name)
    database = secret["PGDATABASE"]
    # A client still connected must not block a Delete.
    client_conn = connect_as(secret)
    backends.delete(name)
    eventually(lambda: backends.get(name) is None, f"{name} to be deleted", timeout=60)
    client_conn.close()

    db_exists = superuser_conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (database,)).fetchone()
    role_exists = superuser_conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (database,)).fetchone()
    if policy == "Retain":
        assert db_exists == (1,) and role_exists == (1,)
        # The credentials survive too, so a re-created backend adopts database, role and password.
        assert backends.connection_secret(name)["PGPASSWORD"] == secret["PGPASSWORD"]
        backends.apply(name, backends.spec())
        backends.wait_ready(name)
        assert backends.connection_secret(name)["PGPASSWORD"] == secret["PGPASSWORD"]
    else:
        assert db_exists == (0,) and role_exists == (0,)
