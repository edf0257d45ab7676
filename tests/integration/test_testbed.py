"""The local test bed is made of real parts: each test exercises one behaviour that a
hand-written fake would not have (schema validation, controllers, GC, admission, auth)."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from kubernetes import client

from helpers import eventually
from trackop import pki
from trackop_testbed.pki import write_private
from trackop_testbed.procs import free_ports

pytestmark = pytest.mark.bed


def _pod(name: str, **spec) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox", command=["true"])],
                              **spec),
    )


# ---- Kubernetes ------------------------------------------------------------------------

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.bed.trackop.dev"},
    "spec": {
        "group": "bed.trackop.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["Fast", "Safe"], "default": "Safe"},
                    },
                }},
            }},
        }],
    },
}


def test_crd_schema_rejects_invalid_object_with_field_message(kube_api, namespace):
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(WIDGET_CRD)
    try:
        eventually(
            lambda: any(c.type == "Established" and c.status == "True"
                        for c in ext.read_custom_resource_definition("widgets.bed.trackop.dev").status.conditions or []),
            "CRD established",
        )
        objects = client.CustomObjectsApi(kube_api)
        ok = eventually(lambda: _try_create(objects, namespace, {"size": 3}), "the new API to be served")
        assert ok["spec"] == {"size": 3, "mode": "Safe"}, "the structural schema's default applies"

        with pytest.raises(client.ApiException) as rejected:
            objects.create_namespaced_custom_object(
                "bed.trackop.dev", "v1", namespace, "widgets",
                {"apiVersion": "bed.trackop.dev/v1", "kind": "Widget",
                 "metadata": {"name": "too-big"}, "spec": {"size": 99, "mode": "Reckless"}},
            )
        assert rejected.value.status == 422
        message = json.loads(rejected.value.body)["message"]
        assert "spec.size" in message and "spec.mode" in message
    finally:
        ext.delete_custom_resource_definition("widgets.bed.trackop.dev")


def _try_create(objects: client.CustomObjectsApi, namespace: str, spec: dict):
    try:
        return objects.create_namespaced_custom_object(
            "bed.trackop.dev", "v1", namespace, "widgets",
            {"apiVersion": "bed.trackop.dev/v1", "kind": "Widget", "metadata": {"name": "ok"}, "spec": spec},
        )
    except client.ApiException as exc:
        if exc.status == 404:  # discovery of the new group is still catching up
            return None
        raise


def test_deployment_gets_replicaset_and_pods_from_controller_manager(kube_api, core_v1, namespace):
    apps = client.AppsV1Api(kube_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")]),
            ),
        ),
    ))
    replica_sets = eventually(lambda: apps.list_namespaced_replica_set(namespace).items, "a ReplicaSet")
    assert replica_sets[0].metadata.owner_references[0].name == "web"
    pods = eventually(lambda: (p := core_v1.list_namespaced_pod(namespace, label_selector="app=web").items)
                       and len(p) == 2 and p, "two Pods")
    assert {p.metadata.owner_references[0].name for p in pods} == {replica_sets[0].metadata.name}


def test_namespace_deletion_finishes_terminating(core_v1):
    name = f"gone-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core_v1.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    core_v1.delete_namespace(name)

    def gone() -> bool:
        try:
            core_v1.read_namespace(name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    eventually(gone, f"namespace {name} to finish terminating", timeout=90)


def test_owner_referenced_object_is_garbage_collected(core_v1, namespace):
    owner = core_v1.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    core_v1.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="dependent",
        owner_references=[client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                                  uid=owner.metadata.uid)],
    )))
    core_v1.delete_namespaced_config_map("owner", namespace)
    eventually(lambda: not core_v1.list_namespaced_config_map(
        namespace, field_selector="metadata.name=dependent").items, "the dependent to be collected")


class _MutatingHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        patch = [{"op": "add", "path": "/metadata/labels", "value": {"mutated-by": "bed-webhook"}}]
        response = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": True,
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
        }
        body = json.dumps(response).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_mutating_webhook_served_locally_mutates_a_pod(kube_api, core_v1, namespace, tmp_path):
    ca = pki.make_ca("webhook-ca")
    serving = pki.issue(ca, "webhook", ip_addresses=("127.0.0.1",), server=True)
    cert = write_private(tmp_path / "tls.crt", serving.cert_pem)
    key = write_private(tmp_path / "tls.key", serving.key_pem)
    port = free_ports(1)[0]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _MutatingHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    admission = client.AdmissionregistrationV1Api(kube_api)
    name = f"bed-{namespace}"
    admission.create_mutating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "mutate.bed.trackop.dev",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate",
                             "caBundle": base64.b64encode(ca.cert_pem).decode()},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    })
    try:
        attempt = iter(range(1000))

        def mutated_pod():
            # The API server picks the new configuration up within a moment.
            pod = core_v1.create_namespaced_pod(namespace, _pod(f"p{next(attempt)}"))
            return pod if (pod.metadata.labels or {}).get("mutated-by") == "bed-webhook" else None

        pod = eventually(mutated_pod, "a Pod mutated by the local webhook", timeout=30, interval=0.5)
        assert core_v1.read_namespaced_pod(pod.metadata.name, namespace).metadata.labels["mutated-by"] == "bed-webhook"
    finally:
        admission.delete_mutating_webhook_configuration(name)
        server.shutdown()


# ---- PostgreSQL and S3 -----------------------------------------------------------------

def test_postgres_accepts_password_and_rejects_wrong_one(bed_info):
    pg = bed_info["postgres"]
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg["user"],)
        method = conn.execute("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1").fetchone()
        assert method == ("scram-sha-256",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"] + "x",
                        dbname="postgres")


def test_s3_bucket_put_and_get(s3_client):
    bucket = f"bed-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_object(Bucket=bucket, Key="team-a/hello.txt", Body=b"hello from the bed")
    body = s3_client.get_object(Bucket=bucket, Key="team-a/hello.txt")["Body"].read()
    assert body == b"hello from the bed"
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == ["team-a/hello.txt"]


# ---- the local kubelet -----------------------------------------------------------------

def test_local_kubelet_resolves_env_like_the_kubelet(core_v1, namespace, kubelet):
    core_v1.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s"), string_data={"password": "p@ss:/?#", "user": "alice"}))
    core_v1.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="c"), data={"HOST": "db.local", "PORT": "5432"}))
    pod = core_v1.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="envy", labels={"team": "a"}),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="main", image="busybox", command=["true"],
            env_from=[client.V1EnvFromSource(config_map_ref=client.V1ConfigMapEnvSource(name="c"), prefix="DB_")],
            env=[
                client.V1EnvVar(name="PASSWORD", value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(name="s", key="password"))),
                client.V1EnvVar(name="DSN", value="$(DB_HOST):$(DB_PORT) $$(DB_HOST) $(MISSING)"),
                client.V1EnvVar(name="POD", value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.name"))),
                client.V1EnvVar(name="TEAM", value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.labels['team']"))),
                client.V1EnvVar(name="OPTIONAL", value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(name="s", key="nope", optional=True))),
            ],
        )]),
    ))
    env = kubelet.resolve_env(pod, pod.spec.containers[0])
    assert env == {
        "DB_HOST": "db.local", "DB_PORT": "5432", "PASSWORD": "p@ss:/?#",
        "DSN": "db.local:5432 $(DB_HOST) $(MISSING)", "POD": "envy", "TEAM": "a",
    }


WRITER = """
import os, psycopg
with psycopg.connect(connect_timeout=5) as conn:  # libpq reads PGHOST, PGPASSWORD, ...
    conn.execute("CREATE TABLE IF NOT EXISTS job_marks (mark text PRIMARY KEY)")
    conn.execute("INSERT INTO job_marks VALUES (%s)", (os.environ["MARK"],))
