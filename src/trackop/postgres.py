"""Every SQL statement trackop sends to PostgreSQL.

Deciding is pure (``plan_role``, ``plan_database``: catalog state in, statements out);
``apply`` is the one place that executes them. Every identifier and literal goes
through ``psycopg.sql``. Passwords travel as SCRAM-SHA-256 verifiers computed on this
side (as psql's ``\\password`` does), so the clear password never reaches the server's
statement log, ``pg_stat_activity`` or an error message.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from .api import BackendSpec, ExternalServer

APPLICATION_NAME = "trackop"


class PostgresError(Exception):
    """A failure with a condition reason and a message that says the fix. Never holds a secret."""

    reason = "PostgresError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(PostgresError):
    reason = "ServerUnreachable"


class AdminAuthFailed(PostgresError):
    reason = "AdminAuthenticationFailed"


class AdminLacksPrivileges(PostgresError):
    reason = "AdminLacksPrivileges"


class DatabaseTaken(PostgresError):
    reason = "DatabaseOwnedByOtherRole"


class RoleTaken(PostgresError):
    reason = "RoleNotManagedByTrackop"


class StatementFailed(PostgresError):
    reason = "StatementFailed"


@dataclass(frozen=True)
class Statement:
    """One step of a plan: what it does (for events) and the SQL that does it."""

    summary: str
    query: sql.Composed
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    autocommit: bool = False


@dataclass(frozen=True)
class AdminPrivileges:
    superuser: bool
    createdb: bool
    createrole: bool


@dataclass(frozen=True)
class RoleState:
    superuser: bool
    createdb: bool
    createrole: bool
    can_login: bool
    replication: bool
    bypass_rls: bool
    comment: str | None
    admin_is_member: bool


@dataclass(frozen=True)
class DatabaseState:
    owner: str
    comment: str | None
    public_can_connect: bool


# ---- connections -----------------------------------------------------------------------

def connect(server: ExternalServer, user: str, password: str, dbname: str = "postgres") -> psycopg.Connection:
    """Connect with autocommit; map failures to conditions that name the cause."""
    try:
        return psycopg.connect(
            host=server.host, port=server.port, user=user, password=password, dbname=dbname,
            sslmode=server.ssl_mode, connect_timeout=server.connect_timeout,
            application_name=APPLICATION_NAME, autocommit=True,
        )
    except psycopg.OperationalError as exc:
        raise classify_connect_error(exc, server, user, dbname) from None


def classify_connect_error(exc: psycopg.OperationalError, server: ExternalServer, user: str,
                           dbname: str) -> PostgresError:
    text = str(exc)
    where = f"{server.host}:{server.port}"
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in ("28P01", "28000") or "password authentication failed" in text:
        return AdminAuthFailed(
            f"PostgreSQL at {where} rejected the password of role {user!r}: correct the credentials "
            "in the Secret and trackop retries by itself")
    # psycopg reports no SQLSTATE for a failed connection attempt: match the server's text too.
    if sqlstate == "3D000" or f'database "{dbname}" does not exist' in text:
        return ServerUnreachable(f"database {dbname!r} does not exist on {where}")
    return ServerUnreachable(
        f"cannot connect to PostgreSQL at {where} as {user!r} ({_cause(text)}): check host, port, "
        "sslMode and network policy; trackop retries with backoff")


def connection_lost(exc: psycopg.OperationalError, server: ExternalServer) -> ServerUnreachable:
    """A session that broke after it connected (the server restarted or terminated it)."""
    return ServerUnreachable(
        f"lost the connection to PostgreSQL at {server.host}:{server.port} ({_cause(str(exc))}): "
        "the server restarted or ended the session; trackop retries with backoff")


def _cause(text: str) -> str:
    """libpq's first line ends with the cause ("... failed: Connection refused"); later lines are hints."""
    first = text.strip().splitlines()[0] if text.strip() else "no detail"
    return first.rsplit("failed: ", 1)[-1].strip()


def scram_verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed client-side by libpq."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


