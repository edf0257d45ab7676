"""The template database on the bed's real PostgreSQL 15 (no mocks): a backend database
cloned from trackop's template equals one migrated in place by MLflow's migrations, belongs
wholly to the backend's role, and works with the MLflow client; concurrent clones (and a
concurrent first build) succeed with one build; a crashed build is rebuilt; a stranger's
database under the template's name is never taken over.

The reconciler's own steps (``_database_and_role``, ``_schema``) run against the server as
a non-superuser admin with CREATEDB and CREATEROLE, as in production; only Kubernetes is
left out (these steps do not use it)."""

from __future__ import annotations

import secrets
import threading
import uuid

import psycopg
import pytest
from psycopg import sql

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec, PostgresEndpoint
from trackop.controller.outcome import Context
from trackop.controller.steps import database, template
from trackop.controller.steps import schema as schema_step
from trackop.postgres import artifact_trigger, plans, sessions, statements, templates
from trackop.postgres import catalog as pg_catalog
from trackop.schema import revisions

pytestmark = pytest.mark.bed

def head() -> str:
    return revisions.head_revision()


@pytest.fixture
def superuser(superuser_conn: psycopg.Connection) -> psycopg.Connection:
    return superuser_conn


class Server:
    """Backends provisioned by the reconciler's database and schema steps, as one admin."""

    def __init__(self, bed_info: dict, superuser: psycopg.Connection, admin: str | None = None,
                 admin_password: str | None = None) -> None:
        self.pg = bed_info["postgres"]
        self.superuser = superuser
        self.admin = admin or f"adm_{uuid.uuid4().hex[:8]}"
        self.admin_password = admin_password or secrets.token_urlsafe(18)
        if admin is None:
            superuser.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                sql.Identifier(self.admin), sql.Literal(self.admin_password)))
        self.made: list[BackendSpec] = []

    def spec(self, name: str) -> BackendSpec:
        suffix = uuid.uuid4().hex[:8]
        return parse("tmpl-test", name, {"postgres": {
            "external": {"host": self.pg["host"], "port": self.pg["port"], "sslMode": "disable",
                         "adminSecretRef": {"name": "pg-admin"}},
            "database": f"mlflow_tmpl_{name.replace('-', '_')}_{suffix}"}})

    def provision(self, spec: BackendSpec, schema_templates: bool = True) -> tuple[Context, str]:
        """DatabaseReady and SchemaReady, exactly as Reconciler.reconcile runs them."""
        self.made.append(spec)
        password = secrets.token_urlsafe(24)
        ctx = Context(spec, {"metadata": {"uid": "u"}}, {})
        ctx.admin_login = (self.admin, self.admin_password)
        ctx.secrets.update({password, self.admin_password})
        with sessions.connect(spec.postgres, self.admin, self.admin_password) as conn:
            privileges = pg_catalog.admin_privileges(conn)
            login = database.ensure(ctx, conn, privileges, password, clones=template.clones(spec, schema_templates))
        revision, _ = schema_step.ensure(ctx, None, password, login.revision)
        assert revision == head()
        return ctx, password

    def connect(self, database: str, user: str | None = None, password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(host=self.pg["host"], port=self.pg["port"], user=user or self.pg["user"],
                               password=password or self.pg["password"], dbname=database, autocommit=True)

    def drop_all(self) -> None:
        with sessions.connect(PostgresEndpoint(self.pg["host"], self.pg["port"], "disable", "x", 5),
                              self.admin, self.admin_password) as conn:
            for spec in self.made:
                role = pg_catalog.inspect_role(conn, spec.role)
                database = pg_catalog.inspect_database(conn, spec.database)
                statements.apply(conn, plans.plan_drop(spec, role, database))


def drop_template(superuser: psycopg.Connection) -> None:
    """As an operator of the server would remove it (docs/backend.md), build leftovers too."""
    for name in (templates.template_name(head()), templates.template_build_name(head())):
        if superuser.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            superuser.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
            superuser.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def server(bed_info: dict, superuser: psycopg.Connection) -> Server:
    made = Server(bed_info, superuser)
    yield made
    made.drop_all()


def reasons(ctx: Context) -> list[str]:
    return [reason for _, reason, _ in ctx.events]


def messages(ctx: Context, reason: str) -> list[str]:
    return [message for _, r, message in ctx.events if r == reason]


# ---- what a database holds, for comparison ------------------------------------------------

def catalog(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Everything of the schema ``public`` that names no owner and no OID: tables and
    columns, indexes, constraints, sequences, types, functions, the schema's ACL."""
    queries = {
        "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default
                      FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
        "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
                          WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
        "sequences": """SELECT sequencename, data_type::text, start_value, increment_by FROM pg_sequences
                        WHERE schemaname = 'public' ORDER BY 1""",
        "relations": "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1",
        "types": "SELECT typname, typtype FROM pg_type WHERE typnamespace = 'public'::regnamespace ORDER BY 1",
        "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        "alembic_version": "SELECT version_num FROM alembic_version",
        "schema_acl": "SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE nspname = 'public'",
    }
    return {name: conn.execute(query).fetchall() for name, query in queries.items()}


def owners(conn: psycopg.Connection) -> set[str]:
    """The owners of every relation, type and function in ``public``."""
    rows = conn.execute(
        """SELECT relowner::regrole::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
           UNION SELECT typowner::regrole::text FROM pg_type WHERE typnamespace = 'public'::regnamespace
           UNION SELECT proowner::regrole::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace""").fetchall()
    return {row[0] for row in rows}


def template_objects_anywhere(superuser: psycopg.Connection) -> list[str]:
    """Databases in which trackop_template owns something (pg_shdepend, server-wide)."""
    return [row[0] for row in superuser.execute(
        """SELECT DISTINCT coalesce(d.datname, '<shared>') FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
           WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o'
             AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)""", (templates.TEMPLATE_ROLE,)).fetchall()]


# ---- the tests --------------------------------------------------------------------------------

def test_a_cloned_database_equals_a_migrated_one_and_mlflow_works_in_it(server: Server, superuser, monkeypatch,
                                                                       tmp_path):
    drop_template(superuser)
    cloned_spec = server.spec("cloned")
    ctx, password = server.provision(cloned_spec)

    # One build (this backend's reconcile made the template), then a clone, no migration here.
    assert reasons(ctx).count("TemplateBuilt") == 1
    assert ctx.cloned is not None and ctx.cloned[0] == templates.template_name(head())
    assert ctx.not_cloned is None
    created = messages(ctx, "DatabaseReconciled")
    assert any("cloned from template " + templates.template_name(head()) in m for m in created), created
    assert any("REASSIGN OWNED BY trackop_template" in m for m in created), created
    (migrated_event,) = messages(ctx, "SchemaMigrated")
    assert migrated_event.startswith(f"cloned the MLflow schema at revision {head()} from template")

    migrated_spec = server.spec("migrated")
    in_place, _ = server.provision(migrated_spec, schema_templates=False)
    assert in_place.cloned is None and "TemplateBuilt" not in reasons(in_place)
    (event,) = messages(in_place, "SchemaMigrated")
    assert event.startswith(f"migrated the MLflow schema from empty to {head()}")

    with server.connect(cloned_spec.database) as cloned, server.connect(migrated_spec.database) as migrated:
        assert catalog(cloned) == catalog(migrated)
        assert catalog(cloned)["alembic_version"] == [(head(),)]
        assert {"experiments", "runs", "metrics", "params", "tags", "alembic_version"} <= {
            name for name, kind in catalog(cloned)["relations"] if kind == "r"}
        # Every table, sequence, index, view, type and function is the backend role's.
        assert owners(cloned) == {cloned_spec.role}
        assert owners(migrated) == {migrated_spec.role}

    # The database itself: the role's, closed to PUBLIC, marked, not a template.
    row = superuser.execute(
        """SELECT pg_get_userbyid(datdba), has_database_privilege('public', oid, 'CONNECT'),
                  shobj_description(oid, 'pg_database'), datistemplate, datallowconn
           FROM pg_database WHERE datname = %s""", (cloned_spec.database,)).fetchone()
    assert row == (cloned_spec.role, False, cloned_spec.owner_marker, False, True)
    # The template: the admin's, cloneable, closed, marked; its role owns objects only inside it.
    row = superuser.execute(
        """SELECT pg_get_userbyid(datdba), datistemplate, datallowconn, has_database_privilege('public', oid, 'CONNECT'),
                  shobj_description(oid, 'pg_database')
           FROM pg_database WHERE datname = %s""", (templates.template_name(head()),)).fetchone()
    assert row == (server.admin, True, False, False, templates.template_marker(head()))
    assert superuser.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                             (templates.TEMPLATE_ROLE,)).fetchone() == (False,)
    assert template_objects_anywhere(superuser) == [templates.template_name(head())]

    # As the role: MLflow's future migrations can alter its tables, and the Direct-mode
    # artifact trigger installs (both need ownership).
    with server.connect(cloned_spec.database, cloned_spec.role, password) as conn:
        with conn.transaction():
            conn.execute("ALTER TABLE experiments ADD COLUMN trackop_probe integer")
            conn.execute("ALTER TABLE experiments DROP COLUMN trackop_probe")
        plan = artifact_trigger.plan_artifact_trigger("s3://bucket/team",
                                                      artifact_trigger.inspect_artifact_trigger(conn))
        assert len(statements.apply(conn, plan)) == 2

    # The real MLflow client logs a run in the clone.
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    url = (f"postgresql+psycopg://{cloned_spec.role}:{password}@{server.pg['host']}:{server.pg['port']}/"
           f"{cloned_spec.database}?sslmode=disable")
    client = MlflowClient(tracking_uri=url)
    experiment = client.create_experiment("cloned", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "alpha", "0.5")
    client.log_metric(run.info.run_id, "loss", 0.25)
    fetched = client.get_run(run.info.run_id)
    assert fetched.data.params == {"alpha": "0.5"} and fetched.data.metrics == {"loss": 0.25}
    with server.connect(cloned_spec.database) as conn:
        # The trigger gave the experiment the bucket location, as in Direct mode.
        assert conn.execute("SELECT artifact_location FROM experiments WHERE experiment_id = %s",
                            (int(experiment),)).fetchone() == (f"s3://bucket/team/{experiment}",)


def provision_concurrently(server: Server, specs: list[BackendSpec]) -> dict[str, Context]:
    """Each spec provisioned from its own thread at once, as kopf's handlers run; every
    thread's exception is reported."""
    contexts: dict[str, Context] = {}
    errors: list[BaseException] = []

    def provision(spec: BackendSpec) -> None:
        try:
            contexts[spec.name] = server.provision(spec)[0]
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=provision, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return contexts


def test_concurrent_first_backends_build_once_and_all_clone(server: Server, superuser):
    drop_template(superuser)
    specs = [server.spec(f"conc-{i}") for i in range(8)]
    contexts = provision_concurrently(server, specs)
    assert sum(reasons(ctx).count("TemplateBuilt") for ctx in contexts.values()) == 1
    assert all(ctx.cloned is not None for ctx in contexts.values()), \
        {name: ctx.not_cloned for name, ctx in contexts.items()}
    for spec in specs:
        with server.connect(spec.database) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]
            assert owners(conn) == {spec.role}
    assert template_objects_anywhere(superuser) == [templates.template_name(head())]


