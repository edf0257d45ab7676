"""Whether the bed starts a node: asked for (``--node``/``--no-node``, ``TRACKOP_TESTBED_NODE``)
and possible here (root, usable iptables, network namespaces, cgroups, the packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .configs import CNI_BIN_DIR, RUNC

ENV = "TRACKOP_TESTBED_NODE"
# Commands the node runs, and the Debian package of each (hack/setup.sh installs them).
COMMANDS = {
    "containerd": "containerd", "containerd-shim-runc-v2": "containerd", "ctr": "containerd",
    "iptables": "iptables", "iptables-save": "iptables", "iptables-restore": "iptables",
    "conntrack": "conntrack", "ip": "iproute2", "nsenter": "util-linux", "mount": "mount",
    "mmdebstrap": "mmdebstrap", "gcc": "gcc",
}
CNI_PLUGINS = ("bridge", "host-local", "loopback")
STATIC_LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.a")


def mode(flag: bool | None) -> str:
    """``on`` (a node, or an error saying why not), ``off``, or ``auto`` (a node where possible)."""
    if flag is not None:
        return "on" if flag else "off"
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes"):
        return "on"
    return "auto"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the bed's node, or None if it can."""
    if os.geteuid() != 0:
        return "it needs root (network namespaces, iptables, mounts and cgroups)"
    missing = sorted({package for command, package in COMMANDS.items() if shutil.which(command) is None})
    if not Path(RUNC).is_file():
        missing.append("runc")
    if not all((Path(CNI_BIN_DIR) / plugin).is_file() for plugin in CNI_PLUGINS):
        missing.append("containernetworking-plugins")
    if not STATIC_LIBC.is_file():
        missing.append("libc6-dev")
    if missing:
        return f"missing Debian packages: {', '.join(sorted(set(missing)))} (run 'make setup')"
    try:
        done = subprocess.run(["iptables", "--wait", "-t", "nat", "-S", "PREROUTING"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "iptables did not answer within 30 s"
    if done.returncode != 0:
        return f"iptables is not usable here: {done.stderr.strip() or done.stdout.strip()}"
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        return "no cgroup file system is mounted at /sys/fs/cgroup"
    if not Path("/proc/self/ns/net").exists():
        return "the kernel has no network namespaces"
    return None
