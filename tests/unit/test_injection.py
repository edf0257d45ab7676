"""trackop.webhook.injection: the mutating webhook's decision for a Pod CREATE (pure)."""

from __future__ import annotations

import copy
import re

import jsonpatch  # a dependency of kopf: a real RFC 6902 applier, stricter than a hand-made one
import pytest

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import (
    BACKEND_ANNOTATION,
    INIT_ANNOTATION,
    INJECT_LABEL,
    INJECTED_ANNOTATION,
    SECRET_COPIES_LABEL,
)
from trackop.specs import connection_secret
from trackop.webhook import injection
from trackop.webhook.injection import BackendView, Decision

OPERATOR_NS = "trackop-system"
BACKEND_NS = "ml-platform"
COPY = "trackop-ml-platform.team-a"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

SERVER_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER",
               "PGPASSWORD", "PGSSLMODE", "MLFLOW_ARTIFACT_ROOT")


SERVER_URI = "http://team-a-mlflow.ml-platform.svc:5000"
# A namespace that accepts copies holding secrets (Direct mode's database URI, bucket keys).
OPTED_IN = {"team": "a", SECRET_COPIES_LABEL: "true"}


def backend(selector=None, mode="Server", keys=SERVER_KEYS, namespace=BACKEND_NS, name="team-a") -> BackendView:
    plain = tuple((k, SERVER_URI if k == "MLFLOW_TRACKING_URI" else f"value of {k}")
                  for k in sorted(keys) if not injection.is_secret(mode, k))
    return BackendView(namespace=namespace, name=name, mode=mode, namespace_selector=selector,
                       secret_keys=tuple(keys), plain_values=plain)


def pod(*containers, ref="ml-platform/team-a", label="true", annotations=None, init=(), name="train") -> dict:
    metadata: dict = {"labels": {} if label is None else {INJECT_LABEL: label}}
    if name is None:
        metadata["generateName"] = "train-7d9f-"
    else:
        metadata["name"] = name
    notes = dict(annotations or {})
    if ref is not None:
        notes[BACKEND_ANNOTATION] = ref
    if notes:
        metadata["annotations"] = notes
    spec: dict = {"containers": list(containers) or [{"name": "main", "image": "python:3.11"}]}
    if init:
        spec["initContainers"] = list(init)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def run(p: dict, namespace: str = "team-a", b: BackendView | None = None, labels=None, *, fail_closed=False,
        selector={"matchLabels": {"team": "a"}}) -> Decision:
    target = b if b is not None else backend(selector)
    return injection.mutate(p, namespace, target, labels if labels is not None else {"team": "a"},
                            operator_namespace=OPERATOR_NS, fail_closed=fail_closed)


def apply(p: dict, decision: Decision) -> dict:
    return jsonpatch.apply_patch(copy.deepcopy(p), decision.patch)


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def ref(key: str, secret: str = COPY) -> dict:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


URI = {"name": "MLFLOW_TRACKING_URI", "value": SERVER_URI}  # Server mode's: a plain value, no copy


# --- opt-in and the reference ------------------------------------------------------------

@pytest.mark.parametrize("label", [None, "false", "True", "yes"])
def test_pods_that_do_not_opt_in_exactly_are_untouched(label):
    decision = run(pod(label=label))
    assert decision == Decision(allowed=True, patch=[], warnings=[], reason="not opted in")


@pytest.mark.parametrize("annotation", [None, "", "a/b/c", "Team-A", "ns/", "/team-a", "ns/9team", "x" * 46])
def test_missing_or_invalid_backend_annotation_warns_or_rejects(annotation):
    p = pod(ref=annotation)
    warned = run(p)
    assert warned.allowed and not warned.patch and BACKEND_ANNOTATION in warned.warnings[0]
    rejected = run(p, fail_closed=True)
    assert not rejected.allowed and not rejected.patch and BACKEND_ANNOTATION in rejected.reason


@pytest.mark.parametrize(("annotation", "expected"), [
    ("team-a", ("team-a", "team-a")),
    ("ml-platform/team-a", ("ml-platform", "team-a")),
    (" ml-platform/team-a ", ("ml-platform", "team-a")),
    (None, None), ("", None), ("a/b/c", None), ("ML/team-a", None), ("ns/team_a", None),
    ("n" * 64 + "/team-a", None), ("ns/" + "t" * 46, None), ("ns/" + "t" * 45, ("ns", "t" * 45)),
])
def test_parse_backend_reference(annotation, expected):
    assert injection.parse_backend_reference(annotation, "team-a") == expected


