"""MLflow's schema, applied by MLflow's own Alembic migrations, in-process or in a child.

The operator never carries DDL of its own: it runs the migration scripts shipped with the
MLflow version it bundles (``mlflow-skinny``), exactly as ``mlflow db upgrade`` would, and
refuses databases that a newer MLflow already migrated (Alembic cannot downgrade them, and
an MLflow client refuses a schema whose head it does not know).

Importing this module is cheap (no MLflow, no Alembic), and so are :func:`head_revision`
and :func:`known_revisions`: they read the revision ids out of the migration scripts'
source without executing them (executing them imports MLflow). :func:`migrate` imports
MLflow on first use (about 80 MB that a Python process never gives back);
:func:`preload` does that at operator start, for operators that migrate every database
in-process. :func:`migrate_in_subprocess` runs :func:`migrate` in a child Python process
instead (``python -m trackop.schema``), so the long-lived operator never holds MLflow for
a migration it makes once per server (the template database).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .redaction import redact

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sqlalchemy.engine import Engine

__all__ = [
    "BUNDLED_MLFLOW_VERSION",
    "MIGRATION_LOCK_KEY",
    "MigrationResult",
    "SchemaMigrationError",
    "SchemaNewerThanTarget",
    "current_revision",
    "head_revision",
    "known_revisions",
    "migrate",
    "migrate_in_subprocess",
    "preload",
    "redact",
]


log = logging.getLogger(__name__)


def _mlflow_package_dir() -> Path:
    """The installed ``mlflow`` package's directory, found without importing the package."""
    spec = importlib.util.find_spec("mlflow")  # locates the package, does not execute it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mlflow (mlflow-skinny) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_bundled_mlflow_version() -> str:
    """``mlflow.version.VERSION`` without importing the ``mlflow`` package.

    ``import mlflow.version`` runs ``mlflow/__init__.py`` first (about 1.3 s); the version
    file itself only needs ``re`` and ``importlib.metadata``, so execute it on its own.
    """
    loaded = sys.modules.get("mlflow.version")
    if loaded is not None:
        return str(loaded.VERSION)
    path = _mlflow_package_dir() / "version.py"
    file_spec = importlib.util.spec_from_file_location("_trackop_mlflow_version", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return str(module.VERSION)


#: The MLflow version whose migrations this operator runs (``mlflow.version.VERSION``).
BUNDLED_MLFLOW_VERSION: str = _read_bundled_mlflow_version()

#: Key of the PostgreSQL advisory lock held around check-and-migrate. PostgreSQL tags
#: advisory locks with the current database, so one key serialises migrations per
#: database without blocking other databases on the same server. Signed 64-bit, as
#: ``pg_try_advisory_lock(bigint)`` wants.
MIGRATION_LOCK_KEY: int = int.from_bytes(
    hashlib.sha256(b"trackop.dev/mlflow-migrate").digest()[:8], "big", signed=True
)


class SchemaNewerThanTarget(Exception):
    """The database is at an Alembic revision the bundled MLflow does not know.

    A newer MLflow migrated it; trackop never downgrades (MLflow has no supported
    downgrade path and data could be lost).
    """


class SchemaMigrationError(Exception):
    """Reading or migrating the schema failed. The message never contains the URL or password."""


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


# ---------------------------------------------------------------------------- secrets


def _url_secrets(url: str) -> list[str]:
    """Every form in which ``url`` or its password could show up in an error string."""
    found: list[str] = [url]
    try:
        raw_password = urlsplit(url).password  # still percent-encoded
    except ValueError:
        raw_password = None
    if raw_password:
        found += [raw_password, unquote(raw_password)]
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # an unparsable URL: the raw forms above are all we have
        return found
    if parsed.password:
        found.append(str(parsed.password))
    # SQLAlchemy renders URLs in errors and reprs; mask both renderings of the whole URL.
    found += [parsed.render_as_string(hide_password=False), parsed.render_as_string(hide_password=True)]
    return found


def _describe(url: str) -> str:
    """``role@host:port/db`` for messages: enough to act on, no password, not the URL."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        return f"database {parsed.database!r} on {parsed.host}:{parsed.port or 5432} as role {parsed.username!r}"
    except Exception:
        return "the database (unparsable URL)"


def _error(action: str, url: str, exc: BaseException) -> SchemaMigrationError:
    """A SchemaMigrationError saying what failed, built from a redacted exception string.

    SQLAlchemy appends ``[SQL: ...]``, ``[parameters: ...]`` and a background link to its
    messages, and some errors (bad URL, engine reprs) embed the URL itself: keep only the
    first part, then mask every form of the URL and password.
    """
    detail = str(getattr(exc, "orig", None) or exc)
    detail = detail.split("\n[SQL:", 1)[0].split("\n(Background on this error", 1)[0]
    detail = " ".join(redact(detail, _url_secrets(url)).split())
    if len(detail) > 500:
        detail = detail[:500] + "..."
    return SchemaMigrationError(f"{action} failed for {_describe(url)}: {type(exc).__name__}: {detail}")


# ---------------------------------------------------------------------------- MLflow, lazily

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


def _literal_assignments(source: str, names: frozenset[str]) -> dict[str, object]:
    """Module-level ``name = <literal>`` (or ``name: T = <literal>``) of ``names`` in ``source``."""
    found: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            found[target.id] = ast.literal_eval(value)  # ValueError unless a plain literal
    return found


def _as_tuple(down_revision: object) -> tuple[object, ...]:
    """Alembic's ``down_revision``: None, one id, or a tuple (list) of ids for a merge."""
    if down_revision is None:
        return ()
    if isinstance(down_revision, (tuple, list)):
        return tuple(down_revision)
    return (down_revision,)


def read_revision_graph(versions: Path) -> dict[str, tuple[str, ...]]:
    """``{revision: down_revisions}`` of the Alembic scripts in ``versions``, from their source.

    Alembic itself executes every script to read these two variables, and MLflow's scripts
    import MLflow's ORM (the whole ``mlflow`` package): reading the literals keeps that out
    of the operator. The files are the ones Alembic loads (``*.py`` directly in the
    directory, not ``__init__.py``); a script without literal ids is an error, not a guess.
    """
    graph: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.glob("*.py")):
        if path.name == "__init__.py" or path.name.startswith(".#"):
            continue
        try:
            ids = _literal_assignments(path.read_text(encoding="utf-8"), frozenset({"revision", "down_revision"}))
        except (OSError, SyntaxError, ValueError) as exc:
            raise SchemaMigrationError(f"cannot read the revision of MLflow's migration {path.name}: {exc}") from None
        revision, down = ids.get("revision"), ids.get("down_revision")
        downs = _as_tuple(down)
        if not isinstance(revision, str) or not all(isinstance(d, str) for d in downs):
            raise SchemaMigrationError(f"MLflow's migration {path.name} has no literal revision/down_revision")
        graph[revision] = downs
    missing = {d for downs in graph.values() for d in downs} - graph.keys()
    if missing:  # Alembic refuses such a directory too
        raise SchemaMigrationError(f"MLflow's migrations refer to unknown revisions {sorted(missing)}")
    return graph


