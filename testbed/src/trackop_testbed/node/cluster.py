"""The objects a node adds to its cluster (pure: manifests as dicts).

- Cluster DNS: CoreDNS as a Deployment in kube-system behind the ``kube-dns`` Service at
  the plan's DNS address (the kubelet's ``clusterDNS``). It answers ``cluster.local`` (and
  the reverse zones) from the API server and NXDOMAIN for every other name: nothing is
  forwarded off the machine.
- The bed's servers as Services of the ``trackop-testbed`` namespace, for Pods:
  ``postgres`` and ``s3``, each without a selector and with an EndpointSlice at the host's
  veth address and the server's own port (rules.py DNATs that to 127.0.0.1).
"""

from __future__ import annotations

from .plan import BED_NAMESPACE, CLUSTER_DOMAIN, NodePlan

MANAGER = "trackop-testbed"
COREDNS_LABELS = {"k8s-app": "kube-dns"}

COREFILE = f"""\
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    errors
    health {{
        lameduck 2s
    }}
    ready
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        ttl 30
    }}
    cache 30
    loadbalance
}}
.:53 {{
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def coredns(plan: NodePlan, image: str) -> list[dict]:
    meta = {"name": "coredns", "namespace": "kube-system", "labels": dict(COREDNS_LABELS)}
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    container = {
        "name": "coredns",
        "image": image,
        "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10,
                          "failureThreshold": 5},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(COREDNS_LABELS)},
            "template": {"metadata": {"labels": dict(COREDNS_LABELS)}, "spec": {
                "serviceAccountName": "coredns",
                "priorityClassName": "system-cluster-critical",
                "dnsPolicy": "Default",
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
            }},
        }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": dict(COREDNS_LABELS)},
         "spec": {"selector": dict(COREDNS_LABELS), "clusterIP": plan.dns_ip,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}},
    ]


# Service name -> its port inside the cluster (the host port is the bed's own).
BED_SERVICES = {"postgres": 5432, "s3": 9000}


def bed_services(plan: NodePlan, host_ports: dict[str, int]) -> list[dict]:
    objects: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BED_NAMESPACE}}]
    for name, port in BED_SERVICES.items():
        labels = {"app.kubernetes.io/managed-by": MANAGER}
        objects.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": BED_NAMESPACE, "labels": labels},
            "spec": {"ports": [{"name": name, "port": port, "protocol": "TCP", "targetPort": host_ports[name]}]},
        })
        objects.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-bed", "namespace": BED_NAMESPACE,
                         "labels": {**labels, "kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": MANAGER}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [plan.host_ip], "conditions": {"ready": True}}],
            "ports": [{"name": name, "port": host_ports[name], "protocol": "TCP"}],
        })
    return objects


def in_cluster_host(service: str) -> str:
    return f"{service}.{BED_NAMESPACE}.svc.{CLUSTER_DOMAIN}"
