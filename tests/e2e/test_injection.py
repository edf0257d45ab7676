"""Injection end to end: the operator's own HTTPS webhook on the bed's real API server,
pods made by kube-controller-manager, and the local kubelet running a real MLflow script."""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
from kubernetes import client

from helpers import eventually
from kit import Admin, Backends
from trackop.api.v1alpha1 import COPY_LABEL, SECRET_COPIES_LABEL
from trackop.webhook.injection import copy_secret_name

pytestmark = pytest.mark.bed

MLFLOW_POD_SCRIPT = """
import os, mlflow
mlflow.set_experiment("injected")
with mlflow.start_run() as run:
    mlflow.log_param("injected", "yes")
    mlflow.log_metric("loss", 0.1)
print(run.info.run_id)
"""


def opted_in(name: str, backend: str | None, env: list | None = None, labels: dict | None = None) -> dict:
    annotations = {"trackop.dev/backend": backend} if backend else {}
    return {
        "metadata": {"name": name, "labels": {"trackop.dev/inject": "true", **(labels or {})},
                     "annotations": annotations},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "train", "image": "python:3.11-slim", "command": ["python", "-c", MLFLOW_POD_SCRIPT],
            **({"env": env} if env else {})}]},
    }


def _team_namespace(core_v1, labels: dict):
    name = f"team-{uuid.uuid4().hex[:8]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    eventually(lambda: core_v1.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
               "the default ServiceAccount")
    yield name
    core_v1.delete_namespace(name)


@pytest.fixture
def other_namespace(core_v1):
    """Admitted by the backends' selector (team: a), and it accepts copies of secrets."""
    yield from _team_namespace(core_v1, {"team": "a", SECRET_COPIES_LABEL: "true"})


@pytest.fixture
def unlabelled_namespace(core_v1):
    """Admitted by the backends' selector (team: a), without the opt-in to secret copies."""
    yield from _team_namespace(core_v1, {"team": "a"})


def copies_in(core_v1, namespace: str) -> list[str]:
    return [s.metadata.name for s in core_v1.list_namespaced_secret(namespace, label_selector=COPY_LABEL).items]


def env_names(pod: client.V1Pod) -> dict[str, client.V1EnvVar]:
    return {e.name: e for e in pod.spec.containers[0].env or []}


def test_a_deployment_in_an_admitted_namespace_gets_injected_and_logs_a_run(
        backends: Backends, admin: Admin, other_namespace, kube_api, core_v1, kubelet):
    backends.admin_secret(admin)
    backends.apply("shared", {**backends.spec(), "injection": {"mode": "Direct",
                                                               "namespaceSelector": {"matchLabels": {"team": "a"}}}})
    backends.wait_ready("shared")
    copy = copy_secret_name(backends.namespace, "shared")
    secret = eventually(lambda: _secret(core_v1, other_namespace, copy), "the Secret copy in the admitted namespace")
    assert "MLFLOW_TRACKING_URI" in secret and "PGPASSWORD" not in secret, "only the keys the mode needs"

    template = opted_in("ignored", f"{backends.namespace}/shared")
    template["metadata"].pop("name")
    client.AppsV1Api(kube_api).create_namespaced_deployment(other_namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "trainer"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "trainer"}},
                 "template": {**template, "metadata": {**template["metadata"],
                                                       "labels": {**template["metadata"]["labels"], "app": "trainer"}},
                              "spec": {**template["spec"], "restartPolicy": "Always"}}},
    })
    pod = kubelet.wait_for_pods(other_namespace, "app=trainer")[0]
    env = env_names(pod)
    assert env["MLFLOW_TRACKING_URI"].value_from.secret_key_ref.name == copy
    assert pod.metadata.annotations["trackop.dev/injected"] == f"{backends.namespace}/shared"
    result = kubelet.run_pod(pod)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.stdout.strip().splitlines()[-1]
    owner = backends.connection_secret("shared")
    with psycopg.connect(host=owner["PGHOST"], port=owner["PGPORT"], user=owner["PGUSER"],
                         password=owner["PGPASSWORD"], dbname=owner["PGDATABASE"]) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run_id,)).fetchone() == (1,)

    # The namespace stops matching: its copy goes.
    core_v1.patch_namespace(other_namespace, {"metadata": {"labels": {"team": "b"}}})
    eventually(lambda: _secret(core_v1, other_namespace, copy) is None, "the copy to be removed", timeout=30)


