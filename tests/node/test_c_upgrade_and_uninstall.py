"""``helm upgrade`` with a changed value rolls the operator; ``helm uninstall`` removes the
webhook configurations and keeps the CRDs and every database. Last in tests/node: it
uninstalls the release the others use."""

from __future__ import annotations

import pytest
from helpers import eventually
from kubernetes import client
from nodekit import CHART, RELEASE, RELEASE_NAMESPACE, Helm, image_values, operator_pods, ready


pytestmark = [pytest.mark.bed, pytest.mark.timeout(2700)]


# ---- upgrade and uninstall -------------------------------------------------------------------
def test_helm_upgrade_with_a_changed_value_rolls_the_operator(installed, helm: Helm, node_core, node_info):
    before = {p.metadata.name for p in operator_pods(node_core)}
    helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
         *image_values(node_info["images"]["operator"]),
         "--set", "operator.driftInterval=45", "--wait", "--timeout", "10m")

    def rolled():
        pods = operator_pods(node_core)
        names = {p.metadata.name for p in pods}
        return pods if len(pods) == 2 and not names & before and all(ready(p) for p in pods) else None

    pods = eventually(rolled, "two new operator Pods Ready", timeout=300, interval=1)
    args = pods[0].spec.containers[0].args or []
    assert any("45" in a for a in args) or any(e.value == "45" for e in pods[0].spec.containers[0].env or []), args


def test_helm_uninstall_removes_the_webhooks_and_keeps_crds_and_databases(installed, helm: Helm, node_api,
                                                                          node_superuser):
    databases_before = {row[0] for row in node_superuser.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, 'mlflow_')").fetchall()}
    assert databases_before, "no backend database to keep"
    helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m")
    admission = client.AdmissionregistrationV1Api(node_api)

    def webhooks_gone():
        names = {w.metadata.name for w in admission.list_mutating_webhook_configuration().items} | \
            {w.metadata.name for w in admission.list_validating_webhook_configuration().items}
        return not names & {"trackop-injection", "trackop-validation"}

    eventually(webhooks_gone, "the webhook configurations to go with the release", timeout=120, interval=1)
    crds = {c.metadata.name for c in client.ApiextensionsV1Api(node_api).list_custom_resource_definition().items}
    assert "trackingbackends.trackop.dev" in crds
    kept = {row[0] for row in node_superuser.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, 'mlflow_')").fetchall()}
    assert kept == databases_before
