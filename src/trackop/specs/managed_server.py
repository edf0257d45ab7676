"""A PostgreSQL server trackop deploys for one backend (``spec.postgres.managed``), pure.

Two engines:

* ``StatefulSet``: one PostgreSQL of the official image, with a PersistentVolumeClaim, a
  Service and a generated superuser Secret. Tuning with scope Server becomes the server's
  startup parameters (``postgres -c name=value``), so a change rolls the pod: the
  StatefulSet controller stops the old server (the image's STOPSIGNAL is SIGINT, a fast
  shutdown) before it starts the new one on the same volume.
* ``CloudNativePG``: a CloudNativePG ``Cluster`` (instances, storage, and the same tuning
  as ``postgresql.parameters``). High availability is CloudNativePG's job: trackop never
  replicates anything itself. CloudNativePG makes the ``-rw`` Service and the superuser
  Secret, and applies parameter changes in the order PostgreSQL requires of standbys.

Everything here decides (spec in, object bodies out; the verdicts on them are in
``managed_server_status``); ``reconcile`` applies. Once the server is ready, the backend
is provisioned on it by the same code as for an external server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import tuning
from ..api.v1alpha1 import ENGINE_CNPG, ENGINE_STATEFULSET, BackendSpec
from .common import labels, owner_reference

COMPONENT = "postgres"
SUPERUSER = "postgres"
# The official image's postgres user and group.
POSTGRES_UID = 999
DATA_MOUNT = "/var/lib/postgresql/data"
# A subdirectory: a fresh volume's root may hold lost+found, and initdb wants an empty directory.
PGDATA = f"{DATA_MOUNT}/pgdata"
SOCKET_DIR = "/var/run/postgresql"
DATA_VOLUME = "data"
TERMINATION_GRACE_SECONDS = 60
DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}}

CNPG_GROUP = "postgresql.cnpg.io"
CNPG_VERSION = "v1"
CNPG_PLURAL = "clusters"
CNPG_CRD = f"{CNPG_PLURAL}.{CNPG_GROUP}"


def parameters(spec: BackendSpec) -> dict[str, str]:
    """The server-wide settings a managed server starts with: tuning with scope Server.
    Scope Database is applied per database with ALTER DATABASE, as on any server."""
    if spec.tuning is None or spec.tuning.scope != tuning.SCOPE_SERVER:
        return {}
    return tuning.settings_for_scope(spec.tuning)


def _meta(spec: BackendSpec, name: str, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": spec.namespace, "labels": labels(spec, COMPONENT)}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def superuser_secret(spec: BackendSpec, password: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """The StatefulSet engine's superuser, generated once (CloudNativePG makes its own)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/basic-auth",
        "metadata": _meta(spec, spec.managed.superuser_secret, owner),
        "stringData": {"username": SUPERUSER, "password": password},
    }


def pod_labels(spec: BackendSpec) -> dict[str, str]:
    return labels(spec, COMPONENT)


def server_args(spec: BackendSpec, settings: Mapping[str, str]) -> list[str]:
    """``postgres`` and its ``-c`` startup parameters, in a stable order (a changed order
    would roll the pod for nothing)."""
    args = ["postgres", "-c", f"port={spec.managed.port}", "-c", f"unix_socket_directories={SOCKET_DIR}"]
    for name in sorted(settings):
        args += ["-c", f"{name}={settings[name]}"]
    return args


def parameters_from_args(args: list[str] | None) -> dict[str, str]:
    """The ``-c name=value`` pairs of a server's args (to say what a roll changes)."""
    found: dict[str, str] = {}
    args = list(args or [])
    for flag, value in zip(args, args[1:]):
        if flag == "-c" and "=" in value:
            name, _, setting = value.partition("=")
            found[name] = setting
    return found


