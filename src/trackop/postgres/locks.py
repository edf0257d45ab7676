"""Session advisory locks, polled until a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg


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
