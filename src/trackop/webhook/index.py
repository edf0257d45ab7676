"""The in-memory index the admission handlers read: backends (what injection needs of each,
and the database each one uses) and namespaces' labels. Fed by watch events
(``index_watch``), so an admission request costs no API call."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from .injection import BackendView


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