def test_unknown_backend_warns_or_rejects_naming_it():
    p = pod(ref="other")
    warned = injection.mutate(p, "team-a", None, {}, operator_namespace=OPERATOR_NS, fail_closed=False)
    assert warned.allowed and warned.patch == []
    assert "unknown backend team-a/other" in warned.warnings[0]
    rejected = injection.mutate(p, "team-a", None, {}, operator_namespace=OPERATOR_NS, fail_closed=True)
    assert not rejected.allowed and rejected.warnings == []
    assert "unknown backend team-a/other" in rejected.reason


def test_a_backend_that_is_not_the_one_named_is_a_caller_bug():
    with pytest.raises(ValueError, match="does not match"):
        run(pod(ref="ml-platform/team-b"))


def test_backend_without_connection_secret_keys_warns_or_rejects():
    p = pod()
    assert "no connection Secret" in run(p, b=backend({}, keys=())).warnings[0]
    assert not run(p, b=backend({}, keys=()), fail_closed=True).allowed


# --- namespaces --------------------------------------------------------------------------

def test_namespace_not_admitted_warns_or_rejects():
    p = pod()
    warned = run(p, labels={"team": "b"})
    assert warned.allowed and warned.patch == []
    assert "does not admit namespace team-a" in warned.warnings[0]
    rejected = run(p, labels={"team": "b"}, fail_closed=True)
    assert not rejected.allowed and "does not admit namespace team-a" in rejected.reason


def test_no_selector_admits_only_the_backends_own_namespace():
    b = backend(None)
    assert run(pod(), b=b).warnings and not run(pod(), b=b).patch
    own = run(pod(), namespace=BACKEND_NS, b=b, labels={})
    assert own.allowed and own.patch and own.warnings == []


def test_own_namespace_always_even_when_the_selector_excludes_it():
    b = backend({"matchLabels": {"team": "a"}})
    assert run(pod(), namespace=BACKEND_NS, b=b, labels={"team": "platform"}).patch


@pytest.mark.parametrize("fail_closed", [False, True])
@pytest.mark.parametrize("namespace", ["kube-system", OPERATOR_NS])
def test_kube_system_and_the_operator_namespace_never_and_never_rejected(namespace, fail_closed):
    everything = backend({}, namespace=namespace)
    decision = run(pod(ref=f"{namespace}/team-a"), namespace=namespace, b=everything, fail_closed=fail_closed)
    assert decision.allowed and decision.patch == []
    assert "never injected" in decision.warnings[0]
    assert not injection.admits_namespace(namespace, {}, namespace, {}, OPERATOR_NS)


@pytest.mark.parametrize(("selector", "labels", "admitted"), [
    ({}, {}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "b"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "c"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {"tier": "dev"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {"tier": "prod"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]}, {}, True),
    ({"matchExpressions": [{"key": "ml", "operator": "Exists"}]}, {"ml": ""}, True),
    ({"matchExpressions": [{"key": "ml", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "locked", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "locked", "operator": "DoesNotExist"}]}, {"locked": "1"}, False),
    ({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]},
     {"team": "a", "tier": "prod"}, False),
])
def test_namespace_selector_semantics(selector, labels, admitted):
    assert injection.label_selector_matches(selector, labels) is admitted
    assert injection.admits_namespace(BACKEND_NS, selector, "team-a", labels, OPERATOR_NS) is admitted
    assert bool(run(pod(), b=backend(selector), labels=labels).patch) is admitted


def test_label_selector_none_selects_nothing():
    assert injection.label_selector_matches(None, {"a": "b"}) is False


@pytest.mark.parametrize("selector", [
    {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]},
    {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
    {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]},
    {"matchExpressions": [{"operator": "Exists"}]},
    {"matchLabel": {"a": "b"}},
])
def test_malformed_selector_is_reported_not_silently_empty(selector):
    with pytest.raises(ValueError):
        injection.label_selector_matches(selector, {"a": "b"})
    assert "invalid namespaceSelector" in run(pod(), b=backend(selector)).warnings[0]
    assert not run(pod(), b=backend(selector), fail_closed=True).allowed


# --- the patch ---------------------------------------------------------------------------

def test_container_without_env_gets_the_array_and_the_pod_the_annotation():
    decision = run(pod())
    assert decision.allowed and decision.warnings == []
    assert decision.patch == [
        {"op": "add", "path": "/spec/containers/0/env",
         "value": [URI]},
        {"op": "add", "path": "/metadata/annotations/trackop.dev~1injected", "value": "ml-platform/team-a"},
    ]
    patched = apply(pod(), decision)
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] == "ml-platform/team-a"
    assert patched["spec"]["containers"][0]["env"] == [URI]


