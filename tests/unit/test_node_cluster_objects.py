"""The objects the node adds to its cluster (trackop_testbed.node.cluster)."""

from __future__ import annotations

from trackop_testbed.node import cluster, plan

PLAN = plan.plan_for(3, "c0ffee00", "vm")


def _by_kind(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_cluster_dns_is_coredns_behind_kube_dns_at_the_kubelets_dns_address():
    objects = _by_kind(cluster.coredns(PLAN, "trackop.local/coredns:k"))
    service = objects[("Service", "kube-dns")]
    assert service["spec"]["clusterIP"] == PLAN.dns_ip == "10.213.13.10"
    assert {p["protocol"] for p in service["spec"]["ports"]} == {"UDP", "TCP"}
    pod = objects[("Deployment", "coredns")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "trackop.local/coredns:k" and container["imagePullPolicy"] == "Never"
    assert pod["dnsPolicy"] == "Default" and pod["serviceAccountName"] == "coredns"
    assert ("ClusterRoleBinding", "system:coredns") in objects


def test_corefile_serves_cluster_local_and_forwards_nothing():
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in cluster.COREFILE
    assert "forward" not in cluster.COREFILE, "nothing leaves this machine"
    assert "rcode NXDOMAIN" in cluster.COREFILE


def test_the_beds_servers_are_services_with_slices_at_the_hosts_veth_address():
    objects = _by_kind(cluster.bed_services(PLAN, {"postgres": 40123, "s3": 40124}))
    assert ("Namespace", plan.BED_NAMESPACE) in objects
    for name, port, host_port in (("postgres", 5432, 40123), ("s3", 9000, 40124)):
        service = objects[("Service", name)]
        assert "selector" not in service["spec"]
        assert service["spec"]["ports"][0]["port"] == port
        endpoints = objects[("EndpointSlice", f"{name}-bed")]
        assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == name
        assert endpoints["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == cluster.MANAGER
        assert endpoints["endpoints"][0]["addresses"] == [PLAN.host_ip]
        assert endpoints["ports"] == [{"name": name, "port": host_port, "protocol": "TCP"}]
        assert service["spec"]["ports"][0]["name"] == endpoints["ports"][0]["name"]


def test_in_cluster_host_names_are_cluster_dns_names():
    assert cluster.in_cluster_host("postgres") == "postgres.trackop-testbed.svc.cluster.local"
