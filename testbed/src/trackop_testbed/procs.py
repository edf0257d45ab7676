"""Background processes of the test bed: start detached, recognise exactly, stop.

A process is identified by its pid *and* its kernel start time, so ``down`` never
signals an unrelated process that happens to reuse a recorded pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    """What ``down`` needs to find and stop one process that ``up`` started."""

    name: str
    pid: int
    start_ticks: int
    stop_signal: int = signal.SIGTERM

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "ProcessRecord":
        return cls(**data)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    return int(fields[19]) if fields else None


def is_alive(record: ProcessRecord) -> bool:
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == record.start_ticks


def _reap(pid: int) -> None:
    """Collect a child that exited, so it does not linger as a zombie of this process."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> ProcessRecord:
    """Start ``argv`` in its own session, detached from this process, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user,
            start_new_session=True,
            close_fds=True,
        )
    ticks = _start_ticks(proc.pid)
    if ticks is None:
        proc.wait()
        raise RuntimeError(f"{name} exited at once; see {log_path}")
    # The Popen object is dropped on purpose: the process outlives this one.
    proc.returncode = 0
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks, stop_signal=stop_signal)


def stop(record: ProcessRecord, timeout: float = 15.0) -> None:
    """Stop one recorded process (and what is left of its process group), waiting for it.

    Nothing is signalled unless the pid still belongs to the recorded process.
    """
    if not is_alive(record):
        _reap(record.pid)
        return
    try:
        os.kill(record.pid, record.stop_signal)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while is_alive(record) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)
    if is_alive(record):
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(record.pid)
    # The process led its own session and group; children it left behind go too.
    try:
        os.killpg(record.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout
    while is_alive(record) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)


def wait_bindable(port: int, timeout: float = 90.0, host: str = "127.0.0.1") -> None:
    """Wait until a server may listen on ``port`` again. After a server is killed, its
    side of each open connection lingers (FIN_WAIT2, up to the kernel's 60 s) until the
    client closes too, and Linux refuses the port to a new listener meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's and PostgreSQL's listeners
            try:
                sock.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"port {port} still in use {timeout:.0f}s after its server stopped") from None
        time.sleep(0.2)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, all held open until every one is chosen."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    record: ProcessRecord | None = None,
    log_path: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until true; fail early if the process it waits on died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is not up yet; keep the last reason
            last_error = exc
        if record is not None and not is_alive(record):
            raise RuntimeError(f"{what}: the process exited; last lines of {log_path}:\n{tail(log_path)}")
        time.sleep(interval)
    reason = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s{reason}; see {log_path}")


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
