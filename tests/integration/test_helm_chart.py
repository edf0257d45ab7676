"""The Helm chart (deploy/helm/trackop) with the real helm, built from the Go module proxy:
lint, what renders for the default and the ci/ values, the values schema, a server-side
dry run of every manifest on the bed, and the RBAC exercised as the operator's
ServiceAccount (impersonated) against the calls the operator makes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import eventually
from kubernetes import client, config
from trackop_testbed import binaries

from trackop import cli
from trackop.kube.client import Kube
from trackop.specs.webhook_configurations import MUTATING_NAME, VALIDATING_NAME

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "trackop"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUES = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by")


def _progress(message: str) -> None:
    print(f"[helm] {message}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="module")
def helm() -> Path:
    # No skip: a helm that cannot be built fails here with the build's output.
    return binaries.ensure_helm(_progress)


def run(argv: list, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def render(helm: Path, values: Path | None = None, *extra: str, release: str = "tk",
           namespace: str = "trackop-system") -> list[dict]:
    argv = [helm, "template", release, CHART, "--namespace", namespace, *(["-f", values] if values else []), *extra]
    return [d for d in yaml.safe_load_all(run(argv).stdout) if d]


def only(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]


def kinds(objects: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(objects: list[dict]) -> dict:
    return only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# ---- helm itself ---------------------------------------------------------------------------

def test_helm_is_the_pinned_and_stamped_build(helm: Path, tmp_path: Path):
    assert run([helm, "version", "--template", "{{.Version}}"]).stdout == binaries.HELM_VERSION
    probe = tmp_path / "probe"
    (probe / "templates").mkdir(parents=True)
    (probe / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.0.1\n")
    (probe / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: '{{ .Capabilities.KubeVersion.Version }}'}\n")
    rendered = yaml.safe_load(run([helm, "template", probe]).stdout)
    assert rendered["data"]["kube"] == f"v1.{binaries.HELM_K8S_MINOR}.0"


# ---- lint and the values schema -------------------------------------------------------------

@pytest.mark.parametrize("values", VALUES, ids=VALUE_IDS)
def test_lint(helm: Path, values: Path | None):
    for strict in ([], ["--strict"]):
        out = run([helm, "lint", CHART, *strict, *(["-f", values] if values else [])]).stdout
        assert "0 chart(s) failed" in out and "[ERROR]" not in out and "[WARNING]" not in out, out


def test_schema_rejects_a_bad_failure_policy_naming_the_field(helm: Path):
    done = run([helm, "template", "tk", CHART, "--set", "webhook.failurePolicy=Sometimes"], check=False)
    assert done.returncode != 0
    assert "/webhook/failurePolicy" in done.stderr and "'Ignore', 'Fail'" in done.stderr, done.stderr


@pytest.mark.parametrize("setting, field", [
    ("unknown=1", "additional properties 'unknown'"),
    ("webhook.certManager.issuer=x", "additional properties 'issuer'"),
    ("metrics.port=9443", "/metrics/port"),
    ("replicaCount=-1", "/replicaCount"),
    ("watchNamespaces={Bad_Name}", "/watchNamespaces/0"),
])
def test_schema_rejects_other_bad_values(helm: Path, setting: str, field: str):
    done = run([helm, "template", "tk", CHART, "--set", setting], check=False)
    assert done.returncode != 0 and field in done.stderr, done.stderr


def test_impossible_combinations_are_refused_with_the_reason(helm: Path):
    assert run([helm, "template", "tk", CHART, "--set", "webhook.enabled=false"]).returncode == 0
    done = run([helm, "template", "tk", CHART, "--set", "webhook.enabled=false,webhook.certManager.enabled=true"],
               check=False)
    assert done.returncode != 0 and "webhook.certManager.enabled needs webhook.enabled" in done.stderr
    done = run([helm, "template", "tk", CHART, "--set", "metrics.enabled=false,metrics.serviceMonitor.enabled=true"],
               check=False)
    assert done.returncode != 0 and "needs metrics.enabled" in done.stderr


# ---- what renders ----------------------------------------------------------------------------

def test_default_render(helm: Path):
    objects = render(helm)
    assert kinds(objects) == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                                     "Service", "Service", "PodDisruptionBudget", "ClusterKopfPeering"])
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    c = container(objects)
    assert c["image"] == f"ghcr.io/trackop/trackop:{APP_VERSION}"
    assert c["args"] == ["run", "--all-namespaces", "--health-address=0.0.0.0:8080",
                         "--metrics-address=0.0.0.0:9090", "--webhook-address=0.0.0.0:9443",
                         "--webhook-service=tk-trackop-webhook", "--webhook-owner-clusterrole=tk-trackop",
                         "--webhook-failure-policy=Ignore",
                         "--peering", "--peering-name=tk-trackop"]
    env = {e["name"]: e for e in c["env"]}
    assert env["TRACKOP_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["TRACKOP_DRIFT_INTERVAL"]["value"] == "60"
    assert "TRACKOP_FULL_CHECK_INTERVAL" not in env  # the operator's default: ten drift intervals
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "webhook": 9443, "metrics": 9090}
    # Security: non-root 10001, read-only root, no capabilities, RuntimeDefault seccomp.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    assert "limits" in c["resources"] and "requests" in c["resources"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert only(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    # The webhook Service: 443 -> the container's 9443; no webhook configurations (the operator registers them).
    service = only(objects, "Service", "tk-trackop-webhook")
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert only(objects, "Service", "tk-trackop-metrics")["spec"]["ports"][0]["port"] == 9090
    assert only(objects, "ClusterKopfPeering")["metadata"]["name"] == "tk-trackop"
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert all(label in labels for label in STANDARD_LABELS), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/version"] == APP_VERSION and labels["app.kubernetes.io/managed-by"] == "Helm"


def test_certmanager_render(helm: Path):
    objects = render(helm, CHART / "ci" / "certmanager-values.yaml")
    c = container(objects)
    assert c["args"] == ["run", "--namespace=ml-team-a", "--namespace=ml-team-b", "--health-address=0.0.0.0:8080",
                         "--metrics-address=0.0.0.0:9102", "--webhook-address=0.0.0.0:9443",
                         "--webhook-service=tk-trackop-webhook", "--webhook-owner-clusterrole=tk-trackop",
                         "--webhook-failure-policy=Fail",
                         "--webhook-cert-secret=tk-trackop-webhook-tls", "--peering", "--peering-name=tk-trackop",
                         "--verbose"]
    assert {e["name"]: e.get("value") for e in c["env"]}["TRACKOP_DRIFT_INTERVAL"] == "120"
    assert {e["name"]: e.get("value") for e in c["env"]}["TRACKOP_FULL_CHECK_INTERVAL"] == "1800"
    certificate = only(objects, "Certificate")
    assert certificate["metadata"]["name"] == certificate["spec"]["secretName"] == "tk-trackop-webhook-tls"
    assert certificate["spec"]["dnsNames"] == [
        "tk-trackop-webhook", "tk-trackop-webhook.trackop-system", "tk-trackop-webhook.trackop-system.svc",
        "tk-trackop-webhook.trackop-system.svc.cluster.local"]
    issuer = only(objects, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer",
                                                "group": "cert-manager.io"}
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    metrics_service = only(objects, "Service", "tk-trackop-metrics")
    assert all(metrics_service["metadata"]["labels"].get(k) == v
               for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    policy = only(objects, "NetworkPolicy")["spec"]
    assert policy["ingress"][0] == {"ports": [{"port": 9443, "protocol": "TCP"}]}  # from anywhere: the API server
    assert policy["ingress"][1]["ports"] == [{"port": 9102, "protocol": "TCP"}]
    assert policy["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == [{}]
    # --namespace: a KopfPeering and a peering Role in each watched namespace, no cluster-wide peering.
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml-team-a", "ml-team-b"]
    assert sorted(o["metadata"]["namespace"] for o in objects
                  if o["kind"] == "Role" and o["metadata"]["name"] == "tk-trackop-peering") == ["ml-team-a", "ml-team-b"]
    assert not [o for o in objects if o["kind"] == "ClusterKopfPeering"]
    assert not [r for r in only(objects, "ClusterRole")["rules"] if r["apiGroups"] == ["kopf.dev"]]
    pod = only(objects, "Deployment")["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["labels"]["example.com/tier"] == "operator"


def test_secrets_are_namespaced_where_watch_namespaces_is_set(helm: Path):
    objects = render(helm, CHART / "ci" / "certmanager-values.yaml")
    cluster_rules = only(objects, "ClusterRole")["rules"]
    assert not [r for r in cluster_rules if "secrets" in r["resources"]], "no Secret in the ClusterRole"
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o["rules"] for o in objects if o["kind"] == "Role"}
    for namespace in ("ml-team-a", "ml-team-b"):
        assert roles[(namespace, "tk-trackop-secrets")] == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "patch", "delete"]}]
    assert roles[("trackop-system", "tk-trackop-webhook-certs")] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["trackop-webhook-certs", "tk-trackop-webhook-tls"],
         "verbs": ["get", "patch"]}]
    bindings = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "RoleBinding"}
    for key in [("ml-team-a", "tk-trackop-secrets"), ("ml-team-b", "tk-trackop-secrets"),
                ("trackop-system", "tk-trackop-webhook-certs")]:
        assert bindings[key]["roleRef"]["name"] == key[1]
        assert bindings[key]["subjects"] == [{"kind": "ServiceAccount", "name": "tk-trackop", "namespace": "trackop-system"}]


def test_the_policy_values_become_the_operators_settings(helm: Path):
    env = {e["name"]: e.get("value") for e in container(render(helm))["env"]}
    assert env["TRACKOP_ALLOW_OPERATOR_CLOUD_IDENTITY"] == "false", "off by default"
    assert not {"TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS", "TRACKOP_ALLOWED_IMAGES", "TRACKOP_ALLOWED_SERVICE_ACCOUNTS"} & set(env)
    artifacts = {"allowOperatorCloudIdentity": True, "allowedEndpoints": ["*.amazonaws.com", "minio.minio.svc"]}
    policy = {"allowedImages": ["ghcr.io/mlflow/mlflow:*"], "allowedServiceAccounts": ["mlflow"]}
    env = {e["name"]: e.get("value") for e in container(render(
        helm, None, "--set-json", f"artifacts={json.dumps(artifacts)}", "--set-json", f"policy={json.dumps(policy)}"))["env"]}
    settings = cli.settings_from(cli.build_parser().parse_args(["run", "-A"]), env)
    assert settings.policy.operator_cloud_identity is True
    assert settings.allowed_artifact_endpoints == ("*.amazonaws.com", "minio.minio.svc")
    assert settings.allowed_images == ("ghcr.io/mlflow/mlflow:*",) and settings.allowed_service_accounts == ("mlflow",)
    done = run([helm, "template", "tk", CHART, "--set-json", 'artifacts={"allowedEndpoints": ["https://s3.amazonaws.com"]}'],
               check=False)
    assert done.returncode != 0 and "/artifacts/allowedEndpoints/0" in done.stderr, done.stderr


def test_minimal_render(helm: Path):
    objects = render(helm, CHART / "ci" / "minimal-values.yaml")
    assert kinds(objects) == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"])
    assert container(objects)["args"] == ["run", "--all-namespaces", "--health-address=0.0.0.0:8080"]
    assert container(objects)["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert only(objects, "ServiceAccount")["metadata"]["name"] == "trackop-minimal"
    assert only(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "trackop-minimal"
    groups = {g for r in only(objects, "ClusterRole")["rules"] for g in r["apiGroups"]}
    assert "admissionregistration.k8s.io" not in groups and "kopf.dev" not in groups
    assert "topologySpreadConstraints" not in only(objects, "Deployment")["spec"]["template"]["spec"]


def test_clusterissuer_render(helm: Path):
    objects = render(helm, CHART / "ci" / "clusterissuer-values.yaml")
    assert only(objects, "Deployment")["spec"]["replicas"] == 3
    assert only(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert only(objects, "Certificate")["spec"]["issuerRef"] == {"name": "platform-ca", "kind": "ClusterIssuer",
                                                                 "group": "cert-manager.io"}
    assert not [o for o in objects if o["kind"] == "Issuer"]
    c = container(objects)
    assert c["image"] == "registry.example.com/platform/trackop:0.1.0-rc1" and c["imagePullPolicy"] == "Always"
    assert only(objects, "ServiceAccount")["metadata"]["annotations"]
    # The app version label follows the image tag.
    assert only(objects, "Deployment")["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0-rc1"


def test_single_replica_has_no_disruption_budget_or_spread(helm: Path):
    objects = render(helm, None, "--set", "replicaCount=1")
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert "topologySpreadConstraints" not in only(objects, "Deployment")["spec"]["template"]["spec"]


def test_notes_say_what_to_do_next(helm: Path, bed_info: dict, chart_crds):
    # helm install asks the cluster for its version even with --dry-run=client, and maps
    # every kind through discovery: the peering CRD must be served (chart_crds).
    done = run([helm, "install", "tk", CHART, "--dry-run=client", "--namespace", "trackop-system",
                "--kubeconfig", bed_info["kubeconfig"]])
    notes = done.stdout.split("NOTES:", 1)[1]
    for expected in ("create secret generic pg-admin", "kind: TrackingBackend", "kubectl get tb -A",
                     "trackop.dev/inject", "trackop.dev/backend", "tk-trackop-webhook",
                     f"mutatingwebhookconfiguration {MUTATING_NAME}", "trackop-webhook-certs"):
        assert expected in notes, expected


@pytest.mark.parametrize("values", VALUES, ids=VALUE_IDS)
def test_the_operator_accepts_the_rendered_arguments(helm: Path, values: Path | None):
    args = cli.build_parser().parse_args(container(render(helm, values))["args"])
    assert args.command == "run" and args.health_address == "0.0.0.0:8080"


# ---- RBAC: least privilege -------------------------------------------------------------------

# Exactly what the default values grant (rbac.yaml says why, rule by rule): a change here is a
# change of the operator's privileges and must be deliberate.
DEFAULT_RULES = [
    (["trackop.dev"], ["trackingbackends"], None, ["list", "watch", "patch"]),
    (["trackop.dev"], ["trackingbackends/status"], None, ["patch"]),
    (["trackop.dev"], ["trackingbackends/finalizers"], None, ["update"]),
    ([""], ["secrets"], None, ["get", "list"]),
    ([""], ["secrets"], None, ["create", "patch", "delete"]),
    (["batch"], ["jobs"], None, ["get", "create"]),
    (["apps"], ["deployments"], None, ["get", "list", "create", "patch"]),
    ([""], ["services"], None, ["get", "list", "create", "patch"]),
    (["apps"], ["statefulsets"], None, ["get", "create", "patch"]),
    (["postgresql.cnpg.io"], ["clusters"], None, ["get", "create", "patch"]),
    ([""], ["namespaces"], None, ["list", "watch"]),
    ([""], ["pods"], None, ["get", "list"]),
    ([""], ["events"], None, ["create"]),
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], None, ["list", "watch"]),
    (["admissionregistration.k8s.io"], ["mutatingwebhookconfigurations"], [MUTATING_NAME],
     ["create", "patch"]),
    (["admissionregistration.k8s.io"], ["validatingwebhookconfigurations"], [VALIDATING_NAME],
     ["create", "patch"]),
    (["rbac.authorization.k8s.io"], ["clusterroles"], ["tk-trackop"], ["get"]),
    (["kopf.dev"], ["clusterkopfpeerings"], None, ["list", "watch"]),
    (["kopf.dev"], ["clusterkopfpeerings"], ["tk-trackop"], ["patch"]),
]


def test_default_rbac_is_exactly_the_reviewed_rules(helm: Path):
    rules = only(render(helm), "ClusterRole")["rules"]
    assert [(r["apiGroups"], r["resources"], r.get("resourceNames"), r["verbs"]) for r in rules] == DEFAULT_RULES


@pytest.mark.parametrize("values", VALUES, ids=VALUE_IDS)
def test_rbac_has_no_wildcards_or_escalation(helm: Path, values: Path | None):
    roles = [o for o in render(helm, values) if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
            assert not ("namespaces" in rule["resources"] and "create" in rule["verbs"]), rule
            rbac = {"clusterroles", "roles", "clusterrolebindings", "rolebindings"} & set(rule["resources"])
            # Reading its own ClusterRole (the webhook configurations' owner) is all it may do with RBAC.
            assert not rbac or (rbac == {"clusterroles"} and rule["verbs"] == ["get"]
                                and rule.get("resourceNames") == [role["metadata"]["name"]]), rule


# ---- the bed: server-side dry runs -------------------------------------------------------------

@pytest.fixture(scope="module")
def kubectl(bed_info: dict, tmp_path_factory):
    binary = Path(bed_info["kubeconfig"]).parent / "kubectl"
    cache = tmp_path_factory.mktemp("kubectl-cache")  # discovery: never stale after new CRDs

    def kubectl_(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([binary, "--kubeconfig", bed_info["kubeconfig"], "--cache-dir", cache, *args], check=check)
    return kubectl_


@pytest.fixture(scope="module")
def chart_crds(kubectl, trackop_crd: dict) -> None:
    """The peering CRDs of the chart and the ServiceMonitor and cert-manager CRDs (from the Go
    module proxy), installed for real: objects of those kinds can be dry-run only once served."""
    files = [CHART / "crds" / "kopf.dev_peerings.yaml", *binaries.ensure_third_party_crds(_progress)]
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=trackop-tests",
            *(f"--filename={f}" for f in files))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev",
            "crd/kopfpeerings.kopf.dev", "crd/servicemonitors.monitoring.coreos.com",
            "crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io", "crd/clusterissuers.cert-manager.io")


@pytest.fixture
def make_namespace(core_v1: client.CoreV1Api):
    made = []

    def make(name: str, labels: dict | None = None) -> str:
        core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        made.append(name)
        return name
    yield make
    for name in made:
        try:
            core_v1.delete_namespace(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


@pytest.mark.parametrize("values", VALUES, ids=VALUE_IDS)
def test_every_manifest_passes_a_server_side_dry_run(helm: Path, kubectl, chart_crds, make_namespace,
                                                     values: Path | None, tmp_path: Path):
    release = f"h{uuid.uuid4().hex[:8]}"
    namespace = make_namespace(f"{release}-system", RESTRICTED)
    extra = []
    if values and yaml.safe_load(values.read_text()).get("watchNamespaces"):
        watched = [make_namespace(f"{release}-w{i}") for i in range(2)]
        extra = ["--set-json", f"watchNamespaces={json.dumps(watched)}"]
    manifest = tmp_path / "rendered.yaml"
    rendered = run([helm, "template", release, CHART, "--namespace", namespace, "--include-crds",
                    *(["-f", values] if values else []), *extra]).stdout
    manifest.write_text(rendered)
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole"} <= {o["kind"] for o in objects}
    done = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=trackop-tests",
                   f"--filename={manifest}")
    assert done.stdout.count("(server dry run)") == len(objects), done.stdout
    assert "Warning" not in done.stderr, done.stderr  # e.g. "would violate PodSecurity"

    # The pod itself under the restricted Pod Security Standard (enforced: a violation is refused).
    deployment = only(objects, "Deployment")
    sa = only(objects, "ServiceAccount") if any(o["kind"] == "ServiceAccount" for o in objects) else None
    if sa is not None:  # the ServiceAccount admission plugin wants it to exist
        (tmp_path / "sa.yaml").write_text(yaml.safe_dump(sa))
        kubectl("apply", "--server-side", f"--filename={tmp_path / 'sa.yaml'}")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": release, "namespace": namespace,
                        "labels": deployment["spec"]["template"]["metadata"]["labels"]},
           "spec": deployment["spec"]["template"]["spec"]}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    done = kubectl("create", "--dry-run=server", f"--filename={tmp_path / 'pod.yaml'}")
    assert "created (server dry run)" in done.stdout and "Warning" not in done.stderr, done.stderr


# ---- the bed: RBAC as the operator's ServiceAccount --------------------------------------------

@pytest.fixture
def operator_rbac(helm: Path, kubectl, chart_crds, make_namespace, tmp_path: Path):
    """The default release's ServiceAccount, ClusterRole and binding applied for real; yields
    (namespace, ServiceAccount name, ClusterRole name) and removes the cluster-scoped parts."""
    release = f"r{uuid.uuid4().hex[:8]}"
    namespace = make_namespace(f"{release}-system")
    objects = render(helm, None, release=release, namespace=namespace)
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    (tmp_path / "rbac.yaml").write_text(yaml.safe_dump_all(rbac))
    kubectl("apply", "--server-side", f"--filename={tmp_path / 'rbac.yaml'}")
    name = only(objects, "ClusterRole")["metadata"]["name"]
    try:
        yield namespace, only(objects, "ServiceAccount")["metadata"]["name"], name
    finally:
        kubectl("delete", "--ignore-not-found", f"clusterrole/{name}", f"clusterrolebinding/{name}")


def _can(auth: client.AuthorizationV1Api, user: str, verb: str, resource: str, group: str = "",
         namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> bool:
    review = auth.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(verb=verb, group=group, resource=resource,
                                                        namespace=namespace, name=name,
                                                        subresource=subresource))))
    return review.status.allowed


def test_the_operator_calls_work_as_its_service_account_and_nothing_more(
        operator_rbac, kube_api: client.ApiClient, bed_info: dict, make_namespace):
    namespace, sa, role = operator_rbac
    user = f"system:serviceaccount:{namespace}:{sa}"
    auth = client.AuthorizationV1Api(kube_api)
    can = functools.partial(_can, auth, user)
    eventually(lambda: can("list", "pods"), "the ClusterRoleBinding to take effect", timeout=30)
    work = make_namespace(f"{namespace}-work")

    as_operator = config.new_client_from_config(config_file=bed_info["kubeconfig"])
    as_operator.set_default_header("Impersonate-User", user)
    as_operator.set_default_header("Impersonate-Group", "system:serviceaccounts")
    kube = Kube(as_operator)

    # Real calls, as the operator makes them (src/trackop/kube/).
    kube.ensure_namespace(namespace)  # exists: looked up, not created (no namespace create granted)
    assert namespace in kube.namespace_labels()
    items, _ = kube.listing("namespaces")
    assert items
    kube.listing("backends")
    kube.create_secret({"metadata": {"name": "conn", "namespace": work},
                        "stringData": {"PGPASSWORD": "one"}})
    assert kube.read_secret(work, "conn") == {"PGPASSWORD": "one"}
    kube.update_secret({"metadata": {"name": "conn", "namespace": work, "labels": {"x": "y"}},
                        "stringData": {"PGPASSWORD": "two"}})
    kube.put_secret({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "copy", "namespace": work,
                                                                          "labels": {"copy": "yes"}},
                     "stringData": {"a": "1"}})
    kube.put_secret({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "copy", "namespace": work,
                                                                          "labels": {"copy": "yes"}},
                     "stringData": {"a": "2"}})  # replaces
    assert kube.secrets_by_label("copy=yes") == {(work, "copy"): {"a": "2"}}
    kube.put_secret({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "copy", "namespace": work,
                                                                          "labels": {"copy": "yes"}},
                     "stringData": {"b": "3"}})  # set whole: a key no longer wanted goes
    assert kube.secrets_by_label("copy=yes") == {(work, "copy"): {"b": "3"}}
    kube.delete_secret(work, "copy")
    _replace_only_over_the_version_read(kube, work)
    assert kube.read_job(work, "migrate") is None
    kube.create_job({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": work},
                     "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                         {"name": "m", "image": "example.invalid/mlflow:1"}]}}}})
    labels = {"app": "mlflow"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mlflow", "namespace": work},
               "spec": {"selector": labels, "ports": [{"port": 5000}]}}
    assert kube.apply_if_changed(service)[0] is True  # created by server-side apply
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mlflow", "namespace": work},
                  "spec": {"selector": {"matchLabels": labels}, "template": {
                      "metadata": {"labels": labels},
                      "spec": {"containers": [{"name": "s", "image": "example.invalid/mlflow:1"}]}}}}
    assert kube.apply_if_changed(deployment)[0] is True
    assert kube.read_object(deployment) is not None
    kube.pods_by_label("trackop.dev/inject=true")
    kube.post_event(work, {"api_version": "v1", "kind": "Namespace", "name": work, "namespace": work},
                    "Warning", "InjectionSkipped", "a test event")
    # The webhook configurations by server-side apply, dry-run (the bed's real ones belong to other tests).
    admission = client.AdmissionregistrationV1Api(as_operator)
    for name, allowed in ((MUTATING_NAME, True), (f"{MUTATING_NAME}-other", False)):
        body = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": name}, "webhooks": []}
        try:
            admission.patch_mutating_webhook_configuration(name, body, field_manager="trackop", force=True,
                                                           dry_run="All",
                                                           _content_type="application/apply-patch+yaml")
            assert allowed, f"{name} was allowed"
        except client.ApiException as exc:
            assert exc.status == 403 and not allowed, exc

    # kopf's calls, and the create a server-side apply makes, as access reviews.
    tb = dict(group="trackop.dev", resource="trackingbackends", namespace=work, name="team-a")
    assert can("patch", **tb) and can("watch", "trackingbackends", "trackop.dev")
    assert can("patch", **tb, subresource="status") and can("update", **tb, subresource="finalizers")
    assert can("watch", "customresourcedefinitions", "apiextensions.k8s.io") and can("watch", "namespaces")
    assert can("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", name=MUTATING_NAME)
    assert can("create", "validatingwebhookconfigurations", "admissionregistration.k8s.io",
               name=VALIDATING_NAME)
    assert can("get", "clusterroles", "rbac.authorization.k8s.io", name=role)
    assert not can("get", "clusterroles", "rbac.authorization.k8s.io", name="cluster-admin")
    assert can("list", "clusterkopfpeerings", "kopf.dev") and can("watch", "clusterkopfpeerings", "kopf.dev")
    assert can("patch", "clusterkopfpeerings", "kopf.dev", name=role)

    # And no more.
    with pytest.raises(client.ApiException) as refused:
        kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=f"{namespace}-new")))
    assert refused.value.status == 403
    with pytest.raises(client.ApiException) as refused:
        kube.apps.delete_namespaced_deployment("mlflow", work)
    assert refused.value.status == 403
    with pytest.raises(client.ApiException) as refused:
        kube.core.list_namespaced_config_map(work)
    assert refused.value.status == 403
    for denied in (dict(verb="watch", resource="secrets"), dict(verb="create", resource="pods", namespace=work),
                   dict(verb="delete", group="trackop.dev", resource="trackingbackends", namespace=work),
                   dict(verb="create", group="trackop.dev", resource="trackingbackends", namespace=work),
                   dict(verb="get", group="trackop.dev", resource="trackingbackends", namespace=work),
                   dict(verb="delete", resource="namespaces", name=work),
                   dict(verb="patch", group="admissionregistration.k8s.io",
                        resource="validatingwebhookconfigurations", name="someone-elses"),
                   dict(verb="patch", group="kopf.dev", resource="clusterkopfpeerings", name="someone-elses"),
                   dict(verb="create", group="rbac.authorization.k8s.io", resource="clusterrolebindings"),
                   dict(verb="delete", group="batch", resource="jobs", namespace=work),
                   dict(verb="update", group="apps", resource="deployments", namespace=work),
                   dict(verb="update", resource="secrets", namespace=work)):
        assert not _can(auth, user, **denied), denied


def _replace_only_over_the_version_read(kube: Kube, namespace: str) -> None:
    """Kube.replace_secret (the webhook certificate's rotation): a patch, conditional on the
    resourceVersion read, so a second writer of the same version gets a 409."""
    kube.create_secret({"metadata": {"name": "trackop-webhook-certs", "namespace": namespace},
                        "stringData": {"tls.crt": "one"}})
    _, version = kube.read_secret_encoded(namespace, "trackop-webhook-certs")
    body = {"metadata": {"name": "trackop-webhook-certs", "namespace": namespace, "resourceVersion": version},
            "data": {"tls.crt": "dHdv"}}
    kube.replace_secret(body)
    assert kube.read_secret(namespace, "trackop-webhook-certs") == {"tls.crt": "two"}
    with pytest.raises(client.ApiException) as conflict:
        kube.replace_secret(body)  # the version read is stale now
    assert conflict.value.status == 409


def test_with_watch_namespaces_the_operator_reaches_secrets_only_there(
        helm: Path, kubectl, chart_crds, make_namespace, kube_api: client.ApiClient, bed_info: dict, tmp_path: Path):
    release = f"n{uuid.uuid4().hex[:8]}"
    namespace, watched, other = (make_namespace(f"{release}-{part}") for part in ("system", "w", "o"))
    objects = render(helm, None, "--set-json", f"watchNamespaces={json.dumps([watched])}", release=release,
                     namespace=namespace)
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                                "RoleBinding")]
    (tmp_path / "rbac.yaml").write_text(yaml.safe_dump_all(rbac))
    kubectl("apply", "--server-side", f"--filename={tmp_path / 'rbac.yaml'}")
    name = only(objects, "ClusterRole")["metadata"]["name"]
    try:
        user = f"system:serviceaccount:{namespace}:{only(objects, 'ServiceAccount')['metadata']['name']}"
        auth = client.AuthorizationV1Api(kube_api)
        eventually(lambda: _can(auth, user, "get", "secrets", namespace=watched), "the RoleBinding", timeout=30)
        as_operator = config.new_client_from_config(config_file=bed_info["kubeconfig"])
        as_operator.set_default_header("Impersonate-User", user)
        as_operator.set_default_header("Impersonate-Group", "system:serviceaccounts")
        kube = Kube(as_operator)

        # What the operator does with --namespace (Settings.watch_namespaces), as itself.
        kube.create_secret({"metadata": {"name": "conn", "namespace": watched}, "stringData": {"PGPASSWORD": "x"}})
        for value in ("1", "2"):
            kube.put_secret({"apiVersion": "v1", "kind": "Secret", "stringData": {"a": value},
                             "metadata": {"name": "copy", "namespace": watched, "labels": {"copy": "yes"}}})
        assert kube.secrets_by_label("copy=yes", [watched]) == {(watched, "copy"): {"a": "2"}}
        assert [m["name"] for m in kube.metadata_list("secrets", watched, "copy=yes")] == ["copy"]
        kube.delete_secret(watched, "copy")
        _replace_only_over_the_version_read(kube, namespace)  # the webhook's certificate, in the release namespace

        # And nowhere else.
        refused = [lambda: kube.secrets_by_label("copy=yes"),  # the cluster-wide LIST
                   lambda: kube.metadata_list("secrets", None, "copy=yes"),
                   lambda: kube.read_secret(other, "anything"),
                   lambda: kube.create_secret({"metadata": {"name": "x", "namespace": other}, "stringData": {}}),
                   lambda: kube.read_secret(namespace, "someone-elses"),  # the release namespace: only its own
                   lambda: kube.secrets_by_label("copy=yes", [namespace])]
        for call in refused:
            with pytest.raises(client.ApiException) as denied:
                call()
            assert denied.value.status == 403
    finally:
        kubectl("delete", "--ignore-not-found", f"clusterrole/{name}", f"clusterrolebinding/{name}")


def test_server_side_apply_create_is_authorized_with_the_objects_name(
        kube_api: client.ApiClient, bed_info: dict, make_namespace):
    """Why the webhook configuration rules may limit create to resourceNames: the API server
    authorizes the create that a server-side apply makes with the object's name. Shown with a
    Role of the same shape on ConfigMaps, for a name that does not exist yet."""
    namespace = make_namespace(f"s{uuid.uuid4().hex[:8]}")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    user = f"system:serviceaccount:{namespace}:applier"
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "named"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"],
                   "verbs": ["create", "patch"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "named"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                   "name": "named"},
        "subjects": [{"kind": "ServiceAccount", "name": "applier", "namespace": namespace}]})
    auth = client.AuthorizationV1Api(kube_api)
    eventually(lambda: _can(auth, user, "patch", "configmaps", namespace=namespace, name="allowed"),
               "the RoleBinding to take effect", timeout=30)
    as_applier = config.new_client_from_config(config_file=bed_info["kubeconfig"])
    as_applier.set_default_header("Impersonate-User", user)
    core = client.CoreV1Api(as_applier)

    def apply(name: str):
        return core.patch_namespaced_config_map(
            name, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}},
            field_manager="t", force=True, _content_type="application/apply-patch+yaml")

    assert apply("allowed").metadata.name == "allowed"  # created
    with pytest.raises(client.ApiException) as refused:
        apply("other")
    assert refused.value.status == 403
