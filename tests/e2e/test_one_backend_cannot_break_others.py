"""One tenant's object never stops the operator for the others, on the bed with `trackop run`:

- A stored TrackingBackend that one of trackop's builders refuses (an S3 bucket ``a..b`` in
  Direct mode, which the CRD and the parse let through) gets a condition with a reason; after
  an operator restart the startup succeeds and another team's pod is injected within a minute.
  The object is written to etcd as the API server stores it, as if it had been created
  before an upgrade tightened the rules: however strict the CRD and the parse become, a
  stored object can still hold what they refuse now.
- A webhook startup that fails after the server is serving (the ClusterRole that owns the
  webhook configurations cannot be read) releases its port: the retry binds again and the
  operator comes up once the cause is fixed, with no "Address already in use".
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import urllib.request
import uuid

import pytest
from kubernetes import client

from helpers import eventually
from kit import CHART_RELEASE, GROUP, PLURAL, VERSION, Admin, Backends, OperatorProcess

pytestmark = pytest.mark.bed

BROKEN_BUCKET = "a..b"


def opted_in(name: str, backend: str) -> dict:
    return {"metadata": {"name": name, "labels": {"trackop.dev/inject": "true"},
                         "annotations": {"trackop.dev/backend": backend}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "train", "image": "python:3.11-slim"}]}}


def injected_pod(core_v1: client.CoreV1Api, namespace: str, backend: str, names) -> client.V1Pod | None:
    """A new opted-in pod, if the webhook injected it (with failurePolicy Ignore a pod made
    while the webhook is not answering yet is admitted unchanged)."""
    pod = core_v1.create_namespaced_pod(namespace, opted_in(next(names), backend))
    env = {e.name for e in pod.spec.containers[0].env or []}
    return pod if "MLFLOW_TRACKING_URI" in env else None


def store_unchecked(testbed, namespace: str, name: str, spec: dict) -> None:
    """A TrackingBackend written to etcd as the API server stores custom objects (JSON under
    /registry/<group>/<plural>/<namespace>/<name>): no CRD schema, no webhook, no parse."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1,
                         "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "spec": spec}
    encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    request = {"key": encode(f"/registry/{GROUP}/{PLURAL}/{namespace}/{name}"), "value": encode(json.dumps(body))}
    port = testbed.load_state().ports["etcd"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/put", data=json.dumps(request).encode(),
                                            headers={"Content-Type": "application/json"}), timeout=10) as answer:
        assert answer.status == 200


@pytest.fixture
def other_team(core_v1, kube_api, bed_info):
    name = f"team-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually(lambda: core_v1.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
               "the default ServiceAccount")
    yield Backends(kube_api, name, bed_info)
    core_v1.delete_namespace(name)


def test_a_stored_backend_a_builder_refuses_breaks_no_other_team_across_a_restart(
        backends: Backends, other_team: Backends, admin: Admin, operator: OperatorProcess, core_v1, testbed, bed_info):
    other_team.admin_secret(admin)
    other_team.apply("theirs", other_team.spec())
    other_team.wait_ready("theirs")

    backends.admin_secret(admin)
    store_unchecked(testbed, backends.namespace, "broken", {
        **backends.spec(), "injection": {"mode": "Direct"},
        "artifacts": {"s3": {"bucket": BROKEN_BUCKET, "endpoint": bed_info["s3"]["endpoint"]}}})
    # ReconcileError while the parse lets the bucket through; InvalidSpec once it refuses it.
    ready = backends.wait_condition("broken", "Ready", "False", timeout=60)
    assert ready["reason"] in ("ReconcileError", "InvalidSpec"), ready
    assert BROKEN_BUCKET in ready["message"], ready
    assert other_team.condition("theirs", "Ready")["status"] == "True"

    log_before = len(operator.logs())
    operator.restart()
    names = (f"after-restart-{i}" for i in itertools.count())
    pod = eventually(lambda: injected_pod(core_v1, other_team.namespace, "theirs", names),
                     "another team's pod injected after the restart", timeout=60, interval=1)
    assert pod.metadata.annotations["trackop.dev/injected"] == f"{other_team.namespace}/theirs"
    since = operator.logs()[log_before:]
    assert "Address already in use" not in since
    assert "Activity 'configure' failed" not in since and "could not start" not in since, since[-3000:]
    # The broken backend is still reported, and still only it.
    assert backends.condition("broken", "Ready")["reason"] in ("ReconcileError", "InvalidSpec")
    other_team.wait_ready("theirs", timeout=30)


def test_a_failed_webhook_startup_releases_its_port_and_is_retried(
        backends: Backends, admin: Admin, operator: OperatorProcess, core_v1, kube_api):
    backends.admin_secret(admin)
    backends.apply("mine", backends.spec())
    backends.wait_ready("mine")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    original = rbac.read_cluster_role(CHART_RELEASE).rules
    reads_owner = [r for r in original if "clusterroles" in (r.resources or [])]
    assert reads_owner, "the chart grants get on its own ClusterRole (the webhook configurations' owner)"

    def set_rules(rules: list) -> None:
        role = rbac.read_cluster_role(CHART_RELEASE)
        role.rules = rules
        rbac.replace_cluster_role(CHART_RELEASE, role)

    log_before = len(operator.logs())
    failed_startup = threading.Event()

    def fix_once_it_failed() -> None:
        # The startup binds the port and serves, then fails at the webhook configurations.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "could not start" not in operator.logs()[log_before:]:
            time.sleep(0.2)
        failed_startup.set()
        set_rules(original)

    operator.stop()
    set_rules([r for r in original if r not in reads_owner])
    fixer = threading.Thread(target=fix_once_it_failed, daemon=True)
    fixer.start()
    try:
        operator.start()  # healthy only once a startup attempt succeeded
    finally:
        fixer.join(70)
        set_rules(original)
    since = operator.logs()[log_before:]
    assert failed_startup.is_set() and "the admission webhooks could not start" in since, since[-3000:]
    assert "403" in since or "Forbidden" in since or "forbidden" in since
    assert "Address already in use" not in since
    names = (f"after-retry-{i}" for i in itertools.count())
    pod = eventually(lambda: injected_pod(core_v1, backends.namespace, "mine", names),
                     "a pod injected by the retried startup", timeout=60, interval=1)
    assert pod.metadata.annotations["trackop.dev/injected"] == f"{backends.namespace}/mine"
