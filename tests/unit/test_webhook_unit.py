"""Pure parts of the webhook module: configurations, validation, review responses."""

from __future__ import annotations

import base64
import json

from trackop import webhook
from trackop.injection import BackendView

SPEC = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}},
                     "database": "mlflow_a"}}


def body(name: str = "a", namespace: str = "ns", spec: dict | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec or SPEC}


def test_configurations_have_a_short_timeout_selectors_and_the_bundle():
    mutating, validating = webhook.webhook_configurations("https://127.0.0.1:9443", b"CA", failure_policy="Ignore",
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


def test_validation_accepts_a_good_spec_and_names_the_field_of_a_bad_one():
    index = webhook.Index()
    assert webhook.validate_backend(body(), index) == (True, "")
    ok, message = webhook.validate_backend(body(spec={**SPEC, "postgres": {**SPEC["postgres"], "database": "Bad"}}),
                                           index)
    assert not ok and message.startswith("spec.postgres.database")


def test_validation_refuses_a_second_backend_on_the_same_database_but_not_the_same_one():
    index = webhook.Index()
    index.set_backend(BackendView("ns", "a", "Direct", None, ()), ("pg.db.svc", 5432, "mlflow_a"))
    assert webhook.validate_backend(body("a"), index)[0], "an update of the owner itself"
    ok, message = webhook.validate_backend(body("b"), index)
    assert not ok and "already used by TrackingBackend ns/a" in message


def test_validation_refuses_a_malformed_namespace_selector():
    spec = {**SPEC, "injection": {"namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}}
    ok, message = webhook.validate_backend(body(spec=spec), webhook.Index())
    assert not ok and message.startswith("spec.injection.namespaceSelector")


def test_review_response_encodes_patch_and_rejection():
    allowed = webhook.review_response("u1", True, patch=[{"op": "add", "path": "/x", "value": 1}], warnings=["w"])
    response = allowed["response"]
    assert response["uid"] == "u1" and response["patchType"] == "JSONPatch" and response["warnings"] == ["w"]
    assert json.loads(base64.b64decode(response["patch"])) == [{"op": "add", "path": "/x", "value": 1}]
    denied = webhook.review_response("u2", False, message="no")["response"]
    assert denied["allowed"] is False and denied["status"] == {"code": 403, "message": "no"}


def test_unknown_namespaces_default_to_their_name_label():
    assert webhook.Index().namespace_labels("team-x") == {"kubernetes.io/metadata.name": "team-x"}


def test_configurations_in_a_cluster_call_the_service_not_a_url():
    mutating, validating = webhook.webhook_configurations("https://ignored:9443", b"CA", failure_policy="Fail",
                                                          operator_namespace="ops", service="trackop-webhook")
    for config, path in ((mutating, "/mutate-pods"), (validating, "/validate-trackingbackends")):
        client_config = config["webhooks"][0]["clientConfig"]
        assert "url" not in client_config
        assert client_config["service"] == {"namespace": "ops", "name": "trackop-webhook", "port": 443,
                                            "path": path}
        assert client_config["caBundle"] == base64.b64encode(b"CA").decode()


def test_configurations_owned_by_the_charts_cluster_role():
    for config in webhook.webhook_configurations("https://x:1", b"CA", failure_policy="Ignore",
                                                 operator_namespace="ops", owner=("trackop", "uid-1")):
        assert config["metadata"]["ownerReferences"] == [{"apiVersion": "rbac.authorization.k8s.io/v1",
                                                          "kind": "ClusterRole", "name": "trackop", "uid": "uid-1"}]
    for config in webhook.webhook_configurations("https://x:1", b"CA", failure_policy="Ignore",
                                                 operator_namespace="ops"):
        assert "ownerReferences" not in config["metadata"]
