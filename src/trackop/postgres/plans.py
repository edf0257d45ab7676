"""The backend's role and database: what to create, restore or drop (pure plans).

Passwords travel as SCRAM-SHA-256 verifiers computed on this side (as psql's ``\\password``
does), so the clear password never reaches the server's statement log, ``pg_stat_activity``
or an error message.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..api.v1alpha1 import BackendSpec
from .catalog import AdminPrivileges, DatabaseState, RoleState
from .errors import DatabaseTaken, RoleTaken
from .statements import Statement


def scram_verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, computed client-side by libpq."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


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
