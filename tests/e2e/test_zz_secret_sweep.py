"""The session's secret sweep: no password or key known to this test session appears in any
operator log, any Event, any TrackingBackend status, or any process's argv as the kubelet
would run the containers of the bed's Pods, Jobs, Deployments and StatefulSets.

The name sorts last: the collection hook (tests/conftest.py) orders the tiers unit,
integration, e2e and keeps file order within a tier, so this runs after every other e2e
test (tests/unit/test_secret_sweep_order.py checks that). Tests delete their namespaces, so
tests/e2e/conftest.py snapshots each test's Events, statuses and Secrets before the
namespace goes (kit.SWEEP_HAYSTACKS, kit.SWEEP_SECRETS, kit.SWEEP_ARGV_REFERENCES); this test
adds what is on the bed now, across all namespaces.

Argv (tests/argv_sweep.py): a ``$(VAR)`` in a container's command or args that names an env
var carrying a Secret's data is a leak by itself (the kubelet expands it into the process's
argv, readable in /proc/<pid>/cmdline on the node); and the command and args, expanded with
the env resolved as the kubelet does, are searched for every secret like the rest.

Secrets: the bed's PostgreSQL superuser password and its S3 and Azure keys; every admin
password kit.make_admin generated; the credential keys (kit.is_secret_key: passwords, access
and account keys, private keys, connection strings) of every Secret seen, trackop's
connection Secrets and copies, the admin and password Secrets the tests made, and the
webhook's certificate Secret (tls.key, ca.key: each line of the PEM body too). Host, port,
user and database names and certificates are not secrets: status names them on purpose.
Each is searched as is, URL-encoded and base64-encoded. Values shorter than 8 characters
are skipped: too likely to appear by chance (a password of 'secret' matches the word).
"""

from __future__ import annotations

import base64
import secrets as token
from urllib.parse import quote

import kit
import pytest
from argv_sweep import workload_argvs
from helpers import eventually
from kubernetes import client

from trackop.api.v1alpha1 import MANAGED_BY, MANAGED_BY_LABEL

pytestmark = pytest.mark.bed

MIN_LENGTH = 8
MANAGED_BY_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def _forms(secret: str) -> dict[str, str]:
    forms = {"as is": secret, "URL-encoded": quote(secret, safe=""),
             "base64": base64.b64encode(secret.encode()).decode()}
    if "PRIVATE KEY-----" in secret:
        # A PEM key: any line of its body would give it away.
        for number, line in enumerate(l for l in secret.splitlines() if l and not l.startswith("-----")):
            forms[f"line {number + 1} of the PEM body"] = line
    return {name: form for name, form in forms.items() if len(form) >= MIN_LENGTH}


def find_leaks(secrets: dict[str, str], haystacks: list[tuple[str, str]]) -> list[str]:
    """'<source> (<form>) in <where>' for every secret of at least MIN_LENGTH characters found."""
    leaks = []
    for secret, source in secrets.items():
        if len(secret) < MIN_LENGTH:
            continue
        for form_name, form in _forms(secret).items():
            leaks += [f"{source} ({form_name}) in {where}" for where, text in haystacks if form in text]
    return sorted(set(leaks))


def test_the_sweep_finds_a_planted_secret_in_each_form():
    planted = "pl@nted/secret+value"
    haystacks = [("log", f"x {planted} y"), ("event", f"uri postgresql://u:{quote(planted, safe='')}@h/db"),
                 ("status", base64.b64encode(planted.encode()).decode()), ("clean", "nothing here")]
    assert find_leaks({planted: "planted", "short": "too short"}, haystacks) == [
        "planted (URL-encoded) in event", "planted (as is) in log", "planted (base64) in status"]


