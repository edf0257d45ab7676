"""The webhook index's own watch: TrackingBackends and Namespaces listed, then watched,
into the index (``index``) on threads of their own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .. import metrics
from ..kube.client import Kube
from ..kube.errors import ApiException
from .index import Index
from .injection import BackendView

log = logging.getLogger(__name__)

# A TrackingBackend body -> what the index keeps of it (None: an invalid spec, not indexed).
ViewOf = Callable[[Mapping[str, Any]], "tuple[BackendView, tuple[str, int, str]] | None"]
WATCH_RETRY_SECONDS = 1.0


class IndexWatch:
    """Lists, then watches, what admission decisions read (TrackingBackends, Namespaces)
    into the index, on threads of its own: kopf pauses its watches on a standby peer, and
    every replica behind the webhook Service must answer from a current index."""

    KINDS = ("backends", "namespaces")

    def __init__(self, kube: Kube, index: Index, view_of: ViewOf) -> None:
        self.kube = kube
        self.index = index
        self.view_of = view_of
        self._versions: dict[str, str] = {}
        # Backends whose view could not be made, with why (logged once per new why).
        self.broken: dict[tuple[str, str], str] = {}

    def prime(self) -> None:
        for kind in self.KINDS:
            self._relist(kind)

    def start(self, stop: threading.Event) -> None:
        for kind in self.KINDS:
            threading.Thread(target=self._watch_loop, args=(kind, stop), name=f"trackop-index-{kind}",
                             daemon=True).start()

    def _relist(self, kind: str) -> None:
        try:
            items, version = self.kube.listing(kind)
        except ApiException as exc:
            if kind != "backends" or exc.status != 404:
                raise
            items, version = [], ""  # no CRD yet: watched again after the retry pause
        seen = set()
        for body in items:
            seen.add(self._apply(kind, "ADDED", body))
        stale = ({(v.namespace, v.name) for v in self.index.backends()} | set(self.broken) if kind == "backends"
                 else set(self.index.namespaces()))
        for key in stale - seen:
            self._apply_drop(kind, key)
        self._versions[kind] = version
        metrics.BACKENDS.set(len(self.index.backends()))

    def _apply(self, kind: str, event_type: str, body: Mapping[str, Any]) -> Any:
        meta = body["metadata"]
        if kind == "namespaces":
            if event_type == "DELETED":
                self.index.drop_namespace(meta["name"])
            else:
                self.index.set_namespace(meta["name"], meta.get("labels") or {})
            return meta["name"]
        key = (meta["namespace"], meta["name"])
        found = None if event_type == "DELETED" else self._view(key, body)
        if event_type == "DELETED":
            self.broken.pop(key, None)
        if found is None:
            self.index.drop_backend(*key)
        else:
            self.index.set_backend(*found)
        return key

    def _view(self, key: tuple[str, str], body: Mapping[str, Any]) -> Any:
        """What the index keeps of one backend; None, with a log line naming it, when its
        object makes the view raise: one backend is left out, the listing and the watch go on."""
        try:
            found = self.view_of(body)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
            if self.broken.get(key) != why:
                log.warning("TrackingBackend %s/%s is left out of the webhook index (%s): its pods are not "
                            "injected until its spec is fixed; every other backend's are", *key, why)
            self.broken[key] = why
            return None
        self.broken.pop(key, None)
        return found

    def _apply_drop(self, kind: str, key: Any) -> None:
        if kind == "namespaces":
            self.index.drop_namespace(key)
        else:
            self.index.drop_backend(*key)
            self.broken.pop(key, None)

    def _watch_loop(self, kind: str, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self._versions.get(kind):
                    self._relist(kind)
                for event_type, body in self.kube.watch(kind, self._versions[kind]):
                    if event_type == "ERROR":  # 410 Gone and the like: list again
                        self._versions[kind] = ""
                        break
                    self._versions[kind] = body["metadata"]["resourceVersion"]
                    if event_type != "BOOKMARK":
                        self._apply(kind, event_type, body)
                        metrics.BACKENDS.set(len(self.index.backends()))
                    if stop.is_set():
                        return
            except Exception as exc:  # the API server restarting, an expired version: list again
                status = getattr(exc, "status", "")
                log.warning("watching %s for the webhook index failed (%s %s); listing again",
                            kind, type(exc).__name__, status)
                self._versions[kind] = ""
                stop.wait(WATCH_RETRY_SECONDS)
