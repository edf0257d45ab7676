"""Bring one database to the bundled MLflow's Alembic head, in this process.

:func:`migrate` runs MLflow's own migration scripts, exactly as ``mlflow db upgrade``
would, under a per-database PostgreSQL advisory lock, and refuses databases that a newer
MLflow already migrated (Alembic cannot downgrade them). It imports MLflow on first use
(about 80 MB that a Python process never gives back); :func:`preload` does that at
operator start, for operators that migrate every database in-process.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from .errors import SchemaMigrationError, SchemaNewerThanTarget, migration_error
from .revisions import BUNDLED_MLFLOW_VERSION, head_revision, known_revisions

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sqlalchemy.engine import Engine

#: Key of the PostgreSQL advisory lock held around check-and-migrate. PostgreSQL tags
#: advisory locks with the current database, so one key serialises migrations per
#: database without blocking other databases on the same server. Signed 64-bit, as
#: ``pg_try_advisory_lock(bigint)`` wants.
MIGRATION_LOCK_KEY: int = int.from_bytes(
    hashlib.sha256(b"trackop.dev/mlflow-migrate").digest()[:8], "big", signed=True
)


@dataclass(frozen=True)
class MigrationResult:
    """Outcome of :func:`migrate`.

    ``before`` is ``None`` for an empty database; ``seconds`` is the wall time of the whole
    call, lock wait included.
    """

    before: str | None
    after: str
    seconds: float
    #: Peak RSS of the child process in KiB (``ru_maxrss``), for :func:`migrate_in_subprocess`.
    child_peak_rss_kib: int | None = None


# MLflow is imported lazily, on the first migration that needs it.
_IMPORT_LOCK = threading.Lock()

# Alembic's ``context`` and ``op`` are module-level proxies shared by the whole process, so
# two migrations on different databases in two threads (kopf runs sync handlers in a
# thread pool) would clobber each other. The advisory lock only covers one database.
_ALEMBIC_LOCK = threading.Lock()


def _mlflow_db_utils() -> ModuleType:
    """``mlflow.store.db.utils``, imported once (about 1-2 s: it pulls in MLflow's ORM)."""
    # Serialise the first import: concurrent first imports of a large package from two
    # threads can observe partially initialised modules.
    with _IMPORT_LOCK:
        import mlflow.store.db.utils as db_utils

    return db_utils


def preload() -> None:
    """Import MLflow's store and Alembic and parse the migration scripts, once.

    Call at the start of an operator that runs :func:`migrate` in-process for every
    database: the first one is then just the migration. It costs about 80 MB of RSS for
    the life of the process.
    """
    _mlflow_db_utils()
    import alembic.command  # noqa: F401  (MLflow imports it lazily inside _upgrade_db)

    head_revision()
    known_revisions()


def _engine(url: str, role: str | None = None) -> Engine:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    # NullPool: every connection is closed when released, so nothing lingers on the
    # server after the call (and the advisory lock dies with its connection).
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    if role is not None:
        from ..postgres.templates import set_role

        statement = set_role(role)

        @sqlalchemy.event.listens_for(engine, "connect", insert=True)
        def _act_as(dbapi_connection, _record) -> None:
            # Outside any transaction, so a later rollback cannot undo it (SQLAlchemy's
            # documented pattern for session settings).
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)
            dbapi_connection.autocommit = autocommit

    return engine


def _read_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    # Alembic's own reading of alembic_version (what MLflow's _get_schema_version uses).
    with engine.connect() as connection:
        heads = MigrationContext.configure(connection).get_current_heads()
    if len(heads) > 1:
        raise SchemaMigrationError(f"alembic_version holds several revisions: {sorted(heads)}")
    return heads[0] if heads else None


def current_revision(url: str) -> str | None:
    """The revision in ``alembic_version``; ``None`` if the table is missing or empty."""
    engine = None
    try:
        engine = _engine(url)
        return _read_revision(engine)
    except (SchemaMigrationError, SchemaNewerThanTarget):
        raise
    except Exception as exc:
        # ``from None``: the original exception's text may hold the URL, and tracebacks
        # of chained exceptions end up in the operator's logs.
        raise migration_error("reading the schema revision", url, exc) from None
    finally:
        if engine is not None:
            engine.dispose()