def _secret(core_v1, namespace: str, name: str) -> dict | None:
    try:
        return core_v1.read_namespaced_secret(name, namespace).data
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_server_mode_injects_the_uri_with_no_secret_copy(backends: Backends, admin: Admin, core_v1,
                                                          unlabelled_namespace):
    backends.admin_secret(admin)
    ns, selector = backends.namespace, {"matchLabels": {"team": "a"}}
    # First Direct mode: a copy in its own namespace, which Server mode must remove.
    backends.apply("srv", {**backends.spec(), "injection": {"mode": "Direct", "namespaceSelector": selector}})
    eventually(lambda: copies_in(core_v1, ns), "the Direct-mode copy in the backend's namespace")
    assert copies_in(core_v1, unlabelled_namespace) == [], "no opt-in label: no copy"
    backends.patch("srv", {"spec": {"server": {}, "injection": {"mode": "Server"}}})
    eventually(lambda: not copies_in(core_v1, ns), "the stale copy to be removed", timeout=60)
    # The reconcile posts its Events once it is done, a moment after the deletion.
    eventually(lambda: any(e.reason == "SecretCopyRemoved" and "injects no secret" in e.message
                           for e in backends.events("srv")), "the SecretCopyRemoved Event", timeout=30)

    def injected() -> client.V1Pod | None:
        pod = core_v1.create_namespaced_pod(unlabelled_namespace, opted_in(f"srv-{uuid.uuid4().hex[:6]}", f"{ns}/srv"))
        return pod if "MLFLOW_TRACKING_URI" in env_names(pod) else None

    pod = eventually(injected, "the webhook to see Server mode", timeout=30, interval=1)
    uri = env_names(pod)["MLFLOW_TRACKING_URI"]
    assert uri.value == f"http://srv-mlflow.{ns}.svc:5000" and uri.value_from is None, "a plain value"
    assert not [e for e in env_names(pod).values() if e.value_from], "nothing from a Secret"
    assert copies_in(core_v1, unlabelled_namespace) == [] and copies_in(core_v1, ns) == []


def test_direct_mode_copies_only_into_a_namespace_that_opts_in(backends: Backends, admin: Admin, core_v1,
                                                               other_namespace, unlabelled_namespace):
    backends.admin_secret(admin)
    ns = backends.namespace
    backends.apply("dir", {**backends.spec(), "injection": {"mode": "Direct",
                                                           "namespaceSelector": {"matchLabels": {"team": "a"}}}})
    backends.wait_ready("dir")
    copy = copy_secret_name(ns, "dir")
    eventually(lambda: copies_in(core_v1, other_namespace) == [copy], "the copy in the opted-in namespace")
    assert set(_secret(core_v1, other_namespace, copy)) == {"MLFLOW_TRACKING_URI"}, "the copy holds only secrets"
    assert copies_in(core_v1, unlabelled_namespace) == [], "admitted, but not opted in: no copy"

    refused = core_v1.create_namespaced_pod(unlabelled_namespace, opted_in("no-label", f"{ns}/dir"))
    assert not env_names(refused), "no copy to reference: not injected"
    eventually(lambda: any(e.reason == "InjectionSkipped" and SECRET_COPIES_LABEL in e.message
                           for e in backends.events("dir")), "an Event naming the label", timeout=20)

    # The namespace's owner opts in: the copy follows, and pods are injected.
    core_v1.patch_namespace(unlabelled_namespace, {"metadata": {"labels": {SECRET_COPIES_LABEL: "true"}}})
    eventually(lambda: copies_in(core_v1, unlabelled_namespace) == [copy], "the copy after the label", timeout=60)
    pod = eventually(lambda: (lambda p: p if env_names(p) else None)(core_v1.create_namespaced_pod(
        unlabelled_namespace, opted_in(f"lab-{uuid.uuid4().hex[:6]}", f"{ns}/dir"))), "an injected pod", timeout=30)
    env = env_names(pod)
    assert env["MLFLOW_TRACKING_URI"].value_from.secret_key_ref.name == copy
    assert env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"].value, "what is not secret comes as a value"


