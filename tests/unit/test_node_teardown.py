"""What the node's teardown finds on the host (trackop_testbed.node.teardown): its mounts,
deepest first, and the cgroup hierarchies."""

from __future__ import annotations

import os

from trackop_testbed.node import teardown

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
90 22 0:50 / /tmp/bed/node/kubelet/root/pods/uid/volumes/kubernetes.io~projected/kube-api-access-x rw - tmpfs tmpfs rw
91 22 0:51 / /tmp/bed/node/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw
92 22 0:52 / /tmp/bed/node/run/containerd/sandboxes/abc/shm rw - tmpfs shm rw
93 22 0:53 / /tmp/bed-other/node/run/x rw - tmpfs tmpfs rw
94 22 0:4 net:[4026532] /run/netns/cni-1234 rw - nsfs nsfs rw
95 22 0:54 / /tmp/bed/node/with\\040space rw - tmpfs tmpfs rw
"""


def test_mount_points_under_the_bed_deepest_first_and_no_one_elses():
    points = teardown.mount_points(MOUNTINFO, ["/tmp/bed/node"], exact={"/run/netns/cni-1234"})
    assert "/tmp/bed-other/node/run/x" not in points
    assert "/tmp/bed/node/with space" in points
    assert "/run/netns/cni-1234" in points
    depths = [p.count("/") for p in points]
    assert depths == sorted(depths, reverse=True)
    assert len(points) == 5


def test_cgroup_hierarchies_are_the_cgroup_mounts():
    assert [str(p) for p in teardown.cgroup_hierarchies(MOUNTINFO)] == ["/sys/fs/cgroup/memory",
                                                                         "/sys/fs/cgroup/cpu,cpuacct"]


def test_log_links_of_this_bed_only_are_removed(tmp_path):
    links, logs, other = tmp_path / "containers", tmp_path / "bed" / "pod-logs", tmp_path / "other" / "pod-logs"
    links.mkdir()
    os.symlink(logs / "ns_pod_uid" / "c" / "0.log", links / "mine.log")
    os.symlink(other / "ns_pod_uid" / "c" / "0.log", links / "theirs.log")
    assert teardown.remove_log_links(logs, links) == 1
    assert [p.name for p in links.iterdir()] == ["theirs.log"]


def test_cni_cache_of_this_network_only(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("trackop-aaaa-abc-eth0", "trackop-bbbb-def-eth0", "other-net-x-eth0", "cni-loopback-abc-lo",
                 "cni-loopback-def-lo"):
        (results / name).write_text("{}")
    assert teardown.remove_cni_cache("trackop-aaaa", {"abc"}, tmp_path) == 2
    assert sorted(p.name for p in results.iterdir()) == ["cni-loopback-def-lo", "other-net-x-eth0",
                                                         "trackop-bbbb-def-eth0"]


def test_a_shared_path_with_someone_elses_file_is_kept(tmp_path):
    shared = tmp_path / "var-lib-kubelet"
    (shared / "device-plugins").mkdir(parents=True)
    (shared / "device-plugins" / "kubelet_internal_checkpoint").write_text("{}")
    assert teardown.remove_if_only_leftovers(shared) and not shared.exists()
    (shared / "device-plugins").mkdir(parents=True)
    (shared / "device-plugins" / "vendor.sock.json").write_text("{}")
    assert not teardown.remove_if_only_leftovers(shared) and shared.exists()
