"""spec.postgres.managed end to end: trackop deploys PostgreSQL itself.

engine StatefulSet: the local kubelet runs the StatefulSet's container command with this
machine's PostgreSQL binaries (tests/images/postgres stands in for the official image's
entrypoint); the real StatefulSet controller creates, rolls and deletes the pod. The
backend goes Ready on it, the real MLflow client logs a run, a tuning change that needs a
restart rolls the server and the condition clears, and Retain and Delete keep or drop the
data. engine CloudNativePG: without CloudNativePG's CRD the condition says so; with it
(CloudNativePG's own CRD, no CloudNativePG operator on the bed) the API server accepts the
Cluster trackop writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from kubernetes import client

from helpers import eventually
from kit import Backends, assert_no_secret_leaks, failures_by_reason, report_waiting
from trackop.specs import managed_server
from trackop_testbed import binaries
from trackop_testbed.procs import free_ports

pytestmark = pytest.mark.bed

IMAGE_STAND_IN = Path(__file__).resolve().parents[1] / "images" / "postgres"

LOG_RUN = """
import json, mlflow, sys
mlflow.set_experiment("managed")
with mlflow.start_run() as run:
    mlflow.log_param("alpha", "0.5")
    mlflow.log_metric("rmse", 0.25)
print(json.dumps({"run_id": run.info.run_id}))
"""


def managed_spec(port: int, max_connections: int, deletion_policy: str = "Retain") -> dict:
    return {"postgres": {"managed": {"port": port, "version": "15", "storage": {"size": "1Gi"}},
                         "tuning": {"scope": "Server", "maxConnections": max_connections, "sharedBuffers": "32MB"}},
            "deletionPolicy": deletion_policy}


def on_loopback(uri: str, service_host: str) -> str:
    """The Secret's URI names the Service; on the bed the pod's address is loopback."""
    assert f"@{service_host}:" in uri, "the connection Secret must name the managed server's Service"
    return uri.replace(f"@{service_host}:", "@127.0.0.1:")


def log_run(uri: str, workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", LOG_RUN], cwd=workdir, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "HOME": str(workdir), "MLFLOW_TRACKING_URI": uri},
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["run_id"]


def setting(backends: Backends, port: int, name: str) -> str:
    """A setting of the running server, read as its superuser (the Secret trackop generated)."""
    data = backends.secret_data("mpg-postgres")
    with psycopg.connect(host="127.0.0.1", port=port, user=data["username"], password=data["password"],
                         dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]


def setting_or_none(backends: Backends, port: int, name: str) -> str | None:
    """None while the server restarts."""
    try:
        return setting(backends, port, name)
    except psycopg.OperationalError:
        return None


def count_run(secret: dict[str, str], run_id: str) -> int:
    """The run in the backend's database, as the MLflow role, at the pod's loopback address."""
    with psycopg.connect(host="127.0.0.1", port=int(secret["PGPORT"]), user=secret["PGUSER"],
                         password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()[0]


def pod_uid(core: client.CoreV1Api, namespace: str, name: str = "mpg-postgres-0") -> str | None:
    try:
        return core.read_namespaced_pod(name, namespace).metadata.uid
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_statefulset_server_provisioned_tuned_restarted_retained_and_deleted(backends: Backends, kube_api, kubelet,
                                                                             operator, tmp_path):
    namespace = backends.namespace
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    port = free_ports(1)[0]
    backends.apply("mpg", managed_spec(port, 40))
    backends.wait_condition("mpg", "PostgresReady", "False", "Starting")
    supervisor = kubelet.supervise_statefulset(namespace, "mpg-postgres", image_path=[IMAGE_STAND_IN])
    try:
        obj = backends.wait_ready("mpg", timeout=180)
        service_host = f"mpg-postgres.{namespace}.svc"
        assert obj["status"]["database"]["host"] == service_host
        assert obj["status"]["database"]["port"] == port
        conditions = {c["type"]: c for c in obj["status"]["conditions"]}
        assert conditions["PostgresReady"]["status"] == "True"
        assert conditions["TuningApplied"]["status"] == "True"
        assert conditions["PendingRestart"]["reason"] == "NoRestartNeeded"
        assert setting(backends, port, "max_connections") == "40"
        assert setting(backends, port, "shared_buffers") == "32MB"

        # The real MLflow client, with the URI the connection Secret hands out.
        secret = backends.connection_secret("mpg")
        assert secret["PGHOST"] == service_host and secret["PGSSLMODE"] == "disable"
        uri = on_loopback(secret["MLFLOW_TRACKING_URI"], service_host)
        run_id = log_run(uri, tmp_path / "client")
        first_pod = pod_uid(core, namespace)

        # A setting that needs a restart: the StatefulSet rolls the server, the condition clears.
        backends.patch("mpg", {"spec": {"postgres": {"tuning": {"maxConnections": 60}}}})
        eventually(lambda: pod_uid(core, namespace) not in (None, first_pod), "pod mpg-postgres-0 to be replaced",
                   timeout=120)
        eventually(lambda: setting_or_none(backends, port, "max_connections") == "60",
                   "the restarted server to run with max_connections 60", timeout=180, interval=1)
        obj = backends.wait_ready("mpg", timeout=120)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        conditions = {c["type"]: c for c in obj["status"]["conditions"]}
        assert conditions["PostgresReady"]["status"] == "True"
        assert conditions["PendingRestart"]["status"] == "False"
        reasons = {e.reason for e in backends.events("mpg")}
        assert "PostgresRestarting" in reasons, reasons
        assert count_run(secret, run_id) == 1, "the run survives the restart (same volume)"

        # Lowering max_connections below what the backend needs is refused before any restart.
        rolled_pod = pod_uid(core, namespace)
        backends.patch("mpg", {"spec": {"postgres": {"tuning": {"maxConnections": 5}}}})
        backends.wait_condition("mpg", "TuningApplied", "False", "MaxConnectionsTooLow")
        assert pod_uid(core, namespace) == rolled_pod and setting(backends, port, "max_connections") == "60"
        backends.patch("mpg", {"spec": {"postgres": {"tuning": {"maxConnections": 60}}}})
        backends.wait_ready("mpg", timeout=60)

        assert_no_secret_leaks([secret["PGPASSWORD"], backends.secret_data("mpg-postgres")["password"]], operator,
                               backends, "mpg")

        # Retain: the backend goes, the server stops with it, the volume and Secrets stay.
        backends.delete("mpg")
        eventually(lambda: backends.get("mpg") is None, "the backend to be deleted", timeout=60)
        eventually(lambda: not apps.list_namespaced_stateful_set(namespace).items, "the StatefulSet to be collected",
                   timeout=60)
        claim = core.read_namespaced_persistent_volume_claim("data-mpg-postgres-0", namespace)
        assert claim.metadata.deletion_timestamp is None
        kept = core.read_namespaced_secret("mpg-postgres", namespace)
        assert not kept.metadata.owner_references

        # The same name again: the server starts on the kept volume, with the run in it.
        backends.apply("mpg", managed_spec(port, 60, deletion_policy="Delete"))
        backends.wait_ready("mpg", timeout=180)
        assert backends.connection_secret("mpg")["PGPASSWORD"] == secret["PGPASSWORD"]
        assert count_run(secret, run_id) == 1, "the retained volume still holds the run"

        # Delete: the StatefulSet controller hands the claim to the garbage collector.
        backends.delete("mpg")
        eventually(lambda: not core.list_namespaced_persistent_volume_claim(namespace).items,
                   "the PersistentVolumeClaim to be deleted", timeout=90)
    finally:
        supervisor.stop()
    assert supervisor.history and not any(p.alive() for p in supervisor.history), \
        "a PostgreSQL process outlived the test"


def test_a_managed_server_whose_image_cannot_be_pulled_is_reported_stuck_once(backends: Backends, kube_api,
                                                                              operator):
    """The pod reports what a node's kubelet would (the bed has none): the condition takes
    its reason at once, one Warning is posted, and the server is checked about once a minute."""
    core = client.CoreV1Api(kube_api)
    image = "registry.invalid/postgres:no-such-tag"
    spec = managed_spec(free_ports(1)[0], 40)
    spec["postgres"]["managed"]["image"] = image
    backends.apply("nopull", spec)
    backends.wait_condition("nopull", "PostgresReady", "False", "Starting")
    eventually(lambda: pod_uid(core, backends.namespace, "nopull-postgres-0"), "pod nopull-postgres-0")
    report_waiting(kube_api, backends.namespace, "nopull-postgres-0", "ErrImagePull",
                   f'failed to pull and unpack image "{image}": not found')
    cond = backends.wait_condition("nopull", "PostgresReady", "False", "ImagePullBackOff", timeout=60)
    for part in ("nopull-postgres-0", image, "ErrImagePull", "not found", "spec.postgres.managed"):
        assert part in cond["message"], (part, cond["message"])
    assert backends.condition("nopull", "Ready")["reason"] == "ImagePullBackOff"

    before = failures_by_reason(operator, "ImagePullBackOff")
    time.sleep(20)
    assert failures_by_reason(operator, "ImagePullBackOff") - before <= 1, "a stuck server is not polled every 3 s"
    warnings = [(e.reason, e.count or 1) for e in backends.events("nopull") if e.type == "Warning"]
    assert warnings == [("ImagePullBackOff", 1)], "one Warning when stuck, none while it was starting"


@pytest.fixture
def no_cnpg_crd(kube_api):
    """CloudNativePG's CRD absent at the start (an earlier test may have left it), removed after."""
    extensions = client.ApiextensionsV1Api(kube_api)

    def remove() -> None:
        try:
            extensions.delete_custom_resource_definition(managed_server.CNPG_CRD)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

        def gone() -> bool:
            try:
                extensions.read_custom_resource_definition(managed_server.CNPG_CRD)
                return False
            except client.ApiException as exc:
                return exc.status == 404

        eventually(gone, "the CloudNativePG CRD to be removed", timeout=60)

    remove()
    yield extensions
    remove()


