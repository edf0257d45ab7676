"""trackop as its users run it, on the bed's real node: ``helm install`` of the chart with the
image built from the project's Dockerfile, the operator in two Pods (peering), its webhooks
called by the API server through their Service, the MLflow server Deployment it creates
running the MLflow image and Ready by its own probes, and training Jobs that carry only the
opt-in label and annotation logging the seed's run through the injected
``MLFLOW_TRACKING_URI`` (cluster DNS), in Server and in Direct mode; then ``helm upgrade``
and ``helm uninstall``.

The tests run in file order on one bed and one release: the last one uninstalls it.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.config import Config
from nodekit import CHART, RELEASE, RELEASE_NAMESPACE, Helm, image_values, pod_log, secret_data, wait_pod_phase
from helpers import eventually
from kubernetes import client
from psycopg import sql

from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL
from trackop.schema import revisions
from trackop.postgres import templates
from trackop.specs import managed_server

pytestmark = [pytest.mark.bed, pytest.mark.timeout(2700)]

GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=trackop"

# The seed article's training script: a param, a metric and an artifact in a run.
SEED_SCRIPT = textwrap.dedent("""
    import json, os, mlflow
    with open("/tmp/model.txt", "w") as handle:
        handle.write("weights")
    mlflow.set_experiment("seed")
    with mlflow.start_run() as run:
        mlflow.log_param("alpha", "0.5")
        mlflow.log_metric("rmse", 0.78)
        mlflow.log_artifact("/tmp/model.txt")
    print(json.dumps({"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
                      "tracking_uri": mlflow.get_tracking_uri().split("@")[-1]}))
""")


def _operator_pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    return core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR).items


def _ready(pod: client.V1Pod) -> bool:
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _s3(node_info: dict):
    s3 = node_info["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                        aws_secret_access_key=s3["secret_key"], region_name=s3["region"],
                        config=Config(proxies={}))


class NodeBackends:
    """TrackingBackends in one namespace of the node bed, reaching the bed's PostgreSQL and S3
    through their in-cluster Services, as a platform team's would reach theirs."""

    def __init__(self, api: client.ApiClient, namespace: str, node_info: dict, conn: psycopg.Connection) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.info = node_info
        admin, password = f"adm_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CREATEDB CREATEROLE").format(
            sql.Identifier(admin), sql.Literal(password)))
        self.secret("pg-admin", {"username": admin, "password": password})
        s3 = node_info["s3"]
        self.secret("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(self.namespace, {"metadata": {"name": name}, "stringData": data})

    def spec(self, bucket: str | None, postgres_database: str | None = None, **extra) -> dict:
        """A backend on the bed's PostgreSQL, with ``bucket`` (created) for its artifacts if given."""
        pg, s3 = self.info["postgres"]["in_cluster"], self.info["s3"]
        database = {"database": postgres_database} if postgres_database else {}
        artifacts = {"artifacts": {"s3": {
            "bucket": bucket, "prefix": "team-a", "endpoint": s3["in_cluster_endpoint"], "region": s3["region"],
            "credentialsSecretRef": {"name": "s3-creds"}, "createBucket": True}}} if bucket else {}
        return {"postgres": {"external": {"host": pg["host"], "port": pg["port"], "sslMode": "disable",
                                          "adminSecretRef": {"name": "pg-admin"}}, **database},
                **artifacts, **extra}

    def apply(self, name: str, spec: dict) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend", "metadata": {"name": name}, "spec": spec})

    def get(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, name: str, patch: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def wait_ready(self, name: str, timeout: float = 300) -> dict:
        def ready():
            obj = self.get(name)
            conditions = obj.get("status", {}).get("conditions", [])
            return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

        try:
            return eventually(ready, f"{name} Ready", timeout=timeout, interval=1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {self.get(name).get('status')}") from None

    def run_training_job(self, backend: str, image: str, timeout: float = 300) -> tuple[dict, client.V1Pod]:
        """A Job whose Pod carries only the opt-in label and the backend annotation runs the
        seed script; what it printed, and its Pod."""
        name = f"train-{uuid.uuid4().hex[:6]}"
        client.BatchV1Api(self.core.api_client).create_namespaced_job(self.namespace, {
            "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": {INJECT_LABEL: "true"}, "annotations": {BACKEND_ANNOTATION: backend}},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "train", "image": image, "command": ["python3", "-c", SEED_SCRIPT],
                    "env": [{"name": "HOME", "value": "/tmp"}]}]}}}})
        pod = wait_pod_phase(self.core, self.namespace, f"job-name={name}", {"Succeeded", "Failed"}, timeout)
        log = pod_log(self.core, self.namespace, pod.metadata.name)
        if pod.status.phase != "Succeeded":
            # MLflow's own errors name the database URI, password included: not in a test report.
            for secret in self.core.list_namespaced_secret(self.namespace).items:
                for value in secret_data(self.core, self.namespace, secret.metadata.name).values():
                    log = log.replace(value, "***") if len(value) >= 8 else log
        assert pod.status.phase == "Succeeded", f"the training pod failed:\n{log[-3000:]}"
        return json.loads(log.strip().splitlines()[-1]), pod