print("wrote", os.environ["MARK"])
"""


def test_local_kubelet_runs_a_job_that_writes_to_postgres(kube_api, core_v1, namespace, kubelet, bed_info):
    pg = bed_info["postgres"]
    core_v1.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="pg"), string_data={"password": pg["password"]}))
    mark = uuid.uuid4().hex
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, client.V1Job(
        metadata=client.V1ObjectMeta(name="writer"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[client.V1Container(
                    name="writer", image="python:3.11-slim", command=["python", "-c", WRITER],
                    env=[
                        client.V1EnvVar(name="PGHOST", value=pg["host"]),
                        client.V1EnvVar(name="PGPORT", value=str(pg["port"])),
                        client.V1EnvVar(name="PGUSER", value=pg["user"]),
                        client.V1EnvVar(name="PGDATABASE", value="postgres"),
                        client.V1EnvVar(name="PGPASSWORD", value_from=client.V1EnvVarSource(
                            secret_key_ref=client.V1SecretKeySelector(name="pg", key="password"))),
                        client.V1EnvVar(name="MARK", value=mark),
                    ],
                )],
            )),
        ),
    ))
    job = kubelet.run_job(namespace, "writer")
    complete = [c for c in job.status.conditions if c.type == "Complete"]
    assert complete and complete[0].status == "True", job.status
    assert job.status.succeeded == 1
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                         dbname="postgres") as conn:
        assert conn.execute("SELECT count(*) FROM job_marks WHERE mark = %s", (mark,)).fetchone() == (1,)


def test_local_kubelet_reports_a_failing_job(kube_api, namespace, kubelet):
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, client.V1Job(
        metadata=client.V1ObjectMeta(name="fails"),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(name="main", image="python:3.11-slim",
                                           command=["python", "-c", "raise SystemExit(3)"])],
        ))),
    ))
    job = kubelet.run_job(namespace, "fails")
    assert [c.type for c in job.status.conditions if c.status == "True"][-1] == "Failed"
    assert job.status.failed == 1
