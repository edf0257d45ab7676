"""``trackop run ...`` with measurement hooks for bench/bench_fleet.py; argv after the script
is trackop's own (``python bench/fleet_operator.py run --all-namespaces ...``).

The hooks stay outside src/: they wrap, at import time, two module attributes that trackop
looks up on every call, and export what they measure on trackop's own /metrics (the
prometheus_client default registry):

- ``trackop.schema.migration._ALEMBIC_LOCK``, the process-wide lock every inline migration holds while
  Alembic runs (Alembic's ``context``/``op`` proxies are process globals): seconds waited for
  it, seconds held, and the holding thread's CPU seconds while it held it;
- ``trackop.postgres.sessions.connect``: connections opened by the reconciler and seconds to open them.

Nothing else changes: the same ``trackop.cli.main``, the same handlers and settings.
"""

from __future__ import annotations

import sys
import threading
import time

from prometheus_client import Counter

from trackop import cli
from trackop.postgres import sessions
from trackop.schema import migration

LOCK_WAIT = Counter("bench_alembic_lock_wait_seconds", "Seconds waited for trackop.schema.migration._ALEMBIC_LOCK.")
LOCK_HELD = Counter("bench_alembic_lock_held_seconds", "Seconds trackop.schema.migration._ALEMBIC_LOCK was held.")
LOCK_HELD_CPU = Counter("bench_alembic_lock_held_cpu_seconds",
                        "CPU seconds of the holding thread while it held trackop.schema.migration._ALEMBIC_LOCK.")
LOCK_TAKEN = Counter("bench_alembic_lock_acquisitions", "Acquisitions of trackop.schema.migration._ALEMBIC_LOCK.")
PG_CONNECTS = Counter("bench_pg_connects",
                      "trackop.postgres.sessions.connect calls (the reconciler's admin and login checks).")
PG_CONNECT_SECONDS = Counter("bench_pg_connect_seconds", "Seconds spent in trackop.postgres.sessions.connect.")


class TimedLock:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._since = 0.0
        self._cpu_since = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        started = time.perf_counter()
        ok = self._lock.acquire(blocking, timeout)
        now = time.perf_counter()
        LOCK_WAIT.inc(now - started)
        if ok:
            LOCK_TAKEN.inc()
            self._since, self._cpu_since = now, time.thread_time()
        return ok

    def release(self) -> None:
        LOCK_HELD.inc(time.perf_counter() - self._since)
        LOCK_HELD_CPU.inc(time.thread_time() - self._cpu_since)
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *_: object) -> None:
        self.release()


migration._ALEMBIC_LOCK = TimedLock(migration._ALEMBIC_LOCK)
_connect = sessions.connect


def timed_connect(*args, **kwargs):
    started = time.perf_counter()
    try:
        return _connect(*args, **kwargs)
    finally:
        PG_CONNECTS.inc()
        PG_CONNECT_SECONDS.inc(time.perf_counter() - started)


sessions.connect = timed_connect

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