def _superuser_params(node_info: dict) -> dict:
    pg = node_info["postgres"]
    return {"host": pg["host"], "port": pg["port"], "user": pg["user"], "password": pg["password"]}


def _run_in_database(node_info: dict, database: str, run_id: str) -> tuple[list, list]:
    with psycopg.connect(**_superuser_params(node_info), dbname=database) as db:
        params = db.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run_id,)).fetchall()
        metrics = db.execute("SELECT key, value FROM metrics WHERE run_uuid = %s", (run_id,)).fetchall()
    return params, metrics


def _bucket_keys(node_info: dict, bucket: str) -> list[str]:
    return [o["Key"] for o in _s3(node_info).list_objects_v2(Bucket=bucket).get("Contents", [])]


# ---- the release ---------------------------------------------------------------------------
def test_helm_install_runs_two_ready_operator_pods_from_the_built_image(installed, node_core, node_info, node_api):
    pods = _operator_pods(node_core)
    assert len(pods) == 2 and all(_ready(p) and p.status.phase == "Running" for p in pods), \
        [(p.metadata.name, p.status.phase) for p in pods]
    assert {p.spec.containers[0].image for p in pods} == {node_info["images"]["operator"]}
    assert {p.spec.containers[0].image_pull_policy for p in pods} == {"Never"}
    # The image's own user (the Dockerfile's USER), not root.
    assert all(p.spec.security_context.run_as_user == 10001 for p in pods)
    # Peering: both operators registered in the chart's peering object.
    peering = client.CustomObjectsApi(node_api).get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                                          RELEASE)
    assert len(peering.get("status") or {}) == 2, peering.get("status")
    # The webhooks' configurations, made by the operator, point at the chart's Service,
    # which has both Pods as endpoints.
    admission = client.AdmissionregistrationV1Api(node_api)
    mutating = admission.read_mutating_webhook_configuration("trackop-injection")
    service = mutating.webhooks[0].client_config.service
    assert service.namespace == RELEASE_NAMESPACE and mutating.webhooks[0].client_config.ca_bundle
    endpoints = eventually(lambda: (lambda e: e if len(e) == 2 else None)(
        [a for s in node_core.read_namespaced_endpoints(service.name, RELEASE_NAMESPACE).subsets or []
         for a in s.addresses or []]), "both operator Pods behind the webhook Service", timeout=60)
    assert {a.target_ref.name for a in endpoints} == {p.metadata.name for p in pods}
    print(f"helm install to both operator Pods Ready: {installed['seconds']:.1f}s")


def test_validating_webhook_answers_through_its_service(installed, node_api, node_info, node_namespace,
                                                       node_superuser):
    """A second backend on a database another one already uses is refused by the API server
    with the webhook's message: only the operator's index knows it, so only a call through
    the Service to a running operator Pod can refuse it."""
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    database = f"mlflow_dup_{uuid.uuid4().hex[:8]}"
    backends.apply("first", backends.spec(f"art-{uuid.uuid4().hex[:8]}", postgres_database=database))

    def refused() -> str | None:
        try:
            backends.apply("second", backends.spec(f"art-{uuid.uuid4().hex[:8]}", postgres_database=database))
        except client.ApiException as exc:
            return json.loads(exc.body)["message"] if exc.status in (400, 403, 422) else None
        backends.delete("second")  # admitted before the index saw "first": try again
        eventually(lambda: backends.get("second") is None, "second gone", timeout=60)
        return None

    message = eventually(refused, "the second backend on the same database refused", timeout=60, interval=1)
    assert message.startswith('admission webhook "validate.trackop.dev" denied the request: '
                              f"spec.postgres.database: {database} on "), message
    assert message.endswith(f"is already used by TrackingBackend {node_namespace}/first"), message


