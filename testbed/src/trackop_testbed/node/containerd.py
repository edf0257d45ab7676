"""The node's container runtime: containerd 1.6 and runc from Debian's packages, driven
through ``ctr`` on the bed's own socket (never the system's /run/containerd).

containerd runs inside the node's network namespace (``nsenter --net``: the host's mount
namespace stays, so the kubelet's volume mounts are the ones containers see), and so do the
CNI plugins it runs and every Pod's network. Its shims (``containerd-shim-runc-v2``) leave
its process group; they are found again by the bed's socket on their command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from .plan import NodePaths, NodePlan

NAMESPACE = "k8s.io"  # the CRI plugin's namespace: what the kubelet sees
SHIM = "containerd-shim-runc-v2"


def in_netns(plan: NodePlan, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={plan.netns_path}", "--", *argv]


def argv(plan: NodePlan, paths: NodePaths) -> list[str]:
    return in_netns(plan, ["containerd", "--config", str(paths.containerd_config)])


def ctr(paths: NodePaths, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(["ctr", "--address", str(paths.containerd_socket), "--namespace", NAMESPACE, *args],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def is_ready(paths: NodePaths) -> bool:
    """containerd answers on its socket and its CRI plugin has loaded."""
    plugins = ctr(paths, "plugins", "ls", timeout=10)
    return any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
               for line in plugins.splitlines())


def image_refs(paths: NodePaths) -> set[str]:
    return set(ctr(paths, "images", "ls", "--quiet").split())


def import_image(paths: NodePaths, archive: Path) -> None:
    """Into the content store only: the CRI plugin unpacks an image for its first container
    (containerd 1.6's WithNewSnapshot), so a bed pays for unpacking only the images it runs
    (measured: 10 s for the four instead of 24-32 s)."""
    ctr(paths, "images", "import", "--no-unpack", str(archive), timeout=600)


def task_ids(paths: NodePaths) -> list[str]:
    return ctr(paths, "tasks", "ls", "--quiet", timeout=30).split()


def container_ids(paths: NodePaths) -> list[str]:
    return ctr(paths, "containers", "ls", "--quiet", timeout=30).split()


def sandbox_netns(paths: NodePaths) -> set[str]:
    """The network namespace files of this containerd's Pods (``/run/netns/cni-...``, bind
    mounts; the app containers name their sandbox's as ``/proc/<pid>/ns/net``, skipped)."""
    found: set[str] = set()
    for cid in container_ids(paths):
        try:
            info = json.loads(ctr(paths, "containers", "info", cid, timeout=30))
        except (RuntimeError, json.JSONDecodeError):
            continue
        for namespace in ((info.get("Spec") or {}).get("linux") or {}).get("namespaces") or []:
            path = namespace.get("path") or ""
            if namespace.get("type") == "network" and not path.startswith("/proc/"):
                found.add(os.path.realpath(path))  # /var/run is a link to /run
    return found


def sandbox_ids(paths: NodePaths) -> set[str]:
    """The ids of every Pod sandbox this containerd has made (read from its root, so also
    when it no longer runs)."""
    directory = paths.containerd_root / "io.containerd.grpc.v1.cri" / "sandboxes"
    return {entry.name for entry in directory.iterdir()} if directory.is_dir() else set()


def kill_all_tasks(paths: NodePaths) -> None:
    """SIGKILL every task and delete it (its shim exits with it)."""
    for tid in task_ids(paths):
        subprocess.run(["ctr", "--address", str(paths.containerd_socket), "--namespace", NAMESPACE,
                        "tasks", "kill", "--signal", "SIGKILL", tid], capture_output=True, timeout=30)
    for tid in task_ids(paths):
        subprocess.run(["ctr", "--address", str(paths.containerd_socket), "--namespace", NAMESPACE,
                        "tasks", "delete", "--force", tid], capture_output=True, timeout=30)


def shim_pids(paths: NodePaths, proc: Path = Path("/proc")) -> list[int]:
    """Shims started by this bed's containerd: ``-address <the bed's socket>`` on their command line."""
    socket = str(paths.containerd_socket)
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [w.decode(errors="replace") for w in words if w]
        if args and Path(args[0]).name == SHIM and _follows(args, "-address", socket):
            pids.append(int(entry.name))
    return pids


def _follows(args: list[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in zip(args, args[1:])) or f"{flag}={value}" in args


def kill_shims(paths: NodePaths) -> list[int]:
    pids = shim_pids(paths)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
