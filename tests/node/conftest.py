"""Fixtures of the tests on the real node: a bed of their own with a node (the session bed
has none), trackop installed on it with ``helm install`` of the chart and the image built
from the project's Dockerfile.

The bed (package-scoped) comes up for the first of these tests and goes down after the
last one, before the e2e tier starts its own.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import eventually
from kubernetes import client, config
from nodekit import CHART, RELEASE, RELEASE_NAMESPACE, Helm, image_values, superuser_params
from trackop_testbed.bed import Testbed


def _progress(message: str) -> None:
    print(f"[node-e2e] {message}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="package")
def node_bed():
    directory = Path(tempfile.mkdtemp(prefix="trackop-node-e2e-", dir="/tmp"))
    bed = Testbed(directory, progress=_progress, node=True)
    try:
        info = bed.up()
        yield bed, info
    finally:
        bed.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="package")
def node_info(node_bed) -> dict:
    return node_bed[1]


@pytest.fixture(scope="package")
def node_api(node_info) -> client.ApiClient:
    return config.new_client_from_config(config_file=node_info["kubeconfig"])


@pytest.fixture(scope="package")
def node_core(node_api) -> client.CoreV1Api:
    return client.CoreV1Api(node_api)


@pytest.fixture(scope="package")
def helm(node_info) -> Helm:
    return Helm(node_info["kubeconfig"])


@pytest.fixture(scope="package")
def installed(helm: Helm, node_info: dict) -> dict:
    """``helm install`` of the chart with the bed's operator image, as a user runs it; what
    it took (seconds) is returned for the report."""
    started = time.monotonic()
    helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         *image_values(node_info["images"]["operator"]), "--wait", "--timeout", "10m")
    return {"seconds": time.monotonic() - started}


@pytest.fixture
def node_namespace(node_core) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    node_core.create_namespace({"metadata": {"name": name}})
    eventually(lambda: node_core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
               "the namespace's default ServiceAccount", timeout=30)
    return name


@pytest.fixture
def node_superuser(node_info) -> psycopg.Connection:
    conn = psycopg.connect(**superuser_params(node_info), dbname="postgres", autocommit=True)
    yield conn
    conn.close()
