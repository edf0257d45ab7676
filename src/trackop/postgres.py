"""Every SQL statement trackop sends to PostgreSQL.

Deciding is pure (``plan_role``, ``plan_database``: catalog state in, statements out);
``apply`` is the one place that executes them. Every identifier and literal goes
through ``psycopg.sql``. Passwords travel as SCRAM-SHA-256 verifiers computed on this
side (as psql's ``\\password`` does), so the clear password never reaches the server's
statement log, ``pg_stat_activity`` or an error message.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .api.v1alpha1 import BackendSpec, PostgresEndpoint

APPLICATION_NAME = "trackop"


class PostgresError(Exception):
    """A failure with a condition reason and a message that says the fix. Never holds a secret."""

    reason = "PostgresError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(PostgresError):
    reason = "ServerUnreachable"


class PasswordRejected(PostgresError):
    reason = "AdminAuthenticationFailed"


class AdminLacksPrivileges(PostgresError):
    reason = "AdminLacksPrivileges"


class DatabaseTaken(PostgresError):
    reason = "DatabaseOwnedByOtherRole"


class RoleTaken(PostgresError):
    reason = "RoleNotManagedByTrackop"


class StatementFailed(PostgresError):
    reason = "StatementFailed"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate  # the server's SQLSTATE, for the callers that retry on some


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

def connect(server: PostgresEndpoint, user: str, password: str, dbname: str = "postgres") -> psycopg.Connection:
    """Connect with autocommit; map failures to conditions that name the cause."""
    try:
        return psycopg.connect(
            host=server.host, port=server.port, user=user, password=password, dbname=dbname,
            sslmode=server.ssl_mode, connect_timeout=server.connect_timeout,
            application_name=APPLICATION_NAME, autocommit=True,
        )
    except psycopg.OperationalError as exc:
        raise classify_connect_error(exc, server, user, dbname) from None


class AdminSessions:
    """Admin sessions kept between reconciles of backends on the same server with the same
    admin credentials: a converged backend's drift check then opens one new session (the
    role's login, which is its password check), not two. Each new session is a process forked
    on the server and a SCRAM exchange (4096 PBKDF2 rounds on the operator's side too).

    A session is handed out again only while younger than ``max_age`` seconds (so a password
    changed on the server, pg_hba.conf or a dropped admin is noticed within that time, as by a
    fresh login), only after a ``SELECT 1`` shows it alive (a restarted server is not reported
    as a failure), and only if it was given back idle after a reconcile that raised nothing.
    Keyed by server, user and a hash of the password: new credentials get new sessions."""

    def __init__(self, max_idle: int = 4, max_age: float = 60.0) -> None:
        self.max_idle = max_idle
        self.max_age = max_age
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[tuple[float, psycopg.Connection]]] = {}

    @staticmethod
    def _key(server: PostgresEndpoint, user: str, password: str) -> tuple:
        return (server.host, server.port, server.ssl_mode, user, hashlib.sha256(password.encode()).hexdigest())

    def _take(self, key: tuple) -> tuple[float, psycopg.Connection] | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                born, conn = idle.pop()
            if time.monotonic() - born < self.max_age:
                try:
                    conn.execute("SELECT 1")
                    return born, conn
                except psycopg.Error:
                    pass
            conn.close()

    def _give(self, key: tuple, born: float, conn: psycopg.Connection) -> None:
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE \
                or time.monotonic() - born >= self.max_age:
            conn.close()
            return
        with self._lock:
            idle = self._idle.setdefault(key, [])
            idle.append((born, conn))
            extra = idle[:-self.max_idle] if len(idle) > self.max_idle else []
            del idle[:len(extra)]
        for _, old in extra:
            old.close()

    @contextmanager
    def session(self, server: PostgresEndpoint, user: str, password: str) -> Iterator[psycopg.Connection]:
        key = self._key(server, user, password)
        found = self._take(key)
        born, conn = found if found else (time.monotonic(), connect(server, user, password))
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._give(key, born, conn)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for _, conn in sessions:
                conn.close()


ADMIN_SESSIONS = AdminSessions()


def admin_session(server: PostgresEndpoint, user: str, password: str):
    """An admin session in database ``postgres``, reused between reconciles (AdminSessions)."""
    return ADMIN_SESSIONS.session(server, user, password)


def classify_connect_error(exc: psycopg.OperationalError, server: PostgresEndpoint, user: str,
                           dbname: str) -> PostgresError:
    text = str(exc)
    where = f"{server.host}:{server.port}"
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in ("28P01", "28000") or "password authentication failed" in text:
        return PasswordRejected(
            f"PostgreSQL at {where} rejected the password of role {user!r}: correct the credentials "
            "in the Secret and trackop retries by itself")
    # psycopg reports no SQLSTATE for a failed connection attempt: match the server's text too.
    if sqlstate == "3D000" or f'database "{dbname}" does not exist' in text:
        return ServerUnreachable(f"database {dbname!r} does not exist on {where}")
    return ServerUnreachable(
        f"cannot connect to PostgreSQL at {where} as {user!r} ({_cause(text)}): check host, port, "
        "sslMode and network policy; trackop retries with backoff")


def connection_lost(exc: psycopg.OperationalError, server: PostgresEndpoint) -> ServerUnreachable:
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
        raise StatementFailed(f"PostgreSQL refused the step '{step.summary}': {detail}", exc.sqlstate) from None


@dataclass(frozen=True)
class RoleLogin:
    """What a login as the MLflow role found: whether the password works, and the schema."""

    ok: bool
    revision: str | None = None
    # The template role still owns objects here: a clone whose hand-over was interrupted.
    handover_pending: bool = False


def login_as_role(server: PostgresEndpoint, role: str, password: str, database: str) -> RoleLogin:
    """Log in as the role to its database (the password's drift check) and read the MLflow
    revision on the same connection, so a converged backend costs one connection here."""
    try:
        with connect(server, role, password, database) as conn:
            table, pending = conn.execute(
                """SELECT to_regclass('public.alembic_version'),
                          EXISTS (SELECT 1 FROM pg_shdepend
                                  WHERE refclassid = 'pg_authid'::regclass AND deptype = 'o'
                                    AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)
                                    AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))""",
                (TEMPLATE_ROLE,)).fetchone()
            if pending:
                return RoleLogin(True, None, handover_pending=True)
            if table is None:
                return RoleLogin(True, None)
            row = conn.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
            return RoleLogin(True, row[0] if row else None)
    except PasswordRejected:
        return RoleLogin(False)


# ---- the template database: new backends are cloned, not migrated -----------------------
# MLflow's migrations are about 800 statements and a second of CPU per database. Per
# server and Alembic head, trackop keeps one template database, made once by MLflow's own
# migrations (schema.migrate), and creates a new backend's database with
# ``CREATE DATABASE db WITH OWNER role TEMPLATE trackop_mlflow_<head>`` (a file-level
# copy, about 0.1 s), then hands the copied objects to the backend's role.
#
# Who owns what, and why:
# - The objects inside a template (tables, sequences, indexes, types, alembic_version) are
#   owned by ``trackop_template``, a NOLOGIN role that owns nothing else on the server.
#   Inside a clone, ``REASSIGN OWNED BY trackop_template TO <backend role>`` gives every one
#   of them to the backend's role, which must own them: MLflow's later migrations ALTER
#   them as that role, and the drift checks log in as it.
# - The template *database* is owned by the admin that built it, never by
#   ``trackop_template``. REASSIGN OWNED also reassigns the role's shared objects
#   (databases, tablespaces) wherever it runs: a template database owned by
#   ``trackop_template`` would be handed to the first backend role cloned from it
#   (verified on PostgreSQL 15). So the role owns objects inside databases only, and a
#   clone is refused when it owns any database or tablespace (``TemplateRole.shared_objects``).
# - The template is ``IS_TEMPLATE true``: any CREATEDB role may clone it, not only its
#   owner, so backends whose admin Secrets name other admins clone it too (it holds an
#   empty schema, no data). ``ALLOW_CONNECTIONS false``: CREATE DATABASE ... TEMPLATE
#   fails (SQLSTATE 55006) while any session is connected to the template, so nobody may
#   connect to it once it is complete.
# - REASSIGN OWNED needs the admin to have the privileges of both roles: a non-superuser
#   admin is granted membership in ``trackop_template`` (PostgreSQL 15 lets a CREATEROLE
#   role grant any non-superuser role; 16 and later only roles it holds with ADMIN OPTION,
#   which its creator gets). Where that is refused, the backend is migrated in place.
#
# Completeness: a template is built under a temporary name (``..._build``) and renamed,
# marked and closed to connections in one transaction only once MLflow's migrations are
# through. A database under the final name with trackop's marker is therefore complete;
# a build database left by a crash is dropped and rebuilt. The build runs under an
# advisory lock (TEMPLATE_LOCK_KEY) taken in database ``postgres``, where every trackop
# admin session connects: advisory locks are per database, so that is what makes it
# server-wide, and concurrent reconciles and operator replicas build it once.

TEMPLATE_ROLE = "trackop_template"
TEMPLATE_ROLE_MARKER = ("trackop template role: owns the MLflow objects inside trackop's template databases "
                        "(trackop_mlflow_<revision>); not a backend (docs/backend.md)")
TEMPLATE_PREFIX = "trackop_mlflow_"
TEMPLATE_LOCK_KEY: int = int.from_bytes(hashlib.sha256(b"trackop.dev/mlflow-template").digest()[:8], "big",
                                        signed=True)


class TemplateUnavailable(Exception):
    """A clone cannot be made; the message says why and what to do. The backend's database
    is then created empty and migrated in place (never a condition of its own)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def template_name(revision: str) -> str:
    return f"{TEMPLATE_PREFIX}{revision}"


