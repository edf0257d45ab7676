"""trackop as its users run it, on the bed's real node: ``helm install`` of the chart with the
image built from the project's Dockerfile, the operator in two Pods (peering), its webhooks
called by the API server through their Service, the MLflow server Deployment it creates
running the MLflow image and Ready by its own probes, training Jobs that carry only the
opt-in label and annotation logging the seed's run through the injected
``MLFLOW_TRACKING_URI`` (cluster DNS) in Server and in Direct mode, the migration Job in the
MLflow image, and a managed PostgreSQL StatefulSet on the PostgreSQL image.

The files of tests/node run in name order on one bed and one release (conftest.py)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import eventually
from kubernetes import client
from nodekit import (RELEASE, RELEASE_NAMESPACE, NodeBackends, bucket_keys, operator_pods, pod_log, ready,
                     run_in_database, secret_data, superuser_params, wait_pod_phase)
from psycopg import sql

from trackop.schema import revisions
from trackop.specs import managed_server


pytestmark = [pytest.mark.bed, pytest.mark.timeout(2700)]


# ---- the release ---------------------------------------------------------------------------
def test_helm_install_runs_two_readyoperator_pods_from_the_built_image(installed, node_core, node_info, node_api):
    pods = operator_pods(node_core)
    assert len(pods) == 2 and all(ready(p) and p.status.phase == "Running" for p in pods), \
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
    backends.apply("first", backends.in_cluster_spec(None, postgres_database=database))

    def refused() -> str | None:
        try:
            backends.apply("second", backends.in_cluster_spec(None, postgres_database=database))
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
    backends.apply("stack", backends.in_cluster_spec(bucket, server={"image": node_info["images"]["mlflow"]}))
    obj = backends.wait_ready("stack")
    apply_to_ready = time.monotonic() - started
    assert obj["status"]["trackingUri"] == f"http://stack-mlflow.{node_namespace}.svc:5000"
    # The server's Pod is Ready by its own probes, on the node, from the MLflow image.
    server = wait_pod_phase(node_core, node_namespace, "app.kubernetes.io/instance=stack,app.kubernetes.io/name=mlflow",
                            {"Running"})
    assert ready(server) and server.spec.containers[0].image == node_info["images"]["mlflow"]
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
    params, metrics = run_in_database(node_info, database, out["run_id"])
    assert params == [("alpha", "0.5")] and metrics == [("rmse", 0.78)]
    assert out["artifact_uri"].startswith("mlflow-artifacts:")
    keys = bucket_keys(node_info, bucket)
    assert any(k.startswith("team-a/") and k.endswith(f"{out['run_id']}/artifacts/model.txt") for k in keys), keys
    print(f"Server mode: apply to Ready {apply_to_ready:.1f}s; training pod creation to its run {to_first_run:.1f}s")


def test_direct_mode_journey_on_the_node(installed, node_api, node_core, node_info, node_namespace, node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    bucket = f"art-{uuid.uuid4().hex[:8]}"
    backends.apply("direct", backends.in_cluster_spec(bucket, injection={"mode": "Direct"}))
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
    params, metrics = run_in_database(node_info, obj["status"]["database"]["name"], out["run_id"])
    assert params == [("alpha", "0.5")] and metrics == [("rmse", 0.78)]
    assert out["artifact_uri"] == f"s3://{bucket}/team-a/" + out["artifact_uri"].split("/team-a/", 1)[1]
    keys = bucket_keys(node_info, bucket)
    assert any(k.endswith(f"{out['run_id']}/artifacts/model.txt") for k in keys), keys


def test_job_migration_runs_mlflow_db_upgrade_in_the_mlflow_image(installed, node_api, node_info, node_namespace,
                                                                  node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    image = node_info["images"]["mlflow"]
    backends.apply("jobmig", backends.in_cluster_spec(f"art-{uuid.uuid4().hex[:8]}",
                                           schema={"migration": "Job", "image": image}))
    obj = backends.wait_ready("jobmig")
    jobs = client.BatchV1Api(node_api).list_namespaced_job(node_namespace).items
    (job,) = [j for j in jobs if j.spec.template.spec.containers[0].image == image]
    assert job.status.succeeded == 1
    head = revisions.head_revision()
    with psycopg.connect(**superuser_params(node_info), dbname=obj["status"]["database"]["name"]) as db:
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
    assert pod.spec.containers[0].image == node_info["images"]["postgres"] and ready(pod)
    secret = secret_data(node_core, node_namespace, obj["status"]["connectionSecret"])
    assert _setting(pod.status.pod_ip, secret, "max_connections") == "40"
    assert _setting(pod.status.pod_ip, secret, "shared_buffers") == "32MB"
    # A run logged by a Pod through the injected URI (the managed server's Service, by DNS).
    out, _ = backends.run_training_job(f"{node_namespace}/mpg", node_info["images"]["mlflow"])

    backends.patch("mpg", {"spec": {"postgres": {"tuning": {"maxConnections": 60}}}})
    first = pod.metadata.uid

    def restarted():
        now = node_core.read_namespaced_pod("mpg-postgres-0", node_namespace)
        return now if now.metadata.uid != first and ready(now) else None

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


def test_no_secret_in_theoperator_pods_logs(installed, node_core, node_info):
    """What the journeys made secret (every role's password, every admin's, the bucket key)
    appears in no log line of either operator Pod."""
    secrets = {node_info["s3"]["secret_key"], node_info["postgres"]["password"]}
    for namespace in (n.metadata.name for n in node_core.list_namespace().items):
        for secret in node_core.list_namespaced_secret(namespace).items:
            if secret.type == "Opaque":
                secrets |= {v for k, v in secret_data(node_core, namespace, secret.metadata.name).items()
                            if k in ("password", "PGPASSWORD", "secretAccessKey", "AWS_SECRET_ACCESS_KEY")}
    assert len(secrets) > 4, "the journeys made no secrets to look for"
    for pod in operator_pods(node_core):
        log = pod_log(node_core, RELEASE_NAMESPACE, pod.metadata.name)
        assert log.strip(), f"{pod.metadata.name} logged nothing"
        leaked = [s for s in secrets if s in log]
        assert not leaked, f"{pod.metadata.name} logged {len(leaked)} secret(s)"
