"""Two operators with kopf peering (as the chart runs them): one acts, and when it is
killed the other takes over."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from helpers import eventually
from kit import CHART_RELEASE, Admin, Backends, OperatorProcess
from trackop_testbed.crd import install_crd

pytestmark = pytest.mark.bed

PEERING_CRDS = Path(__file__).resolve().parents[2] / "deploy/helm/trackop/crds/kopf.dev_peerings.yaml"
LIFETIME = 8  # seconds without a keepalive before the standby takes over (kopf's default is 60)


def _absent(custom: client.CustomObjectsApi, name: str) -> bool:
    try:
        custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
        return False
    except client.ApiException as exc:
        return exc.status == 404


def _reconciles(proc: OperatorProcess) -> float:
    return sum(v for k, v in proc.metrics().items() if k.startswith("trackop_reconciles_total"))


def test_two_peered_operators_one_acts_and_the_other_takes_over(
        bed_info: dict, kube_api: client.ApiClient, backends: Backends, admin: Admin, operator: OperatorProcess,
        tmp_path: Path):
    # The chart's peering object (its RBAC lets the operator patch only that one), emptied
    # of keepalives an earlier run left.
    for manifest in yaml.safe_load_all(PEERING_CRDS.read_text()):
        install_crd(kube_api, manifest=manifest)
    peering = CHART_RELEASE
    custom = client.CustomObjectsApi(kube_api)
    try:
        custom.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    eventually(lambda: _absent(custom, peering), "the old peering object to go")
    custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                         "metadata": {"name": peering}})
    backends.admin_secret(admin)
    operator.stop()  # the session's standalone operator would act on everything
    peers = []
    try:
        for name, priority in (("active", 200), ("standby", 100)):
            proc = OperatorProcess(operator.kubeconfig, tmp_path / name, webhook=False)
            (tmp_path / name).mkdir()
            proc.extra_args = ["--peering", "--peering-name", peering, "--peering-priority", str(priority),
                               "--peering-lifetime", str(LIFETIME)]
            proc.start()
            peers.append(proc)
        active, standby = peers
        # A peer starts paused and resumes only once it sees no live peer above it.
        eventually(lambda: len(custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
                               .get("status") or {}) == 2, "both keepalives in the peering object", timeout=30)

        backends.apply("first", backends.spec())
        backends.wait_ready("first")
        assert _reconciles(active) > 0
        assert _reconciles(standby) == 0, "the standby acted while the active peer was alive"

        active.stop(kill=True)  # SIGKILL: no goodbye in the peering object, its keepalive just ages out
        backends.apply("second", backends.spec())
        backends.wait_ready("second", timeout=LIFETIME * 3 + 60)
        assert _reconciles(standby) > 0
        assert "Resuming operations after the pause" in standby.logs()
    finally:
        for proc in peers:
            proc.stop(kill=True)
        operator.start()
