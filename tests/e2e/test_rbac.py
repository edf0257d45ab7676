"""The e2e operator runs as the Helm chart's ServiceAccount: who it is, and what it may not do."""

from __future__ import annotations

import pytest
from kubernetes import client, config

pytestmark = pytest.mark.bed


@pytest.fixture
def as_operator(operator_kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=operator_kubeconfig)


def test_the_operator_authenticates_as_the_charts_service_account(as_operator: client.ApiClient, operator):
    review = client.AuthenticationV1Api(as_operator).create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"))
    assert review.status.user_info.username == "system:serviceaccount:trackop-system:trackop"
    assert operator.kubeconfig.endswith("kubeconfig") and "trackop-sa-" in operator.kubeconfig


@pytest.mark.parametrize("action", ["create a namespace", "read a ConfigMap", "delete a CRD",
                                    "bind a ClusterRole", "patch another peering object", "update a Secret"])
def test_what_the_chart_does_not_grant_is_refused(as_operator: client.ApiClient, action: str, namespace: str):
    core = client.CoreV1Api(as_operator)
    calls = {
        "create a namespace": lambda: core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="not-allowed"))),
        "read a ConfigMap": lambda: core.list_namespaced_config_map(namespace),
        "delete a CRD": lambda: client.ApiextensionsV1Api(as_operator).delete_custom_resource_definition(
            "trackingbackends.trackop.dev"),
        "bind a ClusterRole": lambda: client.RbacAuthorizationV1Api(as_operator).create_cluster_role_binding(
            client.V1ClusterRoleBinding(metadata=client.V1ObjectMeta(name="escalate"),
                                        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                                                  kind="ClusterRole", name="cluster-admin"),
                                        subjects=[client.RbacV1Subject(kind="User", name="me")])),
        "patch another peering object": lambda: client.CustomObjectsApi(as_operator).patch_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "someone-else", {"status": {}}),
        # Every Secret write is a create or a patch (copies, the certificate's rotation): no update.
        "update a Secret": lambda: core.replace_namespaced_secret(
            "anything", namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="anything"))),
    }
    with pytest.raises(client.ApiException) as refused:
        calls[action]()
    assert refused.value.status == 403, refused.value.reason


def test_the_webhook_configurations_are_owned_by_the_charts_cluster_role(kube_api: client.ApiClient, operator):
    role = client.RbacAuthorizationV1Api(kube_api).read_cluster_role("trackop")
    admission = client.AdmissionregistrationV1Api(kube_api)
    for config_ in (admission.read_mutating_webhook_configuration("trackop-injection"),
                    admission.read_validating_webhook_configuration("trackop-validation")):
        owners = [(o.kind, o.name, o.uid) for o in config_.metadata.owner_references or []]
        assert owners == [("ClusterRole", "trackop", role.metadata.uid)]
