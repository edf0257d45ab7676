"""trackop.specs.webhook_configurations: the webhook configurations trackop registers (pure)."""

from __future__ import annotations

import base64

from trackop.specs.webhook_configurations import webhook_configurations


def test_configurations_have_a_short_timeout_selectors_and_the_bundle():
    mutating, validating = webhook_configurations("https://127.0.0.1:9443", b"CA", failure_policy="Ignore",
                                                  operator_namespace="trackop-system")
    hook = mutating["webhooks"][0]
    assert hook["timeoutSeconds"] == 3 and hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-pods",
                                    "caBundle": base64.b64encode(b"CA").decode()}
    assert hook["objectSelector"] == {"matchLabels": {"trackop.dev/inject": "true"}}
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", "trackop-system"]
    assert hook["rules"][0]["operations"] == ["CREATE"] and hook["rules"][0]["resources"] == ["pods"]
    assert validating["webhooks"][0]["rules"][0]["resources"] == ["trackingbackends"]
    assert validating["webhooks"][0]["clientConfig"]["url"].endswith("/validate-trackingbackends")


def test_configurations_in_a_cluster_call_the_service_not_a_url():
    mutating, validating = webhook_configurations("https://ignored:9443", b"CA", failure_policy="Fail",
                                                  operator_namespace="ops", service="trackop-webhook")
    for config, path in ((mutating, "/mutate-pods"), (validating, "/validate-trackingbackends")):
        client_config = config["webhooks"][0]["clientConfig"]
        assert "url" not in client_config
        assert client_config["service"] == {"namespace": "ops", "name": "trackop-webhook", "port": 443,
                                            "path": path}
        assert client_config["caBundle"] == base64.b64encode(b"CA").decode()


def test_configurations_owned_by_the_charts_cluster_role():
    for config in webhook_configurations("https://x:1", b"CA", failure_policy="Ignore",
                                         operator_namespace="ops", owner=("trackop", "uid-1")):
        assert config["metadata"]["ownerReferences"] == [{"apiVersion": "rbac.authorization.k8s.io/v1",
                                                          "kind": "ClusterRole", "name": "trackop", "uid": "uid-1"}]
    for config in webhook_configurations("https://x:1", b"CA", failure_policy="Ignore", operator_namespace="ops"):
        assert "ownerReferences" not in config["metadata"]