def test_concurrent_clones_of_an_existing_template(server: Server, superuser):
    server.provision(server.spec("first"))  # the template exists from here on
    specs = [server.spec(f"many-{i}") for i in range(8)]
    contexts = provision_concurrently(server, specs)
    assert len(contexts) == 8 and all(ctx.cloned is not None for ctx in contexts.values())
    assert not any("TemplateBuilt" in reasons(ctx) for ctx in contexts.values())


def _interrupted_build(server: Server, superuser: psycopg.Connection, marked: bool) -> None:
    """What a crash mid-build leaves: the build database, made and owned by the admin, with
    MLflow's first tables in it and no alembic_version (the Alembic run never committed), and
    a session still connected to it; no final template."""
    build = templates.template_build_name(head())
    with sessions.connect(server.spec("x").postgres, server.admin, server.admin_password) as conn:
        state = templates.inspect_template(conn, head())
        steps = templates.plan_template_role(state.role, pg_catalog.admin_privileges(conn))
        steps += templates.plan_template_build(state)
        if not marked:  # the crash came between CREATE DATABASE and its COMMENT
            steps = [s for s in steps if not s.summary.startswith(("marked database", "revoked CONNECT"))]
        statements.apply(conn, steps)
    with server.connect(build, server.admin, server.admin_password) as db:
        statements.apply(db, templates.plan_template_schema(open_=True))
        db.execute(templates.set_role(templates.TEMPLATE_ROLE))
        db.execute("CREATE TABLE experiments (experiment_id serial PRIMARY KEY, name varchar(256))")
    assert superuser.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                             (templates.template_name(head()),)).fetchone() == (0,)


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "crash-before-comment"])
def test_a_crashed_template_build_is_rebuilt(server: Server, superuser, marked: bool):
    drop_template(superuser)
    _interrupted_build(server, superuser, marked)
    build = templates.template_build_name(head())
    lingering = server.connect(build, server.admin, server.admin_password)  # a killed operator's session
    before = superuser.execute("SELECT oid FROM pg_database WHERE datname = %s", (build,)).fetchone()[0]
    try:
        spec = server.spec("after-crash")
        ctx, _ = server.provision(spec)
    finally:
        lingering.close()
    assert "TemplateBuilt" in reasons(ctx) and ctx.cloned is not None, ctx.not_cloned
    assert superuser.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (build,)).fetchone() == (0,)
    template_oid = superuser.execute("SELECT oid FROM pg_database WHERE datname = %s",
                                     (templates.template_name(head()),)).fetchone()[0]
    assert template_oid != before  # rebuilt, not the interrupted build renamed
    with server.connect(spec.database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]
        assert owners(conn) == {spec.role}