def template_build_name(revision: str) -> str:
    return f"{TEMPLATE_PREFIX}{revision}_build"


def template_marker(revision: str) -> str:
    return (f"trackop template: the MLflow schema at Alembic revision {revision}, made by MLflow's own "
            "migrations; new backend databases are cloned from it; not a backend (docs/backend.md)")


def template_build_marker(revision: str) -> str:
    return (f"trackop template build for Alembic revision {revision}: incomplete until renamed to "
            f"{template_name(revision)}; a leftover is dropped and rebuilt")


@dataclass(frozen=True)
class TemplateDatabase:
    name: str
    owner: str
    comment: str | None
    is_template: bool
    admin_has_owner_privileges: bool  # the admin may rename or drop it


@dataclass(frozen=True)
class TemplateRole:
    comment: str | None
    can_login: bool
    admin_has_privileges: bool        # pg_has_role(current_user, role, 'USAGE'): REASSIGN OWNED, SET ROLE
    shared_objects: int               # databases and tablespaces it owns (must be none)


@dataclass(frozen=True)
class TemplateState:
    revision: str
    admin: str                        # current_user
    template: TemplateDatabase | None
    build: TemplateDatabase | None
    role: TemplateRole | None


def inspect_template(conn: psycopg.Connection, revision: str) -> TemplateState:
    names = [template_name(revision), template_build_name(revision)]
    rows = conn.execute(
        """SELECT datname, pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), datistemplate,
                  pg_has_role(current_user, datdba, 'USAGE')
           FROM pg_database WHERE datname = ANY(%s)""", (names,)).fetchall()
    found = {row[0]: TemplateDatabase(*row) for row in rows}
    role = conn.execute(
        """SELECT shobj_description(r.oid, 'pg_authid'), r.rolcanlogin, pg_has_role(current_user, r.oid, 'USAGE'),
                  (SELECT count(*) FROM pg_database WHERE datdba = r.oid)
                    + (SELECT count(*) FROM pg_tablespace WHERE spcowner = r.oid)
           FROM pg_roles r WHERE r.rolname = %s""", (TEMPLATE_ROLE,)).fetchone()
    admin = conn.execute("SELECT current_user").fetchone()[0]
    return TemplateState(revision, admin, found.get(names[0]), found.get(names[1]),
                         TemplateRole(*role) if role else None)


