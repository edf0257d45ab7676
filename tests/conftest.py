"""Session-scoped fixtures on the real local test bed.

The bed (etcd, kube-apiserver, kube-controller-manager, PostgreSQL, MinIO) starts once
per session in a fresh directory under /tmp and stops at the end, without a node (see
``testbed``). Variables:
- ``TRACKOP_TESTBED_DIR``: use (and leave running) the bed in that directory.
- ``TRACKOP_KUBECONFIG``: use that cluster (kind, or any kubeconfig) for the Kubernetes
  part; PostgreSQL and MinIO still run locally.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest
from kubernetes import client, config

from trackop_testbed.bed import Testbed
from trackop_testbed.crd import install_crd
from trackop_testbed.kubelet import LocalKubelet


def _progress(message: str) -> None:
    # Straight to the terminal: the first run builds for minutes and should say so.
    print(f"[testbed] {message}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    existing = os.environ.get("TRACKOP_TESTBED_DIR")
    if existing:
        bed = Testbed(existing, progress=_progress, node=False)
        bed.up()
        yield bed
        return
    directory = Path(tempfile.mkdtemp(prefix="trackop-bed-", dir="/tmp"))
    # No real node on the session bed yet: its tests run Pods on the stand-in kubelet
    # (LocalKubelet), which a real kubelet and scheduler would race for the same Pods.
    # tests/integration/test_node.py starts a bed with a node of its own.
    bed = Testbed(directory, progress=_progress, node=False)
    try:
        bed.up()
        yield bed
    finally:
        bed.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def bed_info(testbed: Testbed) -> dict:
    return testbed.info()


@pytest.fixture(scope="session")
def kube_api(bed_info: dict) -> client.ApiClient:
    return config.new_client_from_config(config_file=bed_info["kubeconfig"])


@pytest.fixture(scope="session")
def core_v1(kube_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


@pytest.fixture(scope="session")
def s3_client(bed_info: dict):
    s3 = bed_info["s3"]
    return boto3.client(
        "s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"], region_name=s3["region"],
    )


@pytest.fixture
def namespace(core_v1: client.CoreV1Api) -> str:
    """A fresh namespace for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are admitted only once kube-controller-manager made the default ServiceAccount.
    deadline = time.monotonic() + 30
    while not core_v1.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name}"
        time.sleep(0.1)
    yield name
    try:
        core_v1.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def superuser_conn(bed_info: dict) -> psycopg.Connection:
    """Per test: a PostgreSQL outage test must not leave later tests a dead connection."""
    pg = bed_info["postgres"]
    conn = psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                           dbname="postgres", autocommit=True)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def trackop_crd(kube_api: client.ApiClient) -> dict:
    """The TrackingBackend CRD, server-side applied and served; it stays installed."""
    return install_crd(kube_api)


@pytest.fixture
def kubelet(kube_api: client.ApiClient, tmp_path: Path) -> LocalKubelet:
    return LocalKubelet(kube_api, workdir=tmp_path / "kubelet")


_TIERS = ("unit", "integration", "node", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tiers first; and the e2e operator (which reconciles every namespace) starts only
    after the integration tests that write TrackingBackend status by hand have run."""
    def tier(item: pytest.Item) -> int:
        parts = Path(str(item.fspath)).parts
        return next((i for i, name in enumerate(_TIERS) if name in parts), len(_TIERS))

    items.sort(key=tier)
