"""Keeping a StatefulSet's Pods running as local processes, as the kubelet of the node they
would be on (through the local kubelet, kubelet.py); :meth:`LocalKubelet.supervise_statefulset`
starts one.

A long-running container whose process exits by itself is reported terminated with phase
Failed (Succeeded for exit 0) and is not restarted here: the StatefulSet's controller then
deletes and recreates the Pod, which the supervisor starts afresh.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from kubernetes import client

from .kubelet_errors import LocalKubeletError
from .running_pod import RunningPod

if TYPE_CHECKING:
    from .kubelet import LocalKubelet


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
