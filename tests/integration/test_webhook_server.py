"""The HTTPS webhook server on its own (no cluster), on 127.0.0.1: certificate swaps under
load; slow and oversized clients while AdmissionReviews keep being answered; the connection
limit; bounded keep-alive; stop releasing the port."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import selectors
import socket
import ssl
import threading
import time
import urllib.request
import uuid

import pytest
from kubernetes import client

from helpers import eventually
from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL
from trackop.settings import ServerLimits
from trackop.specs.webhook_configurations import MUTATE_PATH, VALIDATE_PATH, webhook_configurations
from trackop.webhook import certificates
from trackop.webhook.index import Index
from trackop.webhook.injection import BackendView
from trackop.webhook.server import Handlers, WebhookServer

# The API server gives up on a webhook call after its timeoutSeconds (ours: 3).
API_SERVER_TIMEOUT = 3.0

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


# ---- slow clients, oversized requests, the connection limit, keep-alive, stop ----------------

def _pod_review() -> bytes:
    """An AdmissionReview as the API server sends it: a Job's Pod that opts in, CREATE."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "train-", "namespace": "ml-platform", "labels": {INJECT_LABEL: "true"},
                        "annotations": {BACKEND_ANNOTATION: "ml-platform/team-a"}},
           "spec": {"containers": [{"name": "main", "image": "python:3.11", "command": ["python", "train.py"],
                                    "resources": {"requests": {"cpu": "1"}}}], "restartPolicy": "Never"}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "ml-platform", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:job-controller",
                     "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}).encode()


def _delete_review() -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "namespace": "ml-platform", "operation": "DELETE", "name": "team-a",
        "kind": {"group": "trackop.dev", "version": "v1alpha1", "kind": "TrackingBackend"},
        "object": None, "oldObject": {"metadata": {"name": "team-a", "namespace": "ml-platform"}}}}).encode()


@pytest.fixture
def serve():
    """Start a WebhookServer on 127.0.0.1 with these limits; its CA's client context with it."""
    started: list[WebhookServer] = []

    def start(limits: ServerLimits = ServerLimits()) -> tuple[WebhookServer, ssl.SSLContext]:
        certs = certificates.new_certs([], ["127.0.0.1"], dt.datetime.now(dt.timezone.utc))
        index = Index()
        index.set_backend(BackendView("ml-platform", "team-a", "Server", None,
                                      ("MLFLOW_TRACKING_URI", "PGHOST", "PGPASSWORD"),
                                      (("MLFLOW_TRACKING_URI", "http://team-a-mlflow.ml-platform.svc:5000"),)), None)
        server = WebhookServer("127.0.0.1", 0, Handlers(index, "trackop-system", fail_closed=True), limits)
        server.load_certificate(certs.cert_pem, certs.key_pem)
        server.start()
        started.append(server)
        return server, ssl.create_default_context(cadata=certs.ca_cert_pem.decode())

    yield start
    for server in started:
        server.stop()


def _admit(connection: http.client.HTTPSConnection, path: str = MUTATE_PATH,
           body: bytes | None = None) -> tuple[dict, http.client.HTTPResponse, float]:
    """One admission as the API server makes it (``?timeout=3s``); the review, the response, seconds."""
    started = time.monotonic()
    connection.request("POST", f"{path}?timeout=3s", body=body or _pod_review(),
                       headers={"Content-Type": "application/json", "Accept": "application/json"})
    response = connection.getresponse()
    review = json.loads(response.read())
    return review, response, time.monotonic() - started


def _injected(review: dict) -> bool:
    answer = review["response"]
    return answer["allowed"] is True and any(
        op["path"].endswith("/env") for op in json.loads(base64.b64decode(answer["patch"])))


def _tls(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


class CloseWatch(threading.Thread):
    """Reads what the server sends on each connection, and notes when it closes it (EOF or
    reset); the test never closes them itself. Stops when all are closed, or after ``seconds``."""

    def __init__(self, connections: dict[str, socket.socket], opened: dict[str, float], seconds: float) -> None:
        super().__init__(daemon=True)
        self.opened = opened
        self.received = {name: b"" for name in connections}
        self.closed_after: dict[str, float] = {}
        self._seconds = seconds
        self._selector = selectors.DefaultSelector()
        for name, sock in connections.items():
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, name)

    def run(self) -> None:
        deadline = time.monotonic() + self._seconds
        while self._selector.get_map() and time.monotonic() < deadline:
            for key, _ in self._selector.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:  # reset, or a TLS connection cut without close_notify
                    data = b""
                if data:
                    self.received[key.data] += data
                    continue
                self.closed_after[key.data] = time.monotonic() - self.opened[key.data]
                self._selector.unregister(key.fileobj)


