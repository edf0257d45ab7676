"""What every object trackop owns carries: its labels and the owner reference to its backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import BACKEND_LABEL, MANAGED_BY, MANAGED_BY_LABEL, BackendSpec


def labels(spec: BackendSpec, component: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        BACKEND_LABEL: spec.name,
        "app.kubernetes.io/component": component,
    }


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
