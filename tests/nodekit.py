"""Helpers of the tests on the real node (tests/node): the chart, helm, backends reaching the
bed's servers through their Services, training Jobs, Pods and Secrets."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import uuid
from pathlib import Path

import boto3
import psycopg
from botocore.config import Config
from helpers import eventually
from kit import Backends, make_admin
from kubernetes import client
from trackop_testbed import binaries

from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "trackop"
RELEASE = "trackop"
RELEASE_NAMESPACE = "trackop-system"


class Helm:
    """The helm CLI on the node bed's cluster."""

    def __init__(self, kubeconfig: str) -> None:
        self.binary = binaries.ensure_helm()
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, timeout: float = 600) -> str:
        argv = [str(self.binary), "--kubeconfig", self.kubeconfig, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout


def image_values(reference: str) -> list[str]:
    """--set arguments for the chart's image: the bed's, never pulled."""
    repository, _, tag = reference.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]


def secret_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    secret = core.read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def wait_pod_phase(core: client.CoreV1Api, namespace: str, selector: str, phases: set[str],
                   timeout: float = 300) -> client.V1Pod:
    """The first Pod matching ``selector`` in one of ``phases``; fails with the Pods' state."""
    def found():
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return next((p for p in pods if p.status.phase in phases), None)

    try:
        return eventually(found, f"a pod {selector} in {sorted(phases)}", timeout=timeout, interval=1)
    except AssertionError as exc:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        states = [(p.metadata.name, p.status.phase,
                   [(c.name, c.state.to_dict()) for c in p.status.container_statuses or []]) for p in pods]
        raise AssertionError(f"{exc}; pods: {states}") from None


def pod_log(core: client.CoreV1Api, namespace: str, pod: str) -> str:
    """A container's log as text (the client's own decoding returns a bytes repr for it)."""
    return core.read_namespaced_pod_log(pod, namespace, _preload_content=False).data.decode()


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


def operator_pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    return core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR).items


def ready(pod: client.V1Pod) -> bool:
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def s3_client(node_info: dict):
    s3 = node_info["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                        aws_secret_access_key=s3["secret_key"], region_name=s3["region"],
                        config=Config(proxies={}))


class NodeBackends(Backends):
    """TrackingBackends in one namespace of the node bed, reaching the bed's PostgreSQL and S3
    through their in-cluster Services, as a platform team's would reach theirs; with an admin
    role (CREATEDB CREATEROLE) and the bucket's keys as Secrets there."""

    def __init__(self, api: client.ApiClient, namespace: str, node_info: dict, conn: psycopg.Connection) -> None:
        super().__init__(api, namespace, node_info)
        self.info = node_info
        self.admin_secret(make_admin(conn, "CREATEDB", "CREATEROLE"))
        s3 = node_info["s3"]
        self.secret("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})

    def in_cluster_spec(self, bucket: str | None, postgres_database: str | None = None, **extra) -> dict:
        """A backend on the bed's PostgreSQL, with ``bucket`` (created) for its artifacts if given."""
        pg, s3 = self.info["postgres"]["in_cluster"], self.info["s3"]
        database = {"database": postgres_database} if postgres_database else {}
        artifacts = {"artifacts": {"s3": {
            "bucket": bucket, "prefix": "team-a", "endpoint": s3["in_cluster_endpoint"], "region": s3["region"],
            "credentialsSecretRef": {"name": "s3-creds"}, "createBucket": True}}} if bucket else {}
        return {"postgres": {"external": {"host": pg["host"], "port": pg["port"], "sslMode": "disable",
                                          "adminSecretRef": {"name": "pg-admin"}}, **database},
                **artifacts, **extra}

    def wait_ready(self, name: str, timeout: float = 300) -> dict:
        # Longer than the e2e default: the first backend on the node also pulls up its server's Pods.
        return super().wait_ready(name, timeout)

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


def superuser_params(node_info: dict) -> dict:
    pg = node_info["postgres"]
    return {"host": pg["host"], "port": pg["port"], "user": pg["user"], "password": pg["password"]}


def run_in_database(node_info: dict, database: str, run_id: str) -> tuple[list, list]:
    with psycopg.connect(**superuser_params(node_info), dbname=database) as db:
        params = db.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run_id,)).fetchall()
        metrics = db.execute("SELECT key, value FROM metrics WHERE run_uuid = %s", (run_id,)).fetchall()
    return params, metrics


def bucket_keys(node_info: dict, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client(node_info).list_objects_v2(Bucket=bucket).get("Contents", [])]
