"""The drift checks' server snapshot: the catalog rows of every backend on a server in one
round of reads (drift.py compares each backend's share of it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import psycopg


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
