"""The admission webhooks served over HTTPS: AdmissionReview requests in, responses out.

The decisions are pure (``injection.mutate``, ``validation.validate_backend``) and read
only the in-memory index (``index``); this module turns reviews into responses
(:class:`Handlers`) and holds a small threaded HTTPS server whose certificate can be
swapped while it serves (rotation).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .. import metrics
from ..api import v1alpha1
from ..api.policy import Policy
from ..specs.webhook_configurations import MUTATE_PATH, VALIDATE_PATH
from . import injection
from .index import Index
from .validation import validate_backend

log = logging.getLogger(__name__)


def review_response(uid: str, allowed: bool, *, message: str = "", patch: list | None = None,
                    warnings: list[str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "message": message}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


@dataclass
class Handlers:
    """Turns AdmissionReview requests into responses, reading only the index."""

    index: Index
    operator_namespace: str | None
    fail_closed: bool
    on_warning: Callable[[str, str | None, str], None] = lambda namespace, backend, message: None
    policy: Policy = Policy()  # what tenants' backends may use: refused at admission too
    copy_scope: frozenset[str] | None = None  # where the operator may keep Secret copies (None: anywhere)

    def mutate_pod(self, request: Mapping[str, Any]) -> dict[str, Any]:
        pod = request.get("object") or {}
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        reference = injection.parse_backend_reference(annotations.get(v1alpha1.BACKEND_ANNOTATION), namespace)
        backend = self.index.backend(*reference) if reference else None
        decision = injection.mutate(pod, namespace, backend, self.index.namespace_labels(namespace),
                                    operator_namespace=self.operator_namespace, fail_closed=self.fail_closed,
                                    copy_scope=self.copy_scope)
        if decision.warnings or not decision.allowed:
            self.on_warning(namespace, backend.reference if backend else None, decision.reason)
        return review_response(request["uid"], decision.allowed, message=decision.reason, patch=decision.patch,
                               warnings=decision.warnings)

    def validate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if request.get("operation") == "DELETE":
            return review_response(request["uid"], True)
        allowed, message = validate_backend(request.get("object") or {}, self.index, self.policy)
        return review_response(request["uid"], allowed, message=message)


def _outcome(webhook: str, response: Mapping[str, Any]) -> str:
    if not response.get("allowed"):
        return "rejected" if webhook == "mutate" else "denied"
    if webhook == "validate":
        return "allowed"
    return "injected" if response.get("patch") else "unchanged"


class WebhookServer:
    """A threaded HTTPS server; ``load_certificate`` swaps the certificate for new
    connections while existing ones finish (rotation without a failed admission).

    Each certificate gets a context of its own, swapped in whole: loading a new chain
    into a context in use leaves a moment with the new certificate and no key, and a
    handshake in that moment fails."""

    def __init__(self, host: str, port: int, handlers: Handlers) -> None:
        self.handlers = handlers
        self._context: ssl.SSLContext | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for
            # the API server's delayed ACK, about 40 ms per admission (bench/RESULTS.md).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                name = "mutate" if self.path.startswith(MUTATE_PATH) else \
                    "validate" if self.path.startswith(VALIDATE_PATH) else None
                if name is None:
                    self.send_error(404)
                    return
                try:
                    with metrics.admission_timer(name):
                        request = json.loads(raw)["request"]
                        if name == "mutate":
                            body = outer.handlers.mutate_pod(request)
                        else:
                            body = outer.handlers.validate(request)
                except Exception:  # a bad request must not take the server down
                    log.exception("admission request failed")
                    metrics.ADMISSIONS.labels(name, "error").inc()
                    self.send_error(400)
                    return
                metrics.ADMISSIONS.labels(name, _outcome(name, body["response"])).inc()
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass  # requests are not logged: pod specs may carry values users consider private

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                raw, address = super().get_request()
                # The handshake happens in the request's own thread, not the accepting one.
                return outer._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

        self._server = Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def load_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain wants files; they live only for the call, readable by us alone.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            context.load_cert_chain(str(cert), str(key))
        self._context = context  # one reference swap: a handshake sees the old pair or the new

    def start(self) -> None:
        if self._context is None:
            raise RuntimeError("load_certificate before start")
        self._thread = threading.Thread(target=self._server.serve_forever, name="trackop-webhook", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
