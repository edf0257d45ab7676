"""Admin sessions kept between reconciles (postgres.sessions.AdminSessions), on the bed's real
PostgreSQL: reused while young and healthy, replaced without an error when the server ended
them, never reused after a failure or with other credentials."""

from __future__ import annotations

import secrets
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from trackop.api.v1alpha1 import PostgresEndpoint
from trackop.postgres import catalog, errors, sessions

pytestmark = pytest.mark.bed


@pytest.fixture
def admin(bed_info: dict):
    pg = bed_info["postgres"]
    name, password = f"adm_sess_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
    server = PostgresEndpoint(pg["host"], pg["port"], "disable", "pg-admin", 5)
    yield server, name, password
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_a_session_is_reused_and_closed_after_its_age(admin):
    server, user, password = admin
    pool = sessions.AdminSessions(max_age=1.0)
    with pool.session(server, user, password) as conn:
        first = pid(conn)
    with pool.session(server, user, password) as conn:
        assert pid(conn) == first
    time.sleep(1.1)
    with pool.session(server, user, password) as conn:
        assert pid(conn) != first
    pool.close_all()


def test_a_session_the_server_ended_is_replaced_without_an_error(admin, bed_info):
    server, user, password = admin
    pool = sessions.AdminSessions()
    with pool.session(server, user, password) as conn:
        first = pid(conn)
    pg = bed_info["postgres"]
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as superuser:
        superuser.execute("SELECT pg_terminate_backend(%s)", (first,))
    with pool.session(server, user, password) as conn:  # as after a server restart
        assert pid(conn) != first
        assert catalog.admin_privileges(conn).createdb
    pool.close_all()


def test_a_session_is_not_reused_after_a_failure_or_with_other_credentials(admin):
    server, user, password = admin
    pool = sessions.AdminSessions()
    with pytest.raises(RuntimeError):
        with pool.session(server, user, password) as conn:
            first = pid(conn)
            raise RuntimeError("a step failed")
    assert conn.closed
    with pool.session(server, user, password) as conn:
        second = pid(conn)
    assert second != first
    with pytest.raises(errors.PasswordRejected):
        with pool.session(server, user, "wrong-" + password):
            pass
    with pool.session(server, user, password) as conn:
        assert pid(conn) == second
    pool.close_all()


def trackop_sessions(bed_info: dict, user: str) -> int:
    pg = bed_info["postgres"]
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND application_name = %s",
                            (user, sessions.APPLICATION_NAME)).fetchone()[0]


def test_the_session_of_a_rotated_admin_password_is_closed_on_the_server(admin, bed_info):
    server, user, password = admin
    pool = sessions.AdminSessions()
    with pool.session(server, user, password) as conn:
        old = pid(conn)
    assert trackop_sessions(bed_info, user) == 1, "kept for the next reconcile"
    rotated = secrets.token_urlsafe(18)
    pg = bed_info["postgres"]
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as superuser:
        # The admin Secret's password rotated: the server's first, then the Secret's.
        superuser.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(rotated)))
    with pool.session(server, user, rotated) as conn:
        assert pid(conn) != old
        assert trackop_sessions(bed_info, user) == 1, "the old password's session is closed, not kept until exit"
    with pool.session(server, user, rotated) as conn:
        assert trackop_sessions(bed_info, user) == 1
    pool.close_all()
    assert trackop_sessions(bed_info, user) == 0
