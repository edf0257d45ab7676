"""The node's configuration files, rendered from its plan (pure: data in, text or dicts out).

What each setting is for, where it is not a default:

- kubelet: cgroup v1 hosts need ``failCgroupV1: false``; ``cgroupfs`` (no systemd runs
  here); every Pod's cgroup under the bed's own ``cgroupRoot``; no swap check; every
  listener on 127.0.0.1; clients authenticated by the bed's CA only; no iptables chains of
  its own (``makeIPTablesUtilChains: false``: the host's tables are shared with other
  beds); the global kernel settings set by the bed beforehand (kernel.py) and only checked
  (``protectKernelDefaults``); no image GC (the images cannot be pulled again) and
  eviction only when the disk is nearly full (a shared machine).
- kube-proxy: iptables mode in the node's namespace; no conntrack sysctl changes.
- containerd: its own root, state, socket and runc root under the bed directory;
  ``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE, and runc fails every
  sandbox on writing oom_score_adj -998 without it); the streaming server (exec, attach,
  port-forward) on the node namespace's veth address, the one address the host's kubelet
  reaches it at.
- CNI: one bridge with host-local addresses, no masquerade.
"""

from __future__ import annotations

import json
from pathlib import Path

from .plan import CLUSTER_DOMAIN, NodePaths, NodePlan

CNI_BIN_DIR = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"
KUBE_PROXY_HEALTHZ = "127.0.0.1:10256"   # inside the node's namespace: no clash between beds
KUBE_PROXY_METRICS = "127.0.0.1:10249"


def kubelet_config(plan: NodePlan, paths: NodePaths, *, port: int, healthz_port: int, ca_file: Path,
                   tls_cert: Path, tls_key: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": plan.cgroup_root,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        # Only clients with a certificate of the bed's CA get this far (the API server's).
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [plan.dns_ip],
        "resolvConf": str(paths.resolv_conf),
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.volume_plugins),
        "podCIDR": plan.pod_cidr,
        "registerNode": True,
        "makeIPTablesUtilChains": False,
        "protectKernelDefaults": True,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "staticPodPath": "",
    }


def kubelet_argv(binary: Path, plan: NodePlan, paths: NodePaths) -> list[str]:
    return [str(binary), f"--config={paths.kubelet_config}", f"--kubeconfig={paths.kubeconfig('kubelet')}",
            f"--root-dir={paths.kubelet_root}", f"--cert-dir={paths.kubelet_dir / 'pki'}",
            f"--hostname-override={plan.name}", f"--node-ip={plan.host_ip}", "--v=1"]


def resolv_conf() -> str:
    """The kubelet's resolvConf: Pods get the cluster DNS (``clusterDNS``) and nothing else."""
    return "# The bed's Pods have no upstream DNS server: nothing leaves this machine.\n"


def kube_proxy_config(plan: NodePlan, paths: NodePaths) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(paths.kubeconfig("kube-proxy"))},
        "hostnameOverride": plan.name,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": KUBE_PROXY_HEALTHZ,
        "metricsBindAddress": KUBE_PROXY_METRICS,
        "clusterCIDR": plan.pod_cidr,
        "nodePortAddresses": ["127.0.0.1/32"],
        # Zeros: leave the conntrack table size and timeouts as the kernel has them.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def cni_conflist(plan: NodePlan, paths: NodePaths) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": plan.cni_network,
        "plugins": [{
            "type": "bridge",
            "bridge": plan.bridge,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(paths.cni_ipam_dir),
                "ranges": [[{"subnet": plan.pod_cidr, "gateway": plan.pod_gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    }


def containerd_config(plan: NodePlan, paths: NodePaths, sandbox_image: str) -> dict:
    cri = {
        "sandbox_image": sandbox_image,
        "stream_server_address": plan.node_ip,
        "stream_server_port": "0",
        "enable_selinux": False,
        "restrict_oom_score_adj": True,
        "containerd": {
            "snapshotter": "overlayfs",
            "default_runtime_name": "runc",
            "runtimes": {"runc": {
                "runtime_type": "io.containerd.runc.v2",
                "options": {"BinaryName": RUNC, "Root": str(paths.runc_root), "SystemdCgroup": False},
            }},
        },
        "cni": {"bin_dir": CNI_BIN_DIR, "conf_dir": str(paths.cni_conf_dir), "max_conf_num": 1},
    }
    return {
        "version": 2,
        "root": str(paths.containerd_root),
        "state": str(paths.containerd_state),
        "disabled_plugins": [f"io.containerd.snapshotter.v1.{name}" for name in ("aufs", "btrfs", "zfs", "devmapper")],
        "grpc": {"address": str(paths.containerd_socket)},
        "ttrpc": {"address": f"{paths.containerd_socket}.ttrpc"},
        "plugins": {
            "io.containerd.grpc.v1.cri": cri,
            "io.containerd.internal.v1.opt": {"path": str(paths.containerd_root / "opt")},
        },
    }


def to_toml(data: dict) -> str:
    """TOML for containerd's config: tables, strings, booleans, integers and lists of strings."""
    lines: list[str] = []
    _toml_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(table: dict, path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and scalars:
        lines.append("")
        lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _toml_table(value, [*path, key], lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")
