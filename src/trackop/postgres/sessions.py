"""Sessions with PostgreSQL: connecting (failures mapped to conditions that name the
cause), the admin sessions kept between reconciles, and the login as the backend's role.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from ..api.v1alpha1 import PostgresEndpoint
from .errors import PasswordRejected, PostgresError, ServerUnreachable
from .templates import TEMPLATE_ROLE

# How the rest of trackop names a session and a session that broke (could not connect, or was
# lost after it connected: a server restart), so that psycopg itself stays inside this package.
Session = psycopg.Connection
SessionBroken = psycopg.OperationalError

APPLICATION_NAME = "trackop"


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
    Keyed by server, user and a hash of the password: new credentials get new sessions. The
    kept sessions stay bounded: each call closes those past ``max_age`` under any key, and a
    new login of an admin closes the sessions kept under its other passwords (a rotated
    Secret), so they do not stay open on the server until the operator exits."""

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
        self._close_stale(key, rotated=False)
        found = self._take(key)
        born, conn = found if found else (time.monotonic(), connect(server, user, password))
        if found is None:
            # A login with these credentials worked: sessions kept under other passwords of
            # the same admin are of a rotated Secret, and are closed now, not at exit.
            self._close_stale(key, rotated=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._give(key, born, conn)

    def _close_stale(self, key: tuple, rotated: bool) -> None:
        """Close the idle sessions past ``max_age`` (under any key: credentials no reconcile
        uses any more are never taken again), and with ``rotated`` those of ``key``'s
        server and user under another password."""
        now = time.monotonic()
        closing: list[tuple[float, psycopg.Connection]] = []
        with self._lock:
            for kept_key in list(self._idle):
                old = stale_sessions(kept_key, self._idle[kept_key], key, now, self.max_age, rotated)
                if not old:
                    continue
                closing += old
                self._idle[kept_key] = [entry for entry in self._idle[kept_key] if entry not in old]
                if not self._idle[kept_key]:
                    del self._idle[kept_key]
        for _, conn in closing:
            conn.close()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for _, conn in sessions:
                conn.close()


def stale_sessions(key: tuple, idle: list[tuple[float, Any]], current: tuple, now: float, max_age: float,
                   rotated: bool) -> list[tuple[float, Any]]:
    """Of the idle sessions ``idle`` kept under ``key``: those to close, because they are
    past ``max_age``, or (``rotated``) because ``current`` is the same server and user with
    another password (keys are (host, port, sslmode, user, password hash))."""
    if rotated and key != current and key[:4] == current[:4]:
        return list(idle)
    return [entry for entry in idle if now - entry[0] >= max_age]


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
