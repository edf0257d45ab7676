"""Pure builders of the Kubernetes objects trackop owns: spec in, object bodies out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .api import BACKEND_LABEL, MANAGED_BY, MANAGED_BY_LABEL, BackendSpec

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


def database_uri(spec: BackendSpec, password: str) -> str:
    """The SQLAlchemy URL MLflow uses; every part URL-encoded, so any password works."""
    s = spec.server
    return (
        f"{spec.url_scheme}://{quote(spec.role, safe='')}:{quote(password, safe='')}"
        f"@{_host_for_uri(s.host)}:{s.port}/{quote(spec.database, safe='')}?sslmode={s.ssl_mode}"
    )


def connection_secret_data(spec: BackendSpec, password: str) -> dict[str, str]:
    """The connection Secret's keys (DESIGN.md). Until a tracking server exists, workloads
    reach MLflow through the database URI."""
    uri = database_uri(spec, password)
    return {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_BACKEND_STORE_URI": uri,
        "PGHOST": spec.server.host,
        "PGPORT": str(spec.server.port),
        "PGDATABASE": spec.database,
        "PGUSER": spec.role,
        "PGPASSWORD": password,
        "PGSSLMODE": spec.server.ssl_mode,
    }


def connection_secret(spec: BackendSpec, password: str, owner: Mapping[str, Any]) -> dict[str, Any]:
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
        "stringData": connection_secret_data(spec, password),
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