def heads_of(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """The revisions no other revision builds on (Alembic's heads), sorted."""
    return sorted(graph.keys() - {d for downs in graph.values() for d in downs})


_GRAPH_LOCK = threading.Lock()


@cache
def _read_mlflow_revision_graph() -> dict[str, tuple[str, ...]]:
    # The script directory of MLflow's own Alembic config (mlflow.store.db.utils.
    # _get_alembic_config): <package>/store/db_migrations, scripts in its versions/.
    return read_revision_graph(_mlflow_package_dir() / "store" / "db_migrations" / "versions")


def _revision_graph() -> dict[str, tuple[str, ...]]:
    # One reader at a time: kopf's handler threads ask at once after a restart, and
    # CPython 3.11's ast.parse is not safe to run in several threads at once ("AST
    # constructor recursion depth mismatch", CPython gh-106905). The cache makes it once.
    with _GRAPH_LOCK:
        return _read_mlflow_revision_graph()


@cache
def head_revision() -> str:
    """The single Alembic head of the bundled MLflow's migration scripts (imports no MLflow)."""
    heads = heads_of(_revision_graph())
    if len(heads) != 1:  # MLflow itself insists on one head (_get_latest_schema_revision)
        raise SchemaMigrationError(f"MLflow {BUNDLED_MLFLOW_VERSION} has {len(heads)} Alembic heads: {heads}")
    return heads[0]


@cache
def known_revisions() -> frozenset[str]:
    """Every Alembic revision in the bundled MLflow's migration scripts (imports no MLflow)."""
    return frozenset(_revision_graph())


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


# ---------------------------------------------------------------------------- database


def _engine(url: str, role: str | None = None) -> Engine:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    # NullPool: every connection is closed when released, so nothing lingers on the
    # server after the call (and the advisory lock dies with its connection).
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    if role is not None:
        from .postgres.templates import set_role

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
        raise _error("reading the schema revision", url, exc) from None
    finally:
        if engine is not None:
            engine.dispose()


def _acquire_advisory_lock(engine: Engine, timeout_s: float):
    """A connection holding the session advisory lock; polls until ``timeout_s``."""
    from sqlalchemy import text

    from .postgres.locks import poll_until

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
        # ``from None``: the original exception's text may hold the URL (see _error).
        raise _error(step, url, exc) from None
    finally:
        if lock is not None:
            _release_advisory_lock(lock)
        if engine is not None:
            engine.dispose()


# ---------------------------------------------------------------------------- in a child process

#: Seconds a child migration may run beyond its lock wait before it is killed: MLflow's
#: import and a full migration take a few seconds; a child far past that is stuck.
CHILD_GRACE_S = 120.0
_ERRORS: dict[str, type[Exception]] = {
    "SchemaMigrationError": SchemaMigrationError,
    "SchemaNewerThanTarget": SchemaNewerThanTarget,
}


def child_command() -> list[str]:
    """The child's argv: the interpreter and module only. The URL (with the password) goes
    through stdin: /proc/<pid>/cmdline is readable by every user of the node."""
    return [sys.executable, "-m", "trackop.schema"]


def _read_until_eof(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, bool]:
    """stdout and stderr of ``proc`` until both close; the last flag: the deadline passed."""
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()]), True
            for key, _ in selector.select(remaining):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fd)
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()]), False