def check_template_role(role: TemplateRole | None) -> None:
    """Raises TemplateUnavailable unless the role is trackop's and owns no shared object, so
    that REASSIGN OWNED BY it moves the objects of one database and nothing else."""
    if role is not None and role.comment != TEMPLATE_ROLE_MARKER:
        raise TemplateUnavailable(
            f"role {TEMPLATE_ROLE} exists and was not made by trackop (trackop never takes a role over): "
            "rename or drop it to let trackop clone new backends from a template")
    if role is not None and role.shared_objects:
        raise TemplateUnavailable(
            f"role {TEMPLATE_ROLE} owns {role.shared_objects} database(s) or tablespace(s), which REASSIGN OWNED "
            f"would hand to a backend's role: ALTER DATABASE ... OWNER TO another role")


def template_ready(state: TemplateState) -> bool:
    """True: a complete template to clone; False: none yet (build it). Raises
    TemplateUnavailable when trackop's names are taken by something it did not make, or
    when the hand-over could give away more than the clone's objects."""
    role = state.role
    check_template_role(role)
    template = state.template
    if template is None:
        return False
    if template.comment != template_marker(state.revision):
        raise TemplateUnavailable(
            f"database {template.name} exists and was not made by trackop (trackop never takes a database "
            "over): rename or drop it to let trackop build its template")
    if role is None:
        raise TemplateUnavailable(
            f"template {template.name} exists but role {TEMPLATE_ROLE}, which owns its objects, does not: remove "
            "the template (docs/backend.md) and trackop builds it again")
    return True


