"""Cluster-wide things: namespaces, the TrackingBackend list and watch, webhook
configurations, the chart's ClusterRole, and Events."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client, watch

from ..api.v1alpha1 import GROUP, PLURAL, VERSION
from .objects import _APPLY


class ClusterCalls:
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        return {ns.metadata.name: dict(ns.metadata.labels or {}) for ns in self.core.list_namespace().items
                if ns.metadata.deletion_timestamp is None}

    def listing(self, kind: str) -> tuple[list[dict[str, Any]], str]:
        """Every TrackingBackend ("backends") or Namespace ("namespaces") as plain dicts, and
        the list's resourceVersion to watch from."""
        if kind == "backends":
            found = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            return list(found.get("items") or []), found["metadata"]["resourceVersion"]
        listed = self.core.list_namespace()
        items = [self.core.api_client.sanitize_for_serialization(ns) for ns in listed.items]
        return items, listed.metadata.resource_version

    def watch(self, kind: str, resource_version: str, timeout_seconds: int = 300,
              ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from ``resource_version`` on, until the server ends the watch."""
        func = {"backends": functools.partial(self.custom.list_cluster_custom_object, GROUP, VERSION,
                                              PLURAL),
                "namespaces": self.core.list_namespace}[kind]
        stream = watch.Watch().stream(func, resource_version=resource_version, timeout_seconds=timeout_seconds,
                                      allow_watch_bookmarks=True, _request_timeout=(10, timeout_seconds + 30))
        for event in stream:
            yield event["type"], event["raw_object"]

    def ensure_namespace(self, name: str) -> None:
        """Create the namespace if it is missing (the local bed has no trackop-system).

        Looks first, and by list, which the operator has anyway: in a cluster the namespace
        exists and the chart grants no namespace create, so a blind create would be
        refused (403 comes before 409)."""
        if self.core.list_namespace(field_selector=f"metadata.name={name}").items:
            return
        try:
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def cluster_role_uid(self, name: str) -> str:
        return client.RbacAuthorizationV1Api(self.core.api_client).read_cluster_role(name).metadata.uid

    def apply_cluster(self, body: Mapping[str, Any]) -> None:
        """Server-side apply a webhook configuration."""
        admission = client.AdmissionregistrationV1Api(self.core.api_client)
        patch = {
            "MutatingWebhookConfiguration": admission.patch_mutating_webhook_configuration,
            "ValidatingWebhookConfiguration": admission.patch_validating_webhook_configuration,
        }[body["kind"]]
        patch(body["metadata"]["name"], body, **_APPLY)

    def post_event(self, namespace: str, involved: Mapping[str, Any], event_type: str, reason: str,
                   message: str) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self.core.create_namespaced_event(namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"trackop.{uuid.uuid4().hex[:12]}", namespace=namespace),
            involved_object=client.V1ObjectReference(**involved),
            type=event_type, reason=reason, message=message[:1024],
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="trackop"),
            reporting_component="trackop", reporting_instance="trackop",
        ))
