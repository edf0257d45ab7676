"""Test kit for end-to-end tests: the operator as a real process, backends to apply, leak checks."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient
from psycopg import sql

from argv_sweep import workload_argvs
from helpers import eventually
from trackop_testbed.procs import free_ports

GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
DRIFT_INTERVAL = 3  # seconds: short, so drift repair is observable within a test
# Full reconciles of converged backends every third or fourth drift check (the default: every eleventh):
# what only a full reconcile sees (the password alone, the schema revision, the bucket) is
# then repaired within a test's patience too, and both kinds of check run throughout.
FULL_CHECK_INTERVAL = 3 * DRIFT_INTERVAL

# For the session's secret sweep (tests/e2e/test_zz_secret_sweep.py): every operator log,
# every admin password generated, and what each test's namespaces held before deletion.
OPERATOR_LOGS: list[Path] = []
ADMIN_PASSWORDS: list[str] = []
SWEEP_SECRETS: dict[str, str] = {}        # secret value -> where it was found (never printed)
SWEEP_HAYSTACKS: list[tuple[str, str]] = []  # (where, text): Events, statuses and argvs, as the session went
SWEEP_ARGV_REFERENCES: list[str] = []     # $(VAR) references to secret-carrying env in command/args


class OperatorProcess:
    """``trackop run --all-namespaces`` in a subprocess; its log is kept for leak checks."""

    def __init__(self, kubeconfig: str, log_dir: Path, webhook: bool = True,
                 base_args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.webhook = webhook
        self.base_args = base_args or []  # kept across restarts, unlike extra_args
        self.log_path = log_dir / "operator.log"
        OPERATOR_LOGS.append(self.log_path)
        self.process: subprocess.Popen | None = None
        self.port = 0
        # The admission webhooks, on a loopback port of their own for the whole session.
        self.webhook_port = free_ports(1)[0]
        self.extra_args: list[str] = []
        self.extra_env: dict[str, str] = {}

    def start(self) -> None:
        self.port, self.metrics_port = free_ports(2)
        env = {**os.environ, "TRACKOP_DRIFT_INTERVAL": str(DRIFT_INTERVAL),
               "TRACKOP_FULL_CHECK_INTERVAL": str(FULL_CHECK_INTERVAL), "PYTHONUNBUFFERED": "1", **self.extra_env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trackop.cli", "run", "--all-namespaces", "--kubeconfig", self.kubeconfig,
             "--health-address", f"127.0.0.1:{self.port}", "--metrics-address", f"127.0.0.1:{self.metrics_port}",
             *(["--webhook-address", f"127.0.0.1:{self.webhook_port}"] if self.webhook else []),
             *self.base_args,
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        log.close()
        try:
            eventually(self._healthy, "the operator's /healthz", timeout=60, interval=0.3)
        except BaseException:
            self.stop(kill=True)  # never leave an operator behind the test run
            raise

    def _healthy(self) -> bool:
        assert self.process.poll() is None, f"operator exited:\n{self.logs()[-3000:]}"
        # Ready means the webhooks answer too (they are registered before they serve).
        if self.webhook and not self._webhook_listening():
            return False
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _webhook_listening(self) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.webhook_port)) == 0

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.stop()
        self.extra_args = extra_args or []
        self.extra_env = extra_env or {}
        self.start()

    def metrics(self) -> dict[str, float]:
        """The /metrics samples: 'name{label="v",...}' -> value (comments left out)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Admin:
    user: str
    password: str


def make_admin(superuser_conn: psycopg.Connection, *attributes: str) -> Admin:
    """A real platform admin role: not a superuser, with the attributes given."""
    admin = Admin(f"adm_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18))
    ADMIN_PASSWORDS.append(admin.password)
    superuser_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} {}").format(
        sql.Identifier(admin.user), sql.Literal(admin.password), sql.SQL(" ".join(attributes))))
    return admin