# ---- reading the catalog ---------------------------------------------------------------

def admin_privileges(conn: psycopg.Connection) -> AdminPrivileges:
    row = conn.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    return AdminPrivileges(*row)


def check_admin(privileges: AdminPrivileges, admin_user: str) -> None:
    if privileges.superuser or (privileges.createdb and privileges.createrole):
        return
    missing = [name for name, has in (("CREATEDB", privileges.createdb),
                                      ("CREATEROLE", privileges.createrole)) if not has]
    raise AdminLacksPrivileges(
        f"admin role {admin_user!r} lacks {' and '.join(missing)}: "
        f"run ALTER ROLE {admin_user} {' '.join(missing)} as a superuser, or use another admin Secret")


def inspect_role(conn: psycopg.Connection, role: str) -> RoleState | None:
    row = conn.execute(
        """SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolreplication, rolbypassrls,
                  shobj_description(oid, 'pg_authid'), pg_has_role(current_user, oid, 'MEMBER')
           FROM pg_roles WHERE rolname = %s""",
        (role,),
    ).fetchone()
    return RoleState(*row) if row else None


def inspect_database(conn: psycopg.Connection, database: str) -> DatabaseState | None:
    row = conn.execute(
        """SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'),
                  has_database_privilege('public', oid, 'CONNECT')
           FROM pg_database WHERE datname = %s""",
        (database,),
    ).fetchone()
    return DatabaseState(*row) if row else None


# ---- plans (pure) ----------------------------------------------------------------------

def plan_role(spec: BackendSpec, state: RoleState | None, verifier: str | None,
              admin: AdminPrivileges) -> list[Statement]:
    """Statements that make the role exist with LOGIN and nothing more.

    ``verifier`` is set when the password must be (re)set: on creation, or when a login
    with the Secret's password failed.
    """
    role = sql.Identifier(spec.role)
    steps: list[Statement] = []
    if state is None:
        assert verifier is not None, "a new role needs a password"
        steps.append(Statement(
            f"created role {spec.role}",
            sql.SQL("CREATE ROLE {} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                role, sql.Literal(verifier)),
        ))
        steps.append(Statement(
            f"marked role {spec.role} as managed",
            sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(spec.owner_marker)),
        ))
    else:
        if state.comment != spec.owner_marker:
            raise RoleTaken(
                f"role {spec.role!r} exists and is not managed by this TrackingBackend: trackop never "
                "takes a role over; choose another spec.postgres.role or drop the role")
        # Only drifted attributes are named: PostgreSQL wants a superuser to even mention some.
        drift = [keyword for keyword, bad in (
            ("LOGIN", not state.can_login), ("NOSUPERUSER", state.superuser),
            ("NOCREATEDB", state.createdb), ("NOCREATEROLE", state.createrole),
            ("NOREPLICATION", state.replication), ("NOBYPASSRLS", state.bypass_rls),
        ) if bad]
        if drift:
            steps.append(Statement(
                f"restored role {spec.role} attributes ({' '.join(drift)})",
                sql.SQL("ALTER ROLE {} WITH {}").format(role, sql.SQL(" ").join(map(sql.SQL, drift))),
            ))
        if verifier is not None:
            steps.append(Statement(
                f"set the password of role {spec.role} from Secret {spec.connection_secret}",
                sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(role, sql.Literal(verifier)),
            ))
    # CREATE DATABASE ... OWNER and DROP DATABASE need membership unless superuser.
    if not admin.superuser and (state is None or not state.admin_is_member):
        steps.append(Statement(
            f"let the admin act for role {spec.role}",
            sql.SQL("GRANT {} TO CURRENT_USER").format(role),
        ))
    return steps


def role_is_ours(spec: BackendSpec, role: RoleState | None) -> bool:
    return role is not None and role.comment == spec.owner_marker


def is_ours(spec: BackendSpec, state: DatabaseState, role: RoleState | None) -> bool:
    """Our marker, or owned by our (marked) role: the latter covers a crash between
    CREATE DATABASE and its COMMENT, and never a stranger's database of the same owner name."""
    return state.comment == spec.owner_marker or (state.owner == spec.role and role_is_ours(spec, role))


