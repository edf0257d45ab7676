"""The node's addresses and names (trackop_testbed.node.plan): unique per slot, valid for the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackop_testbed.node import plan


def test_slot_one_has_its_own_pod_service_and_link_ranges():
    p = plan.plan_for(1, "0a1b2c3d", "vm")
    assert (p.pod_cidr, p.service_cidr, p.link_cidr) == ("10.213.4.0/24", "10.213.5.0/24", "10.213.6.0/30")
    assert (p.pod_gateway, p.kubernetes_ip, p.dns_ip) == ("10.213.4.1", "10.213.5.1", "10.213.5.10")
    assert (p.host_ip, p.node_ip) == ("10.213.6.1", "10.213.6.2")


def test_every_slot_is_inside_the_network_and_apart_from_every_other():
    blocks = [plan.slot_block(slot) for slot in plan.SLOTS]
    assert all(block.subnet_of(plan.NETWORK) for block in blocks)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    with pytest.raises(ValueError):
        plan.slot_block(0)  # 10.213.0.0/22 is never handed out
    with pytest.raises(ValueError):
        plan.slot_block(64)


def test_names_fit_the_kernel_and_carry_the_id():
    p = plan.plan_for(63, "ffffffff", "vm")
    for interface in (p.host_if, p.node_if, p.bridge):
        assert len(interface) <= 15 and "ffffffff" in interface
    assert len({p.host_if, p.node_if, p.bridge}) == 3
    assert len(f"{p.chain}-FWD") <= 28  # iptables' limit on chain names
    assert p.tag == "trackop-bed ffffffff" and p.cgroup_root == "/trackop-ffffffff"
    assert p.netns_path == "/run/netns/trackop-ffffffff"


def test_round_trip_through_state_json():
    p = plan.plan_for(5, "12345678", "vm")
    assert plan.NodePlan.from_json(p.to_json()) == p


def test_a_slot_overlapping_a_host_route_is_seen():
    assert plan.overlaps(1, ["default", "10.213.0.0/16"])
    assert plan.overlaps(1, ["10.213.6.0/24"])
    assert not plan.overlaps(1, ["default", "192.0.2.0/24", "10.213.8.0/22", "not-a-prefix"])


def test_node_name_is_the_hostname_when_it_resolves_to_loopback():
    assert plan.node_name("VM", resolve=lambda name: "127.0.0.1") == "vm"
    assert plan.node_name("vm", resolve=lambda name: "192.0.2.2") == "localhost"
    assert plan.node_name("under_score", resolve=lambda name: "127.0.0.1") == "localhost"

    def fails(name):
        raise OSError("unknown host")

    assert plan.node_name("vm", resolve=fails) == "localhost"


def test_paths_stay_under_the_bed_directory(tmp_path):
    paths = plan.NodePaths(tmp_path)
    for path in (paths.containerd_root, paths.containerd_state, paths.containerd_socket, paths.runc_root,
                 paths.cni_conf_dir, paths.cni_ipam_dir, paths.kubelet_root, paths.pod_logs, paths.volume_plugins,
                 paths.kubeconfig("kubelet"), paths.pki):
        assert path.is_relative_to(tmp_path / "node")
    # A unix socket's path must fit in sun_path (108 bytes) for a bed under /tmp.
    assert len(str(plan.NodePaths(Path("/tmp/trackop-bed-abcdefgh")).containerd_socket) + ".ttrpc") < 108