class Backends:
    """Applies TrackingBackends and Secrets in one test namespace and reads them back."""

    def __init__(self, kube_api: client.ApiClient, namespace: str, bed_info: dict) -> None:
        self.custom = client.CustomObjectsApi(kube_api)
        self.core = client.CoreV1Api(kube_api)
        self.namespace = namespace
        self.pg = bed_info["postgres"]

    def secret(self, name: str, data: dict[str, str]) -> None:
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
        try:
            self.core.create_namespaced_secret(self.namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.namespace, body)

    def admin_secret(self, admin: Admin, name: str = "pg-admin") -> str:
        self.secret(name, {"username": admin.user, "password": admin.password})
        return name

    def spec(self, admin_secret: str = "pg-admin", **postgres) -> dict:
        return {"postgres": {"external": {"host": self.pg["host"], "port": self.pg["port"], "sslMode": "disable",
                                          "adminSecretRef": {"name": admin_secret}}, **postgres}}

    def apply(self, name: str, spec: dict) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend",
                "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def get(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, type_: str) -> dict:
        obj = self.get(name) or {}
        return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})

    def wait_condition(self, name: str, type_: str, status: str, reason: str | None = None,
                       timeout: float = 90) -> dict:
        def matches():
            c = self.condition(name, type_)
            return c if c.get("status") == status and (reason is None or c.get("reason") == reason) else None

        try:
            return eventually(matches, f"{name}: {type_}={status} {reason or ''}", timeout=timeout, interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status now: {(self.get(name) or {}).get('status')}") from None

    def wait_ready(self, name: str, timeout: float = 90) -> dict:
        self.wait_condition(name, "Ready", "True", timeout=timeout)
        return self.get(name)

    def connection_secret(self, name: str) -> dict[str, str]:
        return self.secret_data(f"{name}-mlflow")

    def secret_data(self, secret_name: str) -> dict[str, str]:
        secret = self.core.read_namespaced_secret(secret_name, self.namespace)
        return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name and e.involved_object.kind == "TrackingBackend"]


def report_waiting(kube_api: client.ApiClient, namespace: str, pod: str, reason: str, message: str) -> None:
    """Write what a node's kubelet reports for a container it cannot start (ErrImagePull,
    ImagePullBackOff, CrashLoopBackOff...) into the pod's status: the bed has no kubelet."""
    core = client.CoreV1Api(kube_api)
    container = core.read_namespaced_pod(pod, namespace).spec.containers[0]
    core.patch_namespaced_pod_status(pod, namespace, {"status": {"phase": "Pending", "containerStatuses": [{
        "name": container.name, "image": container.image, "imageID": "", "ready": False, "restartCount": 0,
        "started": False, "state": {"waiting": {"reason": reason, "message": message}}}]}})


def failures_by_reason(operator: OperatorProcess, reason: str) -> float:
    """Reconciles (handler and drift) that ended with Ready False for ``reason`` so far."""
    return operator.metrics().get(f'trackop_reconcile_failures_total{{reason="{reason}"}}', 0.0)


def assert_no_secret_leaks(secrets_: list[str], operator: OperatorProcess, backends: Backends, name: str) -> None:
    """No password appears in the operator's log, the backend's Events or its status."""
    haystacks = {
        "operator log": operator.logs(),
        "events": "\n".join(f"{e.reason} {e.message}" for e in backends.events(name)),
        "status": repr((backends.get(name) or {}).get("status")),
    }
    for secret in secrets_:
        for where, text in haystacks.items():
            assert secret not in text, f"a secret leaked into the {where}"


# Keys whose values are credentials, in any Secret (connection Secrets, admin and password
# Secrets, bucket keys, the webhook's certificates). Other keys (PGHOST, PGUSER, tls.crt,
# URIs without userinfo) hold what status and Events may name.
SECRET_KEY_PATTERN = ("PASSWORD", "SECRET", "ACCESSKEY", "ACCESS_KEY", "ACCOUNTKEY", "ACCOUNT_KEY", "PRIVATE",
                      "TOKEN", "CONNECTION_STRING", "SERVICEACCOUNTKEY", ".KEY", "ACCESSKEYID")


def is_secret_key(key: str) -> bool:
    upper = key.upper()
    return any(part in upper for part in SECRET_KEY_PATTERN) or upper in ("KEY", "TLS.KEY", "CA.KEY")


def record_secrets(secrets_list: list[client.V1Secret], where: str) -> None:
    """Remember the credential values of these Secrets (decoded) for the session's sweep."""
    for secret in secrets_list:
        for key, value in (secret.data or {}).items():
            if not is_secret_key(key):
                continue
            try:
                decoded = base64.b64decode(value).decode()
            except (ValueError, UnicodeDecodeError):
                continue
            SWEEP_SECRETS.setdefault(decoded, f"{where}: Secret {secret.metadata.namespace}/{secret.metadata.name} "
                                              f"key {key}")


