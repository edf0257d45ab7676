"""`trackop dev`, the README's first command, end to end on a bed of its own."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from trackop_testbed.procs import is_listening

pytestmark = pytest.mark.bed


def test_dev_reaches_a_logged_run_serves_the_ui_and_ctrl_c_stops_everything(testbed):
    # ``testbed`` first: the session bed has built (or found) the binaries this one reuses.
    directory = Path(tempfile.mkdtemp(prefix="trackop-dev-", dir="/tmp"))
    stderr_path = directory.parent / f"{directory.name}.stderr"
    try:
        with open(stderr_path, "w") as stderr:
            dev = subprocess.Popen([sys.executable, "-m", "trackop.cli", "dev", "--dir", str(directory)],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
            stdout = ""
            deadline = time.monotonic() + 600
            while "Ctrl-C stops" not in stdout and time.monotonic() < deadline and dev.poll() is None:
                stdout += dev.stdout.readline()
            assert "Ctrl-C stops" in stdout, stderr_path.read_text()[-3000:]
            assert "MLflow run " in stdout and "with the injected MLFLOW_TRACKING_URI" in stdout
            run_id = re.search(r"MLflow run (\w+) logged", stdout).group(1)
            ui = re.search(r"MLflow UI:\s+(http://127\.0\.0\.1:\d+)", stdout).group(1)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"{ui}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10) as response:
                run = json.loads(response.read())["run"]
            assert run["info"]["run_name"] == "trackop-dev"
            assert {"key": "learning_rate", "value": "0.01"} in run["data"]["params"]
            assert re.search(r"tracking URI: postgresql\+psycopg://\w+:\*\*\*@", stdout), "printed without password"

            dev.send_signal(signal.SIGINT)
            rest, _ = dev.communicate(timeout=120)
            assert dev.returncode == 0, stderr_path.read_text()[-3000:]
        err = stderr_path.read_text()
        assert "is Ready after" in err and "stopped the MLflow UI, the operator and the bed" in err
        info = json.loads((directory / "testbed.json").read_text())
        assert info["postgres"]["password"] not in stdout + rest + err
        state = json.loads((directory / "state.json").read_text())
        assert state["processes"] == {}, "down stopped every recorded process"
        assert not [p for p in state["ports"].values() if is_listening(p)]
        assert not is_listening(int(ui.rsplit(":", 1)[1])), "the MLflow UI stopped"
        operator_log = (directory / "logs" / "operator.log").read_text()
        assert "trackop ready" in operator_log
        assert info["postgres"]["password"] not in operator_log
    finally:
        if dev.poll() is None:
            dev.kill()
        subprocess.run([sys.executable, "-m", "trackop.cli", "testbed", "down", "--dir", str(directory)],
                       capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
        stderr_path.unlink(missing_ok=True)
