"""The HTTPS webhook server on its own (no cluster): certificate swaps under load."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import urllib.request
import uuid

import pytest
from kubernetes import client

from helpers import eventually
from trackop.specs.webhook_configurations import MUTATE_PATH, webhook_configurations
from trackop.webhook import certificates
from trackop.webhook.index import Index
from trackop.webhook.server import Handlers, WebhookServer

MUTATE_REVIEW = json.dumps({
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {"uid": "u-1", "namespace": "ns", "operation": "CREATE",
                "object": {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": []}}},
}).encode()


def _post(port: int, context: ssl.SSLContext) -> dict:
    request = urllib.request.Request(f"https://127.0.0.1:{port}{MUTATE_PATH}", data=MUTATE_REVIEW,
                                     headers={"Content-Type": "application/json"}, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(request, timeout=5) as response:
        return json.loads(response.read())


def test_rotating_the_certificate_under_load_fails_no_handshake():
    now = dt.datetime.now(dt.timezone.utc)
    certs = certificates.new_certs([], ["127.0.0.1"], now)
    handlers = Handlers(Index(), "trackop-system", fail_closed=False, on_warning=lambda *a: None)
    server = WebhookServer("127.0.0.1", 0, handlers)
    server.load_certificate(certs.cert_pem, certs.key_pem)
    server.start()
    client_context = ssl.create_default_context(cadata=certs.ca_cert_pem.decode())
    failures: list[BaseException] = []
    answered = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                assert _post(server.port, client_context)["response"]["allowed"] is True
                answered += 1
            except BaseException as exc:  # noqa: BLE001 (every failure counts)
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        # Same CA, a new serving pair each time: what the rotation loop does within a CA's life.
        for _ in range(60):
            certs = certificates.rotate(certs, dt.datetime.now(dt.timezone.utc), [], ["127.0.0.1"])
            server.load_certificate(certs.cert_pem, certs.key_pem)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.stop()
    assert answered > 0
    assert not failures, f"{len(failures)} of {len(failures) + answered} requests failed: {failures[:3]}"


@pytest.mark.bed
def test_uninstalling_the_cluster_role_garbage_collects_the_webhook_configurations(kube_api):
    """What `helm uninstall` relies on: the chart's ClusterRole goes, and kube-controller-
    manager's garbage collector removes the configurations the operator made at runtime."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    admission = client.AdmissionregistrationV1Api(kube_api)
    name = f"gc-{uuid.uuid4().hex[:8]}"
    role = rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name)))
    mutating, validating = webhook_configurations(
        "https://127.0.0.1:1", b"CA", failure_policy="Ignore", operator_namespace="trackop-system",
        owner=(name, role.metadata.uid))
    mutating["metadata"]["name"], validating["metadata"]["name"] = f"{name}-m", f"{name}-v"
    admission.create_mutating_webhook_configuration(mutating)
    admission.create_validating_webhook_configuration(validating)
    rbac.delete_cluster_role(name)

    def gone(read) -> bool:
        try:
            read()
            return False
        except client.ApiException as exc:
            return exc.status == 404

    eventually(lambda: gone(lambda: admission.read_mutating_webhook_configuration(f"{name}-m"))
               and gone(lambda: admission.read_validating_webhook_configuration(f"{name}-v")),
               "the garbage collector to delete both configurations", timeout=60)
