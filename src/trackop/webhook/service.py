"""The running side of injection: certificates in a Secret, the HTTPS webhook server,
the webhook configurations it registers, rotation before expiry, and warning Events.

The decisions themselves are pure (``injection``, ``validation``, ``certificates``); this
is the one place that keeps them served.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import queue
import threading
from typing import Any
from urllib.parse import urlsplit

from .. import metrics
from ..api.policy import Policy
from ..api.v1alpha1 import GROUP, KIND, MANAGED_BY, MANAGED_BY_LABEL, VERSION
from ..kube.client import Kube
from ..kube.errors import ApiException
from ..settings import ServerLimits
from ..specs.webhook_configurations import webhook_configurations
from . import certificates
from .index import Index
from .index_watch import IndexWatch, ViewOf
from .server import Handlers, WebhookServer

log = logging.getLogger(__name__)

CERT_SECRET = "trackop-webhook-certs"
# The API server picks a new caBundle up through its informers: give it a moment before
# serving a certificate only the new CA signed.
BUNDLE_PROPAGATION_SECONDS = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class InjectionService:
    def __init__(self, kube: Kube, index: Index, view_of: ViewOf, *, address: str, url: str,
                 failure_policy: str, operator_namespace: str, cert_secret: str = "", service: str = "",
                 owner_cluster_role: str = "", rotation_check_seconds: float = 3600.0,
                 renew_before: dt.timedelta = certificates.DEFAULT_RENEW_BEFORE,
                 limits: ServerLimits | None = None, policy: Policy = Policy(),
                 copy_scope: frozenset[str] | None = None) -> None:
        host, _, port = address.rpartition(":")
        # How often the serving certificate is checked, and how long before expiry it is renewed.
        self.rotation_check_seconds = rotation_check_seconds
        self.renew_before = renew_before
        self.kube = kube
        self.url = url or f"https://{host}:{port}"
        self.service = service
        self.owner_cluster_role = owner_cluster_role
        self._owner: tuple[str, str] | None = None
        self.failure_policy = failure_policy
        self.operator_namespace = operator_namespace
        if service:
            # The names the API server may use for a Service reference (it uses NAME.NS.svc).
            base = f"{service}.{operator_namespace}"
            self.names, self.ips = [service, base, f"{base}.svc", f"{base}.svc.cluster.local"], []
        else:
            served = urlsplit(self.url).hostname or host
            try:
                ipaddress.ip_address(served)
                self.names, self.ips = [], [served]
            except ValueError:
                self.names, self.ips = [served], []
        self.index_watch = IndexWatch(kube, index, view_of)
        self._events: queue.Queue = queue.Queue(maxsize=1000)
        handlers = Handlers(index, operator_namespace, fail_closed=failure_policy == "Fail", on_warning=self._warn,
                            policy=policy, copy_scope=copy_scope)
        # Binds at start, not here: an InjectionService that never started holds no port.
        self.server = WebhookServer(host, int(port), handlers, limits)
        self._stop = threading.Event()
        self.certs: certificates.WebhookCerts | None = None
        # A TLS Secret someone else renews (cert-manager: tls.crt, tls.key, ca.crt) instead of our own CA.
        self.cert_secret = cert_secret
        self._external_version = ""
        self._external_ca = b""

    # ---- certificates ------------------------------------------------------------------
    def _load_or_create(self) -> certificates.WebhookCerts:
        """The certificates in the Secret, or new ones. Replicas share the Secret: the one
        whose create wins writes it, the others read and serve what it wrote."""
        self.kube.ensure_namespace(self.operator_namespace)
        for _ in range(3):
            certs, _version = self._read()
            if certs is not None:
                return certs
            certs = certificates.new_certs(self.names, self.ips, _now())
            try:
                self.kube.create_secret(self._body(certs))
                return certs
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"Secret {self.operator_namespace}/{CERT_SECRET} could not be read or created")

    def _read(self) -> tuple[certificates.WebhookCerts | None, str]:
        """The certificates in the Secret (None: missing or unreadable) and its resourceVersion."""
        found = self.kube.read_secret_encoded(self.operator_namespace, CERT_SECRET)
        if found is None:
            return None, ""
        data, version = found
        try:
            return certificates.from_secret_data(data), version
        except (KeyError, ValueError):
            return None, version

    def _body(self, certs: certificates.WebhookCerts, resource_version: str = "") -> dict[str, Any]:
        """The certificate Secret; with ``resource_version``, a replacement of that version only."""
        meta: dict[str, Any] = {"name": CERT_SECRET, "namespace": self.operator_namespace,
                                "labels": {MANAGED_BY_LABEL: MANAGED_BY}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                "data": certificates.to_secret_data(certs)}

    def _register(self, certs: certificates.WebhookCerts) -> None:
        self._apply_configurations(certificates.ca_bundle(certs, _now()))

    def _apply_configurations(self, ca_bundle: bytes) -> None:
        if self.owner_cluster_role and self._owner is None:
            self._owner = (self.owner_cluster_role, self.kube.cluster_role_uid(self.owner_cluster_role))
        for body in webhook_configurations(self.url, ca_bundle, failure_policy=self.failure_policy,
                                           operator_namespace=self.operator_namespace,
                                           service=self.service or None, owner=self._owner):
            self.kube.apply_cluster(body)

    def _reload_external(self) -> bool:
        """Serve the externally managed certificate; re-register when it changed."""
        found = self.kube.read_secret_encoded(self.operator_namespace, self.cert_secret)
        if found is None:
            raise ValueError(f"Secret {self.operator_namespace}/{self.cert_secret} not found")
        encoded, version = found
        if version == self._external_version:
            return False
        data = {k: base64.b64decode(v) for k, v in encoded.items()}
        missing = [k for k in ("tls.crt", "tls.key", "ca.crt") if k not in data]
        if missing:
            raise ValueError(f"Secret {self.operator_namespace}/{self.cert_secret} lacks {', '.join(missing)}")
        # The bundle keeps the CA served until now next to the new one, so the API server
        # trusts both the old certificate (still served for a moment) and the new one.
        ca = data["ca.crt"] if not self._external_ca else self._external_ca + b"\n" + data["ca.crt"]
        self._apply_configurations(ca)
        if self._external_ca and self._external_ca != data["ca.crt"]:
            self._stop.wait(BUNDLE_PROPAGATION_SECONDS)
        self.server.load_certificate(data["tls.crt"], data["tls.key"])
        self._external_version = version
        self._external_ca = data["ca.crt"]
        metrics.CERT_ROTATIONS.inc()
        log.info("serving the certificate from Secret %s/%s", self.operator_namespace, self.cert_secret)
        return True

    def rotate_if_needed(self) -> str | None:
        """Renew before expiry. A new CA is published in the bundle (next to the old one)
        before the server presents a certificate it signed, so no admission fails.

        Another replica may have renewed first: what the Secret holds is adopted, and a
        renewal is written only over the version read (a conflict means another won)."""
        stored, version = self._read()
        if stored is not None and stored.cert_pem != self.certs.cert_pem:
            self._adopt(stored)
            log.info("serving the webhook certificate another replica renewed")
        reason = certificates.needs_rotation(self.certs, _now(), renew_before=self.renew_before,
                                             names=self.names, ips=self.ips)
        if reason is None:
            return None
        rotated = certificates.rotate(self.certs, _now(), self.names, self.ips)
        try:
            if version:
                self.kube.replace_secret(self._body(rotated, version))
            else:
                self.kube.create_secret(self._body(rotated))
        except ApiException as exc:
            if exc.status != 409:
                raise
            return None  # another replica renewed; the next check adopts its certificates
        self._adopt(rotated)
        log.info("rotated the webhook certificate: %s", reason)
        return reason

    def _adopt(self, certs: certificates.WebhookCerts) -> None:
        """Publish the bundle, then serve the certificate (after a pause when the CA changed)."""
        self._register(certs)
        if self.certs is not None and certs.ca_cert_pem != self.certs.ca_cert_pem:
            self._stop.wait(BUNDLE_PROPAGATION_SECONDS)
        self.server.load_certificate(certs.cert_pem, certs.key_pem)
        self.certs = certs
        metrics.CERT_ROTATIONS.inc()

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Serve; a start that fails releases what it took (the port, the index watch) before
        it raises, so that the next attempt can bind again."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # Listed before serving: the first pods after a restart meet a full index.
        self.index_watch.prime()
        self.index_watch.start(self._stop)
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
        self._stop.set()  # the index watch and the rotation loop end
        self._events.put(None)
        self.server.stop()

    def _rotation_loop(self) -> None:
        while not self._stop.wait(self.rotation_check_seconds):
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
                involved = {"api_version": f"{GROUP}/{VERSION}", "kind": KIND, "name": name,
                            "namespace": backend_ns}
                event_ns = backend_ns
            else:
                # Kubernetes files a namespace's events in that namespace, naming it as their own.
                involved = {"api_version": "v1", "kind": "Namespace", "name": namespace, "namespace": namespace}
                event_ns = namespace
            try:
                self.kube.post_event(event_ns, involved, "Warning", "InjectionSkipped", message)
            except ApiException as exc:
                log.warning("could not post an Event about a skipped injection in %s: %s %s",
                            namespace, exc.status, exc.reason)
