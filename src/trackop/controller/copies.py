"""The connection Secret's copies in the namespaces whose pods may be injected, and the
pods that opted in but missed injection (the webhook was down with failurePolicy Ignore)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..api import v1alpha1
from ..api.v1alpha1 import COPY_LABEL, SECRET_COPIES_LABEL, BackendSpec
from ..kube.client import Kube
from ..specs import common
from ..webhook import injection
from ..webhook.injection import copy_label_value
from .listing import SharedListing


class SecretCopies:
    """``namespaces`` and ``opted_in_pods`` are listings shared by every backend's reconcile."""

    def __init__(self, kube: Kube, namespaces: SharedListing, opted_in_pods: SharedListing,
                 operator_namespace: str | None, scope: frozenset[str] | None = None) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.opted_in_pods = opted_in_pods
        self.operator_namespace = operator_namespace
        # With --namespace: the only namespaces the operator may read and write Secrets in.
        self.scope = scope
        self._reported_pods: set[str] = set()  # uids already reported as missing injection
        self._reported_lock = threading.Lock()

    def sync(self, spec: BackendSpec, data: Mapping[str, str],
             did: Callable[[str, str], None] = lambda reason, message: None) -> None:
        """Keep a copy of the connection Secret, with only the secrets the mode injects, in
        every namespace whose pods may be injected and that accepts such copies; remove
        copies where they no longer may be (and all of them when the mode injects none)."""
        view = injection.backend_view(spec, data)
        name = injection.copy_secret_name(spec.namespace, spec.name)
        label = copy_label_value(spec.namespace, spec.name)
        existing = self.existing(spec)
        copy = injection.copy_secret_data(view, data)
        namespaces = self.namespaces.get()
        admitted = {ns for ns, labels in namespaces.items()
                    if injection.admits_namespace(spec.namespace, spec.namespace_selector, ns, labels,
                                                  self.operator_namespace)}
        wanted = {ns for ns in admitted
                  if injection.accepts_secret_copies(spec.namespace, ns, namespaces[ns], self.scope)} if copy else set()
        for namespace in sorted(wanted):
            if existing.get((namespace, name)) == copy:
                continue
            self.kube.put_secret({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {**common.labels(spec, "injection"), COPY_LABEL: label},
                             "annotations": {"trackop.dev/copy-of": f"{spec.namespace}/{spec.connection_secret}"}},
                "stringData": copy,
            })
            did("SecretCopied", f"copied the {spec.injection_mode}-mode secrets ({', '.join(sorted(copy))}) of "
                                f"Secret {spec.connection_secret} to {namespace}/{name}")
        for namespace, secret in existing:
            if namespace not in wanted:
                self.kube.delete_secret(namespace, secret)
                why = ("the namespace is no longer admitted" if namespace not in admitted
                       else f"the namespace is not labelled {SECRET_COPIES_LABEL}=true" if copy
                       else f"{spec.injection_mode} mode injects no secret (the tracking URI is a plain value)")
                did("SecretCopyRemoved", f"removed {namespace}/{secret}: {why}")

    def existing(self, spec: BackendSpec) -> dict[tuple[str, str], dict[str, str]]:
        """This backend's copies: across the cluster, or in each namespace of the scope."""
        selector = f"{COPY_LABEL}={copy_label_value(spec.namespace, spec.name)}"
        if self.scope is None:
            return self.kube.secrets_by_label(selector)
        return self.kube.secrets_by_label(selector, sorted(self.scope))

    def remove(self, spec: BackendSpec) -> None:
        for namespace, secret in self.existing(spec):
            self.kube.delete_secret(namespace, secret)

    def missed_injections(self, spec: BackendSpec) -> list[tuple[str, str, str]]:
        """Warnings for pods that opted in to this backend but were created without
        injection (the webhook was down with failurePolicy Ignore); each pod once."""
        pods = self.opted_in_pods.get()
        with self._reported_lock:  # the drift checks of several backends run at once
            # Pods gone (or no longer opted in) are forgotten: the set holds listed pods only.
            self._reported_pods &= {pod.metadata.uid for pod in pods}
            missed = [pod.metadata for pod in pods if self._newly_missed(spec, pod.metadata)]
            self._reported_pods |= {meta.uid for meta in missed}
        return [("Warning", "InjectionMissed",
                 f"pod {meta.namespace}/{meta.name} opted in but was created without "
                 "MLFLOW_TRACKING_URI (the webhook was unavailable): delete it to recreate it") for meta in missed]

    def _newly_missed(self, spec: BackendSpec, meta: Any) -> bool:
        """A pod of this backend that missed injection and was not reported yet."""
        reference = injection.parse_backend_reference(
            (meta.annotations or {}).get(v1alpha1.BACKEND_ANNOTATION), meta.namespace)
        return (reference == (spec.namespace, spec.name) and meta.uid not in self._reported_pods
                and injection.missed_injection({"metadata": {"labels": meta.labels, "annotations": meta.annotations}}))
