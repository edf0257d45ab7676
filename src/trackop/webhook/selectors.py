"""Kubernetes label selectors, as ``metav1.LabelSelectorAsSelector`` reads them (pure):
which namespaces a backend's ``spec.injection.namespaceSelector`` admits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics: ``matchLabels`` and every ``matchExpressions``
    requirement must hold; ``{}`` selects everything and ``None`` selects nothing (as
    ``metav1.LabelSelectorAsSelector`` does). ``NotIn`` and ``DoesNotExist`` hold for a
    missing label. Raises ValueError for a malformed selector, so the caller can say why
    instead of silently selecting nothing.

    The rule "no namespaceSelector means only the backend's own namespace" lives in
    ``injection.admits_namespace``, not here.
    """
    if selector is None:
        return False
    if not isinstance(selector, Mapping):
        raise ValueError("a label selector must be an object")
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ValueError(f"unknown label selector field(s): {', '.join(sorted(unknown))}")
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        if not _requirement_matches(requirement, labels):
            return False
    return True


def _requirement_matches(requirement: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = requirement.get("key")
    operator = requirement.get("operator")
    values = requirement.get("values") or []
    if not isinstance(key, str) or not key:
        raise ValueError("a matchExpressions requirement needs a key")
    if operator in ("In", "NotIn"):
        # Kubernetes rejects an empty list here; accepting it would make In select nothing
        # and NotIn everything, silently.
        if not values:
            raise ValueError(f"matchExpressions {key} {operator} needs at least one value")
        if operator == "In":
            return key in labels and labels[key] in values
        return key not in labels or labels[key] not in values
    if operator in ("Exists", "DoesNotExist"):
        if values:
            raise ValueError(f"matchExpressions {key} {operator} takes no values")
        return (key in labels) == (operator == "Exists")
    raise ValueError(f"matchExpressions {key}: unknown operator {operator!r} (In, NotIn, Exists, DoesNotExist)")
