"""The Mutating (pods) and Validating (TrackingBackends) webhook configurations trackop
registers, pure: where the API server calls, with which CA bundle, for which objects."""

from __future__ import annotations

import base64
from typing import Any

from ..api import v1alpha1
from ..api.v1alpha1 import GROUP, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION

MUTATING_NAME = "trackop-injection"
VALIDATING_NAME = "trackop-validation"
MUTATE_PATH = "/mutate-pods"
VALIDATE_PATH = "/validate-trackingbackends"
TIMEOUT_SECONDS = 3  # an opted-in pod creation waits at most this long on a slow operator
SERVICE_PORT = 443  # the chart's webhook Service; it forwards to the operator's --webhook-address port


def webhook_configurations(url: str, ca_bundle: bytes, *, failure_policy: str, operator_namespace: str | None,
                           service: str | None = None, owner: tuple[str, str] | None = None,
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Mutating (pods) and Validating (TrackingBackends) webhook configurations.

    With ``service`` (in a cluster: the chart's Service in ``operator_namespace``, port
    443) the API server calls the Service; otherwise ``url`` (the local bed, out of cluster).
    With ``owner`` (name, uid of the chart's ClusterRole) the garbage collector deletes them
    when the release is uninstalled: the operator makes them at runtime, so Helm never
    knew them, and a cluster-scoped object can only be owned by a cluster-scoped one."""
    bundle = base64.b64encode(ca_bundle).decode()
    meta_extra: dict[str, Any] = {}
    if owner:
        meta_extra["ownerReferences"] = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                          "name": owner[0], "uid": owner[1]}]

    def client_config(path: str) -> dict[str, Any]:
        if service:
            return {"service": {"namespace": operator_namespace, "name": service, "port": SERVICE_PORT,
                                "path": path}, "caBundle": bundle}
        return {"url": url + path, "caBundle": bundle}

    never = sorted({*v1alpha1.NEVER_NAMESPACES, *([operator_namespace] if operator_namespace else [])})
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_NAME, "labels": {MANAGED_BY_LABEL: MANAGED_BY}, **meta_extra},
        "webhooks": [{
            "name": "inject.trackop.dev",
            "clientConfig": client_config(MUTATE_PATH),
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            # Only pods that opted in reach the operator; kube-system and its own namespace never.
            "objectSelector": {"matchLabels": {v1alpha1.INJECT_LABEL: "true"}},
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": never}]},
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "reinvocationPolicy": "IfNeeded",
            "admissionReviewVersions": ["v1"],
        }],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_NAME, "labels": {MANAGED_BY_LABEL: MANAGED_BY}, **meta_extra},
        "webhooks": [{
            "name": "validate.trackop.dev",
            "clientConfig": client_config(VALIDATE_PATH),
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [GROUP], "apiVersions": [VERSION],
                       "resources": [PLURAL], "scope": "Namespaced"}],
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "admissionReviewVersions": ["v1"],
        }],
    }
    return mutating, validating
