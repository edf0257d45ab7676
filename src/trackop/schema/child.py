"""A migration in a child Python process (``python -m trackop.schema.child``).

:func:`migrate_in_subprocess` runs :func:`~trackop.schema.migration.migrate` in a child,
so the long-lived operator never holds MLflow (about 80 MB) for a migration it makes once
per server (the template database). The request, URL and password included, travels on
the child's stdin, never in its argv or environment.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import asdict

from ..redaction import redact
from .errors import SchemaMigrationError, SchemaNewerThanTarget, describe_database, migration_error, url_secrets
from .migration import MigrationResult, migrate

log = logging.getLogger(__name__)

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
    return [sys.executable, "-m", "trackop.schema.child"]


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
    lines = [line.strip() for line in redact(text, url_secrets(url)).splitlines() if line.strip()]
    tail = " | ".join(lines[-limit:])
    return tail[-500:] if tail else "nothing on stderr"


def migrate_in_subprocess(url: str, *, lock_timeout_s: float = 60, role: str | None = None,
                          timeout_s: float | None = None) -> MigrationResult:
    """:func:`migrate` in a child Python process (``python -m trackop.schema.child``).

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
    where = describe_database(url)
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
        raise _ERRORS[reply["error"]](redact(str(reply.get("message", "")), url_secrets(url)))
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
    """``python -m trackop.schema.child``: one :func:`migrate`, its request on stdin, its
    outcome as one JSON line on stdout (anything MLflow prints goes to stderr instead)."""
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
        error = migration_error("migrating in a child process", url, exc)
        reply = {"error": "SchemaMigrationError", "message": str(error)}
    with os.fdopen(reply_fd, "w") as out:
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
