"""The local kubelet runs a StatefulSet's PostgreSQL Pod the way a node would: the real
StatefulSet controller makes the Pod and its claim, and replaces the Pod on a template
change or after its container died; the local kubelet runs the container as a process of
the Pod's uid, with the claim's data kept across replacements, and readiness comes from
the Pod's own exec probe."""

from __future__ import annotations

import glob
import os
import secrets
import signal
import time
from pathlib import Path

import psycopg
import pytest
from kubernetes import client

from helpers import eventually
from trackop_testbed.kubelet_errors import LocalKubeletError
from trackop_testbed.procs import free_ports, is_listening

pytestmark = pytest.mark.bed

# The postgres image's entrypoint stand-in, and the image's PATH entry for its binaries.
IMAGE = Path(__file__).resolve().parents[1] / "images" / "postgres"
PG_BIN = max(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(path.split("/")[4]), default="")
LABELS = {"app.kubernetes.io/managed-by": "trackop", "trackop.dev/backend": "db",
          "app.kubernetes.io/component": "postgres"}


def _args(port: int, max_connections: int) -> list[str]:
    return ["postgres", "-c", f"port={port}", "-c", "unix_socket_directories=/var/run/postgresql",
            "-c", f"max_connections={max_connections}", "-c", "shared_buffers=16MB"]


def _statefulset(port: int) -> dict:
    """What the operator will write for a managed PostgreSQL named ``db`` (one replica)."""
    probe = {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                  "-d", "postgres"]}}
    secret = lambda key: {"secretKeyRef": {"name": "db-postgres", "key": key}}  # noqa: E731
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db-postgres", "labels": LABELS},
        "spec": {
            "replicas": 1,
            "serviceName": "db-postgres",
            "selector": {"matchLabels": LABELS},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "postgres",
                        "image": "docker.io/library/postgres:17",
                        "command": ["docker-entrypoint.sh"],
                        "args": _args(port, 100),
                        "env": [
                            {"name": "POSTGRES_USER", "valueFrom": secret("username")},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": secret("password")},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            {"name": "POSTGRES_HOST_AUTH_METHOD", "value": "scram-sha-256"},
                        ],
                        "ports": [{"name": "postgres", "containerPort": port}],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                        "readinessProbe": {**probe, "periodSeconds": 5},
                        "livenessProbe": {**probe, "periodSeconds": 10, "initialDelaySeconds": 30},
                    }],
                    "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _ready_pod(core_v1: client.CoreV1Api, namespace: str, name: str, not_uid: str | None = None):
    try:
        pod = core_v1.read_namespaced_pod(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    statuses = pod.status.container_statuses or []
    ready = (pod.status.phase == "Running" and conditions.get("Ready") == "True"
             and conditions.get("ContainersReady") == "True" and statuses and statuses[0].ready)
    return pod if ready and pod.metadata.uid != not_uid else None


def _ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: [int(v) for v in fields[key].split()] for key in ("Uid", "Gid", "Groups")}


