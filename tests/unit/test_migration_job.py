"""trackop.specs.migration_job: the Job that runs ``mlflow db upgrade`` (pure)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from urllib.parse import quote

from helpers import OWNER, argv_secret_references, make_spec

from trackop.api.names import migration_job_name
from trackop.specs import migration_job

PASSWORD = "p@ss:/w%rd#?&= ü"

JOB_SPEC = make_spec({"schema": {"migration": "Job", "mlflowVersion": "3.17.2"}})


def _container(job: dict) -> dict:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_migration_job_runs_mlflow_db_upgrade_from_the_secret():
    job = migration_job.migration_job(JOB_SPEC, OWNER)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == migration_job_name("team-a", "3.17.2 ghcr.io/mlflow/mlflow:v3.17.2")
    assert job["metadata"]["name"] == JOB_SPEC.migration_job
    assert job["metadata"]["namespace"] == "ml-platform"
    assert job["metadata"]["labels"]["trackop.dev/mlflow-version"] == "3.17.2"
    assert job["metadata"]["labels"]["trackop.dev/backend"] == "team-a"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    container = _container(job)
    assert container["image"] == "ghcr.io/mlflow/mlflow:v3.17.2"
    # MLflow's own console script, in-process, its URL from the environment (not argv).
    assert container["command"] == migration_job.UPGRADE_COMMAND
    assert container["command"][:2] == ["python", "-c"]
    assert "from mlflow.cli import cli" in container["command"][2]
    assert "os.environ['MLFLOW_BACKEND_STORE_URI']" in container["command"][2]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {
        "name": "team-a-mlflow", "key": "MLFLOW_BACKEND_STORE_URI"}}}


def test_migration_job_image_follows_the_version_and_override():
    job = migration_job.migration_job(make_spec({"schema": {"mlflowVersion": "3.18.0"}}), OWNER)
    assert _container(job)["image"] == "ghcr.io/mlflow/mlflow:v3.18.0"
    assert job["metadata"]["name"] != migration_job.migration_job(JOB_SPEC, OWNER)["metadata"]["name"]
    custom = make_spec({"schema": {"image": "registry.local/mlflow:pinned"}})
    custom_job = migration_job.migration_job(custom, OWNER)
    assert _container(custom_job)["image"] == "registry.local/mlflow:pinned"
    # Another image is another Job: a failed Job of the old image stays for its logs.
    assert custom_job["metadata"]["name"] != migration_job.migration_job(JOB_SPEC, OWNER)["metadata"]["name"]
    assert custom_job["metadata"]["name"] == custom.migration_job


def test_migration_job_never_holds_the_password():
    job = migration_job.migration_job(JOB_SPEC, OWNER)
    text = json.dumps(job, ensure_ascii=False)
    assert PASSWORD not in text
    assert quote(PASSWORD, safe="") not in text
    assert "postgresql" not in text  # no URI at all, only the reference to the Secret
    assert "value" not in {k for e in _container(job)["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI" for k in e}


def test_migration_job_limits():
    job = migration_job.migration_job(JOB_SPEC, OWNER)
    assert job["spec"]["backoffLimit"] == migration_job.BACKOFF_LIMIT
    assert 0 <= job["spec"]["backoffLimit"] <= 6
    assert job["spec"]["ttlSecondsAfterFinished"] == migration_job.TTL_SECONDS > 0
    assert job["spec"]["activeDeadlineSeconds"] == migration_job.DEADLINE_SECONDS > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_job_is_restricted():
    pod = migration_job.migration_job(JOB_SPEC, OWNER)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container({"spec": {"template": {"spec": pod}}})
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc or sc["privileged"] is False
    # A read-only root needs a writable HOME: /tmp must be a mounted volume.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] in mounts
    assert mounts[env["HOME"]] in {v["name"] for v in pod["volumes"]}
    assert "memory" in container["resources"]["limits"]


def test_migration_job_pod_labels():
    job = migration_job.migration_job(JOB_SPEC, OWNER)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "trackop"


def test_migration_job_argv_never_carries_the_uri():
    container = _container(migration_job.migration_job(JOB_SPEC, OWNER))
    assert "args" not in container
    assert not any("$(" in part for part in container["command"]), "the kubelet would expand it into argv"
    assert argv_secret_references(container) == []
    # The guard itself: the command this replaced is caught.
    assert argv_secret_references({**container, "command": ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]}) \
        == ["MLFLOW_BACKEND_STORE_URI"]


def test_the_upgrade_program_runs_mlflow_db_upgrade_with_the_url_from_the_environment(tmp_path):
    """The program, run as the container would: MLflow's ``db upgrade`` gets the URL read
    from the environment (a failing one fails the Job: tests/e2e/test_tracking_stack.py)."""
    url = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([sys.executable, "-c", migration_job.UPGRADE_PROGRAM], capture_output=True, text=True,
                            env={"MLFLOW_BACKEND_STORE_URI": url, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