def test_env_the_pod_already_sets_wins_and_the_rest_is_appended():
    mine = {"name": "MLFLOW_TRACKING_URI", "value": "http://my-own-server:5000"}
    p = pod({"name": "main", "image": "x", "env": [{"name": "A", "value": "1"}, mine]})
    b = backend({}, mode="Direct", keys=("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT", "PGPASSWORD"))
    decision = run(p, b=b, labels=OPTED_IN)
    root = {"name": "MLFLOW_ARTIFACT_ROOT", "value": "value of MLFLOW_ARTIFACT_ROOT"}
    assert {"op": "add", "path": "/spec/containers/0/env/-", "value": root} in decision.patch
    env = apply(p, decision)["spec"]["containers"][0]["env"]
    assert env == [{"name": "A", "value": "1"}, mine, root]


def test_empty_env_list_is_appended_to():
    p = pod({"name": "main", "image": "x", "env": []})
    assert apply(p, run(p))["spec"]["containers"][0]["env"] == [URI]


def test_envfrom_loses_to_injected_env_and_the_pod_is_told():
    p = pod({"name": "main", "image": "x", "envFrom": [{"configMapRef": {"name": "settings"}}]})
    decision = run(p)
    assert apply(p, decision)["spec"]["containers"][0]["env"] == [URI]
    assert "envFrom" in decision.warnings[0] and "MLFLOW_TRACKING_URI" in decision.warnings[0]
    assert decision.allowed


def test_several_containers_each_get_what_they_lack():
    p = pod({"name": "a", "image": "x"},
            {"name": "b", "image": "x", "env": [{"name": "MLFLOW_TRACKING_URI", "value": "mine"}]},
            {"name": "c", "image": "x", "env": [{"name": "OTHER", "value": "1"}]})
    patched = apply(p, run(p))
    a, b, c = patched["spec"]["containers"]
    assert env_of(a) == {"MLFLOW_TRACKING_URI": URI}
    assert env_of(b) == {"MLFLOW_TRACKING_URI": {"name": "MLFLOW_TRACKING_URI", "value": "mine"}}
    assert set(env_of(c)) == {"OTHER", "MLFLOW_TRACKING_URI"}


@pytest.mark.parametrize(("note", "injected"), [(None, False), ("false", False), ("true", True)])
def test_init_containers_only_on_request(note, injected):
    p = pod(init=[{"name": "fetch", "image": "x"}], annotations={INIT_ANNOTATION: note} if note else None)
    patched = apply(p, run(p))
    assert ("env" in patched["spec"]["initContainers"][0]) is injected
    assert "env" in patched["spec"]["containers"][0]


def test_init_annotation_without_init_containers_is_harmless():
    p = pod(annotations={INIT_ANNOTATION: "true"})
    assert apply(p, run(p))["spec"]["containers"][0]["env"]


def test_pod_from_a_replicaset_with_generate_name_only():
    p = pod(name=None)
    patched = apply(p, run(p))
    assert "name" not in patched["metadata"] and patched["metadata"]["generateName"] == "train-7d9f-"
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] == "ml-platform/team-a"


def test_generate_name_appears_in_messages():
    decision = injection.mutate(pod(name=None, ref="nope"), "team-a", None, {}, operator_namespace=None,
                                fail_closed=False)
    assert "team-a/train-7d9f-" in decision.warnings[0]


def test_reference_without_namespace_means_the_pods_namespace():
    b = backend(None, mode="Direct", namespace="team-a")
    decision = run(pod(ref="team-a"), b=b, labels={})  # its own namespace: a copy needs no label
    assert {"op": "add", "path": "/metadata/annotations/trackop.dev~1injected", "value": "team-a/team-a"} \
        in decision.patch
    assert decision.patch[0]["value"][0] == ref("MLFLOW_TRACKING_URI", "trackop-team-a.team-a")


@pytest.mark.parametrize("b", [
    backend({}),
    backend({}, mode="Direct", keys=SERVER_KEYS + ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                   "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE")),
])
def test_idempotent_a_reinvoked_webhook_changes_nothing(b):
    p = pod({"name": "a", "image": "x"}, {"name": "b", "image": "x", "env": [{"name": "X", "value": "1"}]},
            init=[{"name": "i", "image": "x"}], annotations={INIT_ANNOTATION: "true"}, name=None)
    first = run(p, b=b, labels=OPTED_IN)
    assert first.patch
    patched = apply(p, first)
    again = run(patched, b=b, labels=OPTED_IN)
    assert again == Decision(allowed=True, patch=[], warnings=[], reason="already injected ml-platform/team-a")
    assert not injection.missed_injection(patched)


