"""Helpers of the tests on the real node (tests/node): the chart, helm, Pods and Secrets."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from helpers import eventually
from kubernetes import client
from trackop_testbed import binaries

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "trackop"
RELEASE = "trackop"
RELEASE_NAMESPACE = "trackop-system"


class Helm:
    """The helm CLI on the node bed's cluster."""

    def __init__(self, kubeconfig: str) -> None:
        self.binary = binaries.ensure_helm()
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, timeout: float = 600) -> str:
        argv = [str(self.binary), "--kubeconfig", self.kubeconfig, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout


def image_values(reference: str) -> list[str]:
    """--set arguments for the chart's image: the bed's, never pulled."""
    repository, _, tag = reference.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]


def secret_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    secret = core.read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def wait_pod_phase(core: client.CoreV1Api, namespace: str, selector: str, phases: set[str],
                   timeout: float = 300) -> client.V1Pod:
    """The first Pod matching ``selector`` in one of ``phases``; fails with the Pods' state."""
    def found():
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return next((p for p in pods if p.status.phase in phases), None)

    try:
        return eventually(found, f"a pod {selector} in {sorted(phases)}", timeout=timeout, interval=1)
    except AssertionError as exc:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        states = [(p.metadata.name, p.status.phase, [(c.name, c.state.to_dict()) for c in p.status.container_statuses or []])
                  for p in pods]
        raise AssertionError(f"{exc}; pods: {states}") from None


def pod_log(core: client.CoreV1Api, namespace: str, pod: str) -> str:
    """A container's log as text (the client's own decoding returns a bytes repr for it)."""
    return core.read_namespaced_pod_log(pod, namespace, _preload_content=False).data.decode()