def _leftovers(groups: set[int], text: str) -> list[int]:
    """Processes in one of the process groups ``groups`` or with ``text`` in their command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                pgid = os.getpgid(int(entry.name))
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if pgid in groups or text in cmdline:
                pids.append(int(entry.name))
    return pids


def test_statefulset_postgres_rolls_with_its_data(kube_api, core_v1, namespace, kubelet):
    assert PG_BIN, "no /usr/lib/postgresql/<major>/bin: run make setup"
    apps = client.AppsV1Api(kube_api)
    password = secrets.token_urlsafe(18)
    core_v1.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="db-postgres"), string_data={"username": "admin", "password": password}))
    port = free_ports(1)[0]
    apps.create_namespaced_stateful_set(namespace, _statefulset(port))
    dsn = {"host": "127.0.0.1", "port": port, "user": "admin", "password": password, "dbname": "postgres",
           "sslmode": "disable", "connect_timeout": 5}

    supervisor = kubelet.supervise_statefulset(namespace, "db-postgres", image_path=[IMAGE, PG_BIN],
                                               probe_period=0.5)
    try:
        first = supervisor.wait_for("db-postgres-0", timeout=60)
        pod = eventually(lambda: _ready_pod(core_v1, namespace, "db-postgres-0"), "db-postgres-0 Ready",
                         timeout=90)
        assert pod.metadata.uid == first.pod_uid
        eventually(lambda: apps.read_namespaced_stateful_set_status("db-postgres", namespace).status.ready_replicas
                   == 1, "readyReplicas 1 from the StatefulSet controller", timeout=60)
        # The controller made the claim; nothing provisions it, and the kubelet backs it locally.
        claim = core_v1.read_namespaced_persistent_volume_claim("data-db-postgres-0", namespace)
        assert claim.status.phase == "Pending"
        assert first.volumes["data"] == kubelet.workdir / "pvc" / namespace / "data-db-postgres-0" / claim.metadata.uid
        assert (first.volumes["data"] / "pgdata" / "PG_VERSION").is_file()
        assert (first.volumes["run"] / f".s.PGSQL.{port}").is_socket()  # unix_socket_directories translated
        data_dir = first.volumes["data"].stat()
        assert (data_dir.st_uid, data_dir.st_gid, data_dir.st_mode & 0o7777) == (999, 999, 0o2770)
        assert _ids(first.pid) == {"Uid": [999] * 4, "Gid": [999] * 4, "Groups": [999]}

        with psycopg.connect(**dsn) as conn:
            assert conn.execute("SELECT current_setting('max_connections')").fetchone() == ("100",)
            assert conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'admin'"
                                ).fetchone() == (True,)
            conn.execute("CREATE TABLE marks (mark text PRIMARY KEY)")
            conn.execute("INSERT INTO marks VALUES ('before the roll')")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**{**dsn, "password": "wrong"}).close()

        # A template change: the real controller deletes pod-0 and makes a new one.
        apps.patch_namespaced_stateful_set("db-postgres", namespace, [
            {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": _args(port, 50)}])
        second = supervisor.wait_for("db-postgres-0", not_uid=first.pod_uid, timeout=90)
        assert not first.alive() and first.process.returncode == 0, "the old postmaster shut down cleanly"
        pod = eventually(lambda: _ready_pod(core_v1, namespace, "db-postgres-0", not_uid=first.pod_uid),
                         "the new db-postgres-0 Ready", timeout=90)
        assert pod.metadata.uid == second.pod_uid != first.pod_uid

        def rolled():
            sts = apps.read_namespaced_stateful_set_status("db-postgres", namespace)
            status = sts.status
            return (status.ready_replicas == 1 and status.updated_replicas == 1
                    and status.current_revision == status.update_revision)
        eventually(rolled, "the StatefulSet rolled and ready", timeout=60)

        assert second.volumes["data"] == first.volumes["data"]  # the same claim, the same data
        assert second.volumes["run"] != first.volumes["run"]    # a fresh emptyDir
        assert _ids(second.pid)["Uid"] == [999] * 4
        with psycopg.connect(**dsn) as conn:
            assert conn.execute("SELECT current_setting('max_connections')").fetchone() == ("50",)
            assert conn.execute("SELECT mark FROM marks").fetchall() == [("before the roll",)]

        # The postmaster dies: the Pod is reported Failed, the controller replaces it, and the
        # new process recovers the same data.
        os.kill(second.pid, signal.SIGKILL)
        third = supervisor.wait_for("db-postgres-0", not_uid=second.pod_uid, timeout=60)
        eventually(lambda: _ready_pod(core_v1, namespace, "db-postgres-0", not_uid=second.pod_uid),
                   "db-postgres-0 Ready after the crash", timeout=90)
        assert third.volumes["data"] == first.volumes["data"]
        with psycopg.connect(**dsn) as conn:
            assert conn.execute("SELECT mark FROM marks").fetchall() == [("before the roll",)]

        logs = supervisor.logs()
        assert "received fast shutdown request" in logs  # SIGINT, the image's STOPSIGNAL
        assert "automatic recovery in progress" in logs
        assert logs.count("database system is ready to accept connections") == 3
        assert logs.count("Success. You can now start the database server") == 1  # initdb once
        assert password not in logs
        assert supervisor.errors == []
        assert third.pid in _leftovers({third.pid}, str(kubelet.workdir))  # the check below sees a live one
    finally:
        supervisor.stop()

    assert [p for p in supervisor.history if p.alive()] == []
    # Each container's processes are in its process group; the postmaster's command line
    # names the kubelet's directories (unix_socket_directories).
    groups = {p.pid for p in supervisor.history}
    assert _leftovers(groups, str(kubelet.workdir)) == [], "a postgres process outlived the supervisor"
    assert not is_listening(port)


def test_exec_readiness_probe_gates_ready_and_exit_is_reported(core_v1, namespace, kubelet):
    pod = core_v1.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="probed"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(
                name="main", image="busybox", command=["sleep", "300"],
                env=[client.V1EnvVar(name="FLAG", value="/flags/ready")],
                volume_mounts=[client.V1VolumeMount(name="flags", mount_path="/flags")],
                readiness_probe=client.V1Probe(_exec=client.V1ExecAction(command=["test", "-e", "$(FLAG)"]),
                                               period_seconds=30),
            )],
            volumes=[client.V1Volume(name="flags", empty_dir=client.V1EmptyDirVolumeSource())],
        ),
    ))
    running = kubelet.start_pod(pod, probe_period=0.2)
    try:
        def container_status():
            status = core_v1.read_namespaced_pod_status("probed", namespace).status
            conditions = {c.type: c.status for c in status.conditions or []}
            return status.phase, conditions.get("Ready"), status.container_statuses[0]

        time.sleep(1)  # several probe periods: the flag does not exist yet
        phase, ready, container = container_status()
        assert (phase, ready, container.ready) == ("Running", "False", False)
        assert container.state.running is not None
        (running.volumes["flags"] / "ready").touch()  # /flags/ready, through the translation
        def ready_now():
            _, ready, container = container_status()
            return ready == "True" and container.ready
        eventually(ready_now, "Ready once the probe passes", timeout=10)

        os.kill(running.pid, signal.SIGKILL)
        eventually(lambda: container_status()[0] == "Failed", "phase Failed after the process died", timeout=10)
        _, ready, container = container_status()
        assert ready == "False" and container.state.terminated.exit_code == 137
    finally:
        running.stop(timeout=5)
    assert not running.alive()


def _bad_pod(core_v1, namespace: str, name: str, *, volume=None, pod_security=None) -> client.V1Pod:
    return core_v1.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            security_context=pod_security,
            containers=[client.V1Container(name="main", image="busybox", command=["sleep", "300"])],
            volumes=[volume] if volume else None,
        ),
    ))


def test_what_the_local_kubelet_cannot_give_is_refused(kube_api, core_v1, namespace, kubelet):
    host = client.V1Volume(name="host", host_path=client.V1HostPathVolumeSource(path="/etc"))
    with pytest.raises(LocalKubeletError, match="volume 'host' is not supported"):
        kubelet.start_pod(_bad_pod(core_v1, namespace, "hostpath", volume=host))
    missing = client.V1Volume(name="data", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
        claim_name="nowhere"))
    with pytest.raises(LocalKubeletError, match=f"PersistentVolumeClaim {namespace}/nowhere not found"):
        kubelet.start_pod(_bad_pod(core_v1, namespace, "noclaim", volume=missing))
    root = client.V1PodSecurityContext(run_as_non_root=True, run_as_user=0)
    with pytest.raises(LocalKubeletError, match="runAsNonRoot is set and runAsUser is 0"):
        kubelet.start_pod(_bad_pod(core_v1, namespace, "root", pod_security=root))
    unknown = client.V1PodSecurityContext(run_as_non_root=True)
    with pytest.raises(LocalKubeletError, match="runAsNonRoot without runAsUser"):
        kubelet.start_pod(_bad_pod(core_v1, namespace, "unknown", pod_security=unknown), run_as_users=True)

    # Through the supervisor: the Pod says why it does not start, as a kubelet's would.
    apps = client.AppsV1Api(kube_api)
    body = _statefulset(free_ports(1)[0])
    body["spec"]["template"]["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/etc"}})
    apps.create_namespaced_stateful_set(namespace, body)
    supervisor = kubelet.supervise_statefulset(namespace, "db-postgres", image_path=[IMAGE, PG_BIN])
    try:
        eventually(lambda: supervisor.errors, "the supervisor's refusal", timeout=60)
        assert "volume 'host' is not supported" in supervisor.errors[0]

        def waiting():
            statuses = core_v1.read_namespaced_pod_status("db-postgres-0", namespace).status.container_statuses
            return statuses and statuses[0].state.waiting
        state = eventually(waiting, "a waiting container state", timeout=10)
        assert state.reason == "CreateContainerConfigError" and "volume 'host' is not supported" in state.message
        assert supervisor.running() == []
    finally:
        supervisor.stop()
