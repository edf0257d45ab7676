"""Reading the catalog: the admin's privileges, and the backend's role and database as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .errors import AdminLacksPrivileges


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
