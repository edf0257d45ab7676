"""A local stand-in for the kubelet's container runtime, for tests on the local bed.

No kubelet runs on the bed, so Pods that kube-controller-manager creates from trackop's
Jobs, Deployments and StatefulSets would stay Pending. This helper plays the kubelet's part
for them, and **only the container runtime is replaced**: the Pod is read from the API
server as Kubernetes made it; its env is resolved from the API server as the kubelet does
(``value`` with ``$(VAR)`` expansion, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``,
``envFrom`` with prefixes: pod_env.py); the container's ``command`` and ``args`` run as a
local process instead of in the image; and the outcome goes back through the Pod's status
subresource, from which the real controllers in kube-controller-manager complete the Job,
count the Deployment's ready replicas, and roll the StatefulSet
(statefulset_supervisor.py keeps a StatefulSet's Pods running).

What differs from a container, and how it is bridged:

- Network: the Pod's network namespace is the host's loopback, so an argument ``0.0.0.0``
  (bind every interface of the Pod) becomes ``127.0.0.1`` (servers on this machine listen
  on loopback only).
- Filesystem: ``volumeMounts`` are honoured by path translation (pod_env.py).
- Volumes and users: local directories per volume, and the Pod's ``runAsUser`` and
  ``fsGroup`` when asked to (pod_volumes.py).
- Programs: the image is not pulled, so the program named by ``command`` must be installed
  here. PATH is ``image_path`` (directories standing in for the image's, e.g.
  ``tests/images/postgres`` for the postgres image's entrypoint), then this Python
  environment's ``bin`` (the test extra installs ``mlflow``), then the system's. The
  process runs in a scratch directory as its working directory (and HOME), with only the
  Pod's env plus PATH, HOME and LANG.
- Probes: an ``exec`` readinessProbe runs as a local command (same uid, env and
  translation) every ``periodSeconds`` (``probe_period`` overrides it); the Pod is reported
  Running but not Ready until it succeeds, and unready again after ``failureThreshold``
  failures. Without an exec readinessProbe the Pod is reported Ready once started
  (httpGet and tcpSocket probes are not run); livenessProbes are not run.
- Stopping: the stop signal, then SIGKILL to the process group (running_pod.py).
- Exit: a long-running container whose process exits by itself is reported terminated
  with phase Failed (Succeeded for exit 0) and is not restarted here.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kubernetes import client

from trackop.kube.client import Kube

from .kubelet_errors import LocalKubeletError
from .pod_env import expand, resolve_env, translator
from .pod_volumes import (
    Identity,
    check_volumes,
    make_reachable,
    prepare_volumes,
    run_as,
)
from .running_pod import RunningPod, exited
from .statefulset_supervisor import StatefulSetSupervisor


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    volumes: dict[str, Path]
    identity: Identity | None
    translate: Callable[[str], str]

    def popen_kwargs(self) -> dict:
        if self.identity is None:
            return {}
        return {"user": self.identity.uid, "group": self.identity.gid, "extra_groups": self.identity.groups}


class LocalKubelet:
    """Runs Pods from the API server as local processes and reports back through the API."""

    def __init__(self, api_client: client.ApiClient, workdir: Path | None = None, *,
                 image_path: Sequence[str | Path] = (), run_as_users: bool = False) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.kube = Kube(api_client)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="trackop-kubelet-"))
        self.image_path = [str(p) for p in image_path]
        self.run_as_users = run_as_users

    def resolve_env(self, pod: client.V1Pod, container: client.V1Container) -> dict[str, str]:
        """The container's environment, resolved from the API server as the kubelet does."""
        return resolve_env(self.kube, pod, container)

    # ---- processes ---------------------------------------------------------------------
    def _prepare(self, pod: client.V1Pod, container: client.V1Container, *,
                 image_path: Sequence[str | Path] | None = None, run_as_users: bool | None = None) -> _Launch:
        check_volumes(pod)
        if not container.command:
            raise LocalKubeletError(
                f"container {container.name!r} has no command: the local kubelet cannot read an image's entrypoint")
        identity = run_as(pod, container, self.run_as_users if run_as_users is None else run_as_users)
        env = self.resolve_env(pod, container)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if identity is not None and identity.uid != 0:
            make_reachable(self.workdir)
        volumes = prepare_volumes(self.core, self.workdir, pod, identity)
        mounts: dict[str, Path] = {}
        for mount in container.volume_mounts or []:
            if mount.name.startswith("kube-api-access-") and mount.name not in volumes:
                continue
            if mount.name not in volumes:
                raise LocalKubeletError(f"volumeMount {mount.name!r} names no volume of the Pod")
            local = volumes[mount.name]
            if mount.sub_path:
                local = local / mount.sub_path
                local.mkdir(parents=True, exist_ok=True)
            mounts[mount.mount_path] = local
        translate = translator(mounts)
        argv = [expand(part, env) for part in [*container.command, *(container.args or [])]]
        argv = [translate("127.0.0.1" if part == "0.0.0.0" else part) for part in argv]
        env = {name: translate(value) for name, value in env.items()}
        workdir = self.workdir / f"{pod.metadata.namespace}.{pod.metadata.name}.{container.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        if identity is not None:
            os.chown(workdir, identity.uid, identity.gid)
        local_bin = str(Path(sys.executable).parent)
        paths = [str(p) for p in (self.image_path if image_path is None else image_path)]
        base = {
            "PATH": ":".join([*paths, local_bin, "/usr/local/bin:/usr/bin:/bin"]),
            "HOME": str(workdir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        return _Launch(argv, {**base, **env}, workdir, volumes, identity, translate)

    def _container(self, pod: client.V1Pod, name: str | None) -> client.V1Container:
        containers = pod.spec.containers
        if name is None:
            if len(containers) != 1:
                raise LocalKubeletError("the Pod has several containers: name one")
            return containers[0]
        return next(c for c in containers if c.name == name)

    def _status(self, pod: client.V1Pod, phase: str, container: client.V1Container, state: dict,
                ready: bool, start_time: str | None = None) -> bool:
        """Write the Pod's status; False when the Pod is gone."""
        body = {
            "status": {
                "phase": phase,
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "hostIP": "127.0.0.1",
                "startTime": start_time or _now(),
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _now()},
                    {"type": "ContainersReady", "status": "True" if ready else "False",
                     "lastTransitionTime": _now()},
                ],
                "containerStatuses": [{
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "started": "running" in state,
                    "state": state,
                }],
            }
        }
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, body)
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def run_pod(self, pod: client.V1Pod, container: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a Pod's container to completion and report Succeeded or Failed on the Pod."""
        spec = self._container(pod, container)
        launch = self._prepare(pod, spec)
        started = _now()
        self._status(pod, "Running", spec, {"running": {"startedAt": started}}, ready=True, start_time=started)
        result = subprocess.run(launch.argv, env=launch.env, cwd=launch.workdir, capture_output=True, text=True,
                                timeout=timeout, **launch.popen_kwargs())
        phase = "Succeeded" if result.returncode == 0 else "Failed"
        terminated = {"exitCode": result.returncode, "reason": "Completed" if result.returncode == 0 else "Error",
                      "startedAt": started, "finishedAt": _now()}
        self._status(pod, phase, spec, {"terminated": terminated}, ready=False, start_time=started)
        return result

    def start_pod(self, pod: client.V1Pod, container: str | None = None, *,
                  probe_period: float | None = None, stop_signal: int = signal.SIGTERM,
                  image_path: Sequence[str | Path] | None = None, run_as_users: bool | None = None) -> RunningPod:
        """Start a Pod's long-running container in the background and report it Running;
        Ready at once, or once its exec readinessProbe succeeds (see the module's doc)."""
        spec = self._container(pod, container)
        launch = self._prepare(pod, spec, image_path=image_path, run_as_users=run_as_users)
        uid = pod.metadata.uid or ""
        log_path = launch.workdir / f"container-{uid[:8]}.log"
        probe = spec.readiness_probe if spec.readiness_probe is not None and spec.readiness_probe._exec else None
        started = _now()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.workdir, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                       **launch.popen_kwargs())
        grace = pod.spec.termination_grace_period_seconds
        running = RunningPod(pod.metadata.name, pod.metadata.namespace, process, log_path, launch.workdir,
                             pod_uid=uid, volumes=launch.volumes, stop_signal=stop_signal,
                             grace_period=30 if grace is None else grace, ready=probe is None)
        self._status(pod, "Running", spec, {"running": {"startedAt": started}}, ready=running.ready,
                     start_time=started)
        running._monitor = threading.Thread(target=self._watch, args=(running, pod, spec, launch, probe,
                                                                      probe_period, started),
                                            name=f"kubelet-{pod.metadata.name}", daemon=True)
        running._monitor.start()
        return running

    def _probe(self, probe: client.V1Probe, launch: _Launch) -> bool:
        argv = [launch.translate(expand(part, launch.env)) for part in probe._exec.command or []]
        try:
            result = subprocess.run(argv, env=launch.env, cwd=launch.workdir, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    timeout=probe.timeout_seconds or 1, **launch.popen_kwargs())
        except (subprocess.TimeoutExpired, OSError):
            return False
        return result.returncode == 0

    def _watch(self, running: RunningPod, pod: client.V1Pod, spec: client.V1Container, launch: _Launch,
               probe: client.V1Probe | None, probe_period: float | None, started: str) -> None:
        """The container's life after the start: readiness probes, and its exit."""
        period = probe_period or (probe.period_seconds if probe is not None and probe.period_seconds else 10)
        next_probe = time.monotonic() + (probe.initial_delay_seconds or 0 if probe is not None else 0)
        threshold = (probe.failure_threshold if probe is not None else None) or 3
        failures = 0
        try:
            while not running._stopping.is_set():
                if exited(running.pid):
                    if running._stopping.is_set():
                        return
                    code = running._reap()
                    code = 128 - code if code < 0 else code  # killed by a signal: as a runtime says it
                    running.ready = False
                    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                  "startedAt": started, "finishedAt": _now()}
                    self._status(pod, "Succeeded" if code == 0 else "Failed", spec, {"terminated": terminated},
                                 ready=False, start_time=started)
                    return
                if probe is not None and time.monotonic() >= next_probe:
                    ok = self._probe(probe, launch)
                    next_probe = time.monotonic() + period
                    failures = 0 if ok else failures + 1
                    if ok != running.ready and (ok or failures >= threshold) and not running._stopping.is_set():
                        running.ready = ok
                        if not self._status(pod, "Running", spec, {"running": {"startedAt": started}},
                                            ready=ok, start_time=started):
                            return
                running._stopping.wait(0.2)
        except Exception as exc:  # noqa: BLE001 - a thread has nowhere to raise to: say it in the log
            if not running._stopping.is_set():
                with open(running.log_path, "a") as log:
                    log.write(f"\n[local kubelet] watching the container failed: {exc!r}\n")

    # ---- owners ------------------------------------------------------------------------
    def wait_for_pods(self, namespace: str, label_selector: str, timeout: float = 60) -> list[client.V1Pod]:
        """Pods that controllers create for a selector, once at least one exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector).items
            pods = [p for p in pods if p.metadata.deletion_timestamp is None]
            if pods:
                return pods
            time.sleep(0.2)
        raise TimeoutError(f"no Pod for {label_selector!r} in {namespace} after {timeout:.0f}s")

    def run_job(self, namespace: str, name: str, timeout: float = 300) -> client.V1Job:
        """Run each Pod the Job controller makes for Job ``name`` (retries after a failure
        included) until the Job finishes; return the finished Job."""
        ran: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.batch.read_namespaced_job_status(name, namespace)
            done = [c for c in job.status.conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"]
            if done:
                return job
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
            fresh = [p for p in pods if p.metadata.name not in ran and p.metadata.deletion_timestamp is None
                     and (p.status.phase or "Pending") == "Pending"]
            for pod in fresh:
                ran.add(pod.metadata.name)
                self.run_pod(pod, timeout=timeout)
            time.sleep(0.2)
        raise TimeoutError(f"Job {namespace}/{name} did not finish within {timeout:.0f}s")

    def start_deployment(self, namespace: str, name: str) -> RunningPod:
        """Start one of the Pods the Deployment's ReplicaSet made for Deployment ``name``."""
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        labels = deployment.spec.selector.match_labels or {}
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.start_pod(self.wait_for_pods(namespace, selector)[0])

    def supervise_statefulset(self, namespace: str, name: str, stop_signal: int = signal.SIGINT, *,
                              image_path: Sequence[str | Path] | None = None, probe_period: float | None = None,
                              poll_interval: float = 0.25) -> StatefulSetSupervisor:
        """Keep StatefulSet ``name``'s Pods running, as the kubelet of the node they would
        be on, until ``.stop()``: see :class:`StatefulSetSupervisor`."""
        return StatefulSetSupervisor(self, namespace, name, stop_signal=stop_signal, image_path=image_path,
                                     probe_period=probe_period, poll_interval=poll_interval)
