"""The one place that reads and writes Kubernetes objects (besides kopf's own status patches)."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client, watch

from .api.v1alpha1 import GROUP, PLURAL, VERSION


def _custom_read(custom: client.CustomObjectsApi, group: str, version: str, plural: str, name: str,
                 namespace: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(group, version, namespace, plural, name)


def _custom_patch(custom: client.CustomObjectsApi, group: str, version: str, plural: str, name: str,
                  namespace: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    return custom.patch_namespaced_custom_object(group, version, namespace, plural, name, body, **kwargs)


def _status(exc: client.ApiException) -> dict[str, Any]:
    """The Status object the API server sent with a refusal ({} when the body is not one)."""
    try:
        found = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def status_message(exc: client.ApiException) -> str:
    """The API server's own words for a refused request ("" when it sent none)."""
    message = _status(exc).get("message")
    return message if isinstance(message, str) else ""


def refusal_message(exc: client.ApiException) -> str:
    """The API server's own words for a refused request, or its status code and reason."""
    return status_message(exc) or f"{exc.status} {exc.reason}"


def _names_an_object(exc: client.ApiException) -> bool:
    """A 404 about a missing object names it; one about a missing API (a CRD that is not
    installed) does not."""
    details = _status(exc).get("details")
    return isinstance(details, dict) and bool(details.get("name"))


