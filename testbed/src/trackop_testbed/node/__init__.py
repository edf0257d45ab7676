"""A real Kubernetes node on the test bed: containerd and runc from Debian's packages, and
kubelet, kube-proxy, kube-scheduler and CoreDNS built from the Go module proxy.

The node is a network namespace of its own (``trackop-<id>``), joined to the host by one
veth pair. containerd (and so the CNI bridge and every Pod) and kube-proxy run inside it;
the kubelet and kube-scheduler run on the host, listening on 127.0.0.1 like the rest of the
bed. Two beds on one machine therefore never share an iptables chain, a bridge, a route or
a per-network kernel setting: deleting the namespace at ``down`` removes all of them. What
the host itself holds is tagged with the bed's id (its own iptables chains, routes through
its own veth, cgroups under ``/trackop-<id>``) and removed by that id.

One module a job:

- plan.py: the bed's addresses, names and ports (pure), from its slot in the machine registry
- machine.py: the machine-wide registry of slots and of kernel settings under /run/trackop
- kernel.py: the global kernel settings the kubelet wants, recorded before and restored after
- configs.py: kubelet, kube-proxy, containerd and CNI configuration (pure renderers)
- rules.py: the iptables rules of the host and of the node's namespace (pure)
- network.py: namespace, veth, bridge, routes and rules: set up and torn down
- cluster.py: the objects the node adds to the cluster (CoreDNS, the bed's Services) (pure)
- images.py: the node's images (pause, CoreDNS, training), built here and cached
- containerd.py: the runtime: its processes' argv, image import, tasks, shims
- teardown.py: mounts, cgroups and files the node leaves on the host, found and removed
- runner.py: the order of ``up`` and ``down``
"""
