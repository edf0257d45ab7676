"""The drift checks' view: resourceVersions only.

Metadata-only reads (PartialObjectMetadata): no Secret data crosses the wire, and the
JSON is parsed as plain dicts, not into the client's models (most of a LIST's cost).
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client


class MetadataCalls:
    core: client.CoreV1Api

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