def test_each_case_behaves_as_specified(backends: Backends, admin: Admin, core_v1, other_namespace):
    backends.admin_secret(admin)
    backends.apply("own", backends.spec())   # no selector: only its own namespace
    backends.wait_ready("own")
    ns = backends.namespace

    plain = core_v1.create_namespaced_pod(ns, {"metadata": {"name": "plain", "annotations": {
        "trackop.dev/backend": "own"}}, "spec": opted_in("x", None)["spec"]})
    assert not (plain.metadata.annotations or {}).get("trackop.dev/injected"), "not opted in: untouched"

    injected = core_v1.create_namespaced_pod(ns, opted_in("in", "own"))
    assert set(env_names(injected)) >= {"MLFLOW_TRACKING_URI"}

    mine = [{"name": "MLFLOW_TRACKING_URI", "value": "http://mine:5000"}]
    kept = core_v1.create_namespaced_pod(ns, opted_in("kept", "own", env=mine))
    assert env_names(kept)["MLFLOW_TRACKING_URI"].value == "http://mine:5000", "the pod's own env wins"

    unknown = core_v1.create_namespaced_pod(ns, opted_in("unknown", "nobody"))
    assert not env_names(unknown) and "trackop.dev/injected" not in (unknown.metadata.annotations or {})

    elsewhere = core_v1.create_namespaced_pod(other_namespace, opted_in("elsewhere", f"{ns}/own"))
    assert not env_names(elsewhere), "a namespace the backend does not admit is not injected"

    system = core_v1.create_namespaced_pod("kube-system", opted_in(f"sys-{uuid.uuid4().hex[:6]}", f"{ns}/own"))
    try:
        assert not env_names(system) and "trackop.dev/injected" not in (system.metadata.annotations or {})
    finally:
        core_v1.delete_namespaced_pod(system.metadata.name, "kube-system")

    def events_say(namespace: str, text: str) -> bool:
        return any(e.reason == "InjectionSkipped" and text in e.message
                   for e in core_v1.list_namespaced_event(namespace).items)

    eventually(lambda: events_say(ns, "unknown backend"), "an Event about the unknown backend", timeout=20)
    eventually(lambda: events_say(ns, other_namespace), "an Event on the backend about the namespace", timeout=20)


def test_webhook_down_with_ignore_then_fail_policy(backends: Backends, admin: Admin, core_v1, operator):
    backends.admin_secret(admin)
    backends.apply("resilient", backends.spec())
    backends.wait_ready("resilient")
    ns = backends.namespace
    operator.stop()
    try:
        pod = core_v1.create_namespaced_pod(ns, opted_in("while-down", "resilient"))
        assert not env_names(pod), "Ignore: created, uninjected"
    finally:
        operator.start()
    eventually(lambda: any(e.reason == "InjectionMissed" and "while-down" in e.message
                           for e in backends.events("resilient")), "the timer to report the missed pod", timeout=30)

    operator.restart(extra_args=["--webhook-failure-policy", "Fail"])
    try:
        # The first pod after a restart: the index is listed before the webhook serves, so
        # it is injected, not refused as an "unknown backend" under Fail.
        first = core_v1.create_namespaced_pod(ns, opted_in("first-after-restart", "resilient"))
        assert "MLFLOW_TRACKING_URI" in env_names(first)
        with pytest.raises(client.ApiException) as rejected:
            core_v1.create_namespaced_pod(ns, opted_in("unknown", "nobody"))
        assert "unknown backend" in json.loads(rejected.value.body)["message"]
        operator.stop()
        with pytest.raises(client.ApiException) as down:
            core_v1.create_namespaced_pod(ns, opted_in("while-down-fail", "resilient"))
        assert "inject.trackop.dev" in json.loads(down.value.body)["message"]
    finally:
        operator.restart()  # back to Ignore for the rest of the session


