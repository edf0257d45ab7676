"""Faults on the real node: the active operator Pod killed while 20 backends provision, Pods
created while no operator Pod is up (Ignore and Fail), and the kubelet restarted."""

from __future__ import annotations

import json

import psycopg
import pytest
from helpers import eventually
from kubernetes import client
from nodekit import (CHART, RELEASE, RELEASE_NAMESPACE, Helm, NodeBackends, image_values, operator_pods, ready,
                     secret_data, superuser_params)

from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL
from trackop.postgres import templates
from trackop.schema import revisions


pytestmark = [pytest.mark.bed, pytest.mark.timeout(2700)]


# ---- faults ----------------------------------------------------------------------------------
def active_peer(api: client.ApiClient) -> str:
    """The operator Pod that acts: the highest priority in the chart's peering object."""
    status = client.CustomObjectsApi(api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", RELEASE).get("status") or {}
    return max(status, key=lambda peer: status[peer]["priority"])


def test_active_operator_pod_deleted_while_20_backends_provision(installed, node_api, node_core, node_info,
                                                                 node_namespace, node_superuser):
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    names = [f"pg-{i:02d}" for i in range(20)]
    active = active_peer(node_api)
    assert active in {p.metadata.name for p in operator_pods(node_core)}
    for name in names:
        backends.apply(name, backends.in_cluster_spec(None))
    eventually(lambda: any(backends.get(n).get("status", {}).get("database") for n in names),
               "the first backend provisioning", timeout=120, interval=0.2)
    # Killed, as a node losing the Pod would: no grace, no chance to release the peering.
    node_core.delete_namespaced_pod(active, RELEASE_NAMESPACE, grace_period_seconds=0)
    for name in names:
        backends.wait_ready(name, timeout=420)
    assert active_peer(node_api) != active

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
        with psycopg.connect(**superuser_params(node_info), dbname=database) as db:
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
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment_scale(RELEASE, RELEASE_NAMESPACE, {"spec": {"replicas": replicas}})
    if replicas == 0:
        eventually(lambda: not operator_pods(core), "no operator Pod", timeout=120, interval=0.5)
    else:
        eventually(lambda: (lambda pods: len(pods) == replicas and all(ready(p) for p in pods))(operator_pods(core)),
                   f"{replicas} operator Pods Ready", timeout=240, interval=1)


def test_pods_created_while_no_operator_pod_is_up(installed, helm: Helm, node_api, node_core, node_info,
                                                 node_namespace, node_superuser):
    """Ignore (the chart's default): admitted uninjected, and reported once an operator is
    back; Fail: refused."""
    backends = NodeBackends(node_api, node_namespace, node_info, node_superuser)
    backends.apply("resilient", backends.in_cluster_spec(None))
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

    helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
         *image_values(node_info["images"]["operator"]),
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
    before = {p.metadata.name: p.metadata.uid for p in operator_pods(node_core)}
    node_bed[0].restart_component("kubelet")

    def node_ready():
        node = node_core.read_node(node_info["node"]["name"])
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)

    eventually(node_ready, "the Node Ready after the kubelet's restart", timeout=120, interval=1)
    eventually(lambda: all(ready(p) for p in operator_pods(node_core)), "the operator Pods Ready", timeout=120)
    assert {p.metadata.name: p.metadata.uid for p in operator_pods(node_core)} == before
    node_core.create_namespaced_pod(node_namespace, {"metadata": {"name": "after-restart"}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": node_info["images"]["training"],
                                                  "command": ["python3", "-c", "print('ran')"]}]}})
    eventually(lambda: node_core.read_namespaced_pod("after-restart", node_namespace).status.phase == "Succeeded",
               "a Pod created after the restart to run", timeout=120, interval=1)
