"""Tuning on the server: the settings and connection limits trackop manages, read in one
round, checked against the server's own limits, and planned (ALTER DATABASE and ALTER ROLE
per backend, ALTER SYSTEM server-wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..api.v1alpha1 import BackendSpec
from .errors import InvalidSetting
from .statements import Statement

# Per-session settings trackop manages with ALTER DATABASE ... SET (scope Database).
DATABASE_SETTINGS = ("work_mem", "maintenance_work_mem", "effective_cache_size")


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
