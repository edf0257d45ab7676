"""One rule a value (trackop.api.validation, trackop.api.resources): what each accepts,
what it refuses, and that the refusal names the field. Store names: test_store_names.py."""

from __future__ import annotations

import pytest

from trackop.api import resources, validation
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import SpecError

F = "spec.x"

ACCEPTED = [
    (validation.check_object_name, ["pg-admin", "a", "s3.keys", "0", "a" * 253]),
    (validation.check_secret_key, ["password", "accessKeyId", "tls.crt", "a-b_c.d", ".key", "k" * 253]),
    (validation.check_image, ["mlflow", "ghcr.io/mlflow/mlflow:v3.17.2", "docker.io/library/postgres:17",
                              "localhost:5000/team/mlflow", "[::1]:5000/x", "registry.example.com/a__b/c-d:TAG_1.0",
                              "mlflow@sha256:" + "a" * 64, "x/y:1@sha256:" + "0" * 64]),
    (validation.check_endpoint, ["http://minio.minio.svc:9000", "https://s3.eu-west-1.amazonaws.com",
                                 "http://127.0.0.1:9000/", "http://[::1]:10000/devstoreaccount1", "https://a:65535",
                                 "http://fake-gcs:4443"]),
    (validation.check_prefix, ["", "team-a", "a/b/c", "/a//b/", "it's(1)!", "a.b/c..d", "...x"]),
    (validation.check_region, ["us-east-1", "eu-west-1", "a", "1a", "cn-north-1"]),
    (validation.check_gcs_project, ["trackop-testbed", "my-project-123", "example.com:my-proj"]),
    (validation.check_allowed_hosts, [[], ["mlflow.example.com", "*.example.com", "[::1]:*"], ["x"] * 32]),
    (validation.check_label_selector, [{}, {"matchLabels": {"a": "b"}},
                                       {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]},
                                                             {"key": "c", "operator": "Exists", "values": []}]}]),
    (resources.check_positive_quantity, ["10Gi", "1", "0.5Gi", "1m"]),
    (resources.check_resources, [None, {}, {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": 0.5}},
                                 {"requests": {"cpu": "100m", "memory": 536870912}},
                                 {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": "1"}},
                                 {"limits": {"hugepages-2Mi": "4Mi", "memory": "1Gi"},
                                  "requests": {"hugepages-2Mi": "4Mi"}},
                                 {"limits": {"ephemeral-storage": "1e9"}}]),
]

REFUSED = [
    (validation.check_object_name, ["", "Pg-Admin", "pg_admin", "-a", "a-", "a..b", "a" * 254, "a b", "a\n", 1]),
    (validation.check_secret_key, ["", ".", "..", "..key", "a b", "a/b", "k" * 254, None]),
    (validation.check_image, ["", " mlflow", "mlflow ", "MLflow", "a:b:c", "x@sha256:abc", "x" * 513, "-x", "x:",
                              "ghcr.io/", "a b", "mlflow\n"]),
    (validation.check_endpoint, ["http://", "ftp://host", "minio:9000", "http://a..b", "http://user:pw@host",
                                 "http://host:0", "http://host:65536", "http://host:080", "http://[zz]",
                                 "http://[:::]", "http://host?x=1", "http://host#f", "http://-a.b",
                                 f"http://{'a' * 64}.com", "http://host ", "http://[::1", None]),
    (validation.check_prefix, ["../b", "a/../b", "./a", "a/.", "a b", "tëam", "a" * 513, "a?b", 1]),
    (validation.check_region, ["", "-", "0", "123", "EU-WEST-1", "eu_west", "a" * 64, "eu-"]),
    (validation.check_gcs_project, ["ab", "My-Project", "proj_x", "a" * 31, "project-", "1project"]),
    (validation.check_allowed_hosts, ["a.b", [""], ["a b"], ["a,b"], ["x"] * 33, ["a" * 254], [1]]),
    (validation.check_label_selector, [[], {"other": {}}, {"matchLabels": {"a": 1}}, {"matchLabels": ["a"]},
                                       {"matchExpressions": {"key": "a"}}, {"matchExpressions": ["a"]},
                                       {"matchExpressions": [{"operator": "Exists"}]},
                                       {"matchExpressions": [{"key": "a", "operator": "In"}]},
                                       {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
                                       {"matchExpressions": [{"key": "a", "operator": "In", "values": "abc"}]},
                                       {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]},
                                       {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]}]),
    (resources.check_positive_quantity, ["0", "0Gi", "0.0", "-1Gi", "lots", "", 10]),
    (resources.check_resources, ["1", {"claims": [{"name": "x"}]}, {"limits": "1"}, {"limits": {"cpu": "lots"}},
                                 {"limits": {"cpu": True}}, {"limits": {"cpu": None}}, {"requests": {"memory": "-1"}},
                                 {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}},
                                 {"limits": {"gpu": 1}}, {"limits": {"kubernetes.io/x": 1}},
                                 {"requests": {"nvidia.com/gpu": 1}},
                                 {"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": 1}},
                                 {"limits": {"nvidia.com/gpu": 0.5}}, {"limits": {"hugepages-2Mi": "2Mi"}},
                                 {"limits": {"hugepages-2Mi": "3Mi", "memory": "1Gi"}},
                                 {"limits": {"hugepages-x": "2Mi", "memory": "1Gi"}},
                                 {"limits": {"cpu": "1e40"}}, {"limits": {"memory": float("nan")}},
                                 {"limits": {"cpu": "1e1.5"}}]),
]


