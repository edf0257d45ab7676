"""The tracking stack end to end: the MLflow tracking server run from trackop's own
Deployment, artifacts in the bed's MinIO, Server and Direct mode with the real client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import RecordingListener, eventually
from kit import Admin, Backends, assert_no_secret_leaks, failures_by_reason, report_waiting
from kubernetes import client
from trackop_testbed.procs import free_ports

pytestmark = pytest.mark.bed

SEED_SCRIPT = """
import json, os, sys, mlflow
with open("model.txt", "w") as handle:
    handle.write("weights")
out = {}
with mlflow.start_run() as run:                       # the Default experiment
    mlflow.log_param("alpha", "0.5")
    mlflow.log_metric("rmse", 0.78)
    mlflow.log_artifact("model.txt")
    out["default"] = {"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri}
mlflow.set_experiment("seed-" + sys.argv[1])          # a new experiment
with mlflow.start_run() as run:
    mlflow.log_metric("rmse", 0.5)
    mlflow.log_artifact("model.txt")
    out["new"] = {"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri}
print(json.dumps(out))
"""


def run_seed_script(env: dict[str, str], workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", SEED_SCRIPT, uuid.uuid4().hex[:6]], cwd=workdir,
                            env={"PATH": os.environ["PATH"], "HOME": str(workdir), **env},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def bucket(s3_client):
    name = f"art-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        for obj in s3_client.list_objects_v2(Bucket=name).get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
        s3_client.delete_bucket(Bucket=name)
    except s3_client.exceptions.NoSuchBucket:
        pass


def s3_spec(bed_info: dict, bucket: str, **extra) -> dict:
    return {"s3": {"bucket": bucket, "prefix": "team-a", "endpoint": bed_info["s3"]["endpoint"],
                   "region": bed_info["s3"]["region"], "credentialsSecretRef": {"name": "s3-creds"}, **extra}}


def keys(s3_client, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def _healthy(port: int) -> bool:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _status_with_host(port: int, host: str) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    status = conn.getresponse().status
    conn.close()
    return status


def test_server_mode_logs_through_the_tracking_server(backends: Backends, admin: Admin, bed_info, s3_client,
                                                      bucket, kubelet, kube_api, operator, tmp_path):
    backends.admin_secret(admin)
    s3 = bed_info["s3"]
    backends.secret("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})
    port = free_ports(1)[0]
    backends.apply("stack", {**backends.spec(), "artifacts": s3_spec(bed_info, bucket, createBucket=True),
                             "server": {"port": port}})
    backends.wait_condition("stack", "ArtifactsReady", "True")
    backends.wait_condition("stack", "ServerReady", "False", "RollingOut")

    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment("stack-mlflow", backends.namespace)
    pod_spec = deployment.spec.template.spec
    container = pod_spec.containers[0]
    assert container.image == "ghcr.io/mlflow/mlflow:v3.17.2"
    assert "--serve-artifacts" in container.args
    text = json.dumps(client.ApiClient().sanitize_for_serialization(deployment.spec))
    assert s3["secret_key"] not in text and "PGPASSWORD" not in text
    assert backends.connection_secret("stack")["PGPASSWORD"] not in text
    assert container.security_context.read_only_root_filesystem and pod_spec.security_context.run_as_non_root
    assert container.readiness_probe.http_get.path == "/health"

    server = kubelet.start_deployment(backends.namespace, "stack-mlflow")
    try:
        eventually(lambda: _healthy(port), "the tracking server's /health", timeout=90, interval=0.5)
        obj = backends.wait_ready("stack", timeout=60)
        assert obj["status"]["trackingUri"] == f"http://stack-mlflow.{backends.namespace}.svc:{port}"
        secret = backends.connection_secret("stack")
        assert secret["MLFLOW_TRACKING_URI"] == obj["status"]["trackingUri"]
        assert "AWS_SECRET_ACCESS_KEY" not in secret, "the server proxies artifacts: workloads get no bucket keys"

        # A training process with only the tracking URI (the Service name resolves to the
        # server here through loopback: no cluster DNS on the bed).
        logged = run_seed_script({"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, tmp_path / "client")
        # In the cluster, pods call the Service's name: MLflow must accept that Host header
        # (and still refuse unknown ones: its DNS-rebinding protection stays on).
        assert _status_with_host(port, f"stack-mlflow.{backends.namespace}.svc:{port}") == 200
        assert _status_with_host(port, "stack-mlflow:5000") == 200
        assert _status_with_host(port, "evil.example.com") == 403
    finally:
        server.stop()
    for run in logged.values():
        assert run["artifact_uri"].startswith("mlflow-artifacts:")
        assert any(k.endswith(f"{run['run_id']}/artifacts/model.txt") for k in keys(s3_client, bucket, "team-a/"))
    assert not (tmp_path / "client" / "mlruns").exists() and not (tmp_path / "client" / "mlartifacts").exists()
    with psycopg.connect(host=secret["PGHOST"], port=secret["PGPORT"], user=secret["PGUSER"],
                         password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"]) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_uuid = %s",
                            (logged["default"]["run_id"],)).fetchone() == (1,)
    assert_no_secret_leaks([s3["secret_key"], secret["PGPASSWORD"], admin.password], operator, backends, "stack")


def test_direct_mode_puts_every_experiments_artifacts_in_the_bucket(backends: Backends, admin: Admin, bed_info,
                                                                    s3_client, bucket, tmp_path):
    backends.admin_secret(admin)
    s3 = bed_info["s3"]
    s3_client.create_bucket(Bucket=bucket)
    backends.secret("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})
    backends.apply("direct", {**backends.spec(), "artifacts": s3_spec(bed_info, bucket),
                              "injection": {"mode": "Direct"}})
    obj = backends.wait_ready("direct")
    assert obj["status"].get("trackingUri") is None, "a Direct-mode URI holds a password: never in status"
    secret = backends.connection_secret("direct")
    assert secret["MLFLOW_ARTIFACT_ROOT"] == f"s3://{bucket}/team-a"
    assert secret["MLFLOW_S3_ENDPOINT_URL"] == s3["endpoint"] and secret["AWS_SECRET_ACCESS_KEY"] == s3["secret_key"]

    # Only the env a training pod would get from the Secret.
    env = {k: v for k, v in secret.items() if k.startswith(("MLFLOW_", "AWS_"))}
    logged = run_seed_script(env, tmp_path / "client")
    for which, run in logged.items():
        assert run["artifact_uri"].startswith(f"s3://{bucket}/team-a/"), (which, run)
        assert any(k.endswith(f"{run['run_id']}/artifacts/model.txt") for k in keys(s3_client, bucket, "team-a/"))
    assert not (tmp_path / "client" / "mlruns").exists(), "nothing on local disk"


def test_missing_bucket_and_wrong_credentials_are_reported_and_recover(backends: Backends, admin: Admin, bed_info,
                                                                       s3_client, bucket, operator):
    backends.admin_secret(admin)
    s3 = bed_info["s3"]
    wrong = "wrong-" + s3["secret_key"]
    backends.secret("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": wrong})
    backends.apply("broken", {**backends.spec(), "artifacts": s3_spec(bed_info, bucket)})
    cond = backends.wait_condition("broken", "ArtifactsReady", "False", "InvalidCredentials")
    assert "s3-creds" in cond["message"]
    assert backends.condition("broken", "DatabaseReady")["status"] == "True", "the database does not wait for S3"
    assert_no_secret_leaks([wrong, s3["secret_key"], s3["access_key"]], operator, backends, "broken")

    backends.secret("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})
    cond = backends.wait_condition("broken", "ArtifactsReady", "False", "BucketNotFound", timeout=120)
    assert bucket in cond["message"] and "createBucket" in cond["message"]
    s3_client.create_bucket(Bucket=bucket)
    backends.wait_ready("broken", timeout=120)


def test_a_new_mlflow_version_migrates_before_the_server_rolls(backends: Backends, admin: Admin, bed_info,
                                                               kubelet, kube_api):
    apps = client.AppsV1Api(kube_api)
    backends.admin_secret(admin)
    port = free_ports(1)[0]
    backends.apply("roll", {**backends.spec(), "schema": {"migration": "Job"}, "server": {"port": port}})
    first_job = eventually(lambda: client.BatchV1Api(kube_api).list_namespaced_job(backends.namespace).items,
                           "the first migration Job")[0]
    assert apps.list_namespaced_deployment(backends.namespace).items == [], "no server before the schema"
    kubelet.run_job(backends.namespace, first_job.metadata.name)
    backends.wait_condition("roll", "ServerReady", "False", "RollingOut")
    image = lambda: apps.read_namespaced_deployment("roll-mlflow", backends.namespace).spec.template.spec \
        .containers[0].image  # noqa: E731
    assert image() == "ghcr.io/mlflow/mlflow:v3.17.2"

    # A migration that fails (the database is at a revision this MLflow does not know)
    # leaves the old server as it was and says why.
    secret = backends.connection_secret("roll")
    with psycopg.connect(host=secret["PGHOST"], port=secret["PGPORT"], user=secret["PGUSER"],
                         password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    backends.patch("roll", {"spec": {"schema": {"mlflowVersion": "3.17.1"}}})
    jobs = eventually(lambda: [j for j in client.BatchV1Api(kube_api).list_namespaced_job(backends.namespace).items
                               if j.metadata.name != first_job.metadata.name], "the new version's Job")
    assert jobs[0].spec.template.spec.containers[0].image == "ghcr.io/mlflow/mlflow:v3.17.1"
    finished = kubelet.run_job(backends.namespace, jobs[0].metadata.name, timeout=240)
    assert any(c.type == "Failed" and c.status == "True" for c in finished.status.conditions)
    cond = backends.wait_condition("roll", "SchemaReady", "False", "MigrationJobFailed", timeout=120)
    assert jobs[0].metadata.name in cond["message"]
    assert image() == "ghcr.io/mlflow/mlflow:v3.17.2", "the old server keeps running"

    # Repaired and retried (the message says: delete the Job), the migration runs first and
    # only then does the server roll to the new version.
    from trackop.schema import revisions

    with psycopg.connect(host=secret["PGHOST"], port=secret["PGPORT"], user=secret["PGUSER"],
                         password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = %s", (revisions.head_revision(),))
    batch = client.BatchV1Api(kube_api)
    batch.delete_namespaced_job(jobs[0].metadata.name, backends.namespace, propagation_policy="Background")
    retried = eventually(lambda: [j for j in batch.list_namespaced_job(backends.namespace).items
                                  if j.metadata.name == jobs[0].metadata.name and j.metadata.uid != jobs[0].metadata.uid],
                         "the migration Job to be recreated", timeout=60)[0]
    assert image() == "ghcr.io/mlflow/mlflow:v3.17.2", "no rollout before the migration"
    kubelet.run_job(backends.namespace, retried.metadata.name)
    eventually(lambda: image() == "ghcr.io/mlflow/mlflow:v3.17.1", "the rollout after the migration", timeout=60)


def test_a_server_image_that_cannot_run_is_reported_stuck_once_and_checked_less_often(
        backends: Backends, admin: Admin, kube_api, kubelet, operator):
    """The bed has no kubelet, but kube-controller-manager's deployment controller still
    judges the rollout: with no pod ever available it reports ProgressDeadlineExceeded after
    progressDeadlineSeconds. The pod reports what a node would for an image it cannot pull."""
    core = client.CoreV1Api(kube_api)
    backends.admin_secret(admin)
    port, bad = free_ports(1)[0], "registry.invalid/mlflow:no-such-tag"
    backends.apply("stuck", {**backends.spec(), "server": {"port": port, "image": bad,
                                                            "progressDeadlineSeconds": 20}})
    backends.wait_condition("stuck", "ServerReady", "False", "RollingOut")
    rolling_before = failures_by_reason(operator, "RollingOut")
    selector = "app.kubernetes.io/name=mlflow,app.kubernetes.io/instance=stuck"
    pod = eventually(lambda: core.list_namespaced_pod(backends.namespace, label_selector=selector).items,
                     "the server's pod")[0]
    report_waiting(kube_api, backends.namespace, pod.metadata.name, "ImagePullBackOff",
                   f'Back-off pulling image "{bad}"')

    cond = backends.wait_condition("stuck", "ServerReady", "False", "ProgressDeadlineExceeded", timeout=120)
    assert failures_by_reason(operator, "RollingOut") - rolling_before >= 3, "polled every 3 s while it could move"
    for part in ("no progress for 20s", "spec.server.progressDeadlineSeconds", "has timed out progressing",
                 pod.metadata.name, "ImagePullBackOff", bad):
        assert part in cond["message"], (part, cond["message"])
    ready = backends.condition("stuck", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ProgressDeadlineExceeded")

    # Stuck: checked about once a minute (handler and drift timer together), not every 3 s.
    stuck_before = failures_by_reason(operator, "ProgressDeadlineExceeded")
    time.sleep(70)
    polls = failures_by_reason(operator, "ProgressDeadlineExceeded") - stuck_before
    assert 1 <= polls <= 3, f"{polls:.0f} full reconciles of a stuck rollout in 70 s"
    assert backends.condition("stuck", "ServerReady")["reason"] == "ProgressDeadlineExceeded"

    # A fixed spec is acted on within a minute (the handler's retry, or the drift timer
    # sooner: a new spec is not deferred), and rolls out.
    good = "ghcr.io/mlflow/mlflow:v3.17.2"
    backends.patch("stuck", {"spec": {"server": {"image": good}}})
    backends.wait_condition("stuck", "ServerReady", "False", "RollingOut", timeout=90)
    fixed = eventually(lambda: [p for p in core.list_namespaced_pod(backends.namespace, label_selector=selector).items
                                if p.spec.containers[0].image == good and not p.metadata.deletion_timestamp],
                       "a pod of the fixed template")[0]
    server = kubelet.start_pod(fixed)
    try:
        backends.wait_ready("stuck", timeout=120)
    finally:
        server.stop()
    warnings = [(e.reason, e.count or 1) for e in backends.events("stuck") if e.type == "Warning"]
    assert warnings == [("ProgressDeadlineExceeded", 1)], "one Warning when stuck, none for the rollouts"


# ---- GCS and Azure (the bed's fake-gcs-server and Azurite) -----------------------------

def _gcs_objects(bed_info: dict, bucket: str) -> list[str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=bed_info["gcs"]["project"], credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": bed_info["gcs"]["endpoint"]})
    return [blob.name for blob in client.list_blobs(bucket)]


def _azure_objects(bed_info: dict, container: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(bed_info["azure"]["connection_string"])
    return [blob.name for blob in service.get_container_client(container).list_blobs()]


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_direct_mode_with_gcs_and_azure_puts_artifacts_in_the_store(kind, backends: Backends, admin: Admin,
                                                                    bed_info, tmp_path, operator):
    backends.admin_secret(admin)
    name = f"art-{uuid.uuid4().hex[:10]}"
    if kind == "gcs":
        store = {"gcs": {"bucket": name, "prefix": "team-a", "endpoint": bed_info["gcs"]["endpoint"],
                         "project": bed_info["gcs"]["project"], "createBucket": True}}
        uri_prefix, list_objects = f"gs://{name}/team-a/", _gcs_objects
    else:
        azure = bed_info["azure"]
        backends.secret("azure-creds", {"accountKey": azure["key"]})
        store = {"azure": {"container": name, "storageAccount": azure["account"], "prefix": "team-a",
                           "endpoint": azure["endpoint"], "credentialsSecretRef": {"name": "azure-creds"},
                           "createContainer": True}}
        uri_prefix = f"wasbs://{name}@{azure['account']}.blob.core.windows.net/team-a/"
        list_objects = _azure_objects
    backends.apply("cloud", {**backends.spec(), "artifacts": store})
    obj = backends.wait_ready("cloud")
    assert backends.condition("cloud", "ArtifactsReady")["reason"] == "Writable"
    assert list_objects(bed_info, name) == [], "the probe object is deleted again"

    secret = backends.connection_secret("cloud")
    assert secret["MLFLOW_ARTIFACT_ROOT"] == uri_prefix.rstrip("/")
    env = {k: v for k, v in secret.items() if k.startswith(("MLFLOW_", "AWS_", "AZURE_", "STORAGE_", "GOOGLE_"))}
    logged = run_seed_script(env, tmp_path / "client")
    stored = list_objects(bed_info, name)
    for run in logged.values():
        assert run["artifact_uri"].startswith(uri_prefix), run
        assert any(k.endswith(f"{run['run_id']}/artifacts/model.txt") for k in stored), stored
    assert not (tmp_path / "client" / "mlruns").exists()
    if kind == "azure":
        assert_no_secret_leaks([bed_info["azure"]["key"]], operator, backends, "cloud")
        assert obj["status"].get("trackingUri") is None


def test_server_mode_with_azure_takes_the_key_from_the_secret(backends: Backends, admin: Admin, bed_info, kubelet,
                                                              kube_api, tmp_path):
    backends.admin_secret(admin)
    azure = bed_info["azure"]
    backends.secret("azure-creds", {"accountKey": azure["key"]})
    name = f"art-{uuid.uuid4().hex[:10]}"
    port = free_ports(1)[0]
    backends.apply("azsrv", {**backends.spec(), "server": {"port": port}, "artifacts": {"azure": {
        "container": name, "storageAccount": azure["account"], "prefix": "team-a", "endpoint": azure["endpoint"],
        "credentialsSecretRef": {"name": "azure-creds"}, "createContainer": True}}})
    backends.wait_condition("azsrv", "ServerReady", "False", "RollingOut")
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment("azsrv-mlflow", backends.namespace)
    assert azure["key"] not in json.dumps(client.ApiClient().sanitize_for_serialization(deployment.spec))
    server = kubelet.start_deployment(backends.namespace, "azsrv-mlflow")
    try:
        eventually(lambda: _healthy(port), "the tracking server's /health", timeout=90, interval=0.5)
        backends.wait_ready("azsrv", timeout=60)
        logged = run_seed_script({"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, tmp_path / "client")
    finally:
        server.stop()
    stored = _azure_objects(bed_info, name)
    for run in logged.values():
        assert any(k.startswith("team-a/") and k.endswith(f"{run['run_id']}/artifacts/model.txt") for k in stored)


# ---- the operator's own cloud identity and the endpoint allow-list --------------------------

AMBIENT_KEY_ID = "AKIAOPERATORAMBIENT01"  # what IRSA or a node role would put in the operator's env


def test_a_bucket_without_credentials_gets_no_request_signed_by_the_operator(backends: Backends, admin: Admin,
                                                                            operator):
    """The operator holds AWS keys of its own; a tenant's backend names an endpoint (a
    listener on 127.0.0.1 that records every request) and no credentials Secret. Nothing
    reaches the endpoint until the platform admin allows the operator's identity."""

    backends.admin_secret(admin)
    ambient = {"AWS_ACCESS_KEY_ID": AMBIENT_KEY_ID, "AWS_SECRET_ACCESS_KEY": "operators-own-secret",
               "AWS_EC2_METADATA_DISABLED": "true"}
    with RecordingListener() as tenants_endpoint, RecordingListener() as elsewhere:
        operator.restart(extra_env={**ambient, "TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS": "127.0.0.1"})
        try:
            store = {"bucket": f"b-{uuid.uuid4().hex[:8]}", "endpoint": tenants_endpoint.url}
            backends.apply("keyless", {**backends.spec(), "artifacts": {"s3": store}})
            backends.apply("creating", {**backends.spec(), "artifacts": {"s3": {**store, "createBucket": True}}})
            cond = backends.wait_condition("keyless", "ArtifactsReady", "Unknown", "ServerIdentity")
            assert "spec.artifacts.s3.credentialsSecretRef" in cond["message"]
            assert "serviceAccountName" in cond["message"], "the fix: the tracking server's own identity"
            backends.wait_ready("keyless")
            cond = backends.wait_condition("creating", "ArtifactsReady", "False", "CreateNeedsCredentials")
            assert "spec.artifacts.s3.createBucket" in cond["message"]

            # An endpoint outside the admin's allow-list: refused at admission, no request.
            backends.secret("s3-creds", {"accessKeyId": "AKIATENANT", "secretAccessKey": "tenant-secret"})
            with pytest.raises(client.ApiException) as refused:
                backends.apply("elsewhere", {**backends.spec(), "artifacts": {"s3": {
                    "bucket": "b-1", "endpoint": elsewhere.url.replace("127.0.0.1", "localhost"),
                    "credentialsSecretRef": {"name": "s3-creds"}}}})
            assert "spec.artifacts.s3.endpoint" in json.loads(refused.value.body)["message"]
            assert tenants_endpoint.requests == [] and elsewhere.requests == [], "nothing was sent"

            # The contrast: allowed, the same backend's check signs with the operator's keys.
            operator.restart(extra_env={**ambient, "TRACKOP_ALLOW_OPERATOR_CLOUD_IDENTITY": "true"})
            eventually(lambda: tenants_endpoint.requests, "the check with the operator's identity", timeout=60)
            assert all(AMBIENT_KEY_ID in headers.get("Authorization", "")
                       for _, _, headers in tenants_endpoint.requests)
        finally:
            operator.restart()
    assert "operators-own-secret" not in operator.logs()
