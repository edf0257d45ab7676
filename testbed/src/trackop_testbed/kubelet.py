"""A local stand-in for the kubelet's container runtime, for tests on the local bed.

No kubelet runs on the bed, so Pods that kube-controller-manager creates from trackop's
Jobs, Deployments and StatefulSets would stay Pending. This helper plays the kubelet's part
for them, and **only the container runtime is replaced**: the Pod is read from the API
server as Kubernetes made it; its env is resolved from the API server as the kubelet does
(``value`` with ``$(VAR)`` expansion, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``,
``envFrom`` with prefixes); the container's ``command`` and ``args`` run as a local
process instead of in the image; and the outcome goes back through the Pod's status
subresource, from which the real controllers in kube-controller-manager complete the Job,
count the Deployment's ready replicas, and roll the StatefulSet.

What differs from a container, and how it is bridged:

- Network: the Pod's network namespace is the host's loopback, so an argument ``0.0.0.0``
  (bind every interface of the Pod) becomes ``127.0.0.1`` (servers on this machine listen
  on loopback only).
- Filesystem: the process sees this machine's filesystem, not the container's, so the
  container's ``volumeMounts`` are honoured by path translation: in env values, command,
  args and exec probe commands, a ``mountPath`` (or ``mountPath/...``) that is a whole
  argument or comes right after a ``=`` (``unix_socket_directories=/var/run/postgresql``)
  is replaced by the local directory backing that volume (longest mountPath first;
  ``subPath`` honoured). Paths the program builds itself are not translated, and
  ``readOnly`` and ``readOnlyRootFilesystem`` are not enforced.
- Volumes: ``emptyDir`` is a fresh directory per Pod (``WORKDIR/e/<uid[:8]>/<name>``, any
  medium); ``persistentVolumeClaim`` is a directory per claim,
  ``WORKDIR/pvc/<namespace>/<claimName>/<claim uid>``, that outlives the Pod (a
  StatefulSet's new Pod finds its data) while a claim made again under the same name (after
  ``whenDeleted: Delete``, say) starts empty, as a newly provisioned volume would; the
  claim must exist in the API (it may stay Pending: the bed has no provisioner). The
  automatic service-account token volume is ignored; anything else is refused rather than
  faked. Unix socket paths are limited to 107 bytes: keep WORKDIR short
  when a Pod puts a socket in a volume.
- Users: ``runAsNonRoot`` with ``runAsUser: 0`` is refused. With ``run_as_users`` (always
  for :meth:`LocalKubelet.supervise_statefulset`, off by default elsewhere because this
  machine's Python lives under a 0700 ``/root``), the process runs as ``runAsUser`` and
  ``runAsGroup`` (container over Pod; gid 0 when only the uid is set, as for a uid the
  image does not know) with ``fsGroup`` and ``supplementalGroups`` as its only extra
  groups; ``runAsNonRoot`` without ``runAsUser`` is then refused (the image's USER is
  unknown here). Volume directories are owned by ``runAsUser`` and, as the kubelet does
  for ``fsGroup``, by that group with group rwx and setgid (on the volume's top directory
  only, like ``fsGroupChangePolicy: OnRootMismatch`` on a fresh volume); WORKDIR's parent
  directories get o+x so the uid can reach them. Capabilities, seccomp and
  ``allowPrivilegeEscalation`` are not applied (a non-root uid has no capabilities anyway).
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
- Stopping: the stop signal goes to the main process only (as a runtime signals PID 1;
  ``stop_signal``, SIGTERM by default, SIGINT for the postgres image, whose STOPSIGNAL it
  is), SIGKILL to the process group after the grace period; once the main process exits,
  whatever it left in its process group is killed, as a PID namespace ends with its PID 1.
- Exit: a long-running container whose process exits by itself is reported terminated
  with phase Failed (Succeeded for exit 0) and is not restarted here: a StatefulSet's
  controller then deletes and recreates the Pod, which the supervisor starts afresh.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from kubernetes import client

from trackop.kube import Kube

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


def translator(mounts: dict[str, Path]) -> Callable[[str], str]:
    """Path translation for a container's mounts (mountPath -> local directory): a
    mountPath, or a path under it, as the whole text or right after a ``=``."""
    paths = sorted((p.rstrip("/") for p in mounts if p.rstrip("/")), key=len, reverse=True)
    if not paths:
        return lambda text: text
    local = {p.rstrip("/"): str(d) for p, d in mounts.items()}
    pattern = re.compile(r"(^|=)(" + "|".join(re.escape(p) for p in paths) + r")(?=/|$)")
    return lambda text: pattern.sub(lambda m: m.group(1) + local[m.group(2)], text)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it (its pid, hence its process
    group's id, stays taken until it is reaped)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@dataclass
class _Identity:
    """Who the container's process runs as (no identity: as the kubelet itself)."""

    uid: int
    gid: int
    groups: list[int]


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    volumes: dict[str, Path]
    identity: _Identity | None
    translate: Callable[[str], str]

    def popen_kwargs(self) -> dict:
        if self.identity is None:
            return {}
        return {"user": self.identity.uid, "group": self.identity.gid, "extra_groups": self.identity.groups}