def plan_template_role(role: TemplateRole | None, admin: AdminPrivileges) -> list[Statement]:
    """The NOLOGIN role that owns the template's objects, and the admin's membership in it
    (REASSIGN OWNED BY it and SET ROLE to it need that, unless superuser)."""
    name = sql.Identifier(TEMPLATE_ROLE)
    steps: list[Statement] = []
    if role is None:
        steps.append(Statement(f"created role {TEMPLATE_ROLE} (NOLOGIN, owns the template's objects)",
                               sql.SQL("CREATE ROLE {} WITH NOLOGIN NOCREATEDB NOCREATEROLE").format(name)))
        steps.append(Statement(f"marked role {TEMPLATE_ROLE} as trackop's",
                               sql.SQL("COMMENT ON ROLE {} IS {}").format(name, sql.Literal(TEMPLATE_ROLE_MARKER))))
    elif role.can_login:
        steps.append(Statement(f"restored NOLOGIN on role {TEMPLATE_ROLE}",
                               sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(name)))
    if not admin.superuser and (role is None or not role.admin_has_privileges):
        steps.append(Statement(f"let the admin act for role {TEMPLATE_ROLE}",
                               sql.SQL("GRANT {} TO CURRENT_USER").format(name)))
    return steps


def plan_template_build(state: TemplateState) -> list[Statement]:
    """Drop a build left by a crash (only trackop's), then an empty build database owned by
    the admin, marked, closed to PUBLIC. Run under the template lock."""
    name = template_build_name(state.revision)
    build_id = sql.Identifier(name)
    steps: list[Statement] = []
    leftover = state.build
    if leftover is not None:
        # Ours: marked, or (a crash between CREATE DATABASE and its COMMENT) unmarked and
        # owned by this very admin under trackop's reserved name.
        if leftover.comment != template_build_marker(state.revision) and not (
                leftover.comment is None and leftover.owner == state.admin):
            raise TemplateUnavailable(
                f"database {name} exists and was not made by trackop (trackop never takes a database over): "
                "rename or drop it to let trackop build its template")
        if not leftover.admin_has_owner_privileges:
            raise TemplateUnavailable(
                f"database {name}, left by an interrupted template build, is owned by {leftover.owner}, whose "
                f"databases admin {state.admin} may not drop: drop it as {leftover.owner} or a superuser")
        steps.append(Statement(f"dropped {name}, left by an interrupted template build",
                               sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(build_id), autocommit=True))
    steps.append(Statement(f"created database {name} to build the MLflow template in",
                           sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0 ENCODING 'UTF8'").format(build_id),
                           autocommit=True))
    steps.append(Statement(f"marked database {name} as trackop's template build",
                           sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                               build_id, sql.Literal(template_build_marker(state.revision)))))
    steps.append(Statement(f"revoked CONNECT on database {name} from PUBLIC",
                           sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(build_id)))
    return steps


