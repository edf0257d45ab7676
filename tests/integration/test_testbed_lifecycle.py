"""``trackop testbed up`` / ``down`` through the real CLI, on a second bed of its own (without a
node: tests/integration/test_node.py starts one)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from trackop_testbed.procs import ProcessRecord, is_alive, is_listening

pytestmark = pytest.mark.bed

TRACKOP = [sys.executable, "-m", "trackop.cli"]


def _records(directory: Path) -> dict[str, ProcessRecord]:
    state = json.loads((directory / "state.json").read_text())
    return {name: ProcessRecord.from_json(rec) for name, rec in state["processes"].items()}


def test_up_reuses_a_running_bed_and_down_leaves_nothing(testbed):
    # ``testbed`` first: the session bed has built (or found) the binaries this one reuses.
    directory = Path(tempfile.mkdtemp(prefix="trackop-cli-", dir="/tmp"))
    try:
        first = subprocess.run([*TRACKOP, "testbed", "up", "--dir", str(directory), "--no-node"],
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        info = json.loads((directory / "testbed.json").read_text())
        assert set(info) == {"kubeconfig", "postgres", "s3", "gcs", "azure"}
        assert set(info["postgres"]) == {"host", "port", "user", "password"}
        assert set(info["s3"]) == {"endpoint", "access_key", "secret_key", "region"}
        assert (directory / "testbed.json").stat().st_mode & 0o077 == 0, "holds passwords: owner only"
        # Nothing with a password goes to the terminal.
        assert info["postgres"]["password"] not in first.stdout + first.stderr
        assert info["s3"]["secret_key"] not in first.stdout + first.stderr

        before = _records(directory)
        assert set(before) == {"postgres", "s3", "gcs", "azure", "etcd", "kube-apiserver", "kube-controller-manager"}
        assert all(is_alive(r) for r in before.values())

        again = subprocess.run([*TRACKOP, "testbed", "up", "--dir", str(directory), "--no-node"],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert _records(directory) == before, "a running bed is reused, not restarted"
        assert "reused" in again.stderr

        state = json.loads((directory / "state.json").read_text())
        down = subprocess.run([*TRACKOP, "testbed", "down", "--dir", str(directory)],
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert not any(is_alive(r) for r in before.values())
        assert not [p for p in state["ports"].values() if is_listening(p)]
    finally:
        subprocess.run([*TRACKOP, "testbed", "down", "--dir", str(directory)], capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