def test_an_interrupted_handover_is_finished_by_the_next_reconcile(server: Server, superuser):
    server.provision(server.spec("first"))
    spec = server.spec("half")
    password = secrets.token_urlsafe(24)
    # The crash came right after CREATE DATABASE ... TEMPLATE: the role exists, the database
    # is the role's, its objects are still trackop_template's.
    with sessions.connect(spec.postgres, server.admin, server.admin_password) as conn:
        statements.apply(conn, plans.plan_role(spec, None, plans.scram_verifier(conn, spec.role, password),
                                               pg_catalog.admin_privileges(conn)))
        statements.apply(conn, [templates.plan_clone(spec, templates.template_name(head()))])
    server.made.append(spec)
    with server.connect(spec.database) as conn:
        assert owners(conn) == {templates.TEMPLATE_ROLE}
    assert sessions.login_as_role(spec.postgres, spec.role, password, spec.database).handover_pending

    ctx = Context(spec, {"metadata": {"uid": "u"}}, {})
    ctx.admin_login = (server.admin, server.admin_password)
    with sessions.connect(spec.postgres, server.admin, server.admin_password) as conn:
        login = database.ensure(ctx, conn, pg_catalog.admin_privileges(conn), password,
                                clones=template.clones(spec, schema_templates=True))
    assert login.revision == head() and not login.handover_pending
    assert any("REASSIGN OWNED" in m for m in messages(ctx, "DatabaseReconciled"))
    with server.connect(spec.database) as conn:
        assert owners(conn) == {spec.role}