def test_slow_and_oversized_clients_do_not_hold_up_admissions(serve):
    """Many connections that send nothing (no TLS handshake, or no request after it), one
    that stops halfway through its headers, one halfway through its body, and one that
    announces 10 GiB: AdmissionReviews keep being answered within the API server's timeout,
    the oversized one gets 413 without the server reading its body, and the server's read
    timeout closes every slow one."""
    limits = ServerLimits(read_timeout=5.0)
    server, context = serve(limits)
    slow: dict[str, socket.socket] = {}
    opened: dict[str, float] = {}

    def hold(name: str, sock: socket.socket) -> None:
        slow[name], opened[name] = sock, time.monotonic()

    try:
        for n in range(50):  # TCP only: the server waits for a ClientHello that never comes
            hold(f"silent-{n}", socket.create_connection(("127.0.0.1", server.port), timeout=10))
        for n in range(10):  # TLS, then no request at all
            hold(f"mute-{n}", _tls(server.port, context))
        trickle = _tls(server.port, context)
        trickle.sendall(f"POST {MUTATE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl".encode())
        hold("half-headers", trickle)
        body = _pod_review()
        stalled = _tls(server.port, context)
        stalled.sendall(f"POST {MUTATE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        hold("half-body", stalled)
        watch = CloseWatch(slow, opened, seconds=60)
        watch.start()

        huge = _tls(server.port, context)
        asked = time.monotonic()
        huge.sendall(f"POST {MUTATE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {10 * 1024 ** 3}\r\n\r\n".encode())  # and not one byte of it
        answer = b""
        while chunk := huge.recv(65536):  # to EOF: the server closes the connection after its 413
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert time.monotonic() - asked < API_SERVER_TIMEOUT
        huge.close()

        kept_alive = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        answered = answered_while_all_slow_open = 0
        while watch.is_alive() and answered < 2000:
            review, response, seconds = _admit(kept_alive)
            assert response.status == 200 and _injected(review)
            assert seconds < API_SERVER_TIMEOUT
            fresh = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
            review, response, seconds = _admit(fresh, VALIDATE_PATH, _delete_review())
            fresh.close()
            assert response.status == 200 and review["response"]["allowed"] is True
            assert seconds < API_SERVER_TIMEOUT
            answered += 1
            answered_while_all_slow_open += not watch.closed_after
            time.sleep(0.05)
        kept_alive.close()
        watch.join()
    finally:
        for sock in slow.values():
            sock.close()
    assert answered_while_all_slow_open > 0, "no admission was answered while the slow connections were open"
    assert set(watch.closed_after) == set(slow), f"never closed: {sorted(set(slow) - set(watch.closed_after))}"
    # Closed by the read timeout: not at once, and not before it ran out.
    assert min(watch.closed_after.values()) > limits.read_timeout / 2, watch.closed_after
    assert watch.received["half-body"].startswith(b"HTTP/1.1 408 "), watch.received["half-body"][:200]
    assert not any(watch.received[name] for name in slow if name != "half-body")


def test_connections_beyond_the_limit_wait_until_one_closes(serve):
    limits = ServerLimits(read_timeout=2.0, max_connections=4)
    server, context = serve(limits)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(limits.max_connections)]
    try:
        waiting = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
        review, response, seconds = _admit(waiting)
        # Accepted only when the read timeout closed a held connection, then answered.
        assert response.status == 200 and _injected(review)
        assert seconds > limits.read_timeout / 2
        waiting.close()
        for sock in held:
            assert sock.recv(1) == b""  # the server closed it (EOF), within the socket's 10 s
    finally:
        for sock in held:
            sock.close()


def test_keep_alive_is_bounded_by_requests_and_idle_time(serve):
    limits = ServerLimits(keepalive_timeout=1.5, keepalive_requests=3)
    server, context = serve(limits)
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    closes = []
    for _ in range(limits.keepalive_requests):
        review, response, _ = _admit(connection)
        assert response.status == 200 and _injected(review)
        closes.append(response.getheader("Connection"))
    # Said in the response (the client does not reuse it), not by closing under a request.
    assert closes == [None] * (limits.keepalive_requests - 1) + ["close"]
    connection.close()

    idle = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    _, response, _ = _admit(idle)
    assert response.status == 200 and response.getheader("Connection") is None
    idle.sock.settimeout(30)
    assert idle.sock.recv(1) == b""  # closed by the server once idle for keepalive_timeout
    idle.close()


def test_stop_releases_the_port_at_once_and_a_failed_start_binds_nothing(serve):
    server, context = serve()
    port = server.port
    second = WebhookServer("127.0.0.1", port, server.handlers)
    second.load_certificate(*_pair())
    with pytest.raises(OSError):
        second.start()  # the port is taken
    second.stop()  # nothing to release; safe anyway
    WebhookServer("127.0.0.1", port, server.handlers).stop()  # and so is stopping one never started
    idle = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    _, response, _ = _admit(idle)
    assert response.status == 200  # the first server still serves
    server.stop()
    probe = socket.create_server(("127.0.0.1", port))  # free now, an idle kept-alive connection notwithstanding
    probe.close()
    idle.sock.settimeout(10)
    assert idle.sock.recv(1) == b""  # and that connection was closed
    idle.close()
    server.stop()  # twice is fine
    restarted = WebhookServer("127.0.0.1", port, server.handlers)
    restarted.load_certificate(*_pair())
    restarted.start()
    restarted.stop()


def _pair() -> tuple[bytes, bytes]:
    certs = certificates.new_certs([], ["127.0.0.1"], dt.datetime.now(dt.timezone.utc))
    return certs.cert_pem, certs.key_pem