def _acquire_advisory_lock(engine: Engine, timeout_s: float):
    """A connection holding the session advisory lock; polls until ``timeout_s``."""
    from sqlalchemy import text

    from ..postgres.locks import poll_until

    connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        locked = poll_until(lambda: connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}).scalar_one(), timeout_s)
        if locked:
            return connection
        raise SchemaMigrationError(
            f"another migration holds the advisory lock {MIGRATION_LOCK_KEY}; gave up after {timeout_s:g} s"
        )
    except BaseException:
        connection.close()
        raise


def _release_advisory_lock(connection) -> None:
    from sqlalchemy import text

    try:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
    except Exception:
        pass  # closing the session below releases it anyway
    finally:
        connection.close()


def migrate(url: str, *, lock_timeout_s: float = 60, role: str | None = None) -> MigrationResult:
    """Bring the database at ``url`` to the bundled MLflow's Alembic head.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg://role:pw@host:port/db?...``) of
    the MLflow role, so the tables it creates belong to that role; or, with ``role``, of
    a login that may ``SET ROLE`` to ``role``, which then owns them (trackop's template
    database: the admin acting as the NOLOGIN template role). Under a per-database
    advisory lock: an unknown (newer) revision raises :class:`SchemaNewerThanTarget`; the
    head is a no-op; an empty database is initialised as ``mlflow db upgrade`` does
    (MLflow's pre-1.0 tables, then every migration); anything else is upgraded to head.
    Every other failure raises :class:`SchemaMigrationError` with a redacted message.
    """
    started = time.monotonic()
    engine = None
    lock = None
    step = "connecting"
    try:
        engine = _engine(url, role)
        step = "connecting and taking the migration lock"
        lock = _acquire_advisory_lock(engine, lock_timeout_s)
        step = "reading the schema revision"
        before = _read_revision(engine)
        step = "loading MLflow's migration scripts"
        head = head_revision()
        if before is not None and before not in known_revisions():
            raise SchemaNewerThanTarget(
                f"database is at Alembic revision {before!r}, which MLflow {BUNDLED_MLFLOW_VERSION} "
                f"(head {head!r}) does not know; a newer MLflow migrated it and trackop never "
                "downgrades: bundle that MLflow version or restore a backup"
            )
        if before != head:
            db_utils = _mlflow_db_utils()
            step = "waiting for another in-process migration"
            if not _ALEMBIC_LOCK.acquire(timeout=max(lock_timeout_s, 0.001)):
                raise SchemaMigrationError(
                    f"another in-process migration ran longer than {lock_timeout_s:g} s"
                )
            try:
                if before is None and db_utils._is_empty_database(engine):
                    # As `mlflow db upgrade` does: the first migration alters `metrics`, so
                    # an empty database first gets MLflow's initial (pre-Alembic) tables
                    # and then every migration; a plain `alembic upgrade` would fail.
                    step = "creating MLflow's tables"
                    db_utils._initialize_tables(engine)
                else:
                    step = f"upgrading from {before}"
                    # MLflow's _upgrade_db: _get_alembic_config + `alembic upgrade heads`
                    # on a connection of our engine (its env.py uses that engine).
                    db_utils._upgrade_db(engine)
            finally:
                _ALEMBIC_LOCK.release()
        step = "reading the schema revision after migrating"
        after = _read_revision(engine)
        if after != head:
            raise SchemaMigrationError(
                f"migration ended at revision {after!r}, expected MLflow {BUNDLED_MLFLOW_VERSION}'s head {head!r}"
            )
        return MigrationResult(before=before, after=after, seconds=time.monotonic() - started)
    except (SchemaMigrationError, SchemaNewerThanTarget):
        raise
    except Exception as exc:
        # ``from None``: the original exception's text may hold the URL (see migration_error).
        raise migration_error(step, url, exc) from None
    finally:
        if lock is not None:
            _release_advisory_lock(lock)
        if engine is not None:
            engine.dispose()

