"""Pure builders of the Kubernetes objects trackop owns: spec in, object bodies out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .api import tuning
from .api.v1alpha1 import BACKEND_LABEL, MANAGED_BY, MANAGED_BY_LABEL, BackendSpec, PostgresEndpoint
from .artifacts.azure import AZURE_KEY_ENV, azure_client_env, azure_connection_string
from .artifacts.check import location_for
from .artifacts.gcs import gcs_client_env
from .artifacts.s3 import s3_client_env

MIGRATION_JOB_BACKOFF_LIMIT = 2
MIGRATION_JOB_TTL_SECONDS = 3600
MIGRATION_JOB_DEADLINE_SECONDS = 900


def labels(spec: BackendSpec, component: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        BACKEND_LABEL: spec.name,
        "app.kubernetes.io/component": component,
    }


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _host_for_uri(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def database_uri(spec: BackendSpec, password: str, server: PostgresEndpoint | None = None) -> str:
    """The SQLAlchemy URL MLflow uses; every part URL-encoded, so any password works.
    ``server``: another address of the same server (the operator's own way in)."""
    s = server or spec.postgres
    return (
        f"{spec.url_scheme}://{quote(spec.role, safe='')}:{quote(password, safe='')}"
        f"@{_host_for_uri(s.host)}:{s.port}/{quote(spec.database, safe='')}?sslmode={s.ssl_mode}"
    )


def operator_uri(server: PostgresEndpoint, user: str, password: str, database: str) -> str:
    """A SQLAlchemy URL for the operator's own in-process work (psycopg 3, which the operator
    bundles), e.g. the admin building the template database."""
    return (
        f"postgresql+psycopg://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{_host_for_uri(server.host)}:{server.port}/{quote(database, safe='')}?sslmode={server.ssl_mode}"
    )


def workloads_need_bucket_access(spec: BackendSpec) -> bool:
    """Clients write artifacts to the bucket themselves unless the server proxies them."""
    if spec.artifacts is None:
        return False
    server = spec.tracking_server
    return spec.injection_mode == "Direct" or server is None or not server.serve_artifacts


GCS_KEY_DIR = "/var/run/secrets/trackop/gcs"
GCS_KEY_FILE = f"{GCS_KEY_DIR}/key.json"


def bucket_env(spec: BackendSpec, secret_values: tuple[str, ...] | None) -> dict[str, str]:
    """What a client needs to reach the artifact store, as literal values (for the
    connection Secret): settings plus the credentials in ``secret_values``.

    A GCS service-account key has to be a file (GOOGLE_APPLICATION_CREDENTIALS takes a
    path), so Direct-mode clients of GCS use their own identity; only the server gets the
    key, mounted.
    """
    store = spec.artifacts
    if store is None:
        return {}
    location = location_for(store)
    if store.kind == "s3":
        env = s3_client_env(location)
        if secret_values:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = secret_values
        return env
    if store.kind == "gcs":
        return gcs_client_env(location)
    env = {}
    if secret_values:
        env[AZURE_KEY_ENV] = secret_values[0]
        if location.endpoint:
            env["AZURE_STORAGE_CONNECTION_STRING"] = azure_connection_string(location, secret_values[0])
    return env


def _server_bucket_env(spec: BackendSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The tracking server's env for the store, with credentials by secretKeyRef (never
    literal), plus the volumes and mounts a GCS key file needs: (env, volumes, mounts)."""
    store = spec.artifacts
    location = location_for(store)
    ref = store.credentials_secret

    def from_secret(name: str, key: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref, "key": key}}}

    literal = lambda values: [{"name": k, "value": v} for k, v in values.items()]  # noqa: E731
    if store.kind == "s3":
        secret = [from_secret("AWS_ACCESS_KEY_ID", store.credential_keys[0]),
                  from_secret("AWS_SECRET_ACCESS_KEY", store.credential_keys[1])] if ref else []
        return literal(s3_client_env(location)) + secret, [], []
    if store.kind == "gcs":
        if not ref:
            return literal(gcs_client_env(location)), [], []
        volume = {"name": "gcs-key", "secret": {"secretName": ref, "items": [
            {"key": store.credential_keys[0], "path": "key.json"}]}}
        mount = {"name": "gcs-key", "mountPath": GCS_KEY_DIR, "readOnly": True}
        return literal(gcs_client_env(location, credentials_file=GCS_KEY_FILE)), [volume], [mount]
    # Azure: the key first, so the connection string can refer to it as $(AZURE_STORAGE_ACCESS_KEY).
    secret = [from_secret(AZURE_KEY_ENV, store.credential_keys[0])] if ref else []
    return secret + literal(azure_client_env(location)), [], []


def connection_secret_data(spec: BackendSpec, password: str,
                           bucket_secret: tuple[str, ...] | None = None) -> dict[str, str]:
    """The connection Secret's keys (DESIGN.md). ``bucket_secret`` holds the store's
    credentials, copied only when workloads reach the store themselves (Direct mode, or
    no artifact proxy)."""
    uri = database_uri(spec, password)
    data = {
        "MLFLOW_TRACKING_URI": spec.tracking_server_uri if spec.injection_mode == "Server" else uri,
        "MLFLOW_BACKEND_STORE_URI": uri,
        "PGHOST": spec.postgres.host,
        "PGPORT": str(spec.postgres.port),
        "PGDATABASE": spec.database,
        "PGUSER": spec.role,
        "PGPASSWORD": password,
        "PGSSLMODE": spec.postgres.ssl_mode,
    }
    if spec.artifacts is not None:
        data["MLFLOW_ARTIFACT_ROOT"] = spec.artifacts.uri
    if spec.injection_mode == "Direct":
        # Each Direct client holds a SQLAlchemy pool: keep it to the budgeted size.
        data.update(tuning.pool_env(spec.effective_tuning))
    if workloads_need_bucket_access(spec):
        data.update(bucket_env(spec, bucket_secret))
    return data


def secret_keys(spec: BackendSpec) -> tuple[str, ...]:
    """The keys the connection Secret has for this spec (values do not matter here)."""
    store = spec.artifacts
    placeholder = ("-",) * len(store.credential_keys) if store and store.credentials_secret else None
    return tuple(sorted(connection_secret_data(spec, "-", placeholder)))


def connection_secret(spec: BackendSpec, password: str, owner: Mapping[str, Any],
                      bucket_secret: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": spec.connection_secret,
            "namespace": spec.namespace,
            "labels": labels(spec, "connection"),
            "annotations": {
                "trackop.dev/driver": f"{spec.url_scheme}:// needs the {spec.driver} Python package",
            },
            "ownerReferences": [owner_reference(owner)],
        },
        "stringData": connection_secret_data(spec, password, bucket_secret),
    }


def migration_job(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    """A Job that runs ``mlflow db upgrade`` with the image of the wanted MLflow version.

    The URI comes from the connection Secret through env and ``$(VAR)`` expansion, so the
    password is never in the Job's spec.
    """
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.migration_job,
            "namespace": spec.namespace,
            "labels": {**labels(spec, "migration"), "trackop.dev/mlflow-version": spec.mlflow_version},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": MIGRATION_JOB_BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": MIGRATION_JOB_TTL_SECONDS,
            "activeDeadlineSeconds": MIGRATION_JOB_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": labels(spec, "migration")},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "migrate",
                        "image": spec.migration_image,
                        "command": ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"],
                        "env": [
                            {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {
                                "name": spec.connection_secret, "key": "MLFLOW_BACKEND_STORE_URI"}}},
                            {"name": "HOME", "value": "/tmp"},
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "256Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


# MLflow rejects Host headers it does not know (DNS rebinding protection); setting the list
# replaces its defaults, so they are repeated: localhost and private addresses (pod IPs).
_DEFAULT_ALLOWED_HOSTS = (
    "localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*",
    "10.*", "192.168.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*", "fd00:*",
)

SERVER_DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


def server_allowed_hosts(spec: BackendSpec) -> list[str]:
    name, ns = spec.tracking_server_name, spec.namespace
    service_names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    hosts = [h for n in service_names for h in (n, f"{n}:*")]
    extra = list(spec.tracking_server.allowed_hosts) if spec.tracking_server else []
    return [*hosts, *extra, *_DEFAULT_ALLOWED_HOSTS]


def server_labels(spec: BackendSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/instance": spec.name}


def tracking_server_deployment(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    """``mlflow server`` for the backend. The database URI and bucket keys come from Secrets
    through env (MLflow's CLI reads MLFLOW_BACKEND_STORE_URI itself), never from args."""
    server = spec.tracking_server
    assert server is not None
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {
            "name": spec.connection_secret, "key": "MLFLOW_BACKEND_STORE_URI"}}},
        {"name": "MLFLOW_SERVER_ALLOWED_HOSTS", "value": ",".join(server_allowed_hosts(spec))},
        {"name": "HOME", "value": "/tmp"},
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
            "resources": server.resources or SERVER_DEFAULT_RESOURCES,
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
    selector = server_labels(spec)
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
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {**labels(spec, "tracking-server"), **selector}},
                "spec": pod_spec,
            },
        },
    }


def tracking_server_service(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
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
            "selector": server_labels(spec),
            "ports": [{"name": "http", "port": server.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