# ---- the seed's journey ----------------------------------------------------------------------
def test_server_mode_journey_on_the_node(installed, node_api, node_core, node_info, node_namespace, node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    bucket = f"art-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    backends.apply("stack", backends.spec(bucket, server={"image": node_info["images"]["mlflow"]}))
    obj = backends.wait_ready("stack")
    apply_to_ready = time.monotonic() - started
    assert obj["status"]["trackingUri"] == f"http://stack-mlflow.{node_namespace}.svc:5000"
    # The server's Pod is Ready by its own probes, on the node, from the MLflow image.
    server = wait_pod_phase(node_core, node_namespace, "app.kubernetes.io/instance=stack,app.kubernetes.io/name=mlflow",
                            {"Running"})
    assert _ready(server) and server.spec.containers[0].image == node_info["images"]["mlflow"]
    assert server.status.container_statuses[0].ready

    created = time.monotonic()
    out, pod = backends.run_training_job(f"{node_namespace}/stack", node_info["images"]["training"])
    to_first_run = time.monotonic() - created
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["MLFLOW_TRACKING_URI"].value == obj["status"]["trackingUri"]
    assert "trackop.dev/injected" in pod.metadata.annotations
    assert out["tracking_uri"] == obj["status"]["trackingUri"]
    # Nothing secret is injected in Server mode: no copy of the Secret in the namespace's env.
    assert not any(e.value_from for e in env.values())

    database = obj["status"]["database"]["name"]
    params, metrics = _run_in_database(node_info, database, out["run_id"])
    assert params == [("alpha", "0.5")] and metrics == [("rmse", 0.78)]
    assert out["artifact_uri"].startswith("mlflow-artifacts:")
    keys = _bucket_keys(node_info, bucket)
    assert any(k.startswith("team-a/") and k.endswith(f"{out['run_id']}/artifacts/model.txt") for k in keys), keys
    print(f"Server mode: apply to Ready {apply_to_ready:.1f}s; training pod creation to its run {to_first_run:.1f}s")


def test_direct_mode_journey_on_the_node(installed, node_api, node_core, node_info, node_namespace, node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    bucket = f"art-{uuid.uuid4().hex[:8]}"
    backends.apply("direct", backends.spec(bucket, injection={"mode": "Direct"}))
    obj = backends.wait_ready("direct")
    # A client on a database URI needs the full mlflow package (mlflow-skinny, the training
    # image's, has no database store), psycopg and boto3: the MLflow image has all three.
    out, pod = backends.run_training_job(f"{node_namespace}/direct", node_info["images"]["mlflow"])
    env = {e.name: e for e in pod.spec.containers[0].env}
    # The URI and the bucket's keys come by reference from trackop's copy of the connection
    # Secret, never as values in the pod spec.
    copy = env["MLFLOW_TRACKING_URI"].value_from.secret_key_ref.name
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == copy
    data = secret_data(node_core, node_namespace, obj["status"]["connectionSecret"])
    copied = secret_data(node_core, node_namespace, copy)
    assert {k: copied[k] for k in ("MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY")} == \
        {k: data[k] for k in ("MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY")}
    assert data["PGPASSWORD"] not in json.dumps(client.ApiClient().sanitize_for_serialization(pod.spec))
    pg = node_info["postgres"]["in_cluster"]
    assert out["tracking_uri"].startswith(f"{pg['host']}:{pg['port']}/")
    params, metrics = _run_in_database(node_info, obj["status"]["database"]["name"], out["run_id"])
    assert params == [("alpha", "0.5")] and metrics == [("rmse", 0.78)]
    assert out["artifact_uri"] == f"s3://{bucket}/team-a/" + out["artifact_uri"].split("/team-a/", 1)[1]
    keys = _bucket_keys(node_info, bucket)
    assert any(k.endswith(f"{out['run_id']}/artifacts/model.txt") for k in keys), keys


def test_job_migration_runs_mlflow_db_upgrade_in_the_mlflow_image(installed, node_api, node_info, node_namespace,
                                                                  node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    image = node_info["images"]["mlflow"]
    backends.apply("jobmig", backends.spec(f"art-{uuid.uuid4().hex[:8]}",
                                           schema={"migration": "Job", "image": image}))
    obj = backends.wait_ready("jobmig")
    jobs = client.BatchV1Api(node_api).list_namespaced_job(node_namespace).items
    (job,) = [j for j in jobs if j.spec.template.spec.containers[0].image == image]
    assert job.status.succeeded == 1
    head = revisions.head_revision()
    with psycopg.connect(**_superuser_params(node_info), dbname=obj["status"]["database"]["name"]) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        # MLflow's tables belong to the backend's role: the Job ran as it, not as an admin.
        owners = {row[0] for row in db.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert owners == {obj["status"]["database"]["role"]}


def _local_volume(core: client.CoreV1Api, node_bed_dir: Path, namespace: str, claim: str) -> str:
    """A PersistentVolume for one claim, pre-bound to it, on a directory of the bed (the bed
    has no storage provisioner), owned by the PostgreSQL image's uid: the kubelet mounts it
    into the Pod as a real volume."""
    directory = node_bed_dir / "volumes" / f"{namespace}-{claim}"
    directory.mkdir(parents=True)
    os.chown(directory, managed_server.POSTGRES_UID, managed_server.POSTGRES_UID)
    directory.chmod(0o700)
    name = f"pv-{uuid.uuid4().hex[:8]}"
    core.create_persistent_volume({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "trackop-bed-local", "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(directory), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": claim}}})
    return name


def _setting(pod_ip: str, secret: dict[str, str], name: str) -> str | None:
    try:
        with psycopg.connect(host=pod_ip, port=int(secret["PGPORT"]), user=secret["PGUSER"],
                             password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"], connect_timeout=3) as conn:
            return conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
    except psycopg.OperationalError:
        return None


def test_managed_postgres_statefulset_runs_the_postgres_image_and_keeps_data_across_a_restart(
        installed, node_bed, node_api, node_core, node_info, node_namespace, node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    _local_volume(node_core, node_bed[0].dir, node_namespace, "data-mpg-postgres-0")
    backends.apply("mpg", {"postgres": {
        "managed": {"version": "15", "image": node_info["images"]["postgres"],
                    "storage": {"size": "1Gi", "storageClassName": "trackop-bed-local"}},
        "tuning": {"scope": "Server", "maxConnections": 40, "sharedBuffers": "32MB"}}})
    obj = backends.wait_ready("mpg")
    assert obj["status"]["database"]["host"] == f"mpg-postgres.{node_namespace}.svc"
    pod = node_core.read_namespaced_pod("mpg-postgres-0", node_namespace)
    assert pod.spec.containers[0].image == node_info["images"]["postgres"] and _ready(pod)
    secret = secret_data(node_core, node_namespace, obj["status"]["connectionSecret"])
    assert _setting(pod.status.pod_ip, secret, "max_connections") == "40"
    assert _setting(pod.status.pod_ip, secret, "shared_buffers") == "32MB"
    # A run logged by a Pod through the injected URI (the managed server's Service, by DNS).
    out, _ = backends.run_training_job(f"{node_namespace}/mpg", node_info["images"]["mlflow"])

    backends.patch("mpg", {"spec": {"postgres": {"tuning": {"maxConnections": 60}}}})
    first = pod.metadata.uid

    def restarted():
        now = node_core.read_namespaced_pod("mpg-postgres-0", node_namespace)
        return now if now.metadata.uid != first and _ready(now) else None

    pod = eventually(restarted, "mpg-postgres-0 replaced and Ready", timeout=240, interval=1)
    eventually(lambda: _setting(pod.status.pod_ip, secret, "max_connections") == "60",
               "the new server with max_connections 60", timeout=120, interval=1)
    obj = backends.wait_ready("mpg")
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["PendingRestart"]["status"] == "False"
    with psycopg.connect(host=pod.status.pod_ip, port=int(secret["PGPORT"]), user=secret["PGUSER"],
                         password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"]) as conn:
        runs = conn.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (out["run_id"],)).fetchone()[0]
    assert runs == 1, "the run survives the restart (the same volume)"


def test_no_secret_in_the_operator_pods_logs(installed, node_core, node_info):
    """What the journeys made secret (every role's password, every admin's, the bucket key)
    appears in no log line of either operator Pod."""
    secrets = {node_info["s3"]["secret_key"], node_info["postgres"]["password"]}
    for namespace in (n.metadata.name for n in node_core.list_namespace().items):
        for secret in node_core.list_namespaced_secret(namespace).items:
            if secret.type == "Opaque":
                secrets |= {v for k, v in secret_data(node_core, namespace, secret.metadata.name).items()
                            if k in ("password", "PGPASSWORD", "secretAccessKey", "AWS_SECRET_ACCESS_KEY")}
    assert len(secrets) > 4, "the journeys made no secrets to look for"
    for pod in _operator_pods(node_core):
        log = pod_log(node_core, RELEASE_NAMESPACE, pod.metadata.name)
        assert log.strip(), f"{pod.metadata.name} logged nothing"
        leaked = [s for s in secrets if s in log]
        assert not leaked, f"{pod.metadata.name} logged {len(leaked)} secret(s)"


# ---- faults ----------------------------------------------------------------------------------
def _active_peer(api: client.ApiClient) -> str:
    """The operator Pod that acts: the highest priority in the chart's peering object."""
    status = client.CustomObjectsApi(api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", RELEASE).get("status") or {}
    return max(status, key=lambda peer: status[peer]["priority"])


def test_active_operator_pod_deleted_while_20_backends_provision(installed, node_api, node_core, node_info,
                                                                 node_namespace, node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    names = [f"pg-{i:02d}" for i in range(20)]
    active = _active_peer(node_api)
    assert active in {p.metadata.name for p in _operator_pods(node_core)}
    for name in names:
        backends.apply(name, backends.spec(None))
    eventually(lambda: any(backends.get(n).get("status", {}).get("database") for n in names),
               "the first backend provisioning", timeout=120, interval=0.2)
    # Killed, as a node losing the Pod would: no grace, no chance to release the peering.
    node_core.delete_namespaced_pod(active, RELEASE_NAMESPACE, grace_period_seconds=0)
    for name in names:
        backends.wait_ready(name, timeout=420)
    assert _active_peer(node_api) != active

    prefix = f"mlflow_{node_namespace.replace('-', '_')}_"
    marker = f"managed by trackop for TrackingBackend {node_namespace}/%"
    databases = dict(node_superuser.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE starts_with(datname, %s)",
        (prefix,)).fetchall())
    roles = dict(node_superuser.execute(
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE starts_with(rolname, %s) "
        "OR shobj_description(oid, 'pg_authid') LIKE %s", (prefix, marker)).fetchall())
    expected = {backends.get(n)["status"]["database"]["name"]: f"managed by trackop for TrackingBackend "
                f"{node_namespace}/{n}" for n in names}
    assert databases == expected, "orphaned, extra or unmarked databases"
    assert roles == expected, "orphaned, extra or unmarked roles"
    head = revisions.head_revision()
    for database in expected:
        with psycopg.connect(**_superuser_params(node_info), dbname=database) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)], database
    # One template for the bundled MLflow's head, complete; no half-built one left.
    templates_left = {row[0] for row in node_superuser.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (templates.TEMPLATE_PREFIX,)).fetchall()}
    assert templates_left == {templates.template_name(head)}
    # Each backend's password is the one its Secret holds: it logs in with it.
    for name in names:
        secret = secret_data(node_core, node_namespace, f"{name}-mlflow")
        with psycopg.connect(host=node_info["postgres"]["host"], port=node_info["postgres"]["port"],
                             user=secret["PGUSER"], password=secret["PGPASSWORD"], dbname=secret["PGDATABASE"]):
            pass


def _opted_in_pod(name: str, backend: str, image: str) -> dict:
    return {"metadata": {"name": name, "labels": {INJECT_LABEL: "true"}, "annotations": {BACKEND_ANNOTATION: backend}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": image, "command": ["python3", "-c", "pass"]}]}}


def _scale_operator(api: client.ApiClient, core: client.CoreV1Api, replicas: int) -> None:
    client.AppsV1Api(api).patch_namespaced_deployment_scale(RELEASE, RELEASE_NAMESPACE, {"spec": {"replicas": replicas}})
    if replicas == 0:
        eventually(lambda: not _operator_pods(core), "no operator Pod", timeout=120, interval=0.5)
    else:
        eventually(lambda: (lambda pods: len(pods) == replicas and all(_ready(p) for p in pods))(_operator_pods(core)),
                   f"{replicas} operator Pods Ready", timeout=240, interval=1)


def test_pods_created_while_no_operator_pod_is_up(installed, helm: Helm, node_api, node_core, node_info,
                                                 node_namespace, node_superuser):
    """Ignore (the chart's default): admitted uninjected, and reported once an operator is
    back; Fail: refused."""
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    backends.apply("resilient", backends.spec(None))
    backends.wait_ready("resilient")
    image = node_info["images"]["training"]
    _scale_operator(node_api, node_core, 0)
    try:
        pod = node_core.create_namespaced_pod(node_namespace, _opted_in_pod("while-down", "resilient", image))
        assert not any(e.name == "MLFLOW_TRACKING_URI" for e in pod.spec.containers[0].env or []), \
            "Ignore: created, uninjected"
    finally:
        _scale_operator(node_api, node_core, 2)
    eventually(lambda: any(e.reason == "InjectionMissed" and "while-down" in e.message
                           for e in node_core.list_namespaced_event(node_namespace).items),
               "the operator to report the pod that missed injection", timeout=120, interval=1)

    helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *image_values(node_info["images"]["operator"]),
         "--set", "webhook.failurePolicy=Fail", "--wait", "--timeout", "10m")
    admission = client.AdmissionregistrationV1Api(node_api)
    eventually(lambda: admission.read_mutating_webhook_configuration("trackop-injection").webhooks[0].failure_policy
               == "Fail", "the webhook's failurePolicy Fail", timeout=240, interval=1)
    _scale_operator(node_api, node_core, 0)
    try:
        with pytest.raises(client.ApiException) as refused:
            node_core.create_namespaced_pod(node_namespace, _opted_in_pod("while-down-fail", "resilient", image))
        assert 'failed calling webhook "inject.trackop.dev"' in json.loads(refused.value.body)["message"]
    finally:
        _scale_operator(node_api, node_core, 2)


def test_kubelet_restarted(installed, node_bed, node_api, node_core, node_info, node_namespace):
    """Containers outlive their kubelet: after a restart the operator Pods are the same and
    Ready, the Node Ready, and a new Pod runs."""
    before = {p.metadata.name: p.metadata.uid for p in _operator_pods(node_core)}
    node_bed[0].restart_component("kubelet")

    def node_ready():
        node = node_core.read_node(node_info["node"]["name"])
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)

    eventually(node_ready, "the Node Ready after the kubelet's restart", timeout=120, interval=1)
    eventually(lambda: all(_ready(p) for p in _operator_pods(node_core)), "the operator Pods Ready", timeout=120)
    assert {p.metadata.name: p.metadata.uid for p in _operator_pods(node_core)} == before
    node_core.create_namespaced_pod(node_namespace, {"metadata": {"name": "after-restart"}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": node_info["images"]["training"],
                                                  "command": ["python3", "-c", "print('ran')"]}]}})
    eventually(lambda: node_core.read_namespaced_pod("after-restart", node_namespace).status.phase == "Succeeded",
               "a Pod created after the restart to run", timeout=120, interval=1)


