"""The admission webhooks: Pod injection and TrackingBackend validation, served over HTTPS.

The decisions are pure (``injection.mutate``, ``validate_backend``); this module holds
the in-memory index the handlers read (fed by kopf's watch events, so an admission
request costs no API call), the webhook configurations trackop registers, and a small
threaded HTTPS server whose certificate can be swapped while it serves (rotation).
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

from . import injection, metrics
from .api.parsing import parse
from .api.v1alpha1 import GROUP, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION, BackendSpec, SpecError
from .injection import BackendView

log = logging.getLogger(__name__)

MUTATING_NAME = "trackop-injection"
VALIDATING_NAME = "trackop-validation"
MUTATE_PATH = "/mutate-pods"
VALIDATE_PATH = "/validate-trackingbackends"
TIMEOUT_SECONDS = 3  # an opted-in pod creation waits at most this long on a slow operator
SERVICE_PORT = 443  # the chart's webhook Service; it forwards to the operator's --webhook-address port


class Index:
    """What admission decisions need, kept current by watch events; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[tuple[str, str], BackendView] = {}
        self._stores: dict[tuple[str, str], tuple[str, int, str]] = {}
        self._namespaces: dict[str, dict[str, str]] = {}

    def set_backend(self, view: BackendView, store: tuple[str, int, str] | None) -> None:
        with self._lock:
            self._backends[(view.namespace, view.name)] = view
            if store is not None:
                self._stores[(view.namespace, view.name)] = store

    def drop_backend(self, namespace: str, name: str) -> None:
        with self._lock:
            self._backends.pop((namespace, name), None)
            self._stores.pop((namespace, name), None)

    def backend(self, namespace: str, name: str) -> BackendView | None:
        with self._lock:
            return self._backends.get((namespace, name))

    def backends(self) -> list[BackendView]:
        with self._lock:
            return list(self._backends.values())

    def store_owner(self, store: tuple[str, int, str]) -> tuple[str, str] | None:
        with self._lock:
            return next((key for key, value in self._stores.items() if value == store), None)

    def set_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        with self._lock:
            self._namespaces[name] = dict(labels)

    def drop_namespace(self, name: str) -> None:
        with self._lock:
            self._namespaces.pop(name, None)

    def namespace_labels(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._namespaces.get(name, {"kubernetes.io/metadata.name": name}))

    def namespaces(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {k: dict(v) for k, v in self._namespaces.items()}


def backend_view(spec: BackendSpec, secret_keys: tuple[str, ...]) -> BackendView:
    return BackendView(spec.namespace, spec.name, spec.injection_mode, spec.namespace_selector, secret_keys)


# ---- validation (pure) -----------------------------------------------------------------

def validate_backend(body: Mapping[str, Any], index: Index) -> tuple[bool, str]:
    """What the CRD schema cannot check: the operator's full parse, a well-formed
    namespaceSelector, and no second backend on the same database of the same server."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    try:
        spec = parse(namespace, name, body.get("spec") or {})
    except SpecError as error:
        return False, str(error)
    if spec.namespace_selector is not None:
        try:
            injection.label_selector_matches(spec.namespace_selector, {})
        except ValueError as error:
            return False, f"spec.injection.namespaceSelector: {error}"
    owner = index.store_owner((spec.postgres.host, spec.postgres.port, spec.database))
    if owner is not None and owner != (namespace, name):
        return False, (f"spec.postgres.database: {spec.database} on {spec.postgres.host}:{spec.postgres.port} is "
                       f"already used by TrackingBackend {owner[0]}/{owner[1]}")
    return True, ""


# ---- admission reviews -----------------------------------------------------------------

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

    def mutate_pod(self, request: Mapping[str, Any]) -> dict[str, Any]:
        pod = request.get("object") or {}
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        reference = injection.parse_backend_reference(annotations.get(injection.BACKEND_ANNOTATION), namespace)
        backend = self.index.backend(*reference) if reference else None
        decision = injection.mutate(pod, namespace, backend, self.index.namespace_labels(namespace),
                                    operator_namespace=self.operator_namespace, fail_closed=self.fail_closed)
        if decision.warnings or not decision.allowed:
            self.on_warning(namespace, backend.reference if backend else None, decision.reason)
        return review_response(request["uid"], decision.allowed, message=decision.reason, patch=decision.patch,
                               warnings=decision.warnings)

    def validate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if request.get("operation") == "DELETE":
            return review_response(request["uid"], True)
        allowed, message = validate_backend(request.get("object") or {}, self.index)
        return review_response(request["uid"], allowed, message=message)


# ---- configurations (pure) -------------------------------------------------------------

def webhook_configurations(url: str, ca_bundle: bytes, *, failure_policy: str, operator_namespace: str | None,
                           service: str | None = None, owner: tuple[str, str] | None = None,
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Mutating (pods) and Validating (TrackingBackends) webhook configurations.

    With ``service`` (in a cluster: the chart's Service in ``operator_namespace``, port
    443) the API server calls the Service; otherwise ``url`` (the local bed, out of cluster).
    With ``owner`` (name, uid of the chart's ClusterRole) the garbage collector deletes them
    when the release is uninstalled: the operator makes them at runtime, so Helm never
    knew them, and a cluster-scoped object can only be owned by a cluster-scoped one."""
    bundle = base64.b64encode(ca_bundle).decode()
    meta_extra: dict[str, Any] = {}
    if owner:
        meta_extra["ownerReferences"] = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                          "name": owner[0], "uid": owner[1]}]

    def client_config(path: str) -> dict[str, Any]:
        if service:
            return {"service": {"namespace": operator_namespace, "name": service, "port": SERVICE_PORT,
                                "path": path}, "caBundle": bundle}
        return {"url": url + path, "caBundle": bundle}

    never = sorted({*injection.NEVER_NAMESPACES, *([operator_namespace] if operator_namespace else [])})
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_NAME, "labels": {MANAGED_BY_LABEL: MANAGED_BY}, **meta_extra},
        "webhooks": [{
            "name": "inject.trackop.dev",
            "clientConfig": client_config(MUTATE_PATH),
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            # Only pods that opted in reach the operator; kube-system and its own namespace never.
            "objectSelector": {"matchLabels": {injection.INJECT_LABEL: "true"}},
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": never}]},
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "reinvocationPolicy": "IfNeeded",
            "admissionReviewVersions": ["v1"],
        }],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_NAME, "labels": {MANAGED_BY_LABEL: MANAGED_BY}, **meta_extra},
        "webhooks": [{
            "name": "validate.trackop.dev",
            "clientConfig": client_config(VALIDATE_PATH),
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [GROUP], "apiVersions": [VERSION],
                       "resources": [PLURAL], "scope": "Namespaced"}],
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "admissionReviewVersions": ["v1"],
        }],
    }
    return mutating, validating


# ---- the HTTPS server ------------------------------------------------------------------

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