def test_a_stale_injected_annotation_is_corrected():
    p = pod(annotations={INJECTED_ANNOTATION: "elsewhere/old"})
    assert apply(p, run(p))["metadata"]["annotations"][INJECTED_ANNOTATION] == "ml-platform/team-a"


def test_json_pointer_escaping():
    assert injection.json_pointer_token("trackop.dev/injected") == "trackop.dev~1injected"
    assert injection.json_pointer_token("a~/b") == "a~0~1b"


# --- which keys ----------------------------------------------------------------------------

def _secret(overrides: dict) -> dict[str, str]:
    spec = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}}, **overrides}
    return connection_secret.connection_secret_data(parse(BACKEND_NS, "team-a", spec), "s3cret-pw", ("AKIA", "sk"))


S3 = {"s3": {"bucket": "ml-artifacts", "endpoint": "http://minio:9000"}}


def test_server_mode_never_exposes_the_database_password():
    for overrides in ({"server": {}}, {"server": {"serveArtifacts": False}, "artifacts": S3},
                      {"server": {}, "artifacts": S3}):
        data = _secret(overrides)
        keys = injection.keys_for_mode("Server", data)
        assert "MLFLOW_TRACKING_URI" in keys
        assert not {"PGPASSWORD", "MLFLOW_BACKEND_STORE_URI", "PGUSER"} & set(keys)
        view = backend({}, keys=tuple(data))
        copied = injection.copy_secret_data(view, data)
        assert "s3cret-pw" not in "".join(copied.values())
        p = pod()
        assert "s3cret-pw" not in str(run(p, b=view).patch)


def test_server_mode_gets_bucket_settings_only_when_the_server_does_not_proxy():
    proxied = injection.keys_for_mode("Server", _secret({"server": {}, "artifacts": S3}))
    assert proxied == ["MLFLOW_TRACKING_URI"]
    direct_to_bucket = injection.keys_for_mode("Server", _secret({"server": {"serveArtifacts": False},
                                                                  "artifacts": S3}))
    assert direct_to_bucket == ["MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"]


def test_direct_mode_keys_each_only_if_present():
    data = _secret({"artifacts": S3})
    assert injection.keys_for_mode("Direct", data) == [
        "MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"]
    assert injection.keys_for_mode("Direct", _secret({})) == [
        "MLFLOW_TRACKING_URI", "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]
    assert "PGPASSWORD" not in injection.keys_for_mode("Direct", data)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="injection mode"):
        injection.keys_for_mode("Sidecar", ["MLFLOW_TRACKING_URI"])


def test_expected_env_names_and_missed_injection():
    assert injection.expected_env_names(backend({}, mode="Direct", keys=SERVER_KEYS)) == [
        "MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT"]
    assert injection.missed_injection(pod())
    assert not injection.missed_injection(pod(label=None))
    assert not injection.missed_injection(pod(annotations={INJECTED_ANNOTATION: "ml-platform/team-a"}))
    assert not injection.missed_injection({})


def test_backend_view_of_a_spec_holds_its_mode_selector_and_sorted_secret_keys():
    selector = {"matchLabels": {"team": "a"}}
    spec = parse(BACKEND_NS, "team-a", {"postgres": {"external": {"host": "pg.db.svc",
                                                                  "adminSecretRef": {"name": "pg-admin"}}},
                                        "injection": {"namespaceSelector": selector}})
    view = injection.backend_view(spec, {"PGUSER": "u", "MLFLOW_TRACKING_URI": "uri", "MLFLOW_ARTIFACT_ROOT": "s3://b"})
    assert view == BackendView(BACKEND_NS, "team-a", "Direct", selector,
                               ("MLFLOW_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI", "PGUSER"),
                               (("MLFLOW_ARTIFACT_ROOT", "s3://b"),)), "no secret value is kept"
    # The operator's index passes placeholders for the secrets; the copies pass a Secret's data: the same view.
    placeholder = connection_secret.placeholder_data(spec)
    real = connection_secret.connection_secret_data(spec, "real-password")
    assert injection.backend_view(spec, placeholder) == injection.backend_view(spec, real)
    assert "real-password" not in repr(injection.backend_view(spec, real))