def plan_template_schema(open_: bool) -> list[Statement]:
    """In the build database: let the template role create MLflow's objects in ``public``
    (owned by pg_database_owner, the admin here) for the migration, and take that back
    after, so clones get ``public`` exactly as a new database has it."""
    role = sql.Identifier(TEMPLATE_ROLE)
    if open_:
        return [Statement(f"let {TEMPLATE_ROLE} create in schema public",
                          sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))]
    return [Statement(f"revoked CREATE on schema public from {TEMPLATE_ROLE}",
                      sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(role))]


def set_role(role: str) -> sql.Composed:
    """For the template's migration: the admin's session acts as the template role, so
    every object MLflow's migrations create is that role's."""
    return sql.SQL("SET ROLE {}").format(sql.Identifier(role))


def objects_not_owned_by(conn: psycopg.Connection, role: str) -> list[str]:
    """Relations, types and functions in ``public`` of the connected database that ``role``
    does not own (a template must have none: the hand-over moves only the role's objects)."""
    rows = conn.execute(
        """SELECT kind || ' ' || name FROM (
             SELECT 'relation' AS kind, relname::text AS name, relowner AS owner FROM pg_class
              WHERE relnamespace = 'public'::regnamespace
             UNION ALL SELECT 'type', typname::text, typowner FROM pg_type WHERE typnamespace = 'public'::regnamespace
             UNION ALL SELECT 'function', proname::text, proowner FROM pg_proc WHERE pronamespace = 'public'::regnamespace
           ) o WHERE owner <> (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY 1""", (role,)).fetchall()
    return [row[0] for row in rows]


def plan_template_publish(revision: str) -> list[Statement]:
    """One transaction: the complete build becomes the template under its final name,
    marked, cloneable by any CREATEDB role and closed to connections."""
    final = sql.Identifier(template_name(revision))
    return [
        Statement(f"renamed the complete build to {template_name(revision)}",
                  sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(template_build_name(revision)),
                                                                   final)),
        Statement(f"marked database {template_name(revision)} as trackop's template",
                  sql.SQL("COMMENT ON DATABASE {} IS {}").format(final, sql.Literal(template_marker(revision)))),
        Statement(f"made {template_name(revision)} a template closed to connections",
                  sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(final)),
    ]


def plan_clone(spec: BackendSpec, template: str) -> Statement:
    return Statement(
        f"created database {spec.database} owned by {spec.role}, cloned from template {template}",
        sql.SQL("CREATE DATABASE {} WITH OWNER {} TEMPLATE {}").format(
            sql.Identifier(spec.database), sql.Identifier(spec.role), sql.Identifier(template)),
        autocommit=True,
    )


def plan_discard_clone(spec: BackendSpec) -> Statement:
    """A clone made seconds ago whose hand-over was refused: the database goes, and is made
    again empty (then migrated in place)."""
    return Statement(f"dropped database {spec.database}: its objects could not be handed to {spec.role}",
                     sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(spec.database)),
                     autocommit=True)


def plan_handover(spec: BackendSpec) -> Statement:
    """Run inside the backend's database: every object the clone brought (owned by the
    template role) becomes the backend role's. Only objects of the current database, and
    the template role's shared objects, of which it has none (see above)."""
    return Statement(
        f"gave role {spec.role} the MLflow objects in {spec.database} (REASSIGN OWNED BY {TEMPLATE_ROLE})",
        sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(TEMPLATE_ROLE), sql.Identifier(spec.role)),
    )