def plan_database(spec: BackendSpec, state: DatabaseState | None, role: RoleState | None) -> list[Statement]:
    """Statements that make the database exist, owned by the role, closed to PUBLIC."""
    db_id = sql.Identifier(spec.database)
    role_id = sql.Identifier(spec.role)
    steps: list[Statement] = []
    if state is None:
        steps.append(Statement(
            f"created database {spec.database} owned by {spec.role}",
            sql.SQL("CREATE DATABASE {} WITH OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(db_id, role_id),
            autocommit=True,
        ))
    elif not is_ours(spec, state, role):
        raise DatabaseTaken(
            f"database {spec.database!r} exists, owned by {state.owner!r}, and is not managed by this "
            "TrackingBackend: trackop never takes a database over; set spec.postgres.database to "
            "another name or drop that database")
    else:
        if state.owner != spec.role:
            steps.append(Statement(
                f"restored owner of database {spec.database} to {spec.role}",
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db_id, role_id),
            ))
    if state is None or state.comment != spec.owner_marker:
        steps.append(Statement(
            f"marked database {spec.database} as managed",
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(db_id, sql.Literal(spec.owner_marker)),
        ))
    if state is None or state.public_can_connect:
        steps.append(Statement(
            f"revoked CONNECT on database {spec.database} from PUBLIC",
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db_id),
        ))
    return steps


def plan_drop(spec: BackendSpec, role: RoleState | None, database: DatabaseState | None) -> list[Statement]:
    """Statements for ``deletionPolicy: Delete``: only what this backend owns is dropped."""
    steps: list[Statement] = []
    if database is not None and is_ours(spec, database, role):
        steps.append(Statement(
            f"dropped database {spec.database}",
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(spec.database)),
            autocommit=True,
        ))
    if role_is_ours(spec, role):
        steps.append(Statement(
            f"dropped role {spec.role}",
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(spec.role)),
        ))
    return steps


# ---- applying --------------------------------------------------------------------------

def apply(conn: psycopg.Connection, steps: list[Statement]) -> list[str]:
    """Execute a plan; consecutive transactional statements share one transaction."""
    done: list[str] = []
    pending: list[Statement] = []

    def flush() -> None:
        if not pending:
            return
        with conn.transaction():
            for step in pending:
                _execute(conn, step)
        done.extend(step.summary for step in pending)
        pending.clear()

    for step in steps:
        if step.autocommit:
            flush()
            _execute(conn, step)
            done.append(step.summary)
        else:
            pending.append(step)
    flush()
    return done


def _execute(conn: psycopg.Connection, step: Statement) -> None:
    try:
        conn.execute(step.query)
    except psycopg.Error as exc:
        # The server's message names objects, never the verifier; the statement is not echoed.
        detail = exc.diag.message_primary if exc.diag and exc.diag.message_primary else type(exc).__name__
        raise StatementFailed(f"PostgreSQL refused the step '{step.summary}': {detail}") from None


@dataclass(frozen=True)
class RoleLogin:
    """What a login as the MLflow role found: whether the password works, and the schema."""

    ok: bool
    revision: str | None = None


def login_as_role(server: ExternalServer, role: str, password: str, database: str) -> RoleLogin:
    """Log in as the role to its database (the password's drift check) and read the MLflow
    revision on the same connection, so a converged backend costs one connection here."""
    try:
        with connect(server, role, password, database) as conn:
            if conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0] is None:
                return RoleLogin(True, None)
            row = conn.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
            return RoleLogin(True, row[0] if row else None)
    except AdminAuthFailed:
        return RoleLogin(False)


def terminate_connections(conn: psycopg.Connection, database: str) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)