_APPLY = {"field_manager": "trackop", "force": True, "_content_type": "application/apply-patch+yaml"}


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # ---- Secrets ---------------------------------------------------------------------
    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.read_secret_and_owners(namespace, name)
        return found[0] if found else None

    def read_secret_and_owners(self, namespace: str, name: str) -> tuple[dict[str, str], set[str]] | None:
        """The decoded data and the uids of the Secret's owners, or None if it does not exist."""
        secret = self._secret(namespace, name)
        if secret is None:
            return None
        return _decode(secret.data), {ref.uid for ref in secret.metadata.owner_references or []}

    def create_secret(self, body: Mapping[str, Any]) -> None:
        self.core.create_namespaced_secret(body["metadata"]["namespace"], body)

    def update_secret(self, body: Mapping[str, Any]) -> None:
        """Merge-patch data, labels and owner of a Secret trackop manages."""
        meta = body["metadata"]
        patch = {"metadata": {"labels": meta.get("labels"), "annotations": meta.get("annotations"),
                              "ownerReferences": meta.get("ownerReferences")},
                 "stringData": body["stringData"]}
        self.core.patch_namespaced_secret(meta["name"], meta["namespace"], patch)

    def release_secret(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Drop the owner reference so garbage collection keeps the Secret (deletionPolicy Retain)."""
        secret = self._secret(namespace, name)
        if secret is None:
            return False
        if not any(r.uid == owner_uid for r in secret.metadata.owner_references or []):
            return False
        # Strategic merge: ownerReferences merge by uid, so this removes only that entry.
        try:
            self.core.patch_namespaced_secret(
                name, namespace, {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}]}})
        except client.ApiException as exc:
            if exc.status == 404:  # deleted since the read (its namespace is going): nothing to keep
                return False
            raise
        return True

    # ---- Jobs ------------------------------------------------------------------------
    def read_job(self, namespace: str, name: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_job(self, body: Mapping[str, Any]) -> None:
        try:
            self.batch.create_namespaced_job(body["metadata"]["namespace"], body)
        except client.ApiException as exc:
            if exc.status != 409:  # made by a previous attempt: fine
                raise

    # ---- server-side apply (Deployments, StatefulSets, Services, CloudNativePG Clusters) ----
    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply an object trackop owns: the object as stored, as a plain dict."""
        _, patch = self._object_calls(body)
        meta = body["metadata"]
        return self._plain(patch(meta["name"], meta["namespace"], body, **_APPLY))

    def apply_if_changed(self, body: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """:meth:`apply`, and whether it changed the object (its resourceVersion moved)."""
        before = self.version_of(body)
        after = self.apply(body)
        return after["metadata"]["resourceVersion"] != before, after

    def version_of(self, body: Mapping[str, Any]) -> str | None:
        """The resourceVersion of the object named like ``body``, or None if there is none."""
        found = self.read_object(body)
        return None if found is None else found["metadata"]["resourceVersion"]

    def _object_calls(self, body: Mapping[str, Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(read(name, namespace), apply(name, namespace, body, **kwargs)) for a kind trackop applies."""
        kind = body["kind"]
        if kind == "Deployment":
            return self.apps.read_namespaced_deployment, self.apps.patch_namespaced_deployment
        if kind == "StatefulSet":
            return self.apps.read_namespaced_stateful_set, self.apps.patch_namespaced_stateful_set
        if kind == "Service":
            return self.core.read_namespaced_service, self.core.patch_namespaced_service
        group, _, version = body["apiVersion"].partition("/")
        plural = {"Cluster": "clusters"}[kind]
        return (functools.partial(_custom_read, self.custom, group, version, plural),
                functools.partial(_custom_patch, self.custom, group, version, plural))

    def _plain(self, found: Any) -> dict[str, Any]:
        return found if isinstance(found, dict) else self.core.api_client.sanitize_for_serialization(found)

    # ---- the managed PostgreSQL (plain dicts in and out) -------------------------------
    def read_object(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The object named like ``body``, or None if there is none. An API that does not exist
        (a CRD not installed) raises its 404."""
        read, _ = self._object_calls(body)
        meta = body["metadata"]
        try:
            return self._plain(read(meta["name"], meta["namespace"]))
        except client.ApiException as exc:
            if exc.status == 404 and _names_an_object(exc):
                return None
            raise

    def release_object(self, body: Mapping[str, Any], owner_uid: str) -> bool:
        """Drop ``owner_uid`` from an object's owners so garbage collection keeps it (Retain).
        A JSON patch that tests the entry first, so a concurrent change is refused, not lost."""
        found = self.read_object(body)
        if found is None:
            return False
        owners = found["metadata"].get("ownerReferences") or []
        index = next((i for i, ref in enumerate(owners) if ref.get("uid") == owner_uid), None)
        if index is None:
            return False
        meta = body["metadata"]
        operations = [{"op": "test", "path": f"/metadata/ownerReferences/{index}/uid", "value": owner_uid},
                      {"op": "remove", "path": f"/metadata/ownerReferences/{index}"}]
        _, patch = self._object_calls(body)
        patch(meta["name"], meta["namespace"], operations, _content_type="application/json-patch+json")
        return True

    def pod_ip(self, namespace: str, name: str | None = None, selector: str | None = None) -> str | None:
        """The IP of a ready pod: the one named, or the first matching ``selector``."""
        if name is not None:
            try:
                pods = [self.core.read_namespaced_pod(name, namespace)]
            except client.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        else:
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        for pod in pods:
            ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
            if ready and pod.metadata.deletion_timestamp is None and pod.status.pod_ip:
                return pod.status.pod_ip
        return None

    # ---- the drift checks' view: resourceVersions only ----------------------------------
    # Metadata-only reads (PartialObjectMetadata): no Secret data crosses the wire, and the
    # JSON is parsed as plain dicts, not into the client's models (most of a LIST's cost).
    _PATHS = {"secrets": "/api/v1/namespaces/{namespace}/secrets",
              "services": "/api/v1/namespaces/{namespace}/services",
              "deployments": "/apis/apps/v1/namespaces/{namespace}/deployments"}
    _CLUSTER_PATHS = {"secrets": "/api/v1/secrets", "services": "/api/v1/services",
                      "deployments": "/apis/apps/v1/deployments"}

    def _metadata(self, path: str, selector: str | None, listing: bool) -> Any:
        accept = ("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1" if listing
                  else "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
        query = [("labelSelector", selector)] if selector else []
        response = self.core.api_client.call_api(
            path, "GET", query_params=query, header_params={"Accept": accept},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True)
        return json.loads(response.data)

    def metadata_list(self, kind: str, namespace: str | None = None, selector: str | None = None
                      ) -> list[dict[str, Any]]:
        """The metadata of every ``kind`` (secrets, services, deployments) in ``namespace``
        (None: all namespaces) matching ``selector``."""
        path = self._PATHS[kind].format(namespace=namespace) if namespace else self._CLUSTER_PATHS[kind]
        return [item["metadata"] for item in self._metadata(path, selector, listing=True).get("items") or []]

    def version(self, kind: str, namespace: str, name: str) -> str | None:
        """The resourceVersion of one object, or None if it does not exist."""
        try:
            found = self._metadata(f"{self._PATHS[kind].format(namespace=namespace)}/{name}", None, listing=False)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found["metadata"]["resourceVersion"]

    # ---- injection: namespaces, Secret copies, pods, webhook configurations ------------
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

    def secrets_by_label(self, selector: str) -> dict[tuple[str, str], dict[str, str]]:
        """Secrets across all namespaces matching ``selector``: (namespace, name) -> data."""
        found = self.core.list_secret_for_all_namespaces(label_selector=selector).items
        return {(s.metadata.namespace, s.metadata.name): _decode(s.data) for s in found}

    def put_secret(self, body: Mapping[str, Any]) -> None:
        """Create, or replace whole (so keys no longer wanted go), a Secret trackop owns."""
        meta = body["metadata"]
        try:
            self.core.create_namespaced_secret(meta["namespace"], body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_secret(meta["name"], meta["namespace"], body)

    def delete_secret(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def pods_by_label(self, selector: str) -> list[client.V1Pod]:
        return self.core.list_pod_for_all_namespaces(label_selector=selector).items

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

    # ---- the webhook's certificate Secret: its data as stored, written over a version ----
    def read_secret_encoded(self, namespace: str, name: str) -> tuple[dict[str, str], str] | None:
        """The Secret's data as stored (base64 values) and its resourceVersion, or None if it
        does not exist."""
        secret = self._secret(namespace, name)
        return None if secret is None else (dict(secret.data or {}), secret.metadata.resource_version)

    def replace_secret(self, body: Mapping[str, Any]) -> None:
        """Replace a Secret whole; with ``metadata.resourceVersion``, only that version of it
        (another writer's newer version makes this a 409)."""
        meta = body["metadata"]
        self.core.replace_namespaced_secret(meta["name"], meta["namespace"], body)

    def _secret(self, namespace: str, name: str) -> client.V1Secret | None:
        """The Secret as the client reads it, or None if it does not exist."""
        try:
            return self.core.read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