def events_text(kube_api: client.ApiClient, namespace: str | None = None) -> list[tuple[str, str]]:
    """(where, text) of every Event (core/v1 message and events.k8s.io/v1 note, with reasons)."""
    core, events = client.CoreV1Api(kube_api), client.EventsV1Api(kube_api)
    listed = core.list_namespaced_event(namespace) if namespace else core.list_event_for_all_namespaces()
    found = [(f"Event {e.metadata.namespace}/{e.metadata.name}",
              f"{e.reason} {e.message} {e.involved_object.kind}/{e.involved_object.name}") for e in listed.items]
    # Raw JSON: the client's EventsV1Event model refuses events without eventTime (kopf's).
    response = (events.list_namespaced_event(namespace, _preload_content=False) if namespace
                else events.list_event_for_all_namespaces(_preload_content=False))
    found += [(f"Event {e['metadata'].get('namespace')}/{e['metadata']['name']}",
               f"{e.get('reason')} {e.get('note')}") for e in json.loads(response.data)["items"]]
    return found


def backend_statuses(kube_api: client.ApiClient, namespace: str | None = None) -> list[tuple[str, str]]:
    custom = client.CustomObjectsApi(kube_api)
    listed = (custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL) if namespace
              else custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
    return [(f"TrackingBackend {o['metadata']['namespace']}/{o['metadata']['name']} status",
             repr(o.get("status"))) for o in listed["items"]]


def snapshot_for_sweep(kube_api: client.ApiClient, namespace: str, test: str) -> None:
    """Before a test's namespace is deleted: its Events, TrackingBackend statuses, Secrets and
    the command and args of its Pods, Jobs, Deployments and StatefulSets (argv_sweep.py), and
    the webhook's certificate Secret (it rotates)."""
    core = client.CoreV1Api(kube_api)
    where = f"after {test}"
    SWEEP_HAYSTACKS.extend((f"{w} ({where})", text) for w, text in events_text(kube_api, namespace))
    SWEEP_HAYSTACKS.extend((f"{w} ({where})", text) for w, text in backend_statuses(kube_api, namespace))
    argvs, references = workload_argvs(kube_api, namespace)
    SWEEP_HAYSTACKS.extend((f"{w} ({where})", text) for w, text in argvs)
    SWEEP_ARGV_REFERENCES.extend(f"{finding} ({where})" for finding in references)
    record_secrets(core.list_namespaced_secret(namespace).items, where)
    record_secrets([s for s in core.list_namespaced_secret(WEBHOOK_NAMESPACE).items
                    if s.metadata.name == WEBHOOK_CERT_SECRET], where)


WEBHOOK_NAMESPACE, WEBHOOK_CERT_SECRET = "trackop-system", "trackop-webhook-certs"
CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "trackop"
CHART_RELEASE = "trackop"  # fullname "trackop": ServiceAccount, ClusterRole and peering object


def chart_service_account_kubeconfig(kube_api: client.ApiClient, admin_kubeconfig: str, out: Path,
                                     namespace: str = "trackop-system") -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token),
    after applying the ServiceAccount, ClusterRole, ClusterRoleBinding and peering object
    exactly as ``helm template`` renders them with default values."""
    from trackop_testbed import binaries

    helm = binaries.ensure_helm()
    rendered = subprocess.run([str(helm), "template", CHART_RELEASE, str(CHART), "--namespace", namespace],
                              capture_output=True, text=True, check=True, timeout=120).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    core = client.CoreV1Api(kube_api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    wanted = [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                  "ClusterKopfPeering")]
    assert {o["kind"] for o in wanted} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    from trackop_testbed.crd import install_crd

    for crd in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()):
        install_crd(kube_api, manifest=crd)  # the ClusterKopfPeering below needs its CRD served
    dynamic = DynamicClient(kube_api)
    for body in wanted:
        resource = dynamic.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        dynamic.server_side_apply(resource, body, field_manager="trackop-tests", force_conflicts=True,
                                  namespace=body["metadata"].get("namespace"))
    account = next(o for o in wanted if o["kind"] == "ServiceAccount")["metadata"]["name"]
    token = core.create_namespaced_service_account_token(account, namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=24 * 3600))).status.token
    config_ = yaml.safe_load(Path(admin_kubeconfig).read_text())
    config_["users"] = [{"name": account, "user": {"token": token}}]
    for context in config_["contexts"]:
        context["context"]["user"] = account
    out.write_text(yaml.safe_dump(config_))
    out.chmod(0o600)
    return out

