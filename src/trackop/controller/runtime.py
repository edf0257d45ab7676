"""What the handlers share while the operator runs: the settings, the reconciler, the
webhook index and service, the parsed specs and a lock per backend. One object, in kopf's
memo, built once by ``trackop run``."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config

from ..api.v1alpha1 import BackendSpec
from ..kube.client import Kube
from ..settings import Settings
from ..webhook.index import Index
from ..webhook.service import InjectionService
from .reconciler import Reconciler


def api_client() -> client.ApiClient:
    """In a Pod its ServiceAccount; elsewhere the kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # $KUBECONFIG as it is now: the client's own default was read when it was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


class Runtime:
    def __init__(self, settings: Settings, reconciler: Reconciler) -> None:
        self.settings = settings
        self.reconciler = reconciler
        self.kube = reconciler.kube
        self.index = Index()
        self.injection: InjectionService | None = None
        self.metrics_served = False  # /metrics is served once, whatever startup retries
        # The parsed specs the drift timer and namespace events act on, and the namespaces'
        # labels as last seen (the webhook's index is fed by its own watch).
        self.specs: dict[tuple[str, str], BackendSpec] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        return cls(settings, Reconciler.from_settings(Kube(api_client()), settings))

    def lock_for(self, body: Mapping[str, Any]) -> threading.Lock:
        """One reconcile per backend at a time: kopf runs the drift timer next to the change
        handlers of the same object, and two reconciles would race to create the same Secret
        or migrate the same database (each is safe, but noisy and slower)."""
        return self.lock_of((body["metadata"]["namespace"], body["metadata"]["name"]))

    def lock_of(self, key: tuple[str, str]) -> threading.Lock:
        """The lock of the backend (namespace, name): see :meth:`lock_for`."""
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget_lock(self, key: tuple[str, str]) -> None:
        with self._locks_guard:
            self._locks.pop(key, None)
