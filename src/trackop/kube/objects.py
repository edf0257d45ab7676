"""The objects trackop applies (server-side apply, plain dicts in and out), Jobs and pods."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from .errors import names_an_object

_APPLY = {"field_manager": "trackop", "force": True, "_content_type": "application/apply-patch+yaml"}


def _custom_read(custom: client.CustomObjectsApi, group: str, version: str, plural: str, name: str,
                 namespace: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(group, version, namespace, plural, name)


def _custom_patch(custom: client.CustomObjectsApi, group: str, version: str, plural: str, name: str,
                  namespace: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    return custom.patch_namespaced_custom_object(group, version, namespace, plural, name, body, **kwargs)


class ObjectCalls:
    core: client.CoreV1Api
    batch: client.BatchV1Api
    apps: client.AppsV1Api
    custom: client.CustomObjectsApi

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

    def read_object(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The object named like ``body``, or None if there is none. An API that does not exist
        (a CRD not installed) raises its 404."""
        read, _ = self._object_calls(body)
        meta = body["metadata"]
        try:
            return self._plain(read(meta["name"], meta["namespace"]))
        except client.ApiException as exc:
            if exc.status == 404 and names_an_object(exc):
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

    def pod_bodies(self, namespace: str, name: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
        """The pod named (none if it does not exist), or those matching ``selector``, as plain
        dicts: what their containers wait for (specs.progress)."""
        if name is None:
            return [self._plain(p) for p in self.core.list_namespaced_pod(namespace, label_selector=selector).items]
        try:
            return [self._plain(self.core.read_namespaced_pod(name, namespace))]
        except client.ApiException as exc:
            if exc.status == 404:
                return []
            raise

    def pods_by_label(self, selector: str) -> list[client.V1Pod]:
        return self.core.list_pod_for_all_namespaces(label_selector=selector).items