def test_another_admin_clones_the_template_and_delete_leaves_it(server: Server, bed_info: dict, superuser):
    server.provision(server.spec("first"))  # the template exists, built by some admin
    other = Server(bed_info, superuser)     # a second non-superuser admin, never a member before
    try:
        spec = other.spec("other-admin")
        ctx, _ = other.provision(spec)
        assert ctx.cloned is not None, ctx.not_cloned
        with other.connect(spec.database) as conn:
            assert owners(conn) == {spec.role}
    finally:
        other.drop_all()
    # deletionPolicy Delete dropped the backend's database and role only.
    assert superuser.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (spec.database,)).fetchone() \
        == (0,)
    assert superuser.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (spec.role,)).fetchone() == (0,)
    assert superuser.execute("SELECT datistemplate FROM pg_database WHERE datname = %s",
                             (templates.template_name(head()),)).fetchone() == (True,)


def test_a_strangers_database_under_the_template_name_is_never_taken_over(server: Server, superuser):
    drop_template(superuser)
    name = templates.template_name(head())
    superuser.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        spec = server.spec("beside-stranger")
        ctx, _ = server.provision(spec)
        assert ctx.cloned is None and "was not made by trackop" in ctx.not_cloned
        (event,) = messages(ctx, "SchemaMigrated")
        assert event.startswith("migrated the MLflow schema from empty") and "not cloned from a template" in event
        row = superuser.execute("SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), datistemplate "
                                "FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row == (superuser.info.user, None, False)
        with server.connect(spec.database) as conn:
            assert owners(conn) == {spec.role}
    finally:
        superuser.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
