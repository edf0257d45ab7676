"""The running side of injection: certificates in a Secret, the HTTPS webhook server,
the webhook configurations it registers, rotation before expiry, and warning Events.

The decisions themselves are pure (``injection``, ``webhook.validate_backend``,
``webhook_tls``); this is the one place that keeps them served.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import os
import queue
import threading
from urllib.parse import urlsplit

from kubernetes import client

from . import api, webhook, webhook_tls
from .kube import Kube

log = logging.getLogger(__name__)

CERT_SECRET = "trackop-webhook-certs"
ROTATION_CHECK_SECONDS = float(os.environ.get("TRACKOP_WEBHOOK_ROTATION_CHECK", "3600"))
# The API server picks a new caBundle up through its informers: give it a moment before
# serving a certificate only the new CA signed.
BUNDLE_PROPAGATION_SECONDS = 2.0
RENEW_BEFORE = dt.timedelta(days=float(os.environ.get("TRACKOP_WEBHOOK_RENEW_BEFORE_DAYS", "30")))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class InjectionService:
    def __init__(self, kube: Kube, index: webhook.Index, *, address: str, url: str, failure_policy: str,
                 operator_namespace: str, cert_secret: str = "") -> None:
        host, _, port = address.rpartition(":")
        self.kube = kube
        self.url = url or f"https://{host}:{port}"
        self.failure_policy = failure_policy
        self.operator_namespace = operator_namespace
        served = urlsplit(self.url).hostname or host
        try:
            ipaddress.ip_address(served)
            self.names, self.ips = [], [served]
        except ValueError:
            self.names, self.ips = [served], []
        self._events: queue.Queue = queue.Queue(maxsize=1000)
        handlers = webhook.Handlers(index, operator_namespace, fail_closed=failure_policy == "Fail",
                                    on_warning=self._warn)
        self.server = webhook.WebhookServer(host, int(port), handlers)
        self._stop = threading.Event()
        self.certs: webhook_tls.WebhookCerts | None = None
        # A TLS Secret someone else renews (cert-manager: tls.crt, tls.key, ca.crt) instead of our own CA.
        self.cert_secret = cert_secret
        self._external_version = ""
        self._external_ca = b""

    # ---- certificates ------------------------------------------------------------------
    def _load_or_create(self) -> webhook_tls.WebhookCerts:
        self.kube.ensure_namespace(self.operator_namespace)
        try:
            secret = self.kube.core.read_namespaced_secret(CERT_SECRET, self.operator_namespace)
            certs = webhook_tls.from_secret_data(secret.data or {})
        except (client.ApiException, KeyError, ValueError) as exc:
            if isinstance(exc, client.ApiException) and exc.status != 404:
                raise
            certs = webhook_tls.new_certs(self.names, self.ips, _now())
            self._save(certs)
        return certs

    def _save(self, certs: webhook_tls.WebhookCerts) -> None:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=CERT_SECRET, namespace=self.operator_namespace,
                                         labels={api.MANAGED_BY_LABEL: api.MANAGED_BY}),
            type="Opaque", data=webhook_tls.to_secret_data(certs))
        try:
            self.kube.core.create_namespaced_secret(self.operator_namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.kube.core.replace_namespaced_secret(CERT_SECRET, self.operator_namespace, body)

    def _register(self, certs: webhook_tls.WebhookCerts) -> None:
        for body in webhook.webhook_configurations(self.url, webhook_tls.ca_bundle(certs, _now()),
                                                   failure_policy=self.failure_policy,
                                                   operator_namespace=self.operator_namespace):
            self.kube.apply_cluster(body)

    def _reload_external(self) -> bool:
        """Serve the externally managed certificate; re-register when it changed."""
        secret = self.kube.core.read_namespaced_secret(self.cert_secret, self.operator_namespace)
        if secret.metadata.resource_version == self._external_version:
            return False
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        missing = [k for k in ("tls.crt", "tls.key", "ca.crt") if k not in data]
        if missing:
            raise ValueError(f"Secret {self.operator_namespace}/{self.cert_secret} lacks {', '.join(missing)}")
        # The bundle keeps the CA served until now next to the new one, so the API server
        # trusts both the old certificate (still served for a moment) and the new one.
        ca = data["ca.crt"] if not self._external_ca else self._external_ca + b"\n" + data["ca.crt"]
        for body in webhook.webhook_configurations(self.url, ca, failure_policy=self.failure_policy,
                                                   operator_namespace=self.operator_namespace):
            self.kube.apply_cluster(body)
        if self._external_ca and self._external_ca != data["ca.crt"]:
            self._stop.wait(BUNDLE_PROPAGATION_SECONDS)
        self.server.load_certificate(data["tls.crt"], data["tls.key"])
        self._external_version = secret.metadata.resource_version
        self._external_ca = data["ca.crt"]
        log.info("serving the certificate from Secret %s/%s", self.operator_namespace, self.cert_secret)
        return True

    def rotate_if_needed(self) -> str | None:
        """Renew before expiry. A new CA is published in the bundle (next to the old one)
        before the server presents a certificate it signed, so no admission fails."""
        reason = webhook_tls.needs_rotation(self.certs, _now(), renew_before=RENEW_BEFORE,
                                            names=self.names, ips=self.ips)
        if reason is None:
            return None
        rotated = webhook_tls.rotate(self.certs, _now(), self.names, self.ips)
        self._save(rotated)
        self._register(rotated)
        if rotated.ca_cert_pem != self.certs.ca_cert_pem:
            self._stop.wait(BUNDLE_PROPAGATION_SECONDS)
        self.server.load_certificate(rotated.cert_pem, rotated.key_pem)
        self.certs = rotated
        log.info("rotated the webhook certificate: %s", reason)
        return reason

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.cert_secret:
            self._reload_external()
            self.server.start()
            threading.Thread(target=self._rotation_loop, name="trackop-cert-reload", daemon=True).start()
            threading.Thread(target=self._event_loop, name="trackop-admission-events", daemon=True).start()
            return
        self.certs = self._load_or_create()
        self.server.load_certificate(self.certs.cert_pem, self.certs.key_pem)
        self.server.start()
        self.rotate_if_needed()
        self._register(self.certs)
        threading.Thread(target=self._rotation_loop, name="trackop-cert-rotation", daemon=True).start()
        threading.Thread(target=self._event_loop, name="trackop-admission-events", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)
        self.server.stop()

    def _rotation_loop(self) -> None:
        while not self._stop.wait(ROTATION_CHECK_SECONDS):
            try:
                self._reload_external() if self.cert_secret else self.rotate_if_needed()
            except Exception:  # retried at the next check; the old certificate still serves
                log.exception("webhook certificate rotation failed")

    # ---- warnings as Events ------------------------------------------------------------
    def _warn(self, namespace: str, backend: str | None, message: str) -> None:
        try:
            self._events.put_nowait((namespace, backend, message))
        except queue.Full:
            pass  # Events are best effort; the admission response carries the warning too

    def _event_loop(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            namespace, backend, message = item
            if backend:
                backend_ns, name = backend.split("/", 1)
                involved = {"api_version": f"{api.GROUP}/{api.VERSION}", "kind": api.KIND, "name": name,
                            "namespace": backend_ns}
                event_ns = backend_ns
            else:
                # Kubernetes files a namespace's events in that namespace, naming it as their own.
                involved = {"api_version": "v1", "kind": "Namespace", "name": namespace, "namespace": namespace}
                event_ns = namespace
            try:
                self.kube.post_event(event_ns, involved, "Warning", "InjectionSkipped", message)
            except client.ApiException as exc:
                log.warning("could not post an Event about a skipped injection in %s: %s %s",
                            namespace, exc.status, exc.reason)
