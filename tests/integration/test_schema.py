"""MLflow's schema by MLflow's own migrations, on the bed's real PostgreSQL (no mocks)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from trackop.schema.child import child_command, migrate_in_subprocess
from trackop.schema.errors import SchemaMigrationError, SchemaNewerThanTarget
from trackop.schema.migration import MIGRATION_LOCK_KEY, MigrationResult, current_revision, migrate, preload
from trackop.schema.revisions import head_revision, known_revisions

pytestmark = pytest.mark.bed

# URI separators in the password: every one must survive URL encoding and redaction.
PASSWORD_CORE = "p@ss:/w%rd#?x"
MLFLOW_TABLES = {
    "experiments", "runs", "params", "metrics", "latest_metrics", "tags",
    "registered_models", "model_versions",
}


@dataclass(frozen=True)
class Database:
    role: str
    password: str
    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return url_for(self, self.password)


def url_for(db: Database, password: str) -> str:
    return (
        f"postgresql+psycopg://{quote(db.role, safe='')}:{quote(password, safe='')}"
        f"@{db.host}:{db.port}/{quote(db.name, safe='')}?sslmode=disable"
    )


@pytest.fixture
def admin_conninfo(bed_info: dict) -> dict:
    pg = bed_info["postgres"]
    return {"host": pg["host"], "port": pg["port"], "user": pg["user"], "password": pg["password"]}


@pytest.fixture
def fresh_db(admin_conninfo: dict):
    """A fresh LOGIN role and an empty database it owns; both dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    db = Database(
        role=f"mlflow_t_{suffix}", password=f"{PASSWORD_CORE}{suffix}", name=f"mlflow_t_{suffix}",
        host=admin_conninfo["host"], port=int(admin_conninfo["port"]),
    )
    with psycopg.connect(**admin_conninfo, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(db.role), sql.Literal(db.password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db.name), sql.Identifier(db.role)))
    try:
        yield db
    finally:
        with psycopg.connect(**admin_conninfo, dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(db.role)))


