"""The global kernel settings a node changes, recorded before and put back after.

The kubelet wants six global settings (``setupKernelTunables`` in its container manager)
and writes them itself unless ``protectKernelDefaults`` is set, when it refuses to start
instead. The bed sets them before the kubelet starts and runs the kubelet with
``protectKernelDefaults: true``: so the bed alone changes them, after recording them in
the machine registry (machine.py), and the last node on the machine to go puts them back.

The network settings the node needs (``ip_forward``, ``route_localnet``, the bridge's
netfilter hooks) are changed only inside the node's own network namespace, or on the bed's
own veth, and go with them; the host's own values are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .machine import Registry

# What kubelet v1.35 wants (k8s.io/component-helpers/node/util/sysctl).
KUBELET_WANTS = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
# The host's network settings the node must leave as they were (checked by the tests).
HOST_NETWORK_SETTINGS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv6.conf.all.forwarding",
)


def _path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read(key: str) -> str:
    return _path(key).read_text().strip()


def write(key: str, value: str) -> None:
    _path(key).write_text(value + "\n")


def to_change(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str]:
    """The settings whose current value is not the wanted one, with the wanted value."""
    return {key: value for key, value in wanted.items() if current.get(key) != value}


def restore_plan(original: dict[str, str], current: dict[str, str],
                 wanted: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """What to write back once no node needs the settings: (to write, left alone).

    A setting still at the value the nodes wanted goes back to its original; one that
    someone else changed since is left as it is, and reported."""
    writes: dict[str, str] = {}
    left: dict[str, str] = {}
    for key, value in original.items():
        if current.get(key) == value:
            continue
        if current.get(key) == wanted.get(key):
            writes[key] = value
        else:
            left[key] = current.get(key, "")
    return writes, left


def hold(registry: Registry, node_id: str, absent: list[str]) -> dict[str, str]:
    """Record (first holder only) and set the kubelet's settings; return what was changed.
    ``absent``: what nodes make on the host that did not exist before this node began."""
    registry.hold_shared(node_id, read, list(KUBELET_WANTS), absent)
    changes = to_change({key: read(key) for key in KUBELET_WANTS}, KUBELET_WANTS)
    for key, value in changes.items():
        write(key, value)
    return changes


def release(registry: Registry, node_id: str,
            remove: Callable[[list[str]], list[str]]) -> tuple[dict[str, str], dict[str, str], list[str]] | None:
    """If this node was the last that needed them, put the settings back and ``remove`` what
    did not exist before the first node: (written, left alone, what ``remove`` could not
    remove); None while other nodes run."""
    def put_back(original: dict[str, str], absent: list[str]):
        writes, left = restore_plan(original, {key: read(key) for key in original}, KUBELET_WANTS)
        for key, value in writes.items():
            write(key, value)
        return writes, left, remove(absent)

    return registry.release_shared(node_id, put_back)
