"""Every object trackop writes for a managed PostgreSQL passes a server-side dry run on the
bed: the StatefulSet, Service and superuser Secret, and the CloudNativePG Cluster against
CloudNativePG's own CRD (from the Go module proxy's copy of its module)."""

from __future__ import annotations

import time

import pytest
import yaml
from helpers import eventually
from kubernetes import client

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec
from trackop.specs import managed_server
from trackop_testbed import binaries

pytestmark = pytest.mark.bed

SPECS = {
    "defaults": {},
    "tuned": {"postgres": {"tuning": {"scope": "Server", "maxConnections": 120, "sharedBuffers": "512MB",
                                      "workMem": "8MB", "serverMemory": "4Gi"}}},
    "sized": {"managed": {"port": 6543, "version": "16", "storage": {"size": "50Gi", "storageClassName": "fast"},
                          "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}},
              "deletionPolicy": "Delete"},
}


def backend(namespace: str, case: str, engine: str = "StatefulSet") -> tuple[BackendSpec, dict]:
    extra = dict(SPECS[case])
    managed_spec = {"engine": engine, **extra.pop("managed", {})}
    if engine == "CloudNativePG":
        managed_spec.pop("port", None)
        managed_spec["instances"] = 3
    postgres = {"managed": managed_spec, **extra.pop("postgres", {})}
    spec = parse(namespace, "team-a", {"postgres": postgres, **extra})
    owner = {"apiVersion": "trackop.dev/v1alpha1", "kind": "TrackingBackend",
             "metadata": {"name": "team-a", "namespace": namespace, "uid": "5d3e1c2a-0000-4000-8000-000000000001"}}
    return spec, owner


@pytest.mark.parametrize("case", sorted(SPECS))
def test_statefulset_service_and_secret_pass_a_server_side_dry_run(kube_api, namespace, case):
    spec, owner = backend(namespace, case)
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    settings = managed_server.parameters(spec)
    stored = apps.create_namespaced_stateful_set(namespace, managed_server.statefulset(spec, owner, settings),
                                                 dry_run="All")
    assert stored.spec.template.spec.containers[0].args == managed_server.server_args(spec, settings)
    assert stored.spec.persistent_volume_claim_retention_policy.when_deleted == \
        ("Delete" if spec.deletion_policy == "Delete" else "Retain")
    core.create_namespaced_service(namespace, managed_server.service(spec, owner), dry_run="All")
    core.create_namespaced_secret(namespace, managed_server.superuser_secret(spec, "x" * 43, owner), dry_run="All")


def test_the_pod_template_meets_the_restricted_pod_security_standard(kube_api, core_v1):
    """The namespace enforces 'restricted': the API server refuses a pod that breaks it."""
    name = f"psa-{int(time.time() * 1000) % 10**8}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"pod-security.kubernetes.io/enforce": "restricted"})))
    try:
        spec, owner = backend(name, "tuned")
        template = managed_server.statefulset(spec, owner, managed_server.parameters(spec))["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pg", **template["metadata"]},
               "spec": template["spec"]}
        # As the StatefulSet controller makes the pod: the claim template becomes a volume.
        pod["spec"]["volumes"] = [*pod["spec"]["volumes"], {
            "name": managed_server.DATA_VOLUME, "persistentVolumeClaim": {"claimName": managed_server.claim_name(spec)}}]
        core_v1.create_namespaced_pod(name, pod, dry_run="All")
        # The check is real: the same pod as root is refused.
        pod["spec"]["securityContext"] = {**pod["spec"]["securityContext"], "runAsNonRoot": False, "runAsUser": 0}
        with pytest.raises(client.ApiException) as refused:
            core_v1.create_namespaced_pod(name, pod, dry_run="All")
        assert refused.value.status == 403 and "restricted" in refused.value.body
    finally:
        core_v1.delete_namespace(name)


@pytest.fixture
def cnpg_crd(kube_api):
    """CloudNativePG's Cluster CRD, installed for the test and removed after it."""
    (path,) = binaries.ensure_cnpg_crds()
    crd = yaml.safe_load(path.read_text())
    extensions = client.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(crd)
    except client.ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        found = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in found.status.conditions or [])

    eventually(established, "the CloudNativePG CRD to be established", timeout=30)
    yield crd
    extensions.delete_custom_resource_definition(crd["metadata"]["name"])


@pytest.mark.parametrize("case", sorted(SPECS))
def test_the_cloudnativepg_cluster_passes_its_crds_validation(kube_api, namespace, cnpg_crd, case):
    spec, owner = backend(namespace, case, engine="CloudNativePG")
    custom = client.CustomObjectsApi(kube_api)
    body = managed_server.cnpg_cluster(spec, owner, managed_server.parameters(spec))
    stored = custom.create_namespaced_custom_object(managed_server.CNPG_GROUP, managed_server.CNPG_VERSION, namespace,
                                                    managed_server.CNPG_PLURAL, body, dry_run="All")
    assert stored["spec"]["instances"] == 3
    assert stored["spec"]["postgresql"]["parameters"] == managed_server.parameters(spec)
    assert stored["spec"]["enableSuperuserAccess"] is True
    # The CRD's validation is real: a Cluster it does not accept is refused.
    broken = {**body, "spec": {**body["spec"], "instances": "three"}}
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(managed_server.CNPG_GROUP, managed_server.CNPG_VERSION, namespace,
                                               managed_server.CNPG_PLURAL, broken, dry_run="All")
    assert refused.value.status == 422 and "spec.instances" in refused.value.body