def test_certificate_rotation_while_pods_are_created(backends: Backends, admin: Admin, core_v1, operator):
    backends.admin_secret(admin)
    backends.apply("rotating", backends.spec())
    backends.wait_ready("rotating")
    # Renew when less than 90 of 90 days are left, checked every second: every check rotates.
    operator.restart(extra_env={"TRACKOP_WEBHOOK_ROTATION_CHECK": "1", "TRACKOP_WEBHOOK_RENEW_BEFORE_DAYS": "90"})
    try:
        rotations_before = operator.logs().count("rotated the webhook certificate")
        created = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            pod = core_v1.create_namespaced_pod(backends.namespace, opted_in(f"r{len(created)}", "rotating"))
            created.append(pod)
        rotations = operator.logs().count("rotated the webhook certificate") - rotations_before
        assert rotations >= 3, f"only {rotations} rotations happened"
        assert created and all("MLFLOW_TRACKING_URI" in env_names(p) for p in created), \
            "every pod created during rotation was injected"
    finally:
        operator.restart()


def test_the_validating_webhook_refuses_a_second_backend_on_the_same_database(backends: Backends, admin: Admin):
    backends.admin_secret(admin)
    backends.apply("first", backends.spec(database=f"dup_{uuid.uuid4().hex[:8]}"))
    database = backends.get("first")["spec"]["postgres"]["database"]
    eventually(lambda: backends.get("first").get("status"), "the first backend to be seen")
    with pytest.raises(client.ApiException) as rejected:
        backends.apply("second", backends.spec(database=database, role=f"r_{uuid.uuid4().hex[:8]}"))
    message = json.loads(rejected.value.body)["message"]
    assert "spec.postgres.database" in message and "first" in message


def _tls_secret(core_v1, name: str) -> None:
    """What cert-manager would write: a CA and a serving certificate for 127.0.0.1."""
    from trackop import pki

    ca = pki.make_ca(f"external-ca-{uuid.uuid4().hex[:6]}")
    leaf = pki.issue(ca, "trackop-webhook", ip_addresses=("127.0.0.1",), server=True)
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), type="kubernetes.io/tls",
                           string_data={"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode(),
                                        "ca.crt": ca.cert_pem.decode()})
    try:
        core_v1.create_namespaced_secret("trackop-system", body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core_v1.replace_namespaced_secret(name, "trackop-system", body)


def test_certificates_from_an_externally_renewed_secret(backends: Backends, admin: Admin, core_v1, kube_api,
                                                        operator):
    backends.admin_secret(admin)
    backends.apply("external", backends.spec())
    backends.wait_ready("external")
    _tls_secret(core_v1, "webhook-tls")
    operator.restart(extra_args=["--webhook-cert-secret", "webhook-tls"],
                     extra_env={"TRACKOP_WEBHOOK_ROTATION_CHECK": "1"})
    try:
        # Right after a restart the API server may still hold the previous caBundle for a
        # moment (its informer catches up); with failurePolicy Ignore such a pod slips through
        # uninjected, which the missed-injection timer reports. Wait for the first injected one.
        attempt = iter(range(100))
        first = eventually(lambda: _injected_or_none(core_v1, backends.namespace, f"ext-1-{next(attempt)}"),
                           "the external certificate to be trusted", timeout=20)
        assert "MLFLOW_TRACKING_URI" in env_names(first)
        bundle = lambda: client.AdmissionregistrationV1Api(kube_api).read_mutating_webhook_configuration(  # noqa
            "trackop-injection").webhooks[0].client_config.ca_bundle
        before = bundle()
        _tls_secret(core_v1, "webhook-tls")  # renewed, with a new CA
        eventually(lambda: bundle() != before, "the new CA in the webhook configuration", timeout=20)
        second = eventually(lambda: _try_create(core_v1, backends.namespace, opted_in("ext-2", "external")),
                            "a pod admitted with the renewed certificate", timeout=20)
        assert "MLFLOW_TRACKING_URI" in env_names(second)
    finally:
        operator.restart()


def _injected_or_none(core_v1, namespace: str, name: str):
    pod = core_v1.create_namespaced_pod(namespace, opted_in(name, "external"))
    return pod if "MLFLOW_TRACKING_URI" in env_names(pod) else None


def _try_create(core_v1, namespace: str, body: dict):
    try:
        return core_v1.create_namespaced_pod(namespace, body)
    except client.ApiException as exc:
        if exc.status == 500:  # the few moments between the new CA and the new certificate
            return None
        raise