def test_cloudnativepg_cluster_needs_its_crd_and_is_accepted_with_it(backends: Backends, kube_api, no_cnpg_crd,
                                                                     operator):
    namespace = backends.namespace
    custom = client.CustomObjectsApi(kube_api)
    backends.apply("ha", {"postgres": {"managed": {"engine": "CloudNativePG", "instances": 3, "version": "17"},
                                       "tuning": {"scope": "Server", "maxConnections": 200, "workMem": "8MB"}}})
    condition = backends.wait_condition("ha", "PostgresReady", "False", "CloudNativePGNotInstalled")
    assert "clusters.postgresql.cnpg.io" in condition["message"]

    (path,) = binaries.ensure_cnpg_crds()
    no_cnpg_crd.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    # No CloudNativePG operator runs on the bed: the Cluster is accepted and waits for it.
    condition = backends.wait_condition("ha", "PostgresReady", "False", "Starting", timeout=120)
    assert "is the CloudNativePG operator running?" in condition["message"]
    cluster = custom.get_namespaced_custom_object(managed_server.CNPG_GROUP, managed_server.CNPG_VERSION, namespace,
                                                  managed_server.CNPG_PLURAL, "ha-postgres")
    assert cluster["spec"]["instances"] == 3
    assert cluster["spec"]["imageName"] == "ghcr.io/cloudnative-pg/postgresql:17"
    assert cluster["spec"]["enableSuperuserAccess"] is True
    assert cluster["spec"]["postgresql"]["parameters"] == {"max_connections": "200", "work_mem": "8MB"}
    owner = backends.get("ha")["metadata"]["uid"]
    assert [ref["uid"] for ref in cluster["metadata"]["ownerReferences"]] == [owner]
    assert backends.get("ha")["status"]["database"]["host"] == f"ha-postgres-rw.{namespace}.svc"

    # Retain keeps the Cluster (and so the data) when the backend goes.
    backends.delete("ha")
    eventually(lambda: backends.get("ha") is None, "the backend to be deleted", timeout=60)
    cluster = custom.get_namespaced_custom_object(managed_server.CNPG_GROUP, managed_server.CNPG_VERSION, namespace,
                                                  managed_server.CNPG_PLURAL, "ha-postgres")
    assert not cluster["metadata"].get("ownerReferences")
    custom.delete_namespaced_custom_object(managed_server.CNPG_GROUP, managed_server.CNPG_VERSION, namespace,
                                           managed_server.CNPG_PLURAL, "ha-postgres")

    # Delete: the garbage collector deletes the Cluster with the backend (CloudNativePG, where it
    # runs, then deletes its volumes).
    backends.apply("gone", {"postgres": {"managed": {"engine": "CloudNativePG"}}, "deletionPolicy": "Delete"})
    backends.wait_condition("gone", "PostgresReady", "False", "Starting", timeout=120)
    backends.delete("gone")

    def collected() -> bool:
        try:
            custom.get_namespaced_custom_object(managed_server.CNPG_GROUP, managed_server.CNPG_VERSION, namespace,
                                                managed_server.CNPG_PLURAL, "gone-postgres")
            return False
        except client.ApiException as exc:
            return exc.status == 404

    eventually(collected, "the Cluster to be deleted with its backend", timeout=90)
