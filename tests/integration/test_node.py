"""A bed with a real node, in a directory of its own: the kubelet, containerd and runc run
real containers from the bed's images; cluster DNS, the kubernetes Service and the bed's
PostgreSQL and S3 work from inside Pods; the PostgreSQL image keeps the official image's
contract; and ``down`` leaves nothing behind.

The tests run in file order on one bed; the last one takes it down and checks the host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client, config

from trackop_testbed import bed as bedlib
from trackop_testbed.node import kernel, network, rules, teardown
from trackop_testbed.node.containerd import image_refs, shim_pids
from trackop_testbed.node.machine import Registry
from trackop_testbed.node.plan import NodePaths, NodePlan
from trackop_testbed.procs import is_alive, is_listening

# The first test brings the bed up, which on a bare machine builds the node's binaries and
# images first (about 15 minutes here; cached afterwards).
pytestmark = [pytest.mark.bed, pytest.mark.timeout(2700)]

SETTINGS = (*kernel.KUBELET_WANTS, *kernel.HOST_NETWORK_SETTINGS)


def _progress(message: str) -> None:
    print(f"[node-bed] {message}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="module")
def node_bed():
    before = {key: kernel.read(key) for key in SETTINGS}
    before["nftables tables absent"] = network.absent_tables()
    directory = Path(tempfile.mkdtemp(prefix="trackop-node-", dir="/tmp"))
    bed = bedlib.Testbed(directory, progress=_progress, node=True)
    try:
        info = bed.up()
        yield bed, info, before
    finally:
        state = bed.load_state()
        if state is not None and any(is_alive(r) for r in state.processes.values()):
            bed.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def api(node_bed) -> client.ApiClient:
    return config.new_client_from_config(config_file=node_bed[1]["kubeconfig"])


@pytest.fixture(scope="module")
def core(api) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def ns(core) -> str:
    name = f"n-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
        assert time.monotonic() < deadline, "no default ServiceAccount"
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)


def _kubectl(node_bed, *args: str) -> str:
    bed, info, _ = node_bed
    done = subprocess.run([str(bed.dir / "kubectl"), f"--kubeconfig={info['kubeconfig']}", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pod(name: str, image: str, script: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", **spec,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                     "command": ["python3", "-c", textwrap.dedent(script)],
                                     **spec.pop("container", {})}]}}


def _run_to_completion(node_bed, core, ns: str, pod: dict, timeout: float = 180) -> str:
    """Create the Pod, wait until it has run, return ``kubectl logs``; fail with its story if it failed."""
    core.create_namespaced_pod(ns, pod)
    name = pod["metadata"]["name"]
    deadline = time.monotonic() + timeout
    while True:
        phase = core.read_namespaced_pod(name, ns).status.phase
        if phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    logs = _kubectl(node_bed, "logs", "-n", ns, name) if phase in ("Succeeded", "Failed") else ""
    assert phase == "Succeeded", f"{name}: {phase}\n{logs}\n{_kubectl(node_bed, 'describe', 'pod', '-n', ns, name)}"
    return logs


def test_the_node_is_ready_and_published_in_testbed_json(node_bed, core):
    bed, info, _ = node_bed
    node = core.read_node(info["node"]["name"])
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert node.status.node_info.kubelet_version == "v1.35.4"
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.6")
    assert set(info["images"]) == {"operator", "mlflow", "postgres", "training"}
    # Every image testbed.json names is in the node's containerd, under that name.
    assert set(info["images"].values()) <= image_refs(NodePaths(bed.dir))
    assert info["postgres"]["in_cluster"] == {"host": "postgres.trackop-testbed.svc.cluster.local", "port": 5432}
    assert info["s3"]["in_cluster_endpoint"] == "http://s3.trackop-testbed.svc.cluster.local:9000"
    # Every listener of the node on the host is on loopback.
    state = bed.load_state()
    for name in ("kubelet", "kubelet-healthz", "kube-scheduler"):
        assert is_listening(state.ports[name])
    listeners = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    pids = {str(state.processes[n].pid) for n in ("kubelet", "kube-scheduler")}
    for line in listeners.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            assert line.split()[3].startswith("127.0.0.1:"), line


def test_a_training_pod_runs_to_completion_and_kubectl_logs_shows_its_output(node_bed, core, ns):
    image = node_bed[1]["images"]["training"]
    logs = _run_to_completion(node_bed, core, ns, _pod("train", image, """
        import boto3, mlflow, psycopg, sys
        print("trained with mlflow", mlflow.__version__, "on python", sys.version.split()[0])
    """, automountServiceAccountToken=False))
    assert "trained with mlflow 3.17.2 on python 3.11" in logs


def test_cluster_dns_resolves_the_kubernetes_service_and_a_service_of_its_own(node_bed, core, ns):
    bed, info, _ = node_bed
    plan = NodePlan.from_json(bed.load_state().node)
    service = core.create_namespaced_service(ns, {"metadata": {"name": "mine"}, "spec": {
        "ports": [{"port": 80}], "selector": {"app": "none"}}})
    logs = _run_to_completion(node_bed, core, ns, _pod("dns", info["images"]["training"], f"""
        import socket
        for name in ("kubernetes.default.svc.cluster.local", "mine.{ns}.svc.cluster.local", "mine"):
            print(name, socket.gethostbyname(name))
        try:
            socket.gethostbyname("pypi.org")
            print("pypi.org resolved")
        except socket.gaierror:
            print("pypi.org: no such name here")
    """, automountServiceAccountToken=False))
    assert f"kubernetes.default.svc.cluster.local {plan.kubernetes_ip}" in logs
    assert f"mine.{ns}.svc.cluster.local {service.spec.cluster_ip}" in logs
    assert f"mine {service.spec.cluster_ip}" in logs, "the search path of the Pod's namespace"
    assert "pypi.org: no such name here" in logs, "nothing is resolved outside the cluster"


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(node_bed, core, ns):
    logs = _run_to_completion(node_bed, core, ns, _pod("api", node_bed[1]["images"]["training"], """
        import json, os, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        context = ssl.create_default_context(cafile=sa + "/ca.crt")
        for url in ("https://kubernetes.default.svc.cluster.local/version",
                    "https://%s:%s/version" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])):
            request = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read()})
            print(url, json.load(urllib.request.urlopen(request, context=context, timeout=10))["gitVersion"])
    """))
    assert logs.count("v1.35.4") == 2, logs


def test_a_pod_reaches_the_beds_postgres_and_s3_through_their_services(node_bed, core, ns):
    info = node_bed[1]
    pg, s3 = info["postgres"], info["s3"]
    core.create_namespaced_secret(ns, {"metadata": {"name": "bed"}, "stringData": {
        "PGPASSWORD": pg["password"], "AWS_ACCESS_KEY_ID": s3["access_key"],
        "AWS_SECRET_ACCESS_KEY": s3["secret_key"]}})
    logs = _run_to_completion(node_bed, core, ns, _pod("servers", info["images"]["training"], f"""
        import boto3, os, psycopg
        with psycopg.connect(host="{pg['in_cluster']['host']}", port={pg['in_cluster']['port']}, user="{pg['user']}",
                             dbname="postgres", connect_timeout=10) as conn:
            print("postgres says", conn.execute("SELECT 40 + 2").fetchone()[0])
        s3 = boto3.client("s3", endpoint_url="{s3['in_cluster_endpoint']}", region_name="{s3['region']}")
        s3.create_bucket(Bucket="from-a-pod")
        print("buckets", [b["Name"] for b in s3.list_buckets()["Buckets"]])
    """, automountServiceAccountToken=False, container={"envFrom": [{"secretRef": {"name": "bed"}}]}))
    assert "postgres says 42" in logs
    assert "from-a-pod" in logs


def test_a_service_of_its_own_reaches_its_pod_through_kube_proxy(node_bed, core, ns):
    image = node_bed[1]["images"]["training"]
    server = _pod("web", image, """
        import http.server, socket
        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = ("hello from " + socket.gethostname()).encode()
                self.send_response(200); self.end_headers(); self.wfile.write(body)
        http.server.HTTPServer(("0.0.0.0", 8080), Hello).serve_forever()
    """, automountServiceAccountToken=False,
        container={"ports": [{"containerPort": 8080}],
                   "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}})
    server["metadata"]["labels"] = {"app": "web"}
    core.create_namespaced_pod(ns, server)
    core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    deadline = time.monotonic() + 120
    while not any(c.type == "Ready" and c.status == "True"
                  for c in core.read_namespaced_pod("web", ns).status.conditions or []):
        assert time.monotonic() < deadline, "the web Pod never passed its HTTP readiness probe"
        time.sleep(0.5)
    logs = _run_to_completion(node_bed, core, ns, _pod("client", image, """
        import time, urllib.request
        for attempt in range(20):
            try:
                print(urllib.request.urlopen("http://web", timeout=3).read().decode()); break
            except OSError as exc:
                print("retry:", exc); time.sleep(0.5)
    """, automountServiceAccountToken=False))
    assert "hello from web" in logs


def test_the_postgres_image_honours_the_official_entrypoint_contract(node_bed, core, ns):
    """POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA and ``-c`` args, run as the
    image's uid 999 with an fsGroup volume, as trackop's managed StatefulSet runs it; ready by
    an exec probe; reached through a Service by name; ``kubectl exec`` works (the API server,
    the kubelet, containerd's streaming server)."""
    info = node_bed[1]
    core.create_namespaced_secret(ns, {"metadata": {"name": "pg"}, "stringData": {"password": "s3cret-Pw"}})
    ready = ["pg_isready", "-h", "127.0.0.1", "-p", "5433", "-U", "admin", "-d", "postgres"]
    server = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pg", "labels": {"app": "pg"}}, "spec": {
        "securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999},
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "postgres", "image": info["images"]["postgres"], "imagePullPolicy": "Never",
            "command": ["docker-entrypoint.sh"],
            "args": ["postgres", "-c", "port=5433", "-c", "max_connections=42"],
            "env": [{"name": "POSTGRES_USER", "value": "admin"},
                    {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}},
                    {"name": "POSTGRES_DB", "value": "app"},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
            "ports": [{"containerPort": 5433}],
            "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 1},
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
        }],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }}
    core.create_namespaced_pod(ns, server)
    core.create_namespaced_service(ns, {"metadata": {"name": "pg"}, "spec": {
        "selector": {"app": "pg"}, "ports": [{"port": 5432, "targetPort": 5433}]}})
    deadline = time.monotonic() + 120
    while not any(c.type == "Ready" and c.status == "True"
                  for c in core.read_namespaced_pod("pg", ns).status.conditions or []):
        assert time.monotonic() < deadline, _kubectl(node_bed, "logs", "-n", ns, "pg")
        time.sleep(0.5)
    assert "accepting connections" in _kubectl(node_bed, "exec", "-n", ns, "pg", "--", *ready)
    logs = _run_to_completion(node_bed, core, ns, _pod("client", info["images"]["training"], f"""
        import psycopg
        with psycopg.connect(host="pg.{ns}.svc.cluster.local", user="admin", password="s3cret-Pw", dbname="app",
                             connect_timeout=10) as conn:
            print("database", conn.execute("SELECT current_database()").fetchone()[0])
            print("max_connections", conn.execute("SHOW max_connections").fetchone()[0])
            print("data", conn.execute("SHOW data_directory").fetchone()[0])
    """, automountServiceAccountToken=False))
    assert "database app" in logs and "max_connections 42" in logs
    assert "data /var/lib/postgresql/data/pgdata" in logs