def poll_until(attempt: Callable[[], bool], timeout_s: float) -> bool:
    """``attempt`` (pg_try_advisory_lock, say) until it succeeds or ``timeout_s`` passes,
    backing off from 50 ms to 0.5 s; False if it never succeeded."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while not attempt():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)
    return True


def try_advisory_lock(conn: psycopg.Connection, key: int, timeout_s: float) -> bool:
    """The session advisory lock ``key``, polled until ``timeout_s``; False if not had."""
    return poll_until(lambda: conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0], timeout_s)


def advisory_unlock(conn: psycopg.Connection, key: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


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


# ---- the drift checks' server snapshot ---------------------------------------------------

@dataclass(frozen=True)
class ServerSnapshot:
    """What the catalog says about roles, databases and server settings, in one round of
    reads for every backend on the server (drift.py compares each backend's share of it
    with what it was right after its last full reconcile).

    Rows are plain tuples: drift.py only compares them, it never interprets them, except
    for the connection budget's inputs (``connection_limit``, ``sessions``)."""

    roles: dict[str, tuple]           # rolname -> every attribute trackop sets or checks
    databases: dict[str, tuple]       # datname -> owner, ACL, limits, settings, comment
    settings: tuple                   # server-wide: limits, pending restarts, postgresql.auto.conf
    sessions: dict[str, int]          # datname -> client sessions now (the budget counts them)
    max_connections: int
    reserved_slots: int

    def role_limit(self, role: str) -> int | None:
        row = self.roles.get(role)
        return None if row is None else row[_ROLE_CONNLIMIT]

    def database_limit(self, database: str) -> int | None:
        row = self.databases.get(database)
        return None if row is None else row[_DATABASE_CONNLIMIT]

    def used_by_others(self, database: str) -> int:
        return self.total_sessions - self.sessions.get(database, 0)

    @functools.cached_property
    def total_sessions(self) -> int:
        return sum(self.sessions.values())


_ROLE_CONNLIMIT = 6      # index of rolconnlimit in a roles row (below, the name left out)
_DATABASE_CONNLIMIT = 3  # index of datconnlimit in a databases row (below, the name left out)


def observe_server(conn: psycopg.Connection, superuser: bool, roles: list[str] | None = None,
                   databases: list[str] | None = None) -> ServerSnapshot:
    """The catalog rows of ``roles`` and ``databases`` (None: all of them), the server-wide
    settings and the client sessions per database: four statements, however many backends
    share the server. The role's password is not among them (pg_authid is for superusers);
    the full reconcile's login checks it."""
    role_rows = conn.execute(
        """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
                  rolconnlimit, rolvaliduntil::text, rolbypassrls, rolconfig,
                  shobj_description(oid, 'pg_authid'), pg_has_role(current_user, oid, 'MEMBER')
           FROM pg_roles WHERE %(all)s OR rolname = ANY(%(names)s)""",
        {"all": roles is None, "names": roles or []}).fetchall()
    database_rows = conn.execute(
        """SELECT d.datname, pg_get_userbyid(d.datdba), d.datallowconn, d.datistemplate, d.datconnlimit,
                  d.datacl::text, has_database_privilege('public', d.oid, 'CONNECT'), s.setconfig,
                  shobj_description(d.oid, 'pg_database')
           FROM pg_database d LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0
           WHERE %(all)s OR d.datname = ANY(%(names)s)""",
        {"all": databases is None, "names": databases or []}).fetchall()
    max_connections, reserved, pending = conn.execute(
        """SELECT current_setting('max_connections')::int,
                  current_setting('superuser_reserved_connections')::int
                    + coalesce(current_setting('reserved_connections', true)::int, 0),
                  ARRAY(SELECT name FROM pg_settings WHERE pending_restart ORDER BY name)""").fetchone()
    system = tuple(conn.execute(
        """SELECT name, setting FROM pg_file_settings
           WHERE sourcefile LIKE '%%postgresql.auto.conf' AND error IS NULL ORDER BY name""").fetchall()) \
        if superuser else ()  # pg_file_settings is readable by superusers only
    # The same sessions inspect_tuning counts, per database.
    sessions = dict(conn.execute(
        """SELECT datname, count(*)::int FROM pg_stat_activity
           WHERE datname IS NOT NULL AND usesysid IS NOT NULL
             AND coalesce(backend_type, 'client backend') = 'client backend'
           GROUP BY datname""").fetchall())
    return ServerSnapshot(
        roles={row[0]: tuple(row[1:]) for row in role_rows},
        databases={row[0]: tuple(row[1:]) for row in database_rows},
        settings=(max_connections, reserved, tuple(pending), system),
        sessions=sessions, max_connections=max_connections, reserved_slots=reserved)