def statefulset(spec: BackendSpec, owner: Mapping[str, Any], settings: Mapping[str, str]) -> dict[str, Any]:
    managed = spec.managed
    port = managed.port
    secret = managed.superuser_secret
    ready_check = ["pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres"]
    container = {
        "name": COMPONENT,
        "image": managed.image,
        # The image's own entrypoint, named because a command must be explicit: it runs initdb
        # on an empty volume (superuser and password from the env) and then the server.
        "command": ["docker-entrypoint.sh"],
        "args": server_args(spec, settings),
        "env": [
            {"name": "POSTGRES_USER", "valueFrom": {"secretKeyRef": {"name": secret, "key": "username"}}},
            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}},
            {"name": "POSTGRES_HOST_AUTH_METHOD", "value": "scram-sha-256"},
            {"name": "PGDATA", "value": PGDATA},
        ],
        "ports": [{"name": "postgres", "containerPort": port, "protocol": "TCP"}],
        # Startup covers initdb and crash recovery; liveness only starts after it.
        "startupProbe": {"exec": {"command": ready_check}, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {"exec": {"command": ready_check}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"exec": {"command": ready_check}, "periodSeconds": 10, "failureThreshold": 6,
                          "timeoutSeconds": 5},
        "resources": dict(managed.resources) if managed.resources else DEFAULT_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": DATA_MOUNT},
            {"name": "run", "mountPath": SOCKET_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": managed.storage_size}}}
    if managed.storage_class:
        claim["storageClassName"] = managed.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(spec, managed.name, owner),
        "spec": {
            "replicas": 1,
            "serviceName": managed.service,
            "selector": {"matchLabels": pod_labels(spec)},
            "updateStrategy": {"type": "RollingUpdate"},
            # Retain keeps the data when the backend (and so the StatefulSet) goes; Delete lets
            # the StatefulSet controller hand the claim to the garbage collector with it.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Delete" if spec.deletion_policy == "Delete" else "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {"labels": pod_labels(spec)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": POSTGRES_UID,
                        "runAsGroup": POSTGRES_UID,
                        "fsGroup": POSTGRES_UID,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": DATA_VOLUME, "labels": pod_labels(spec)},
                "spec": claim,
            }],
        },
    }


def service(spec: BackendSpec, owner: Mapping[str, Any]) -> dict[str, Any]:
    port = spec.managed.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, spec.managed.service, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": pod_labels(spec),
            "ports": [{"name": "postgres", "port": port, "targetPort": "postgres", "protocol": "TCP"}],
        },
    }


def claim_name(spec: BackendSpec) -> str:
    """The PersistentVolumeClaim the StatefulSet controller makes for the one instance."""
    return f"{DATA_VOLUME}-{spec.managed.name}-0"


def cnpg_cluster(spec: BackendSpec, owner: Mapping[str, Any] | None, settings: Mapping[str, str]) -> dict[str, Any]:
    managed = spec.managed
    storage: dict[str, Any] = {"size": managed.storage_size}
    if managed.storage_class:
        storage["storageClass"] = managed.storage_class
    body: dict[str, Any] = {
        "apiVersion": f"{CNPG_GROUP}/{CNPG_VERSION}",
        "kind": "Cluster",
        "metadata": _meta(spec, managed.name, owner),
        "spec": {
            "instances": managed.instances,
            "imageName": managed.image,
            # trackop provisions the backend's database and role as this superuser (the
            # Secret <cluster>-superuser); CloudNativePG leaves it off unless asked.
            "enableSuperuserAccess": True,
            "storage": storage,
            "postgresql": {"parameters": dict(sorted(settings.items()))},
        },
    }
    if managed.resources:
        body["spec"]["resources"] = dict(managed.resources)
    return body


def primary_pod_selector(spec: BackendSpec) -> str | None:
    """The label selector of the primary's pod (CloudNativePG); None for the StatefulSet, whose
    one pod has a fixed name."""
    if spec.managed.engine == ENGINE_CNPG:
        return f"cnpg.io/cluster={spec.managed.name},cnpg.io/instanceRole=primary"
    return None


def pod_name(spec: BackendSpec) -> str:
    assert spec.managed.engine == ENGINE_STATEFULSET
    return f"{spec.managed.name}-0"