# ---- Direct mode: every experiment's artifacts in the bucket ---------------------------
# A client on a database URI gives new experiments a local artifact location (./mlruns)
# unless it is told otherwise. This trigger, in the backend's own database, rewrites a
# local location (no URI scheme, or file:) to <artifact root>/<experiment id> as MLflow
# writes it, for the Default experiment and every new one, whatever the client's version.
# Locations with a scheme (s3://, mlflow-artifacts:/, ...) are left as they are.

ARTIFACT_TRIGGER = "trackop_artifact_location"


def artifact_trigger_body(root: str) -> str:
    return sql.SQL("""
BEGIN
  IF NEW.artifact_location IS NULL
     OR NEW.artifact_location !~ '^[A-Za-z][A-Za-z0-9+.-]*:'
     OR NEW.artifact_location ~* '^file:' THEN
    NEW.artifact_location := {root} || '/' || NEW.experiment_id;
  END IF;
  RETURN NEW;
END
""").format(root=sql.Literal(root.rstrip("/"))).as_string(None)


@dataclass(frozen=True)
class ArtifactTriggerState:
    function_body: str | None
    trigger_exists: bool


def inspect_artifact_trigger(conn: psycopg.Connection) -> ArtifactTriggerState:
    body = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = %s AND pronamespace = 'public'::regnamespace",
        (ARTIFACT_TRIGGER,)).fetchone()
    trigger = conn.execute(
        "SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass('public.experiments')",
        (ARTIFACT_TRIGGER,)).fetchone()
    return ArtifactTriggerState(body[0] if body else None, trigger is not None)


def plan_artifact_trigger(root: str, state: ArtifactTriggerState) -> list[Statement]:
    """Statements (run as the role, owner of MLflow's tables) that install or update the trigger."""
    body = artifact_trigger_body(root)
    name = sql.Identifier(ARTIFACT_TRIGGER)
    steps = []
    if state.function_body != body:
        steps.append(Statement(
            f"set new experiments' artifact location to {root.rstrip('/')}/<experiment id>",
            sql.SQL("CREATE OR REPLACE FUNCTION public.{}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                name, sql.Literal(body)),
        ))
    if not state.trigger_exists:
        steps.append(Statement(
            "installed the artifact location trigger on experiments",
            sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF artifact_location ON public.experiments "
                    "FOR EACH ROW EXECUTE FUNCTION public.{}()").format(name, name),
        ))
    return steps


# ---- tuning ----------------------------------------------------------------------------

# Per-session settings trackop manages with ALTER DATABASE ... SET (scope Database).
DATABASE_SETTINGS = ("work_mem", "maintenance_work_mem", "effective_cache_size")


class InvalidSetting(PostgresError):
    reason = "InvalidSetting"


@dataclass(frozen=True)
class TuningState:
    database_settings: dict[str, str]      # ALTER DATABASE ... SET values now in force
    database_limit: int
    role_limit: int
    system_settings: dict[str, str]        # what postgresql.auto.conf (ALTER SYSTEM) holds
    pending_restart: tuple[str, ...]       # parameters waiting for a restart
    max_connections: int
    reserved_slots: int
    used_by_others: int                    # client connections to other databases now


def inspect_tuning(conn: psycopg.Connection, spec: BackendSpec, superuser: bool) -> TuningState:
    """One round of catalog reads: everything tuning and the connection budget need."""
    config = conn.execute(
        """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
           WHERE d.datname = %s AND s.setrole = 0""", (spec.database,)).fetchone()
    database_settings = dict(item.split("=", 1) for item in (config[0] if config else []))
    limits = conn.execute(
        """SELECT (SELECT datconnlimit FROM pg_database WHERE datname = %s),
                  (SELECT rolconnlimit FROM pg_roles WHERE rolname = %s)""",
        (spec.database, spec.role)).fetchone()
    system = dict(conn.execute(
        """SELECT name, setting FROM pg_file_settings
           WHERE sourcefile LIKE '%%postgresql.auto.conf' AND error IS NULL""").fetchall()) \
        if superuser else {}  # pg_file_settings is readable by superusers only
    pending = tuple(row[0] for row in conn.execute(
        "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name").fetchall())
    max_connections, reserved, others = conn.execute(
        """SELECT current_setting('max_connections')::int,
                  current_setting('superuser_reserved_connections')::int
                    + coalesce(current_setting('reserved_connections', true)::int, 0),
                  (SELECT count(*) FROM pg_stat_activity
                    -- Without pg_read_all_stats, other roles' rows show a NULL backend_type but
                    -- still their database and role: count those too. Background processes
                    -- have no database or no role.
                    WHERE datname IS NOT NULL AND datname <> %s AND usesysid IS NOT NULL
                      AND coalesce(backend_type, 'client backend') = 'client backend')""",
        (spec.database,)).fetchone()
    return TuningState(database_settings, limits[0], limits[1], system, pending, max_connections, reserved, others)


