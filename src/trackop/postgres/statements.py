"""A plan's steps and the one place that executes them.

Deciding is pure (the ``plan_*`` functions: catalog state in, statements out); ``apply`` is
the one place that executes them. Every identifier and literal goes through ``psycopg.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from .errors import StatementFailed


@dataclass(frozen=True)
class Statement:
    """One step of a plan: what it does (for events) and the SQL that does it."""

    summary: str
    query: sql.Composed
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    autocommit: bool = False


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
