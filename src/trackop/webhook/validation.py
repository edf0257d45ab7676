"""The validating webhook's decision for a TrackingBackend admission request (pure; reads
only the index)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import policy as admin_policy
from ..api.parsing import parse
from ..api.v1alpha1 import SpecError
from .index import Index


def validate_request(request: Mapping[str, Any], index: Index,
                     policy: admin_policy.Policy = admin_policy.Policy()) -> tuple[bool, str]:
    """Only a change of ``spec`` is judged. A DELETE, and an UPDATE that leaves the spec as
    it was (metadata: finalizers, labels, annotations; status), are always admitted: a
    backend stored before parsing was tightened (or while the webhook was down under
    Ignore) no longer parses, and must still get its finalizer removed and be deleted."""
    if request.get("operation") == "DELETE":
        return True, ""
    body = request.get("object") or {}
    if request.get("operation") == "UPDATE":
        old = request.get("oldObject") or {}
        if "spec" in old and old.get("spec") == body.get("spec"):
            return True, ""
    return validate_backend(body, index, policy)


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
    owner = index.store_owner((spec.postgres.host, spec.postgres.port, spec.database))
    if owner is not None and owner != (namespace, name):
        return False, (f"spec.postgres.database: {spec.database} on {spec.postgres.host}:{spec.postgres.port} is "
                       f"already used by TrackingBackend {owner[0]}/{owner[1]}")
    refused = admin_policy.refusals(spec, policy)  # the operator enforces the same, for what got past
    if refused:
        return False, "; ".join(refused)
    return True, ""
