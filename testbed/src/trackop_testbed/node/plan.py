"""Where one bed's node lives: its network namespace, interfaces, subnets and names.

Every name and subnet comes from the bed's slot (machine.py hands out a free one per bed
directory), so two beds on one machine never share a bridge, a route, a Service range or
an iptables chain. Slot ``k`` owns ``10.213.4k.0/22``:

- ``10.213.4k.0/24``   the Pods (the bridge is ``.1``),
- ``10.213.4k+1.0/24`` the Services (``kubernetes`` is ``.1``, cluster DNS ``.10``),
- ``10.213.4k+2.0/30`` the veth between host (``.1``) and node namespace (``.2``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

NETWORK = ipaddress.ip_network("10.213.0.0/16")
SLOTS = range(1, 64)  # 10.213.4.0/22 ... 10.213.252.0/22
CLUSTER_DOMAIN = "cluster.local"
# Where the bed's own servers appear to Pods: Services of this namespace (cluster.py).
BED_NAMESPACE = "trackop-testbed"


@dataclass(frozen=True)
class NodePlan:
    """One bed's node, as recorded in its state.json."""

    id: str                 # 8 hex digits: the tag of everything the bed adds to the host
    slot: int
    name: str               # the Node object's name (a name this machine resolves to 127.0.0.1)
    pod_cidr: str
    service_cidr: str
    link_cidr: str

    # ---- derived names -------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"trackop-{self.id}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def host_if(self) -> str:
        """The host's end of the veth (at most 15 characters, as the kernel wants)."""
        return f"tb{self.id}h"

    @property
    def node_if(self) -> str:
        """The node namespace's end of the veth."""
        return f"tb{self.id}n"

    @property
    def bridge(self) -> str:
        return f"tb{self.id}b"

    @property
    def chain(self) -> str:
        """Prefix of the bed's own iptables chains on the host."""
        return f"TRACKOP-{self.id}"

    @property
    def tag(self) -> str:
        """The comment on every iptables rule the bed adds."""
        return f"trackop-bed {self.id}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot: every Pod's cgroup is under it, apart from other beds'."""
        return f"/trackop-{self.id}"

    @property
    def cni_network(self) -> str:
        return f"trackop-{self.id}"

    # ---- derived addresses ---------------------------------------------------------------
    @property
    def pod_gateway(self) -> str:
        return str(_nth(self.pod_cidr, 1))

    @property
    def host_ip(self) -> str:
        """The host's address on the veth: the Node's InternalIP, and where Pods reach the bed's servers."""
        return str(_nth(self.link_cidr, 1))

    @property
    def node_ip(self) -> str:
        """The node namespace's address on the veth (containerd's streaming server listens here)."""
        return str(_nth(self.link_cidr, 2))

    @property
    def kubernetes_ip(self) -> str:
        return str(_nth(self.service_cidr, 1))

    @property
    def dns_ip(self) -> str:
        return str(_nth(self.service_cidr, 10))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NodePlan":
        return cls(**data)


def _nth(cidr: str, n: int) -> ipaddress.IPv4Address:
    return ipaddress.ip_network(cidr)[n]


def slot_block(slot: int) -> ipaddress.IPv4Network:
    """The /22 a slot owns."""
    if slot not in SLOTS:
        raise ValueError(f"slot {slot} outside {SLOTS.start}..{SLOTS.stop - 1}")
    return ipaddress.ip_network(f"{NETWORK[0] + slot * 4 * 256}/22")


def plan_for(slot: int, node_id: str, name: str) -> NodePlan:
    block = slot_block(slot)
    subnets = list(block.subnets(new_prefix=24))
    return NodePlan(
        id=node_id, slot=slot, name=name,
        pod_cidr=str(subnets[0]), service_cidr=str(subnets[1]),
        link_cidr=str(next(subnets[2].subnets(new_prefix=30))),
    )


def overlaps(slot: int, routes: list[str]) -> bool:
    """Whether the slot's block overlaps any of the host's routed prefixes (``default`` aside)."""
    block = slot_block(slot)
    for route in routes:
        if route == "default":
            continue
        try:
            if ipaddress.ip_network(route, strict=False).overlaps(block):
                return True
        except ValueError:
            continue
    return False


def node_name(hostname: str | None = None, resolve=socket.gethostbyname) -> str:
    """The machine's hostname if it resolves to 127.0.0.1, else ``localhost``.

    The kube-apiserver reaches the kubelet (logs, exec) at the Node's Hostname address
    (``--kubelet-preferred-address-types=Hostname``), and the kubelet listens on loopback
    only, so the name must resolve to 127.0.0.1 here.
    """
    hostname = (hostname if hostname is not None else socket.gethostname()).lower()
    try:
        if hostname and resolve(hostname) == "127.0.0.1" and _is_dns_label_name(hostname):
            return hostname
    except OSError:
        pass
    return "localhost"


def _is_dns_label_name(name: str) -> bool:
    """A valid Node name (RFC 1123 subdomain)."""
    if len(name) > 253:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return all(part and len(part) <= 63 and set(part) <= allowed and part[0] != "-" and part[-1] != "-"
               for part in name.split("."))


@dataclass(frozen=True)
class NodePaths:
    """Every file and directory of the node, all under the bed's ``DIR/node``."""

    bed_dir: Path

    @property
    def base(self) -> Path:
        return self.bed_dir / "node"

    # containerd
    @property
    def containerd_config(self) -> Path:
        return self.base / "containerd" / "config.toml"

    @property
    def containerd_root(self) -> Path:
        return self.base / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.base / "run" / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.base / "run" / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.base / "run" / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.base / "cni" / "ipam"

    # kubelet
    @property
    def kubelet_dir(self) -> Path:
        return self.base / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.kubelet_dir / "config.yaml"

    @property
    def kubelet_root(self) -> Path:
        return self.kubelet_dir / "root"

    @property
    def pod_logs(self) -> Path:
        return self.kubelet_dir / "pod-logs"

    @property
    def volume_plugins(self) -> Path:
        return self.kubelet_dir / "volume-plugins"

    @property
    def resolv_conf(self) -> Path:
        return self.kubelet_dir / "resolv.conf"

    # kube-proxy and the kubeconfigs
    @property
    def kube_proxy_config(self) -> Path:
        return self.base / "kube-proxy" / "config.yaml"

    def kubeconfig(self, component: str) -> Path:
        return self.base / "kubeconfigs" / f"{component}.kubeconfig"

    @property
    def pki(self) -> Path:
        return self.base / "pki"
