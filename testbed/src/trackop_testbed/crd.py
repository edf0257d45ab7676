"""Installing trackop's CRD into a cluster (the test bed, `trackop dev`, the tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

CRD_FILE = "trackop.dev_trackingbackends.yaml"


def crd_path() -> Path:
    """``$TRACKOP_CRD`` or the checkout's ``deploy/crds/``: one copy of the CRD, the chart's too."""
    if os.environ.get("TRACKOP_CRD"):
        return Path(os.environ["TRACKOP_CRD"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "crds" / CRD_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"deploy/crds/{CRD_FILE} not found: run from a checkout or set TRACKOP_CRD")


def install_crd(api_client: client.ApiClient, timeout: float = 60,
                manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Server-side apply the CRD (default: TrackingBackend's) and wait until its API is
    served; return the manifest."""
    manifest = manifest or yaml.safe_load(crd_path().read_text())
    name = manifest["metadata"]["name"]
    ext = client.ApiextensionsV1Api(api_client)
    ext.patch_custom_resource_definition(name, manifest, field_manager="trackop", force=True,
                                         _content_type="application/apply-patch+yaml")
    custom = client.CustomObjectsApi(api_client)
    group, plural = manifest["spec"]["group"], manifest["spec"]["names"]["plural"]
    version = manifest["spec"]["versions"][0]["name"]
    deadline = time.monotonic() + timeout
    while True:
        established = any(c.type == "Established" and c.status == "True"
                          for c in ext.read_custom_resource_definition(name).status.conditions or [])
        if established:
            try:
                if manifest["spec"]["scope"] == "Namespaced":
                    custom.list_namespaced_custom_object(group, version, "default", plural, limit=1)
                else:
                    custom.list_cluster_custom_object(group, version, plural, limit=1)
                return manifest
            except client.ApiException as exc:
                if exc.status != 404:  # 404: discovery has not caught up yet
                    raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not served after {timeout:.0f}s")
        time.sleep(0.2)
