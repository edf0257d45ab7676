"""``trackop dev``: the quickstart on the local test bed, from nothing to a logged MLflow run.

Starts (or reuses) the bed, installs the CRD, runs the operator, creates a least-privilege
admin role on the bed's PostgreSQL, applies ``examples/quickstart.yaml`` with the bed's
address filled in, waits for Ready, logs a real MLflow run through the connection Secret,
and prints where to look. Ctrl-C (or ``--exit``) stops everything it started.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml
from kubernetes import client, config
from psycopg import sql

from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL

from .bed import Testbed
from .crd import install_crd
from .kubelet import LocalKubelet
from .procs import free_ports

ADMIN_ROLE = "trackop_admin"
QUICKSTART_RUN = """
import mlflow
mlflow.set_experiment("quickstart")
with mlflow.start_run(run_name="trackop-dev") as run:
    mlflow.log_param("learning_rate", 0.01)
    mlflow.log_metric("rmse", 0.42)
print(run.info.run_id)
"""


def examples_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "examples" / "quickstart.yaml").is_file():
            return parent / "examples"
    raise FileNotFoundError("examples/quickstart.yaml not found: run from a trackop checkout")


def _ensure_admin_role(pg: dict[str, Any]) -> str:
    """The admin trackop uses: CREATEDB and CREATEROLE, not a superuser (as on RDS or Cloud SQL)."""
    password = secrets.token_urlsafe(24)
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ADMIN_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} WITH LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
            sql.Identifier(ADMIN_ROLE), sql.Literal(password)))
    return password


def _apply_quickstart(api: client.ApiClient, pg: dict[str, Any], admin_password: str) -> tuple[str, str]:
    documents = list(yaml.safe_load_all((examples_dir() / "quickstart.yaml").read_text()))
    namespace_doc = next(d for d in documents if d["kind"] == "Namespace")
    backend = next(d for d in documents if d["kind"] == "TrackingBackend")
    namespace, name = backend["metadata"]["namespace"], backend["metadata"]["name"]
    external = backend["spec"]["postgres"]["external"]
    external.update({"host": pg["host"], "port": pg["port"], "sslMode": "disable"})

    core = client.CoreV1Api(api)
    _create_or_replace(lambda: core.create_namespace(namespace_doc), lambda: None)
    admin_secret = client.V1Secret(metadata=client.V1ObjectMeta(name=external["adminSecretRef"]["name"]),
                                   string_data={"username": ADMIN_ROLE, "password": admin_password})
    _create_or_replace(lambda: core.create_namespaced_secret(namespace, admin_secret),
                       lambda: core.replace_namespaced_secret(admin_secret.metadata.name, namespace, admin_secret))
    custom = client.CustomObjectsApi(api)
    _create_or_replace(
        lambda: custom.create_namespaced_custom_object("trackop.dev", "v1alpha1", namespace, "trackingbackends",
                                                       backend),
        lambda: custom.patch_namespaced_custom_object("trackop.dev", "v1alpha1", namespace, "trackingbackends",
                                                      name, {"spec": backend["spec"]}),
    )
    return namespace, name


def _create_or_replace(create: Callable[[], Any], replace: Callable[[], Any]) -> None:
    try:
        create()
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        replace()


def _wait_ready(api: client.ApiClient, namespace: str, name: str, timeout: float = 180) -> dict:
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object("trackop.dev", "v1alpha1", namespace, "trackingbackends", name)
        ready = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        if ready and ready["status"] == "True":
            return obj
        if ready and ready["message"] != last:
            last = ready["message"]
            print(f"trackop: {name}: {ready['reason']}: {last}", file=sys.stderr, flush=True)
        time.sleep(0.5)
    raise TimeoutError(f"TrackingBackend {namespace}/{name} not Ready after {timeout:.0f}s: {last}")


def _log_run(api: client.ApiClient, namespace: str, backend: str, workdir: Path) -> str:
    """A real MLflow run from an opted-in Pod: the webhook injects the settings, the local
    kubelet runs the Pod's command (no kubelet runs on the bed)."""
    core = client.CoreV1Api(api)
    pod = core.create_namespaced_pod(namespace, {
        "metadata": {"generateName": "quickstart-run-", "labels": {INJECT_LABEL: "true"},
                     "annotations": {BACKEND_ANNOTATION: backend}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "train", "image": "python:3.11-slim", "command": ["python", "-c", QUICKSTART_RUN]}]},
    })
    injected = [e.name for e in pod.spec.containers[0].env or []]
    if "MLFLOW_TRACKING_URI" not in injected:
        raise RuntimeError("the webhook did not inject MLFLOW_TRACKING_URI into the quickstart Pod")
    result = LocalKubelet(api, workdir).run_pod(pod)
    if result.returncode != 0:
        raise RuntimeError(f"the MLflow run failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


def _redacted(uri: str) -> str:
    """The URI without its password (printed to a terminal; the Secret holds the real one)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _start_ui(tracking_uri: str, workdir: Path, log_path: Path) -> tuple[subprocess.Popen | None, str]:
    """The MLflow UI on loopback, reading the backend's database with the connection
    Secret's URI (passed in the environment, not on the command line, which ps shows)."""
    if importlib.util.find_spec("mlflow.server") is None or importlib.util.find_spec("flask") is None:
        return None, "the MLflow UI needs the full mlflow package (pip install mlflow)"
    port = free_ports(1)[0]
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    with open(log_path, "ab") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--artifacts-destination", str(workdir / "artifacts")],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline and ui.poll() is None:
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return ui, url
        except OSError:
            time.sleep(0.5)
    _stop(ui)
    return None, f"the MLflow UI did not start (log {log_path})"


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(directory: Path, exit_after: bool, progress: Callable[[str], None]) -> int:
    # No real node yet: the quickstart's Pod runs on the stand-in kubelet (kubelet.py), which a
    # real kubelet would race for the same Pod.
    bed = Testbed(directory, progress=progress, node=False)
    info = bed.up()
    operator: subprocess.Popen | None = None
    ui: subprocess.Popen | None = None
    try:
        api = config.new_client_from_config(config_file=info["kubeconfig"])
        install_crd(api)
        progress("CRD trackingbackends.trackop.dev installed")
        health, webhook_port = free_ports(2)
        log_path = bed.dir / "logs" / "operator.log"
        with open(log_path, "ab") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "trackop.cli", "run", "--all-namespaces", "--kubeconfig", info["kubeconfig"],
                 "--health-address", f"127.0.0.1:{health}", "--webhook-address", f"127.0.0.1:{webhook_port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        progress(f"operator started (pid {operator.pid}, log {log_path})")
        admin_password = _ensure_admin_role(info["postgres"])
        namespace, name = _apply_quickstart(api, info["postgres"], admin_password)
        progress(f"applied examples/quickstart.yaml: TrackingBackend {namespace}/{name}; waiting for Ready")
        started = time.monotonic()
        backend = _wait_ready(api, namespace, name)
        progress(f"{name} is Ready after {time.monotonic() - started:.1f}s")
        run_id = _log_run(api, namespace, name, bed.dir / "quickstart-run")
        status = backend["status"]
        secret = client.CoreV1Api(api).read_namespaced_secret(status["connectionSecret"], namespace)
        tracking_uri = base64.b64decode(secret.data["MLFLOW_TRACKING_URI"]).decode()
        progress("starting the MLflow UI")
        ui, ui_address = _start_ui(tracking_uri, bed.dir / "mlflow-ui", bed.dir / "logs" / "mlflow-ui.log")
        print(
            f"\nMLflow run {run_id} logged by an opted-in Pod with the injected MLFLOW_TRACKING_URI\n"
            f"(Secret {namespace}/{status['connectionSecret']}).\n\n"
            f"  export KUBECONFIG={info['kubeconfig']}\n"
            f"  {bed.dir / 'kubectl'} get tb -A            # the backend, its conditions\n"
            f"  {bed.dir / 'kubectl'} -n {namespace} describe tb {name}\n"
            f"  tracking URI: {_redacted(tracking_uri)}  (key MLFLOW_TRACKING_URI of that Secret)\n"
            f"  MLflow UI:    {ui_address}   (experiment 'quickstart', run {run_id})\n"
            f"  database:  {status['database']['name']} on {status['database']['host']}:{status['database']['port']} "
            f"(role {status['database']['role']}), schema {status['schema']['revision']}\n"
            f"  operator log: {log_path}\n"
            f"  bed settings (passwords, mode 0600): {bed.info_path}\n",
            flush=True,
        )
        if not exit_after:
            print("Running; Ctrl-C stops the operator and the bed.", flush=True)
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
        return 0
    finally:
        _stop(ui)
        _stop(operator)
        bed.down()
        progress("stopped the MLflow UI, the operator and the bed")

