"""Small helpers shared by the tests."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TypeVar

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
