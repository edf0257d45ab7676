"""A long-running container the local kubelet (kubelet.py) started for a Pod: its process,
log and volumes, and how it is stopped.

Stopping: the stop signal goes to the main process only (as a runtime signals PID 1;
``stop_signal``, SIGTERM by default, SIGINT for the postgres image, whose STOPSIGNAL it
is), SIGKILL to the process group after the grace period; once the main process exits,
whatever it left in its process group is killed, as a PID namespace ends with its PID 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it (its pid, hence its process
    group's id, stays taken until it is reaped)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@dataclass
class RunningPod:
    """A long-running container started for a Pod (a Deployment's server, say)."""

    pod_name: str
    namespace: str
    process: subprocess.Popen
    log_path: Path
    workdir: Path
    pod_uid: str = ""
    volumes: dict[str, Path] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    grace_period: float = 30
    ready: bool = False
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _reap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _monitor: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.returncode is None and not exited(self.process.pid)

    def _reap(self) -> int:
        """After the main process exited: kill what it left in its process group (the
        zombie still holds the group's id, so no other group can have it), then reap."""
        with self._reap_lock:
            if self.process.returncode is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.process.wait()
            return self.process.returncode

    def stop(self, timeout: float | None = None, sig: int | None = None) -> int:
        """Stop the container as a runtime does: ``sig`` (default: the Pod's stop signal)
        to the main process, SIGKILL to its group after ``timeout`` (default: the Pod's
        grace period); return the exit code."""
        self._stopping.set()
        pid = self.process.pid
        if self.alive():
            try:
                os.kill(pid, sig or self.stop_signal)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + (self.grace_period if timeout is None else timeout)
            while not exited(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not exited(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        code = self._reap()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
        return code
