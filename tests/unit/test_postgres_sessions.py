"""Connection failures mapped to conditions that name the cause (trackop.postgres.sessions, no
database)."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from trackop.api.parsing import parse
from trackop.postgres import errors, sessions

SERVER = parse("ml-platform", "team-a", {"postgres": {
    "external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}},
    "database": "mlflow_team_a", "role": "mlflow_team_a"}}).postgres


def test_password_failure_is_an_auth_error():
    exc = psycopg.OperationalError('connection failed: connection to server at "10.0.0.1", port 5432 failed: '
                                   'FATAL:  password authentication failed for user "admin"')
    err = sessions.classify_connect_error(exc, SERVER, "admin", "postgres")
    assert isinstance(err, errors.PasswordRejected)
    assert "pg.db.svc:5432" in err.message and "'admin'" in err.message


def _with_sqlstate(exc: psycopg.Error, sqlstate: str) -> psycopg.Error:
    exc.sqlstate = sqlstate
    return exc


def test_missing_database_is_named():
    exc = _with_sqlstate(psycopg.OperationalError('connection failed: FATAL:  database "mlflow_team_a" does not '
                                                  'exist'), "3D000")
    err = sessions.classify_connect_error(exc, SERVER, "mlflow_team_a", "mlflow_team_a")
    assert type(err) is errors.ServerUnreachable
    assert "'mlflow_team_a' does not exist" in err.message
    assert "pg.db.svc:5432" in err.message
    # The same from psycopg's own error class for the SQLSTATE.
    err = sessions.classify_connect_error(psycopg.errors.InvalidCatalogName("whatever the text"), SERVER,
                                          "mlflow_team_a", "mlflow_team_a")
    assert "database 'mlflow_team_a' does not exist" in err.message


def test_missing_database_without_sqlstate_is_recognised_by_the_servers_words():
    # psycopg gives no SQLSTATE for a failed connection: the server's exact sentence counts.
    exc = psycopg.OperationalError('connection failed: connection to server at "10.0.0.1", port 5432 failed: '
                                   'FATAL:  database "mlflow_team_a" does not exist')
    err = sessions.classify_connect_error(exc, SERVER, "mlflow_team_a", "mlflow_team_a")
    assert type(err) is errors.ServerUnreachable
    assert err.message == "database 'mlflow_team_a' does not exist on pg.db.svc:5432"


def test_another_database_missing_is_not_taken_for_ours():
    exc = psycopg.OperationalError('connection failed: connection to server at "10.0.0.1", port 5432 failed: '
                                   'FATAL:  database "other" does not exist')
    err = sessions.classify_connect_error(exc, SERVER, "mlflow_team_a", "mlflow_team_a")
    assert err.message.startswith("cannot connect to PostgreSQL at pg.db.svc:5432 as 'mlflow_team_a' ")


@pytest.mark.parametrize("sqlstate", ["28P01", "28000"])
def test_auth_sqlstates_are_auth_errors(sqlstate):
    exc = _with_sqlstate(psycopg.OperationalError("connection failed: FATAL:  nope"), sqlstate)
    assert isinstance(sessions.classify_connect_error(exc, SERVER, "admin", "postgres"), errors.PasswordRejected)


def test_unreachable_server_keeps_a_detail():
    exc = psycopg.OperationalError('connection failed: connection to server at "10.0.0.1", port 5432 failed: '
                                   'Connection refused\n\tIs the server running on that host and accepting '
                                   'TCP/IP connections?')
    err = sessions.classify_connect_error(exc, SERVER, "admin", "postgres")
    assert type(err) is errors.ServerUnreachable
    assert "pg.db.svc:5432" in err.message
    assert "\n" not in err.message
    # The cause is libpq's first line after its last "failed: "; the hint lines are dropped.
    assert "(Connection refused)" in err.message
    assert "Is the server running" not in err.message


def test_cause_comes_from_the_first_line_not_the_last():
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  no pg_hba.conf entry '
        'for host "10.0.0.9", user "admin", database "postgres", SSL encryption\n'
        'connection to server at "10.0.0.1", port 5432 failed: FATAL:  no pg_hba.conf entry for host '
        '"10.0.0.9", user "admin", database "postgres", no encryption')
    err = sessions.classify_connect_error(exc, SERVER, "admin", "postgres")
    assert type(err) is errors.ServerUnreachable
    assert "SSL encryption)" in err.message
    assert "no encryption" not in err.message
    assert "connection to server" not in err.message


def test_cause_without_failed_keeps_the_whole_first_line():
    err = sessions.classify_connect_error(psycopg.OperationalError("timeout expired\nsecond line"), SERVER,
                                          "admin", "postgres")
    assert "(timeout expired)" in err.message
    assert "second line" not in err.message


def test_empty_error_text():
    err = sessions.classify_connect_error(psycopg.OperationalError(""), SERVER, "admin", "postgres")
    assert type(err) is errors.ServerUnreachable
    assert "no detail" in err.message


def test_missing_role_on_a_host_named_database_is_not_a_missing_database():
    server = dataclasses.replace(SERVER, host="database.internal")
    exc = psycopg.OperationalError('connection failed: connection to server at "database.internal" (10.0.0.1), '
                                   'port 5432 failed: FATAL:  role "admin" does not exist')
    err = sessions.classify_connect_error(exc, server, "admin", "postgres")
    assert "'postgres' does not exist" not in err.message
    assert '(FATAL:  role "admin" does not exist)' in err.message