def _last_lines(text: str, url: str, limit: int = 3) -> str:
    """The child's last stderr lines, redacted, for a message (a traceback's end says why)."""
    lines = [line.strip() for line in redact(text, _url_secrets(url)).splitlines() if line.strip()]
    tail = " | ".join(lines[-limit:])
    return tail[-500:] if tail else "nothing on stderr"


def migrate_in_subprocess(url: str, *, lock_timeout_s: float = 60, role: str | None = None,
                          timeout_s: float | None = None) -> MigrationResult:
    """:func:`migrate` in a child Python process (``python -m trackop.schema``).

    The child imports MLflow, migrates and exits, so this process never holds MLflow's
    modules (about 80 MB). The request goes through the child's stdin and stays open: the
    child exits at once when it reads EOF there, which is also what it reads when this
    process dies (a SIGKILLed operator leaves no migration running on its own). The
    child's errors come back as the same exception types with the child's redacted
    message. ``timeout_s`` (default: the lock wait plus :data:`CHILD_GRACE_S`) kills a
    child that runs longer.
    """
    started = time.monotonic()
    limit = lock_timeout_s + CHILD_GRACE_S if timeout_s is None else timeout_s
    where = _describe(url)
    request = json.dumps({"url": url, "role": role, "lock_timeout_s": lock_timeout_s}).encode() + b"\n"
    proc = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, close_fds=True)
    usage = None
    try:
        try:
            proc.stdin.write(request)
            proc.stdin.flush()  # not closed: the child reads EOF only when we are done or gone
        except BrokenPipeError:
            pass  # the child already died: its exit status and stderr say why
        out, err, timed_out = _read_until_eof(proc, started + limit)
        if timed_out:
            proc.kill()
        # The child is ours and unreaped, so its pid cannot have been reused: wait4 is
        # safe, and gives its peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:  # interrupted above: leave no child behind
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
    rss_kib = usage.ru_maxrss if usage is not None else None  # Linux reports KiB
    seconds = time.monotonic() - started
    log.info("schema migration child for %s: pid %d, exit %d, %.1fs, peak RSS %.0f MB",
             where, proc.pid, proc.returncode, seconds, (rss_kib or 0) / 1024)
    if timed_out:
        raise SchemaMigrationError(f"migrating {where} in a child process took over {limit:g} s; killed it")
    try:
        reply = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
    except (IndexError, ValueError):
        reply = None
    if not isinstance(reply, dict) or not ("after" in reply or reply.get("error") in _ERRORS):
        raise SchemaMigrationError(
            f"migrating {where} in a child process failed (exit code {proc.returncode}): "
            f"{_last_lines(err.decode(errors='replace'), url)}")
    if "error" in reply:
        # Redact again: the child already did, but a message is cheap to check twice.
        raise _ERRORS[reply["error"]](redact(str(reply.get("message", "")), _url_secrets(url)))
    return MigrationResult(before=reply["before"], after=reply["after"], seconds=seconds,
                           child_peak_rss_kib=rss_kib)


def _read_request() -> bytes:
    """The request line from stdin, read unbuffered: nothing after it may sit in a buffer,
    and the watcher below must not block inside ``sys.stdin``'s lock (a daemon thread
    holding it aborts the interpreter at exit)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _watch_parent() -> None:
    """Exit the process when stdin reaches EOF: the parent is done with us or dead."""
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(3)


def _child_main() -> int:
    """``python -m trackop.schema``: one :func:`migrate`, its request on stdin, its outcome as
    one JSON line on stdout (anything MLflow prints goes to stderr instead)."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints and C-level writes to stdout cannot corrupt the reply
    request = json.loads(_read_request())
    threading.Thread(target=_watch_parent, daemon=True).start()
    url = request["url"]
    try:
        result = migrate(url, lock_timeout_s=float(request["lock_timeout_s"]), role=request.get("role"))
        reply: dict[str, object] = asdict(result)
    except (SchemaMigrationError, SchemaNewerThanTarget) as exc:
        reply = {"error": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # migrate wraps nearly everything; this is the rest
        reply = {"error": "SchemaMigrationError", "message": str(_error("migrating in a child process", url, exc))}
    with os.fdopen(reply_fd, "w") as out:
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    # Run in the importable module, not in this __main__ copy of it (one set of classes).
    from trackop.schema import _child_main as _main

    sys.exit(_main())
