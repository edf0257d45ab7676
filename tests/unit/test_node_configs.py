"""The node's configuration files (trackop_testbed.node.configs): what the trial on this kind
of machine showed each must say, and the bed's rule that every listener is on loopback."""

from __future__ import annotations

import tomllib
from pathlib import Path

from trackop_testbed.node import configs, plan

PLAN = plan.plan_for(2, "0a1b2c3d", "vm")


def _paths(tmp_path: Path) -> plan.NodePaths:
    return plan.NodePaths(tmp_path / "bed")


def _kubelet(tmp_path):
    return configs.kubelet_config(PLAN, _paths(tmp_path), port=40001, healthz_port=40002, ca_file=tmp_path / "ca.crt",
                                  tls_cert=tmp_path / "k.crt", tls_key=tmp_path / "k.key")


def test_kubelet_runs_on_cgroup_v1_cgroupfs_without_swap_check(tmp_path):
    config = _kubelet(tmp_path)
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs" and config["failSwapOn"] is False
    assert config["cgroupRoot"] == "/trackop-0a1b2c3d", "Pods' cgroups apart from other beds'"


def test_kubelet_listens_on_loopback_only_and_trusts_the_bed_ca(tmp_path):
    config = _kubelet(tmp_path)
    assert config["address"] == "127.0.0.1" and config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert (config["port"], config["healthzPort"]) == (40001, 40002)
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "ca.crt")


def test_kubelet_leaves_the_hosts_iptables_and_kernel_settings_to_the_bed(tmp_path):
    config = _kubelet(tmp_path)
    assert config["makeIPTablesUtilChains"] is False
    assert config["protectKernelDefaults"] is True


def test_kubelet_uses_the_cluster_dns_and_the_beds_runtime(tmp_path):
    config = _kubelet(tmp_path)
    assert config["clusterDNS"] == ["10.213.9.10"] and config["clusterDomain"] == "cluster.local"
    assert config["containerRuntimeEndpoint"] == f"unix://{_paths(tmp_path).containerd_socket}"
    assert config["imageGCHighThresholdPercent"] == 100, "the images cannot be pulled again"


def test_kubelet_argv_names_the_node_and_its_host_address(tmp_path):
    argv = configs.kubelet_argv(Path("/bin/kubelet"), PLAN, _paths(tmp_path))
    assert "--hostname-override=vm" in argv and "--node-ip=10.213.10.1" in argv


def test_kube_proxy_uses_iptables_and_loopback(tmp_path):
    config = configs.kube_proxy_config(PLAN, _paths(tmp_path))
    assert config["mode"] == "iptables" and config["nodePortAddresses"] == ["127.0.0.1/32"]
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
    assert config["metricsBindAddress"].startswith("127.0.0.1:")
    assert config["clusterCIDR"] == PLAN.pod_cidr
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["min"] == 0


def test_cni_bridge_has_its_own_subnet_and_no_masquerade(tmp_path):
    conf = configs.cni_conflist(PLAN, _paths(tmp_path))
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == PLAN.bridge and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.213.8.0/24", "gateway": "10.213.8.1"}]]
    assert bridge["ipam"]["dataDir"] == str(_paths(tmp_path).cni_ipam_dir)
    assert conf["name"] == PLAN.cni_network


def test_containerd_config_is_its_own_and_restricts_oom_score_adj(tmp_path):
    paths = _paths(tmp_path)
    config = tomllib.loads(configs.to_toml(configs.containerd_config(PLAN, paths, "trackop.local/pause:k")))
    assert config["version"] == 2
    assert config["root"] == str(paths.containerd_root) and config["state"] == str(paths.containerd_state)
    assert config["grpc"]["address"] == str(paths.containerd_socket)
    for value in (config["root"], config["state"], config["grpc"]["address"]):
        assert not value.startswith(("/var/lib/containerd", "/run/containerd"))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "trackop.local/pause:k"
    assert cri["stream_server_address"] == PLAN.node_ip
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["Root"] == str(paths.runc_root) and runc["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(paths.cni_conf_dir)


def test_toml_quotes_dotted_keys_and_renders_lists():
    text = configs.to_toml({"a": 1, "b": [" x", "y"], "t": {"c.d": {"e": True}}})
    assert tomllib.loads(text) == {"a": 1, "b": [" x", "y"], "t": {"c.d": {"e": True}}}