def test_a_second_bed_with_a_node_comes_and_goes_beside_this_one_without_touching_it(node_bed, core, ns):
    """Developers' test runs share the machine: another bed's node gets its own slot, and its
    down removes its own rules only, keeps the kernel settings this node needs, and leaves
    this node's Pods, Services and DNS working."""
    bed, info, _ = node_bed
    mine = NodePlan.from_json(bed.load_state().node)
    my_rules = sorted(rules.tagged_rules(network.saved_rules(), mine))
    other_dir = Path(tempfile.mkdtemp(prefix="trackop-node-other-", dir="/tmp"))
    other = bedlib.Testbed(other_dir, progress=_progress, node=True)
    try:
        other.up()
        theirs = NodePlan.from_json(other.load_state().node)
        assert theirs.slot != mine.slot and theirs.id != mine.id
        assert rules.tagged_rules(network.saved_rules(), theirs)
    finally:
        other.down()
        shutil.rmtree(other_dir, ignore_errors=True)
    assert sorted(rules.tagged_rules(network.saved_rules(), mine)) == my_rules
    assert not rules.tagged_rules(network.saved_rules(), theirs)
    assert {key: kernel.read(key) for key in kernel.KUBELET_WANTS} == kernel.KUBELET_WANTS, "this node still runs"
    service = core.create_namespaced_service(ns, {"metadata": {"name": "still"}, "spec": {"ports": [{"port": 80}]}})
    logs = _run_to_completion(node_bed, core, ns, _pod("after", info["images"]["training"], f"""
        import socket
        print("still", socket.gethostbyname("still.{ns}.svc.cluster.local"))
    """, automountServiceAccountToken=False))
    assert f"still {service.spec.cluster_ip}" in logs