def admin_query(admin_conninfo: dict, db: Database, query: sql.Composable | str, params=None) -> list[tuple]:
    with psycopg.connect(**admin_conninfo, dbname=db.name, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def test_empty_database_is_migrated_to_head_with_tables_owned_by_the_role(fresh_db, admin_conninfo):
    assert current_revision(fresh_db.url) is None

    result = migrate(fresh_db.url)

    assert result.before is None
    assert result.after == head_revision()
    assert result.seconds > 0
    assert admin_query(admin_conninfo, fresh_db, "SELECT version_num FROM alembic_version") == [(result.after,)]
    assert current_revision(fresh_db.url) == head_revision()
    owners = dict(admin_query(
        admin_conninfo, fresh_db,
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
        (sorted(MLFLOW_TABLES),),
    ))
    assert set(owners) == MLFLOW_TABLES
    assert set(owners.values()) == {fresh_db.role}


def test_migrating_again_is_a_no_op(fresh_db, admin_conninfo):
    first = migrate(fresh_db.url)
    tables_before = admin_query(admin_conninfo, fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")

    second = migrate(fresh_db.url)

    assert second.before == second.after == first.after == head_revision()
    assert admin_query(admin_conninfo, fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == tables_before
    assert admin_query(admin_conninfo, fresh_db, "SELECT count(*) FROM alembic_version") == [(1,)]


def test_the_real_mlflow_client_works_on_the_migrated_database(fresh_db, admin_conninfo, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # a Default experiment's ./mlruns would land here, not in the repo
    migrate(fresh_db.url)

    client = MlflowClient(tracking_uri=fresh_db.url)
    experiment_id = client.create_experiment("trackop-schema", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "alpha", "0.5")
    client.log_metric(run.info.run_id, "loss", 0.25, step=3)
    client.set_terminated(run.info.run_id)

    fetched = client.get_run(run.info.run_id)
    assert fetched.data.params == {"alpha": "0.5"}
    assert fetched.data.metrics == {"loss": 0.25}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [3]

    assert admin_query(
        admin_conninfo, fresh_db, "SELECT experiment_id, status FROM runs WHERE run_uuid = %s", (run.info.run_id,)
    ) == [(int(experiment_id), "FINISHED")]
    assert admin_query(
        admin_conninfo, fresh_db, "SELECT key, value FROM params WHERE run_uuid = %s", (run.info.run_id,)
    ) == [("alpha", "0.5")]
    # The client still agrees with the schema trackop reports.
    assert current_revision(fresh_db.url) == head_revision()


def test_an_older_mlflow_schema_is_upgraded_to_head(fresh_db, admin_conninfo):
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    config = _get_alembic_config(db_url="")
    revisions = list(ScriptDirectory.from_config(config).walk_revisions())  # head first
    older = revisions[5].revision
    assert older != head_revision() and older in known_revisions()

    # What an older MLflow left behind: its initial tables, then its migrations up to `older`.
    engine = sqlalchemy.create_engine(fresh_db.url, poolclass=sqlalchemy.pool.NullPool)
    try:
        InitialBase.metadata.create_all(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, older)
    finally:
        engine.dispose()
    assert current_revision(fresh_db.url) == older

    result = migrate(fresh_db.url)

    assert (result.before, result.after) == (older, head_revision())
    assert admin_query(admin_conninfo, fresh_db, "SELECT version_num FROM alembic_version") == [(head_revision(),)]


def test_a_newer_unknown_revision_is_refused_and_left_untouched(fresh_db, admin_conninfo):
    migrate(fresh_db.url)
    admin_query(admin_conninfo, fresh_db, "UPDATE alembic_version SET version_num = %s RETURNING 1", ("ffffffffffff",))

    with pytest.raises(SchemaNewerThanTarget) as caught:
        migrate(fresh_db.url)

    message = str(caught.value)
    assert "ffffffffffff" in message and head_revision() in message
    assert fresh_db.password not in message
    assert admin_query(admin_conninfo, fresh_db, "SELECT version_num FROM alembic_version") == [("ffffffffffff",)]


def test_two_concurrent_migrations_run_mlflows_migration_once(fresh_db, admin_conninfo):
    preload()  # as the operator does at start; the race is then on the database
    barrier = threading.Barrier(2)
    results: list[MigrationResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(migrate(fresh_db.url))
        except BaseException as exc:  # surfaced by the assertions below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert len(results) == 2
    assert {r.after for r in results} == {head_revision()}
    # One migrated the empty database; the other waited for the lock and found the head.
    assert sorted((r.before or "") for r in results) == ["", head_revision()]
    assert admin_query(admin_conninfo, fresh_db, "SELECT count(*) FROM alembic_version") == [(1,)]


def test_a_held_lock_times_out_without_touching_the_database(fresh_db, admin_conninfo):
    # Advisory locks are per database: hold trackop's key in the same database.
    with psycopg.connect(**admin_conninfo, dbname=fresh_db.name, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        with pytest.raises(SchemaMigrationError, match="advisory lock"):
            migrate(fresh_db.url, lock_timeout_s=0.5)
    assert current_revision(fresh_db.url) is None
    # Released with the holder's session: migrate goes through now.
    assert migrate(fresh_db.url, lock_timeout_s=5).after == head_revision()


def test_a_wrong_password_fails_without_leaking_it(fresh_db):
    wrong = "wr@ng:/p%ss#?" + uuid.uuid4().hex[:6]
    url = url_for(fresh_db, wrong)

    for call in (lambda: migrate(url, lock_timeout_s=1), lambda: current_revision(url)):
        with pytest.raises(SchemaMigrationError) as caught:
            call()
        message = str(caught.value)
        assert "password authentication failed" in message  # says what failed
        for secret in (wrong, quote(wrong, safe=""), url, fresh_db.password):
            assert secret not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


# ---- migrate_in_subprocess: the same migration in a child process ----------------------------


def test_a_child_process_migrates_an_empty_database_to_head(fresh_db, admin_conninfo):
    result = migrate_in_subprocess(fresh_db.url)

    assert (result.before, result.after) == (None, head_revision())
    assert result.child_peak_rss_kib and result.child_peak_rss_kib > 10_000  # a Python with MLflow in it
    assert admin_query(admin_conninfo, fresh_db, "SELECT version_num FROM alembic_version") == [(result.after,)]
    owners = {owner for _, owner in admin_query(
        admin_conninfo, fresh_db, "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {fresh_db.role}
    again = migrate_in_subprocess(fresh_db.url)
    assert again.before == again.after == head_revision()


def test_a_child_process_reports_a_wrong_password_without_leaking_it(fresh_db):
    wrong = "wr@ng:/p%ss#?" + uuid.uuid4().hex[:6]
    url = url_for(fresh_db, wrong)

    with pytest.raises(SchemaMigrationError) as caught:
        migrate_in_subprocess(url, lock_timeout_s=1)

    message = str(caught.value)
    assert "password authentication failed" in message and f"database {fresh_db.name!r}" in message
    for secret in (wrong, quote(wrong, safe=""), url, fresh_db.password):
        assert secret not in message
    assert caught.value.__cause__ is None


def test_a_child_process_refuses_a_newer_revision_as_schema_newer_than_target(fresh_db, admin_conninfo):
    migrate(fresh_db.url)
    admin_query(admin_conninfo, fresh_db, "UPDATE alembic_version SET version_num = %s RETURNING 1", ("ffffffffffff",))

    with pytest.raises(SchemaNewerThanTarget) as caught:
        migrate_in_subprocess(fresh_db.url)

    assert "ffffffffffff" in str(caught.value) and fresh_db.password not in str(caught.value)
    assert admin_query(admin_conninfo, fresh_db, "SELECT version_num FROM alembic_version") == [("ffffffffffff",)]


def _sessions(admin_conninfo: dict, db: Database, besides: int) -> list[int]:
    return [pid for (pid,) in admin_query(
        admin_conninfo, db, "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid NOT IN (%s, pg_backend_pid())",
        (db.name, besides))]


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_the_password_reaches_the_child_through_stdin_only(fresh_db, admin_conninfo, monkeypatch):
    """Neither the child's argv (/proc/<pid>/cmdline, readable by every user) nor its
    environment carries the URL or the password: checked on the running child."""
    children: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        children.append(real_popen(*args, **kwargs))
        return children[-1]

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    outcome: list[object] = []
    with psycopg.connect(**admin_conninfo, dbname=fresh_db.name, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))  # the child waits on it
        worker = threading.Thread(target=lambda: outcome.append(migrate_in_subprocess(fresh_db.url)))
        worker.start()
        try:
            _wait_for(lambda: _sessions(admin_conninfo, fresh_db, holder.info.backend_pid), "the child's session")
            (child,) = children
            assert child.args == child_command()
            cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes().decode()
            environ = Path(f"/proc/{child.pid}/environ").read_bytes().decode(errors="replace")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            worker.join(timeout=120)
    assert "trackop.schema.child" in cmdline
    for secret in (fresh_db.password, quote(fresh_db.password, safe=""), fresh_db.url):
        assert secret not in cmdline and secret not in environ
    assert [r.after for r in outcome] == [head_revision()]


PARENT = """
import sys
from trackop.schema.child import migrate_in_subprocess
print("parent up", flush=True)
migrate_in_subprocess(sys.stdin.readline().strip(), lock_timeout_s=120)
"""


def test_the_child_dies_with_its_parent(fresh_db, admin_conninfo):
    """A SIGKILLed operator leaves no migration running: the child reads EOF on stdin and exits."""
    with psycopg.connect(**admin_conninfo, dbname=fresh_db.name, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            parent.stdin.write(fresh_db.url + "\n")
            parent.stdin.flush()
            (child_session,) = _wait_for(lambda: _sessions(admin_conninfo, fresh_db, holder.info.backend_pid),
                                         "the child's session")
            parent.kill()
            parent.wait(timeout=30)
            _wait_for(lambda: not _sessions(admin_conninfo, fresh_db, holder.info.backend_pid),
                      f"the child's session {child_session} to end", timeout=30)
        finally:
            parent.kill()
            parent.wait(timeout=30)
            for stream in (parent.stdin, parent.stdout):
                stream.close()
    assert current_revision(fresh_db.url) is None  # it never got the lock
