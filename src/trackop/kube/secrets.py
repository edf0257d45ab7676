"""Secrets: the connection Secret, its copies, the admin's and the webhook certificate's."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


class SecretCalls:
    core: client.CoreV1Api

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

    def secrets_by_label(self, selector: str, namespaces: Sequence[str] | None = None
                         ) -> dict[tuple[str, str], dict[str, str]]:
        """Secrets matching ``selector`` across all namespaces, or in each of ``namespaces``
        (an operator with namespaced permissions): (namespace, name) -> data."""
        if namespaces is None:
            found = self.core.list_secret_for_all_namespaces(label_selector=selector).items
        else:
            found = [s for ns in namespaces for s in self.core.list_namespaced_secret(ns, label_selector=selector).items]
        return {(s.metadata.namespace, s.metadata.name): _decode(s.data) for s in found}

    def put_secret(self, body: Mapping[str, Any]) -> None:
        """Create, or set whole (so keys no longer wanted go), a Secret trackop owns.

        A JSON patch that sets ``data``, labels and annotations whole: the same effect as a
        replace, with the ``patch`` permission the operator has anyway (no ``update``)."""
        meta = body["metadata"]
        try:
            self.core.create_namespaced_secret(meta["namespace"], body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            data = {k: base64.b64encode(v.encode()).decode() for k, v in body.get("stringData", {}).items()}
            self.core.patch_namespaced_secret(meta["name"], meta["namespace"], [
                {"op": "add", "path": "/data", "value": {**(body.get("data") or {}), **data}},
                {"op": "add", "path": "/metadata/labels", "value": meta.get("labels") or {}},
                {"op": "add", "path": "/metadata/annotations", "value": meta.get("annotations") or {}},
            ])

    def delete_secret(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def read_secret_encoded(self, namespace: str, name: str) -> tuple[dict[str, str], str] | None:
        """The Secret's data as stored (base64 values) and its resourceVersion, or None if it
        does not exist."""
        secret = self._secret(namespace, name)
        return None if secret is None else (dict(secret.data or {}), secret.metadata.resource_version)

    def replace_secret(self, body: Mapping[str, Any]) -> None:
        """Set a Secret's data; with ``metadata.resourceVersion``, only over that version of it
        (another writer's newer version makes this a 409). A merge patch, not an update: the
        keys are the same in every version (the webhook's certificates)."""
        meta = body["metadata"]
        patch = {"metadata": {k: meta[k] for k in ("labels", "resourceVersion") if k in meta}, "data": body["data"]}
        self.core.patch_namespaced_secret(meta["name"], meta["namespace"], patch)

    def _secret(self, namespace: str, name: str) -> client.V1Secret | None:
        """The Secret as the client reads it, or None if it does not exist."""
        try:
            return self.core.read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
