from __future__ import annotations

import dataclasses
import signal

from trackop_testbed.procs import free_ports, is_alive, spawn, stop


def test_free_ports_are_distinct():
    ports = free_ports(6)
    assert len(set(ports)) == 6 and all(1024 < p < 65536 for p in ports)


def test_spawn_and_stop_a_detached_process(tmp_path):
    record = spawn("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    assert is_alive(record)
    stop(record, timeout=5)
    assert not is_alive(record)


def test_a_reused_pid_is_never_signalled(tmp_path):
    record = spawn("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    try:
        # Same pid, other start time: what a recycled pid looks like to ``down``.
        stranger = dataclasses.replace(record, start_ticks=record.start_ticks + 1, stop_signal=signal.SIGKILL)
        assert not is_alive(stranger)
        stop(stranger, timeout=1)
        assert is_alive(record), "stop() must not touch a process it did not start"
    finally:
        stop(record, timeout=5)