def test_down_leaves_no_bridge_rule_listener_mount_or_cgroup_and_puts_kernel_settings_back(node_bed):
    bed, info, before = node_bed
    state = bed.load_state()
    plan = NodePlan.from_json(state.node)
    paths = NodePaths(bed.dir)
    others = [h for h in json.loads((Registry().root / "nodes.json").read_text())["kernel"]["holders"]
              if h != plan.id]
    crashed = [name for name, record in state.processes.items() if not is_alive(record)]
    assert not crashed, f"parts of the bed died during the tests: {crashed}"
    bed.down()

    assert not any(is_alive(r) for r in state.processes.values())
    assert not [f"{n}:{p}" for n, p in state.ports.items() if is_listening(p)]
    assert not Path(plan.netns_path).exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert plan.host_if not in links and plan.bridge not in links
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    assert plan.pod_cidr not in routes and plan.service_cidr not in routes
    saved = network.saved_rules()
    assert not [line for text in saved.values() for line in text.splitlines() if plan.id in line]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(bed.dir) not in mounts
    for hierarchy in teardown.cgroup_hierarchies(mounts):
        assert not (hierarchy / plan.cgroup_root.lstrip("/")).exists()
    assert not shim_pids(paths)
    after = {key: kernel.read(key) for key in SETTINGS}
    after["nftables tables absent"] = network.absent_tables()
    if others:  # another bed's node still runs: the kubelet's settings stay until it goes
        assert {k: after[k] for k in kernel.HOST_NETWORK_SETTINGS} == {k: before[k] for k in kernel.HOST_NETWORK_SETTINGS}
    else:
        assert after == before, "kernel settings, and the nftables tables iptables made, as before"
