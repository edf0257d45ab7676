"""`trackop dev`, the README's first command, end to end on a bed of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from trackop.testbed.procs import is_listening

pytestmark = pytest.mark.bed


def test_dev_reaches_a_logged_run_and_stops_everything(testbed):
    # ``testbed`` first: the session bed has built (or found) the binaries this one reuses.
    directory = Path(tempfile.mkdtemp(prefix="trackop-dev-", dir="/tmp"))
    try:
        result = subprocess.run([sys.executable, "-m", "trackop.cli", "dev", "--dir", str(directory), "--exit"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "is Ready after" in result.stderr
        assert "MLflow run " in result.stdout and "with the injected MLFLOW_TRACKING_URI" in result.stdout
        info = json.loads((directory / "testbed.json").read_text())
        assert info["postgres"]["password"] not in result.stdout + result.stderr
        state = json.loads((directory / "state.json").read_text())
        assert state["processes"] == {}, "down stopped every recorded process"
        assert not [p for p in state["ports"].values() if is_listening(p)]
        operator_log = (directory / "logs" / "operator.log").read_text()
        assert "trackop ready" in operator_log
        assert info["postgres"]["password"] not in operator_log
    finally:
        subprocess.run([sys.executable, "-m", "trackop.cli", "testbed", "down", "--dir", str(directory)],
                       capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
