"""The validating webhook's decision for a TrackingBackend CREATE or UPDATE (pure; reads
only the index)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import policy as admin_policy
from ..api.parsing import parse
from ..api.v1alpha1 import SpecError
from . import injection
from .index import Index


def validate_backend(body: Mapping[str, Any], index: Index,
                     policy: admin_policy.Policy = admin_policy.Policy()) -> tuple[bool, str]:
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
    refused = admin_policy.refusals(spec, policy)  # the operator enforces the same, for what got past
    if refused:
        return False, "; ".join(refused)
    return True, ""