def test_the_argv_sweep_finds_a_planted_reference_and_its_expanded_value(kube_api: client.ApiClient,
                                                                        namespace: str):
    """A Pod and a Job that expand a Secret's value into their argv, as ``mlflow db upgrade
    $(MLFLOW_BACKEND_STORE_URI)`` did: both are found, and so is the value. They are removed
    before the test ends, so the snapshot of this namespace (and the sweep) sees none."""
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    planted = "planted-" + token.token_urlsafe(12)
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="planted"),
                                                             string_data={"password": planted}))
    env = [client.V1EnvVar(name="URI", value_from=client.V1EnvVarSource(
        secret_key_ref=client.V1SecretKeySelector(name="planted", key="password")))]
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="planted"), spec=client.V1PodSpec(
        restart_policy="Never", containers=[client.V1Container(name="c", image="x", env=env,
                                                                command=["mlflow", "db", "upgrade", "$(URI)"])]))
    core.create_namespaced_pod(namespace, pod)
    job = client.V1Job(metadata=client.V1ObjectMeta(name="planted"), spec=client.V1JobSpec(
        template=client.V1PodTemplateSpec(spec=client.V1PodSpec(restart_policy="Never", containers=[
            client.V1Container(name="c", image="x", env=env, command=["run"], args=["--uri=$(URI)", "$$(URI)"])]))))
    batch.create_namespaced_job(namespace, job)
    try:
        haystacks, findings = workload_argvs(kube_api, namespace)
        assert f"Pod {namespace}/planted: container c expands $(URI), which carries a Secret's data, into its argv" \
            in findings
        assert f"Job {namespace}/planted: container c expands $(URI), which carries a Secret's data, into its argv" \
            in findings
        leaks = find_leaks({planted: "planted"}, haystacks)
        assert f"planted (as is) in Pod {namespace}/planted container c argv (expanded)" in leaks
        assert f"planted (as is) in Job {namespace}/planted container c argv (expanded)" in leaks
    finally:
        batch.delete_namespaced_job("planted", namespace, propagation_policy="Foreground")
        core.delete_namespaced_pod("planted", namespace, grace_period_seconds=0)
        eventually(lambda: not workload_argvs(kube_api, namespace)[1], "the planted Pod and Job gone", timeout=60)


def _bed_secrets(bed_info: dict) -> dict[str, str]:
    found = {bed_info["postgres"]["password"]: "the bed's PostgreSQL superuser password",
             bed_info["s3"]["access_key"]: "the bed's S3 access key",
             bed_info["s3"]["secret_key"]: "the bed's S3 secret key"}
    azure = bed_info.get("azure") or {}
    if azure.get("key"):
        found[azure["key"]] = "the bed's Azure account key"
    for key, value in (bed_info.get("gcs") or {}).items():
        if kit.is_secret_key(key) and isinstance(value, str):
            found[value] = f"the bed's GCS {key}"
    return found


def test_no_secret_of_the_session_in_logs_events_or_status(bed_info: dict, kube_api: client.ApiClient):
    core = client.CoreV1Api(kube_api)
    # What is on the bed now, besides what the tests' namespaces held before deletion.
    kit.record_secrets(core.list_secret_for_all_namespaces(label_selector=MANAGED_BY_SELECTOR).items,
                       "at the end (trackop-managed)")
    kit.record_secrets(core.list_secret_for_all_namespaces().items, "at the end")
    secrets = {**kit.SWEEP_SECRETS, **_bed_secrets(bed_info),
               **{p: f"admin password #{i + 1} from kit.make_admin" for i, p in enumerate(kit.ADMIN_PASSWORDS)}}

    haystacks = list(kit.SWEEP_HAYSTACKS)
    haystacks += kit.events_text(kube_api)
    haystacks += kit.backend_statuses(kube_api)
    argvs, references = workload_argvs(kube_api)
    haystacks += argvs
    for path in dict.fromkeys(kit.OPERATOR_LOGS):
        if path.exists():
            haystacks.append((f"operator log {path}", path.read_text(errors="replace")))

    skipped = sorted(where for secret, where in secrets.items() if len(secret) < MIN_LENGTH)
    if skipped:
        print(f"skipped as shorter than {MIN_LENGTH} characters (too likely to appear by chance): {skipped}")
    leaks = find_leaks(secrets, haystacks)
    print("secrets swept for (values not shown):\n  " + "\n  ".join(sorted(set(secrets.values()))))
    print(f"swept {len(secrets) - len(skipped)} secrets over {len(haystacks)} haystacks "
          f"({len(kit.OPERATOR_LOGS)} operator logs, {len(kit.SWEEP_HAYSTACKS)} snapshots, {len(argvs)} argvs now)")
    assert not leaks, "secrets leaked (values not shown):\n" + "\n".join(leaks)
    references = sorted(set(kit.SWEEP_ARGV_REFERENCES + [f"{r} (at the end)" for r in references]))
    assert not references, "secrets expanded into argv:\n" + "\n".join(references)