@pytest.mark.parametrize(("rule", "value"), [(rule, v) for rule, values in ACCEPTED for v in values])
def test_the_rule_accepts(rule, value):
    rule(F, value)


@pytest.mark.parametrize(("rule", "value"), [(rule, v) for rule, values in REFUSED for v in values])
def test_the_rule_refuses_naming_the_field(rule, value):
    with pytest.raises(SpecError) as excinfo:
        rule(F, value)
    assert excinfo.value.field.startswith(F) and str(excinfo.value).startswith(f"{excinfo.value.field}: ")


def test_a_prefix_comes_back_normalised():
    assert validation.check_prefix(F, "/a//b/") == "a/b"


def test_resources_name_the_entry_at_fault():
    with pytest.raises(SpecError) as excinfo:
        resources.check_resources("spec.server.resources", {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}})
    assert excinfo.value.field == "spec.server.resources.requests.memory"
    assert "at most the limit" in str(excinfo.value)


def test_quantities_have_kubernetes_values():
    assert resources.quantity_value("1.5Gi") == 1.5 * 2 ** 30
    assert resources.quantity_value("100m") * 10 == 1
    assert resources.quantity_value(0.5) * 2 == 1
    assert resources.quantity_value("2e3") == 2000
    assert resources.quantity_value("5.") == 5
    assert resources.quantity_value("1Gb") is None and resources.quantity_value(True) is None


BASE = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}}}


@pytest.mark.parametrize(("spec", "field"), [
    ({"artifacts": {"s3": {"bucket": "ok-bucket", "endpoint": "http://user:pw@minio:9000"}}},
     "spec.artifacts.s3.endpoint"),
    ({"artifacts": {"gcs": {"bucket": "ok-bucket", "prefix": "../other"}}}, "spec.artifacts.gcs.prefix"),
    ({"artifacts": {"azure": {"container": "a--b", "storageAccount": "acct1"}}}, "spec.artifacts.azure.container"),
    ({"artifacts": {"azure": {"container": "okc", "storageAccount": "Acct"}}}, "spec.artifacts.azure.storageAccount"),
    ({"artifacts": {"s3": {"bucket": "ok-bucket", "region": "123"}}}, "spec.artifacts.s3.region"),
    ({"artifacts": {"gcs": {"bucket": "ok-bucket", "project": "x"}}}, "spec.artifacts.gcs.project"),
    ({"artifacts": {"s3": {"bucket": "ok-bucket", "credentialsSecretRef": {"name": "Keys"}}}},
     "spec.artifacts.s3.credentialsSecretRef.name"),
    ({"artifacts": {"s3": {"bucket": "ok-bucket", "credentialsSecretRef": {"accessKeyIdKey": "id"}}}},
     "spec.artifacts.s3.credentialsSecretRef.name"),
    ({"artifacts": {"gcs": {"bucket": "ok-bucket", "credentialsSecretRef": {"name": "k", "key": ".."}}}},
     "spec.artifacts.gcs.credentialsSecretRef.key"),
    ({"server": {"image": ""}}, "spec.server.image"),
    ({"server": {"serviceAccountName": "Not_A_Name"}}, "spec.server.serviceAccountName"),
    ({"server": {"allowedHosts": ["a b"]}}, "spec.server.allowedHosts"),
    ({"server": {"resources": {"limits": {"cpu": "lots"}}}}, "spec.server.resources.limits.cpu"),
    ({"schema": {"image": " image with blanks "}}, "spec.schema.image"),
    ({"injection": {"namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}},
     "spec.injection.namespaceSelector.matchExpressions"),
    ({"postgres": {**BASE["postgres"], "passwordSecretRef": {"name": "pw", "key": ""}}},
     "spec.postgres.passwordSecretRef.key"),
    ({"postgres": {"external": {"host": "pg", "adminSecretRef": {"name": "Admin"}}}},
     "spec.postgres.external.adminSecretRef.name"),
    ({"postgres": {"managed": {"storage": {"size": "0"}}}}, "spec.postgres.managed.storage.size"),
    ({"postgres": {"managed": {"storage": {"storageClassName": "Fast_SSD"}}}},
     "spec.postgres.managed.storage.storageClassName"),
    ({"postgres": {"managed": {"image": "Postgres"}}}, "spec.postgres.managed.image"),
    ({"postgres": {"managed": {"resources": {"claims": []}}}}, "spec.postgres.managed.resources.claims"),
])
def test_parse_calls_every_rule(spec, field):
    with pytest.raises(SpecError) as excinfo:
        parse("ns", "team-a", {**BASE, **spec})
    assert excinfo.value.field == field, str(excinfo.value)


def test_each_store_reads_only_its_own_settings():
    parsed = parse("ns", "team-a", {**BASE, "artifacts": {"gcs": {"bucket": "ok-bucket", "region": "0"}}})
    assert parsed.artifacts.region == "us-east-1"