@dataclass
class RunningPod:
    """A long-running container started for a Pod (a Deployment's server, say)."""

    pod_name: str
    namespace: str
    process: subprocess.Popen
    log_path: Path
    workdir: Path
    pod_uid: str = ""
    volumes: dict[str, Path] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    grace_period: float = 30
    ready: bool = False
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _reap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _monitor: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.returncode is None and not _exited(self.process.pid)

    def _reap(self) -> int:
        """After the main process exited: kill what it left in its process group (the
        zombie still holds the group's id, so no other group can have it), then reap."""
        with self._reap_lock:
            if self.process.returncode is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.process.wait()
            return self.process.returncode

    def stop(self, timeout: float | None = None, sig: int | None = None) -> int:
        """Stop the container as a runtime does: ``sig`` (default: the Pod's stop signal)
        to the main process, SIGKILL to its group after ``timeout`` (default: the Pod's
        grace period); return the exit code."""
        self._stopping.set()
        pid = self.process.pid
        if self.alive():
            try:
                os.kill(pid, sig or self.stop_signal)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + (self.grace_period if timeout is None else timeout)
            while not _exited(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _exited(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        code = self._reap()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
        return code


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

    # ---- users and volumes -------------------------------------------------------------
    def _identity(self, pod: client.V1Pod, container: client.V1Container, honour: bool) -> _Identity | None:
        psc = pod.spec.security_context or client.V1PodSecurityContext()
        csc = container.security_context or client.V1SecurityContext()

        def pick(name: str):
            own = getattr(csc, name)
            return own if own is not None else getattr(psc, name)

        uid, gid, non_root = pick("run_as_user"), pick("run_as_group"), pick("run_as_non_root")
        where = f"Pod {pod.metadata.namespace}/{pod.metadata.name} container {container.name!r}"
        if non_root and uid == 0:
            raise LocalKubeletError(f"{where}: runAsNonRoot is set and runAsUser is 0 (the kubelet refuses it too)")
        groups = sorted({g for g in [psc.fs_group, *(psc.supplemental_groups or [])] if g is not None})
        if not honour or (uid is None and gid is None and not groups and not non_root):
            return None
        if uid is None:
            if non_root:
                raise LocalKubeletError(
                    f"{where}: runAsNonRoot without runAsUser: the image's USER is unknown to the local kubelet")
            uid = 0
        identity = _Identity(uid, 0 if gid is None else gid, groups)
        if os.geteuid() != 0:  # not root: only this process's own uid and gid (and its own groups)
            if (identity.uid, identity.gid) != (os.geteuid(), os.getegid()):
                raise LocalKubeletError(f"{where}: running as uid {uid} needs the local kubelet to run as root")
            return None
        return identity

    def _own(self, path: Path, identity: _Identity | None, fs_group: int | None) -> None:
        """Ownership of a volume's directory: runAsUser, and fsGroup (else runAsGroup) with
        group rwx and setgid when fsGroup is set, as the kubelet sets a volume up."""
        if identity is not None and os.geteuid() == 0:
            os.chown(path, identity.uid, identity.gid if fs_group is None else fs_group)
        elif fs_group is not None and os.geteuid() == 0:
            os.chown(path, -1, fs_group)
        if fs_group is not None:
            path.chmod(path.stat().st_mode & 0o7777 | 0o2070)

    def _reachable(self, path: Path) -> None:
        """o+x on ``path`` and every parent, so a non-root uid can reach it (tempfile's
        directories are 0700)."""
        for part in [path, *path.parents]:
            mode = part.stat().st_mode & 0o7777
            if not mode & 0o001:
                part.chmod(mode | 0o001)

    def _volumes(self, pod: client.V1Pod, identity: _Identity | None) -> dict[str, Path]:
        namespace = pod.metadata.namespace
        fs_group = (pod.spec.security_context or client.V1PodSecurityContext()).fs_group
        volumes: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            if volume.projected is not None and volume.name.startswith("kube-api-access-"):
                continue
            if volume.empty_dir is not None:
                path = self.workdir / "e" / pod.metadata.uid[:8] / volume.name
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)  # as the kubelet makes an emptyDir
            elif volume.persistent_volume_claim is not None:
                claim = volume.persistent_volume_claim.claim_name
                try:
                    pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
                except client.ApiException as exc:
                    if exc.status == 404:
                        raise LocalKubeletError(
                            f"volume {volume.name!r}: PersistentVolumeClaim {namespace}/{claim} not found") from None
                    raise
                if pvc.metadata.deletion_timestamp is not None:
                    raise LocalKubeletError(f"volume {volume.name!r}: PersistentVolumeClaim {namespace}/{claim} "
                                            "is being deleted")
                path = self.workdir / "pvc" / namespace / claim / pvc.metadata.uid
                if not path.exists():
                    path.mkdir(parents=True)
                    path.chmod(0o750)
            else:
                raise LocalKubeletError(f"volume {volume.name!r} is not supported by the local kubelet "
                                        "(only emptyDir and persistentVolumeClaim)")
            self._own(path, identity, fs_group)
            volumes[volume.name] = path
        return volumes

    def _check_volumes(self, pod: client.V1Pod) -> None:
        for volume in pod.spec.volumes or []:
            token = volume.projected is not None and volume.name.startswith("kube-api-access-")
            if volume.empty_dir is None and volume.persistent_volume_claim is None and not token:
                raise LocalKubeletError(f"volume {volume.name!r} is not supported by the local kubelet "
                                        "(only emptyDir and persistentVolumeClaim)")

    # ---- processes ---------------------------------------------------------------------
    def _prepare(self, pod: client.V1Pod, container: client.V1Container, *,
                 image_path: Sequence[str | Path] | None = None, run_as_users: bool | None = None) -> _Launch:
        self._check_volumes(pod)
        if not container.command:
            raise LocalKubeletError(
                f"container {container.name!r} has no command: the local kubelet cannot read an image's entrypoint")
        identity = self._identity(pod, container, self.run_as_users if run_as_users is None else run_as_users)
        env = self.resolve_env(pod, container)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if identity is not None and identity.uid != 0:
            self._reachable(self.workdir)
        volumes = self._volumes(pod, identity)
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
                if _exited(running.pid):
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


class StatefulSetSupervisor:
    """A background thread that keeps a StatefulSet's Pods running as local processes.

    Every ``poll_interval`` it lists the Pods the StatefulSet controls (its selector and
    controller reference). A process whose Pod was deleted or replaced (another uid under
    the same name) is stopped first, with ``stop_signal`` and SIGKILL after the Pod's
    ``terminationGracePeriodSeconds``; then each Pending Pod without a process gets one
    (users honoured, exec readinessProbe run). A Pod the local kubelet refuses gets a
    ``CreateContainerConfigError`` waiting state and an entry in :attr:`errors`, and is not
    retried. Pod deletion is immediate on the bed (Pods are never bound to a node), so the
    controller makes the replacement at once; the old process is still stopped before the
    new one starts on the same volume.
    """

    def __init__(self, kubelet: LocalKubelet, namespace: str, name: str, *, stop_signal: int = signal.SIGINT,
                 image_path: Sequence[str | Path] | None = None, probe_period: float | None = None,
                 poll_interval: float = 0.25) -> None:
        self.kubelet, self.namespace, self.name = kubelet, namespace, name
        self.stop_signal, self.image_path, self.probe_period = stop_signal, image_path, probe_period
        self.poll_interval = poll_interval
        self.history: list[RunningPod] = []  # every process started, oldest first
        self.errors: list[str] = []
        self._current: dict[str, RunningPod] = {}  # Pod uid -> process
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"supervise-{namespace}/{name}", daemon=True)
        self._thread.start()

    # ---- for tests ---------------------------------------------------------------------
    def running(self) -> list[RunningPod]:
        """The processes of the StatefulSet's current Pods."""
        with self._lock:
            return list(self._current.values())

    def pod(self, pod_name: str) -> RunningPod | None:
        """The current process of Pod ``pod_name``, if any."""
        return next((p for p in self.running() if p.pod_name == pod_name), None)

    def wait_for(self, pod_name: str, *, not_uid: str | None = None, timeout: float = 60) -> RunningPod:
        """The process for Pod ``pod_name`` once there is one (for a Pod other than uid
        ``not_uid``: a replacement)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.pod(pod_name)
            if current is not None and current.pod_uid != not_uid:
                return current
            time.sleep(0.1)
        raise TimeoutError(f"no process for Pod {self.namespace}/{pod_name} after {timeout:.0f}s; "
                           f"errors: {self.errors}; logs:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        """Every process's log, oldest first, each under a header naming its Pod."""
        with self._lock:
            history = list(self.history)
        return "".join(f"==> {p.namespace}/{p.pod_name} uid {p.pod_uid} pid {p.pid} <==\n{p.logs()}\n"
                       for p in history)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, then every process it started (stop signal, then SIGKILL)."""
        self._done.set()
        self._thread.join()
        with self._lock:
            current, self._current = list(self._current.values()), {}
        for running in current:
            running.stop(timeout)

    def __enter__(self) -> StatefulSetSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - the API may blip; say so, keep going
                message = f"{type(exc).__name__}: {exc}"
                if not self.errors or self.errors[-1] != message:
                    self.errors.append(message)
            self._done.wait(self.poll_interval)

    def _pods(self) -> list[client.V1Pod] | None:
        try:
            sts = self.kubelet.apps.read_namespaced_stateful_set(self.name, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if sts.spec.selector.match_expressions:
            raise LocalKubeletError("StatefulSet selectors with matchExpressions are not supported")
        selector = ",".join(f"{k}={v}" for k, v in (sts.spec.selector.match_labels or {}).items())
        pods = self.kubelet.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [p for p in pods
                if any(ref.controller and ref.uid == sts.metadata.uid for ref in p.metadata.owner_references or [])]

    def _sync(self) -> None:
        pods = self._pods() or []
        live = {p.metadata.uid: p for p in pods if p.metadata.deletion_timestamp is None
                and (p.status.phase or "Pending") not in ("Succeeded", "Failed")}
        with self._lock:
            gone = [uid for uid in self._current if uid not in live]
            stopping = [self._current.pop(uid) for uid in gone]
        for running in stopping:  # before any replacement starts on the same volume
            running.stop()
        for uid, pod in live.items():
            if self._done.is_set():
                return
            if uid in self._current or uid in self._refused or (pod.status.phase or "Pending") != "Pending":
                continue
            try:
                if pod.spec.init_containers:
                    raise LocalKubeletError("initContainers are not supported by the local kubelet")
                running = self.kubelet.start_pod(pod, probe_period=self.probe_period, stop_signal=self.stop_signal,
                                                 image_path=self.image_path, run_as_users=True)
            except LocalKubeletError as exc:
                self._refused.add(uid)
                self.errors.append(f"Pod {self.namespace}/{pod.metadata.name} ({uid}): {exc}")
                spec = pod.spec.containers[0]
                self.kubelet._status(pod, "Pending", spec, {"waiting": {
                    "reason": "CreateContainerConfigError", "message": str(exc)}}, ready=False)
                continue
            with self._lock:
                self._current[uid] = running
                self.history.append(running)
