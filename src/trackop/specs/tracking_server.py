"""The MLflow tracking server's Deployment and Service (``spec.server``), pure: spec in, bodies out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import tuning
from ..api.v1alpha1 import BackendSpec, TrackingServerSpec
from ..artifacts import locations
from .common import labels, owner_reference

GCS_KEY_DIR = "/var/run/secrets/trackop/gcs"
GCS_KEY_FILE = f"{GCS_KEY_DIR}/key.json"


def _server_bucket_env(spec: BackendSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The tracking server's env for the store, with credentials by secretKeyRef (never
    literal), plus the volumes and mounts a GCS key file needs: (env, volumes, mounts)."""
    store = spec.artifacts
    location = locations.location_for(store)
    ref = store.credentials_secret

    def from_secret(name: str, key: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref, "key": key}}}

    literal = lambda values: [{"name": k, "value": v} for k, v in values.items()]  # noqa: E731
    if store.kind == "s3":
        secret = [from_secret("AWS_ACCESS_KEY_ID", store.credential_keys[0]),
                  from_secret("AWS_SECRET_ACCESS_KEY", store.credential_keys[1])] if ref else []
        return literal(locations.s3_client_env(location)) + secret, [], []
    if store.kind == "gcs":
        if not ref:
            return literal(locations.gcs_client_env(location)), [], []
        volume = {"name": "gcs-key", "secret": {"secretName": ref, "items": [
            {"key": store.credential_keys[0], "path": "key.json"}]}}
        mount = {"name": "gcs-key", "mountPath": GCS_KEY_DIR, "readOnly": True}
        return literal(locations.gcs_client_env(location, credentials_file=GCS_KEY_FILE)), [volume], [mount]
    # Azure: the key first, so the connection string can refer to it as $(AZURE_STORAGE_ACCESS_KEY).
    secret = [from_secret(locations.AZURE_KEY_ENV, store.credential_keys[0])] if ref else []
    return secret + literal(locations.azure_client_env(location)), [], []


# MLflow rejects Host headers it does not know (DNS rebinding protection); setting the list
# replaces its defaults, so they are repeated: localhost and private addresses (pod IPs).
_DEFAULT_ALLOWED_HOSTS = (
    "localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*",
    "10.*", "192.168.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*", "fd00:*",
)

# Memory of `mlflow server` (MLflow 3.17.2, measured on the node: tests/node): the CLI's own
# process and uvicorn's about 290 MiB, each worker about 250 MiB, and with job execution a
# job runner and seven huey consumers of about 240 MiB each (1.9 GiB). The defaults leave a
# quarter of headroom; the 1 GiB limit of two workers with jobs on was OOMKilled.
BASE_MIB, WORKER_MIB, JOBS_MIB = 512, 256, 2048


def default_resources(server: TrackingServerSpec) -> dict[str, Any]:
    """Requests and limits when spec.server.resources is unset, by the server's own needs."""
    limit = BASE_MIB + WORKER_MIB * server.workers + (JOBS_MIB if server.job_execution else 0)
    return {"requests": {"cpu": "100m", "memory": f"{limit // 2}Mi"}, "limits": {"memory": f"{limit}Mi"}}


def allowed_hosts(spec: BackendSpec) -> list[str]:
    name, ns = spec.tracking_server_name, spec.namespace
    service_names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    hosts = [h for n in service_names for h in (n, f"{n}:*")]
    extra = list(spec.tracking_server.allowed_hosts) if spec.tracking_server else []
    return [*hosts, *extra, *_DEFAULT_ALLOWED_HOSTS]


def selector_labels(spec: BackendSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/instance": spec.name}


def deployment(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    """``mlflow server`` for the backend. The database URI and bucket keys come from Secrets
    through env (MLflow's CLI reads MLFLOW_BACKEND_STORE_URI itself), never from args."""
    server = spec.tracking_server
    assert server is not None
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {
            "name": spec.connection_secret, "key": "MLFLOW_BACKEND_STORE_URI"}}},
        {"name": "MLFLOW_SERVER_ALLOWED_HOSTS", "value": ",".join(allowed_hosts(spec))},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "true" if server.job_execution else "false"},
        *({"name": k, "value": v} for k, v in tuning.pool_env(spec.effective_tuning).items()),
    ]
    args = ["--host", "0.0.0.0", "--port", str(server.port), "--workers", str(server.workers)]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.artifacts is not None:
        if server.serve_artifacts:
            args.append("--serve-artifacts")
            env.append({"name": "MLFLOW_ARTIFACTS_DESTINATION", "value": spec.artifacts.uri})
        else:
            args.append("--no-serve-artifacts")
            env.append({"name": "MLFLOW_DEFAULT_ARTIFACT_ROOT", "value": spec.artifacts.uri})
        store_env, store_volumes, store_mounts = _server_bucket_env(spec)
        env += store_env
        volumes += store_volumes
        mounts += store_mounts
    probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 3}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": server.service_account is not None,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "mlflow",
            "image": server.image,
            "command": ["mlflow", "server"],
            "args": args,
            "env": env,
            "ports": [{"name": "http", "containerPort": server.port, "protocol": "TCP"}],
            "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
            "livenessProbe": {**probe, "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 6},
            "resources": server.resources or default_resources(server),
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if server.service_account:
        pod_spec["serviceAccountName"] = server.service_account
    selector = selector_labels(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.tracking_server_name,
            "namespace": spec.namespace,
            "labels": {**labels(spec, "tracking-server"), **selector},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "replicas": server.replicas,
            # The deployment controller reports Progressing=False, ProgressDeadlineExceeded
            # after this long without progress; trackop reads it (specs.progress).
            "progressDeadlineSeconds": server.progress_deadline,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {**labels(spec, "tracking-server"), **selector}},
                "spec": pod_spec,
            },
        },
    }


def service(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    server = spec.tracking_server
    assert server is not None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.tracking_server_name,
            "namespace": spec.namespace,
            "labels": labels(spec, "tracking-server"),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [{"name": "http", "port": server.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