def check_settings(conn: psycopg.Connection, desired: dict[str, str], kb_values: dict[str, int]) -> None:
    """Check every value against the server's own limits before any is applied, so a value
    PostgreSQL would refuse never leaves the others half-applied."""
    if not desired:
        return
    rows = conn.execute(
        "SELECT name, unit, min_val, max_val FROM pg_settings WHERE name = ANY(%s)", (list(desired),)).fetchall()
    known = {name: (unit, min_val, max_val) for name, unit, min_val, max_val in rows}
    for name in desired:
        if name not in known:
            raise InvalidSetting(f"PostgreSQL on this server has no setting {name}")
        unit, min_val, max_val = known[name]
        value = kb_values.get(name)
        if value is None:
            continue
        per_unit = {"kB": 1, "8kB": 8, "MB": 1024}.get(unit or "", 1)
        if not float(min_val) <= value / per_unit <= float(max_val):
            raise InvalidSetting(
                f"{name} = {desired[name]} is outside this server's range "
                f"({min_val}..{max_val} {unit or ''}); nothing was applied")


def settings_in_effect(conn: psycopg.Connection, names: list[str]) -> dict[str, int]:
    """The running values of ``names`` in the units ``tuning.auto_tune`` uses: kB for memory,
    a plain count otherwise."""
    rows = conn.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (names,)).fetchall()
    per_unit = {"kB": 1, "8kB": 8, "MB": 1024, "GB": 1024 * 1024}
    return {name: int(setting) * per_unit.get(unit or "", 1) for name, setting, unit in rows}


def plan_database_tuning(spec: BackendSpec, desired: dict[str, str], connection_limit: int,
                         state: TuningState) -> list[Statement]:
    db, role = sql.Identifier(spec.database), sql.Identifier(spec.role)
    steps = []
    for name in DATABASE_SETTINGS:
        want, have = desired.get(name), state.database_settings.get(name)
        if want is not None and want != have:
            steps.append(Statement(f"set {name} = {want} on database {spec.database}",
                                   sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, sql.Identifier(name),
                                                                                 sql.Literal(want))))
        elif want is None and have is not None:
            steps.append(Statement(f"reset {name} on database {spec.database}",
                                   sql.SQL("ALTER DATABASE {} RESET {}").format(db, sql.Identifier(name))))
    if state.database_limit != connection_limit:
        steps.append(Statement(f"set the connection limit of database {spec.database} to {connection_limit}",
                               sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(connection_limit))))
    if state.role_limit != connection_limit:
        steps.append(Statement(f"set the connection limit of role {spec.role} to {connection_limit}",
                               sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(role, sql.Literal(connection_limit))))
    return steps


def plan_system_tuning(desired: dict[str, str], state: TuningState) -> list[Statement]:
    """ALTER SYSTEM for each setting postgresql.auto.conf does not hold yet, then a reload."""
    steps = [
        Statement(f"set {name} = {value} with ALTER SYSTEM",
                  sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)),
                  autocommit=True)
        for name, value in desired.items() if state.system_settings.get(name) != value
    ]
    if steps:
        steps.append(Statement("reloaded the server configuration", sql.SQL("SELECT pg_reload_conf()"),
                               autocommit=True))
    return steps
