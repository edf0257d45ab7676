"""What a node leaves on the host besides processes and network: mounts, cgroups, and a few
files in host paths that the kubelet, containerd and the CNI plugins use whatever their
own directories are. Each is found by something only this bed has (its directory, its
cgroup root, its CNI network name, its pod-log directory) and removed; nothing else is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

# Made by kubelets and containerd wherever their own directories are: kubelet v1.35's
# device-plugin socket (pluginapi.KubeletSocket), its container-log links
# (/var/log/containers), libcni's result cache, containerd 1.6's shim sockets and Pod
# network namespaces. Shared by every node of the machine; removed by the last one.
SHARED_HOST_PATHS = ["/var/lib/kubelet", "/var/log/containers", "/var/lib/cni", "/run/containerd", "/run/netns"]
# What a node leaves in them once its Pods are gone (anything else means another user).
LEFTOVER_NAMES = {"device-plugins", "kubelet.sock", "kubelet_internal_checkpoint", "results", "s", "runc",
                  "k8s.io", "cache", "networks"}


# ---- mounts ----------------------------------------------------------------------------
def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str, prefixes: list[str], exact: set[str] = frozenset()) -> list[str]:
    """Mount points under any of ``prefixes`` (or equal to one of ``exact``), deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point in exact or any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unmount_all(prefixes: list[str], exact: set[str] = frozenset()) -> list[str]:
    """Unmount everything under ``prefixes`` (lazily if busy); returns what was unmounted."""
    done = []
    for _ in range(5):  # a mount may hide another at the same point
        points = mount_points(Path("/proc/self/mountinfo").read_text(), prefixes, exact)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
            done.append(point)
    return done


# ---- cgroups ---------------------------------------------------------------------------
def cgroup_hierarchies(mountinfo: str) -> list[Path]:
    """Mount points of the cgroup (v1) and cgroup2 hierarchies."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            found.append(Path(_unescape(left.split()[4])))
    return found


def create_cgroup(root: str) -> None:
    """The kubelet's cgroupRoot in every hierarchy (the kubelet checks it exists). In
    cgroup v1's cpuset, a new group has no CPUs or memory nodes until given its parent's."""
    for hierarchy in cgroup_hierarchies(Path("/proc/self/mountinfo").read_text()):
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            mine, parent = path / name, hierarchy / name
            if mine.exists() and parent.exists() and not mine.read_text().strip():
                mine.write_text(parent.read_text())


def kill_cgroup(root: str, timeout: float = 10) -> int:
    """SIGKILL every process left in the bed's cgroup tree (only its Pods can be there) until
    none is; returns how many were found. Before the network goes: a Pod killed after it
    could not close its connections (the API server would wait for them at its own stop)."""
    found: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = set()
        for hierarchy in cgroup_hierarchies(Path("/proc/self/mountinfo").read_text()):
            top = hierarchy / root.lstrip("/")
            for directory, _, _ in os.walk(top):
                members |= _members(Path(directory))
        if not members:
            break
        found |= members
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(found)


def _members(group: Path) -> set[int]:
    try:
        return {int(pid) for pid in (group / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def remove_cgroup(root: str) -> list[str]:
    """Kill what is left in the bed's cgroup tree (only its Pods can be there), then remove
    the tree, deepest first; returns the groups that could not be removed."""
    left = []
    for hierarchy in cgroup_hierarchies(Path("/proc/self/mountinfo").read_text()):
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        groups = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for group in groups:
            _kill_members(group)
        for group in groups:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    _kill_members(group)
                    time.sleep(0.1)
            else:
                left.append(str(group))
    return left


def _kill_members(group: Path) -> None:
    try:
        pids = (group / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


# ---- host files ------------------------------------------------------------------------
def remove_log_links(pod_logs: Path, links_dir: Path = Path("/var/log/containers")) -> int:
    """The kubelet's links in /var/log/containers that point into this bed's pod logs."""
    removed = 0
    if not links_dir.is_dir():
        return 0
    for link in links_dir.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(pod_logs) + "/"):
            link.unlink()
            removed += 1
    return removed


def remove_cni_cache(network: str, sandboxes: set[str], cache: Path = Path("/var/lib/cni")) -> int:
    """libcni's cached results (``results/<network>-<sandbox>-<interface>``) of this bed's
    network, and of containerd's loopback network for this bed's sandboxes."""
    removed = 0
    results = cache / "results"
    mine = (f"{network}-", *(f"cni-loopback-{sandbox}-" for sandbox in sandboxes))
    if results.is_dir():
        for entry in results.iterdir():
            if entry.name.startswith(mine):
                entry.unlink()
                removed += 1
    return removed


def remove_netns_files(paths: set[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def holds_only_leftovers(path: Path) -> bool:
    """Whether ``path`` holds nothing but what nodes leave (LEFTOVER_NAMES, sockets, empty
    directories): a network namespace file of anyone's, for one, is not."""
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(directory) / name
            if name not in LEFTOVER_NAMES and not full.is_socket() and not (full.is_dir() and not full.is_symlink()):
                return False
    return True


def remove_if_only_leftovers(path: Path) -> bool:
    """Remove ``path`` (and a mount on it: ``ip netns add`` bind-mounts /run/netns onto itself
    the first time) if it holds only leftovers; True if removed or absent."""
    path = Path(os.path.realpath(path))
    if not path.exists():
        return True
    if not holds_only_leftovers(path):
        return False
    unmount_all([str(path)])
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()
