"""trackop.api.policy: what the platform admin lets tenants' backends use (pure), how the
operator's Settings carry it, and the validating webhook's refusal."""

from __future__ import annotations

import pytest
from helpers import OWNER, make_spec

from trackop import cli
from trackop.api.policy import Policy, migration_refusal, refusals, server_refusal
from trackop.controller.outcome import Context, StepFailed
from trackop.controller.steps import schema, tracking_server
from trackop.settings import Settings
from trackop.webhook.index import Index
from trackop.webhook.validation import validate_backend

MLFLOW = ("ghcr.io/mlflow/mlflow:*",)


def test_no_policy_allows_anything():
    spec = make_spec({"server": {"image": "evil.example/miner:1", "serviceAccountName": "admin"},
                      "schema": {"migration": "Job", "image": "evil.example/miner:1"},
                      "artifacts": {"s3": {"bucket": "b-1", "endpoint": "http://10.0.0.1"}}})
    assert refusals(spec, Policy()) == []


def test_the_server_image_and_service_account_are_refused_naming_the_field():
    policy = Policy(images=MLFLOW, service_accounts=("mlflow-*",))
    assert server_refusal(make_spec({"server": {}}), policy) is None, "the default image matches"
    assert server_refusal(make_spec({"server": {"serviceAccountName": "mlflow-team-a"}}), policy) is None
    image = server_refusal(make_spec({"server": {"image": "ghcr.io/mlflow/mlflow-fork:1"}}), policy)
    assert image.startswith("spec.server.image 'ghcr.io/mlflow/mlflow-fork:1'") and "policy.allowedImages" in image
    account = server_refusal(make_spec({"server": {"serviceAccountName": "cluster-admin"}}), policy)
    assert account.startswith("spec.server.serviceAccountName 'cluster-admin'")
    assert "policy.allowedServiceAccounts" in account
    assert server_refusal(make_spec({}), policy) is None, "no server: nothing to refuse"


def test_the_migration_jobs_image_is_refused_only_for_job_migration():
    policy = Policy(images=MLFLOW)
    assert migration_refusal(make_spec({"schema": {"image": "evil.example/x:1"}}), policy) is None  # Inline
    refused = migration_refusal(make_spec({"schema": {"migration": "Job", "image": "evil.example/x:1"}}), policy)
    assert refused.startswith("spec.schema.image 'evil.example/x:1'")


def test_an_endpoint_outside_the_allow_list_is_refused_and_the_clouds_own_is_not():
    policy = Policy(artifact_endpoints=("minio.minio.svc",))
    assert refusals(make_spec({"artifacts": {"s3": {"bucket": "b-1"}}}), policy) == []
    assert refusals(make_spec({"artifacts": {"s3": {"bucket": "b-1", "endpoint": "http://minio.minio.svc:9000"}}}),
                    policy) == []
    [refused] = refusals(make_spec({"artifacts": {"gcs": {"bucket": "b-1", "endpoint": "http://metadata:80"}}}),
                         policy)
    assert refused.startswith("spec.artifacts.gcs.endpoint names host 'metadata'")


def test_the_validating_webhook_refuses_what_the_policy_refuses():
    spec = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}},
            "server": {"image": "evil.example/x:1"}}
    body = {"metadata": {"name": "a", "namespace": "ns"}, "spec": spec}
    assert validate_backend(body, Index()) == (True, "")
    ok, message = validate_backend(body, Index(), Policy(images=MLFLOW))
    assert not ok and message.startswith("spec.server.image")


def test_settings_from_the_environment_and_the_flags():
    assert Settings().policy == Policy(), "off and empty by default"
    environ = {"TRACKOP_ALLOW_OPERATOR_CLOUD_IDENTITY": "true",
               "TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS": "*.amazonaws.com, minio.minio.svc",
               "TRACKOP_ALLOWED_IMAGES": "ghcr.io/mlflow/mlflow:*", "TRACKOP_ALLOWED_SERVICE_ACCOUNTS": "mlflow"}
    assert Settings.from_environ(environ).policy == Policy(True, ("*.amazonaws.com", "minio.minio.svc"),
                                                            MLFLOW, ("mlflow",))
    args = cli.build_parser().parse_args(["run", "-A", "--allow-operator-cloud-identity",
                                          "--allowed-image", "a/b:*", "--allowed-image", "c/d:*",
                                          "--allowed-artifact-endpoint", "s3.local"])
    policy = cli.settings_from(args, {"TRACKOP_ALLOWED_IMAGES": "x/y:*", "TRACKOP_ALLOWED_SERVICE_ACCOUNTS": "sa"}
                               ).policy
    assert policy == Policy(True, ("s3.local",), ("a/b:*", "c/d:*"), ("sa",)), "flags win, per list"


class NothingApplied:
    """A Kube whose every write fails the test: a refused backend must apply nothing."""

    def __getattr__(self, name):
        if name.startswith("read_"):
            return lambda *args, **kwargs: None
        raise AssertionError(f"Kube.{name} was called")


def test_the_operator_applies_no_deployment_or_job_the_policy_refuses():
    policy = Policy(images=MLFLOW, service_accounts=("mlflow",))
    spec = make_spec({"server": {"serviceAccountName": "cluster-admin"}})
    with pytest.raises(StepFailed) as refused:
        tracking_server.ensure(Context(spec, OWNER, {}), NothingApplied(), policy)
    assert refused.value.reason == "NotAllowedByPolicy" and "spec.server.serviceAccountName" in refused.value.message
    spec = make_spec({"schema": {"migration": "Job", "image": "evil.example/x:1"}})
    with pytest.raises(StepFailed) as refused:
        schema.ensure(Context(spec, OWNER, {}), NothingApplied(), "pw", None, policy)
    assert refused.value.reason == "NotAllowedByPolicy" and "spec.schema.image" in refused.value.message