# --- plain values, and copies only for secrets -------------------------------------------------

def _view(overrides: dict) -> BackendView:
    spec = parse(BACKEND_NS, "team-a", {"postgres": {"external": {"host": "pg.db.svc",
                                                                  "adminSecretRef": {"name": "pg-admin"}}},
                                        "injection": {"namespaceSelector": {}}, **overrides})
    return injection.backend_view(spec, connection_secret.placeholder_data(spec))


def test_server_mode_injects_the_uri_as_a_value_and_needs_no_copy_or_label():
    view = _view({"server": {}, "artifacts": S3})
    assert injection.injected_secrets(view) == [] and injection.copy_secret_data(view, _secret({"server": {}})) == {}
    decision = run(pod(), b=view, labels={})  # an admitted namespace without the opt-in label
    env = apply(pod(), decision)["spec"]["containers"][0]["env"]
    assert env == [{"name": "MLFLOW_TRACKING_URI", "value": "http://team-a-mlflow.ml-platform.svc:5000"}]


def test_direct_mode_needs_a_namespace_that_opts_in_to_secret_copies():
    view = _view({"artifacts": S3})
    assert injection.injected_secrets(view) == ["MLFLOW_TRACKING_URI"]
    warned = run(pod(), b=view, labels={"team": "a"})
    assert warned.allowed and not warned.patch
    assert f"label the namespace {SECRET_COPIES_LABEL}=true" in warned.warnings[0]
    assert "MLFLOW_TRACKING_URI" in warned.warnings[0]
    assert not run(pod(), b=view, labels={"team": "a"}, fail_closed=True).allowed
    assert not run(pod(), b=view, labels={SECRET_COPIES_LABEL: "yes"}).patch, "exactly true"
    env = env_of(apply(pod(), run(pod(), b=view, labels=OPTED_IN))["spec"]["containers"][0])
    assert env["MLFLOW_TRACKING_URI"] == ref("MLFLOW_TRACKING_URI")
    assert env["MLFLOW_ARTIFACT_ROOT"] == {"name": "MLFLOW_ARTIFACT_ROOT", "value": "s3://ml-artifacts"}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    own = run(pod(), namespace=BACKEND_NS, b=view, labels={})
    assert own.patch, "the backend's own namespace holds its connection Secret anyway: no label needed"


def test_server_mode_bucket_keys_are_secrets_too():
    view = _view({"server": {"serveArtifacts": False},
                  "artifacts": {"s3": {**S3["s3"], "credentialsSecretRef": {"name": "s3"}}}})
    assert injection.injected_secrets(view) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert not run(pod(), b=view, labels={}).patch
    env = env_of(apply(pod(), run(pod(), b=view, labels=OPTED_IN))["spec"]["containers"][0])
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://") and env["AWS_DEFAULT_REGION"]["value"]
    assert env["AWS_SECRET_ACCESS_KEY"] == ref("AWS_SECRET_ACCESS_KEY")
    data = _secret({"server": {"serveArtifacts": False}, "artifacts": S3})
    assert set(injection.copy_secret_data(view, data)) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_a_namespace_outside_the_operators_scope_takes_no_copy():
    view = _view({})
    scope = frozenset({BACKEND_NS, "ml-team-b"})
    refused = injection.mutate(pod(), "team-a", view, OPTED_IN, operator_namespace=OPERATOR_NS,
                               fail_closed=False, copy_scope=scope)
    assert not refused.patch and "--namespace" in refused.warnings[0]
    assert injection.accepts_secret_copies(BACKEND_NS, "ml-team-b", OPTED_IN, scope)
    assert not injection.accepts_secret_copies(BACKEND_NS, "ml-team-b", {}, scope)
    assert not injection.accepts_secret_copies(BACKEND_NS, "team-a", OPTED_IN, scope)


# --- the copy's name -------------------------------------------------------------------------

def test_copy_secret_name_is_readable_unique_and_a_dns_subdomain():
    assert injection.copy_secret_name("ml-platform", "team-a") == COPY
    assert injection.copy_secret_name("a-b", "c") != injection.copy_secret_name("a", "b-c")
    longest = injection.copy_secret_name("n" * 63, "b" * 45)
    odd = injection.copy_secret_name("Weird_NS", "x.y")
    huge = injection.copy_secret_name("n" * 300, "b")
    for name in (longest, odd, huge):
        assert len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name), name
    assert odd.startswith("trackop-") and odd != injection.copy_secret_name("weird-ns", "x.y")
