"""Small helpers shared by the tests."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec

T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def deep_merge(base: dict, overrides: dict) -> dict:
    """``overrides`` merged into ``base`` (in place), nested mappings key by key."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


# The owner (a TrackingBackend body) the unit tests hand to the object builders.
OWNER = {
    "apiVersion": "trackop.dev/v1alpha1",
    "kind": "TrackingBackend",
    "metadata": {"name": "team-a", "namespace": "ml-platform", "uid": "0b6a2c1e-1111-2222-3333-444455556666"},
}


def make_spec(overrides: dict | None = None, namespace: str = "ml-platform", name: str = "team-a") -> BackendSpec:
    """A parsed backend on an external server, with ``overrides`` merged into its spec."""
    spec = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}}}
    return parse(namespace, name, deep_merge(spec, copy.deepcopy(overrides or {})))


class RecordingListener:
    """A throwaway HTTP server on 127.0.0.1 that answers 403 to anything and records each
    request's method, path and headers: proof of what a client sent, or that it sent nothing."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                outer.requests.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _record  # noqa: N815 (http.server's naming)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# Kubernetes' $(VAR) reference in command, args and env values ($$ escapes it).
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def _references(text: str) -> list[str]:
    return [m.group(1) for m in _VAR_REF.finditer(text) if m.group(1)]


def secret_env_names(container: Mapping[str, Any]) -> set[str]:
    """The env names of a container (a camelCase body) whose values carry a Secret's data:
    a ``secretKeyRef``, or a ``value`` that refers to one by ``$(VAR)`` (the kubelet expands
    it: an Azure connection string built from the key)."""
    names: set[str] = set()
    for entry in container.get("env") or []:
        value_from = entry.get("valueFrom") or {}
        if "secretKeyRef" in value_from or any(ref in names for ref in _references(entry.get("value") or "")):
            names.add(entry["name"])
    return names


def argv_secret_references(container: Mapping[str, Any]) -> list[str]:
    """The ``$(VAR)`` references in a container's command and args that the kubelet would
    expand into the process's argv from a Secret (readable in /proc/<pid>/cmdline on the
    node). With an ``envFrom`` of a Secret, any name not set by ``env`` may come from it."""
    secret = secret_env_names(container)
    plain = {e["name"] for e in container.get("env") or []} - secret
    from_secret_wholesale = any("secretRef" in source for source in container.get("envFrom") or [])
    found = []
    for part in [*(container.get("command") or []), *(container.get("args") or [])]:
        found += [ref for ref in _references(part)
                  if ref in secret or (from_secret_wholesale and ref not in plain)]
    return found
