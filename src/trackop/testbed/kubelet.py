"""A local stand-in for the kubelet's container runtime, for tests on the local bed.

No kubelet runs on the bed, so Pods that kube-controller-manager creates from trackop's
Jobs and Deployments would stay Pending. This helper plays the kubelet's part for them,
and **only the container runtime is replaced**: the Pod is read from the API server as
Kubernetes made it; its env is resolved from the API server as the kubelet does
(``value`` with ``$(VAR)`` expansion, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``,
``envFrom`` with prefixes); the container's ``command`` and ``args`` run as a local
process instead of in the image; and the outcome goes back through the Pod's status
subresource, from which the real Job controller in kube-controller-manager completes the
Job (and the Deployment controller counts ready replicas).

What differs from a container: the Pod's network namespace is the host's loopback, so
an argument ``0.0.0.0`` (bind every interface of the Pod) becomes ``127.0.0.1`` (servers
on this machine listen on loopback only); the image is not pulled, so the program named by
``command`` must be installed here (the test extra installs ``mlflow``; this Python
environment's ``bin`` comes first on PATH); the process runs in a scratch directory as
its working directory, with only the Pod's env plus PATH, HOME and LANG; volumes other
than ``emptyDir`` and the automatic service-account token are refused rather than faked.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from ..kube import Kube

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


class LocalKubeletError(RuntimeError):
    """The Pod asks for something this helper cannot give without faking it."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes, unknown stay."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    """A long-running container started for a Pod (a Deployment's server, say)."""

    pod_name: str
    namespace: str
    process: subprocess.Popen
    log_path: Path
    workdir: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


class LocalKubelet:
    """Runs Pods from the API server as local processes and reports back through the API."""

    def __init__(self, api_client: client.ApiClient, workdir: Path | None = None) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.kube = Kube(api_client)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="trackop-kubelet-"))

    # ---- env ---------------------------------------------------------------------------
    def _secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.kube.read_secret(namespace, name)

    def _config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _field(self, pod: client.V1Pod, path: str) -> str:
        meta = pod.metadata
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": pod.spec.node_name or "",
            "spec.serviceAccountName": pod.spec.service_account_name or "",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return simple[path] or ""
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            source = (meta.labels if match.group(1) == "labels" else meta.annotations) or {}
            return source.get(match.group(2), "")
        raise LocalKubeletError(f"fieldRef {path!r} is not supported by the local kubelet")

    def resolve_env(self, pod: client.V1Pod, container: client.V1Container) -> dict[str, str]:
        """The container's environment, resolved from the API server as the kubelet does."""
        namespace = pod.metadata.namespace
        env: dict[str, str] = {}
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.secret_ref is not None:
                data, ref, kind = self._secret_data(namespace, source.secret_ref.name), source.secret_ref, "Secret"
            else:
                data, ref, kind = (self._config_map_data(namespace, source.config_map_ref.name),
                                   source.config_map_ref, "ConfigMap")
            if data is None:
                if ref.optional:
                    continue
                raise LocalKubeletError(f"envFrom: {kind} {namespace}/{ref.name} not found")
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = expand(var.value or "", env)
                continue
            ref = var.value_from
            if ref.secret_key_ref is not None or ref.config_map_key_ref is not None:
                key_ref = ref.secret_key_ref or ref.config_map_key_ref
                kind = "Secret" if ref.secret_key_ref is not None else "ConfigMap"
                data = (self._secret_data if kind == "Secret" else self._config_map_data)(namespace, key_ref.name)
                if data is None or key_ref.key not in data:
                    if key_ref.optional:
                        continue
                    raise LocalKubeletError(
                        f"env {var.name}: {kind} {namespace}/{key_ref.name} key {key_ref.key!r} not found")
                env[var.name] = data[key_ref.key]
            elif ref.field_ref is not None:
                env[var.name] = self._field(pod, ref.field_ref.field_path)
            else:
                raise LocalKubeletError(f"env {var.name}: resourceFieldRef is not supported by the local kubelet")
        return env

    # ---- processes ---------------------------------------------------------------------
    def _check_volumes(self, pod: client.V1Pod) -> None:
        for volume in pod.spec.volumes or []:
            token = volume.projected is not None and volume.name.startswith("kube-api-access-")
            if volume.empty_dir is None and not token:
                raise LocalKubeletError(
                    f"volume {volume.name!r} is not supported by the local kubelet (only emptyDir)")

    def _prepare(self, pod: client.V1Pod, container: client.V1Container) -> tuple[list[str], dict[str, str], Path]:
        if not container.command:
            raise LocalKubeletError(
                f"container {container.name!r} has no command: the local kubelet cannot read an image's entrypoint")
        env = self.resolve_env(pod, container)
        argv = [expand(part, env) for part in [*container.command, *(container.args or [])]]
        argv = ["127.0.0.1" if part == "0.0.0.0" else part for part in argv]
        workdir = self.workdir / f"{pod.metadata.namespace}.{pod.metadata.name}.{container.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        local_bin = str(Path(sys.executable).parent)
        base = {
            "PATH": f"{local_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        return argv, {**base, **env}, workdir

    def _container(self, pod: client.V1Pod, name: str | None) -> client.V1Container:
        containers = pod.spec.containers
        if name is None:
            if len(containers) != 1:
                raise LocalKubeletError("the Pod has several containers: name one")
            return containers[0]
        return next(c for c in containers if c.name == name)

    def _status(self, pod: client.V1Pod, phase: str, container: client.V1Container, state: dict,
                ready: bool) -> None:
        body = {
            "status": {
                "phase": phase,
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "hostIP": "127.0.0.1",
                "startTime": _now(),
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
                    "started": phase == "Running",
                    "state": state,
                }],
            }
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, body)

    def run_pod(self, pod: client.V1Pod, container: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a Pod's container to completion and report Succeeded or Failed on the Pod."""
        self._check_volumes(pod)
        spec = self._container(pod, container)
        argv, env, workdir = self._prepare(pod, spec)
        started = _now()
        self._status(pod, "Running", spec, {"running": {"startedAt": started}}, ready=True)
        result = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True, timeout=timeout)
        phase = "Succeeded" if result.returncode == 0 else "Failed"
        terminated = {"exitCode": result.returncode, "reason": "Completed" if result.returncode == 0 else "Error",
                      "startedAt": started, "finishedAt": _now()}
        self._status(pod, phase, spec, {"terminated": terminated}, ready=False)
        return result

    def start_pod(self, pod: client.V1Pod, container: str | None = None) -> RunningPod:
        """Start a Pod's long-running container in the background and report it Running and Ready."""
        self._check_volumes(pod)
        spec = self._container(pod, container)
        argv, env, workdir = self._prepare(pod, spec)
        log_path = workdir / "container.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self._status(pod, "Running", spec, {"running": {"startedAt": _now()}}, ready=True)
        return RunningPod(pod.metadata.name, pod.metadata.namespace, process, log_path, workdir)

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
