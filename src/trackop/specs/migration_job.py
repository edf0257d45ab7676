"""The Job that runs ``mlflow db upgrade`` with the official image (``schema.migration: Job``), pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import BackendSpec
from .common import labels, owner_reference

BACKOFF_LIMIT = 2
TTL_SECONDS = 3600
DEADLINE_SECONDS = 900

# ``mlflow db upgrade`` is MLflow's own console script (``mlflow.cli:cli``), run in-process
# with its URL argument read from the environment: ``mlflow db upgrade $(URI)`` would have
# the kubelet expand the password into the container's argv (/proc/<pid>/cmdline is
# readable on the node), and ``sh -c 'mlflow db upgrade "$URI"'`` into mlflow's own. Click
# parses ``args`` as it would argv (and exits with the command's status); the process's argv
# stays ``python -c <this program>``.
URI_ENV = "MLFLOW_BACKEND_STORE_URI"
UPGRADE_PROGRAM = ("import os; from mlflow.cli import cli; "
                   f"cli.main(args=['db', 'upgrade', os.environ['{URI_ENV}']], prog_name='mlflow')")
UPGRADE_COMMAND = ["python", "-c", UPGRADE_PROGRAM]


def migration_job(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    """A Job that runs ``mlflow db upgrade`` with the image of the wanted MLflow version.

    The URI comes from the connection Secret through env, read by the process itself: the
    password is neither in the Job's spec nor in any process's argv.
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
            "backoffLimit": BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
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
                        "command": list(UPGRADE_COMMAND),
                        "env": [
                            {"name": URI_ENV, "valueFrom": {"secretKeyRef": {
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