# ---- upgrade and uninstall -------------------------------------------------------------------
def test_helm_upgrade_with_a_changed_value_rolls_the_operator(installed, helm: Helm, node_core, node_info):
    before = {p.metadata.name for p in _operator_pods(node_core)}
    helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *image_values(node_info["images"]["operator"]),
         "--set", "operator.driftInterval=45", "--wait", "--timeout", "10m")

    def rolled():
        pods = _operator_pods(node_core)
        names = {p.metadata.name for p in pods}
        return pods if len(pods) == 2 and not names & before and all(_ready(p) for p in pods) else None

    pods = eventually(rolled, "two new operator Pods Ready", timeout=300, interval=1)
    args = pods[0].spec.containers[0].args or []
    assert any("45" in a for a in args) or any(e.value == "45" for e in pods[0].spec.containers[0].env or []), args


def test_helm_uninstall_removes_the_webhooks_and_keeps_crds_and_databases(installed, helm: Helm, node_api,
                                                                          node_superuser):
    databases_before = {row[0] for row in node_superuser.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, 'mlflow_')").fetchall()}
    assert databases_before, "no backend database to keep"
    helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m")
    admission = client.AdmissionregistrationV1Api(node_api)

    def webhooks_gone():
        names = {w.metadata.name for w in admission.list_mutating_webhook_configuration().items} | \
            {w.metadata.name for w in admission.list_validating_webhook_configuration().items}
        return not names & {"trackop-injection", "trackop-validation"}

    eventually(webhooks_gone, "the webhook configurations to go with the release", timeout=120, interval=1)
    crds = {c.metadata.name for c in client.ApiextensionsV1Api(node_api).list_custom_resource_definition().items}
    assert "trackingbackends.trackop.dev" in crds
    kept = {row[0] for row in node_superuser.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, 'mlflow_')").fetchall()}
    assert kept == databases_before
