"""The order of a node's ``up`` and ``down``, after the bed's control plane is up.

``up``: binaries and images (cached), certificates and configuration, the kernel settings
(recorded first), the network, the cgroup root, then kube-scheduler, containerd (and the
images imported into it), the kubelet until the Node is Ready, kube-proxy, and the cluster
objects (CoreDNS, the bed's Services) until cluster DNS is available. A running part is
reused, as the bed's other parts are.

``down`` is a node losing power, then cleaned up: every container killed (the Pods stay
in the API server, and a later ``up`` starts them again, as a rebooted node does), the
processes stopped, then mounts, the network namespace and the host's rules, cgroups, host
files, and at last the kernel settings, which go back when the machine's last node goes.
Whatever is left is reported as an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from trackop import pki
from trackop.schema import revisions

from .. import binaries, loopback
from ..pki import kubeconfig, write_private
from ..procs import ProcessRecord, is_alive, is_listening, spawn, stop, wait_until
from . import cluster, configs, containerd, dockerfile_images, images, kernel, network, teardown
from .machine import Registry
from .plan import NodePaths, NodePlan

# Start order; ``down`` stops in reverse.
COMPONENTS = ("kube-scheduler", "containerd", "kubelet", "kube-proxy")
PORT_NAMES = ("kubelet", "kubelet-healthz", "kube-scheduler")
# testbed.json's "images" (DESIGN.md).
PUBLISHED_IMAGES = ("operator", "mlflow", "postgres", "training")
Progress = Callable[[str], None]


class _Steps:
    """Wall time of each step of ``up``, for its last progress line."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.times: list[tuple[str, float]] = []

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.times.append((step, now - self.last))
        self.last = now

    def total(self) -> float:
        return self.last - self.started

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds:.1f}s" for step, seconds in self.times)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``path`` only if its content differs, in one rename (no reader sees it half-written)."""
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare(progress: Progress) -> tuple[dict[str, Path], dict[str, tuple[str, Path]]]:
    """The node's binaries and images (reference, archive), built if not cached yet
    (``make setup`` calls this where the node can run, so tests find them built)."""
    bins = binaries.ensure_node(progress)
    built = {
        "pause": images.ensure_pause(progress),
        "coredns": images.ensure_coredns(bins["coredns"], progress),
        "training": images.ensure_training(binaries.hack_dir().parent / "constraints.txt", progress),
        "postgres": images.ensure_postgres(progress),
        "operator": dockerfile_images.ensure_operator(progress),
        "mlflow": dockerfile_images.ensure_mlflow(revisions.BUNDLED_MLFLOW_VERSION, progress),
    }
    return bins, built


class NodeRunner:
    """One bed's node. ``processes`` is the bed's record of running parts (saved by ``save``)."""

    def __init__(self, bed_dir: Path, plan: NodePlan, ports: dict[str, int], processes: dict[str, ProcessRecord],
                 save: Callable[[], None], progress: Progress, registry: Registry | None = None) -> None:
        self.dir = bed_dir
        self.plan = plan
        self.ports = ports
        self.processes = processes
        self.save = save
        self.progress = progress
        self.paths = NodePaths(bed_dir)
        self.registry = registry or Registry()
        self.bed_pki = bed_dir / "pki"

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # ---- up ------------------------------------------------------------------------------
    def up(self, kubectl: Path) -> dict:
        """Start (or reuse) the node; return what testbed.json says of it."""
        steps = _Steps()
        bins, built_images = prepare(self.progress)
        pause_ref, dns_ref = built_images["pause"][0], built_images["coredns"][0]
        steps.done("builds")
        self._write_pki()
        self._write_configs(pause_ref)
        p = self.plan
        absent = [path for path in teardown.SHARED_HOST_PATHS if not Path(path).exists()]
        absent += [f"iptables:{table}" for table in network.absent_tables()]
        # The namespace first: it is what shows the other beds this node exists (machine.py).
        network.create_namespace(p)
        changed = kernel.hold(self.registry, p.id, absent)
        network.set_up(p, [self.ports["kube-apiserver"], self.ports["postgres"], self.ports["s3"]],
                       self.ports["kube-apiserver"])
        if changed:
            self.progress(f"node: kernel settings for the kubelet (put back at down): "
                          f"{', '.join(f'{k}={v}' for k, v in changed.items())}")
        teardown.create_cgroup(p.cgroup_root)
        steps.done("network")
        self._start_if_stopped("kube-scheduler", bins)
        self._start_if_stopped("containerd", bins)
        steps.done("scheduler+containerd")
        present = containerd.image_refs(self.paths)
        for ref, archive in built_images.values():
            if ref not in present:
                self.progress(f"node: importing {ref}")
                containerd.import_image(self.paths, archive)
        steps.done("images")
        self._start_if_stopped("kubelet", bins)
        steps.done("kubelet")
        self._start_if_stopped("kube-proxy", bins)
        steps.done("kube-proxy")
        self._apply(kubectl, [*cluster.coredns(p, dns_ref), *cluster.bed_services(p, self.ports)])
        self._wait_dns()
        steps.done("dns")
        self.progress(f"node {p.name} ready in {steps.total():.1f}s ({steps})")
        return {"node": {"name": p.name},
                "images": {name: built_images[name][0] for name in PUBLISHED_IMAGES}}

    def _write_pki(self) -> None:
        d = self.paths.pki
        if (d / "done").exists():
            return
        ca = pki.KeyPair(key_pem=(self.bed_pki / "ca.key").read_bytes(), cert_pem=(self.bed_pki / "ca.crt").read_bytes())
        name = self.plan.name
        serving = pki.issue(ca, name, server=True, dns_names=(name,), ip_addresses=("127.0.0.1", self.plan.host_ip))
        write_private(d / "kubelet-serving.crt", serving.cert_pem)
        write_private(d / "kubelet-serving.key", serving.key_pem)
        api = self.ports["kube-apiserver"]
        clients = {
            "kubelet": (f"system:node:{name}", ("system:nodes",), f"https://127.0.0.1:{api}"),
            "kube-scheduler": ("system:kube-scheduler", (), f"https://127.0.0.1:{api}"),
            # kube-proxy runs in the node's namespace: the API server through the veth.
            "kube-proxy": ("system:kube-proxy", (), f"https://{self.plan.host_ip}:{api}"),
        }
        for component, (user, groups, server) in clients.items():
            client = pki.issue(ca, user, organizations=groups, client=True)
            write_private(self.paths.kubeconfig(component), kubeconfig(server, ca.cert_pem, client, user))
        write_private(d / "done", b"")

    def _write_configs(self, sandbox_image: str) -> None:
        p, paths = self.plan, self.paths
        for directory in (paths.containerd_root, paths.containerd_state, paths.runc_root, paths.cni_conf_dir,
                          paths.cni_ipam_dir, paths.kubelet_root, paths.pod_logs, paths.volume_plugins,
                          paths.kube_proxy_config.parent):
            directory.mkdir(parents=True, exist_ok=True)
        _write_if_changed(paths.containerd_config,
                          configs.to_toml(configs.containerd_config(p, paths, sandbox_image)))
        _write_if_changed(paths.cni_conf_dir / "10-bed.conflist", json.dumps(configs.cni_conflist(p, paths), indent=2))
        _write_if_changed(paths.resolv_conf, configs.resolv_conf())
        _write_if_changed(paths.kubelet_config, yaml.safe_dump(configs.kubelet_config(
            p, paths, port=self.ports["kubelet"], healthz_port=self.ports["kubelet-healthz"],
            ca_file=self.bed_pki / "ca.crt", tls_cert=paths.pki / "kubelet-serving.crt",
            tls_key=paths.pki / "kubelet-serving.key")))
        # kube-proxy exits when its configuration file changes, even to the same content.
        _write_if_changed(paths.kube_proxy_config, yaml.safe_dump(configs.kube_proxy_config(p, paths)))

    def _argv(self, name: str, bins: dict[str, Path]) -> list[str]:
        p, paths = self.plan, self.paths
        if name == "kube-scheduler":
            kc = paths.kubeconfig("kube-scheduler")
            return [str(bins["kube-scheduler"]), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1",
                    f"--secure-port={self.ports['kube-scheduler']}", "--v=0"]
        if name == "containerd":
            return containerd.argv(p, paths)
        if name == "kubelet":
            return configs.kubelet_argv(bins["kubelet"], p, paths)
        if name == "kube-proxy":
            return containerd.in_netns(p, [str(bins["kube-proxy"]), f"--config={paths.kube_proxy_config}", "--v=1"])
        raise ValueError(f"unknown node component {name!r}")

    def _start_if_stopped(self, name: str, bins: dict[str, Path]) -> None:
        record = self.processes.get(name)
        if record is not None and is_alive(record):
            self.progress(f"{name}: running (pid {record.pid}), reused")
        else:
            self.start(name, bins)
        self.wait_ready(name)

    def start(self, name: str, bins: dict[str, Path] | None = None) -> None:
        bins = bins or binaries.ensure_node(self.progress)
        self.progress(f"{name}: starting")
        self.processes[name] = spawn(name, self._argv(name, bins), self.log_path(name), env=loopback.system_env())
        self.save()

    def wait_ready(self, name: str) -> None:
        p, ports = self.plan, self.ports
        checks: dict[str, tuple[Callable[[], bool], float]] = {
            "kube-scheduler": (lambda: loopback.http_get(f"https://127.0.0.1:{ports['kube-scheduler']}/healthz",
                                                         loopback.insecure_tls()) == b"ok", 60),
            "containerd": (lambda: containerd.is_ready(self.paths), 60),
            "kubelet": (lambda: self._kubelet_healthy() and self._node_ready(), 120),
            "kube-proxy": (lambda: network.http_get_in_netns(p, f"http://{configs.KUBE_PROXY_HEALTHZ}/healthz"), 60),
        }
        check, timeout = checks[name]
        wait_until(check, f"{name}", timeout, record=self.processes.get(name), log_path=self.log_path(name),
                   interval=0.25)

    def _api(self, path: str) -> dict:
        return loopback.get_json(f"https://127.0.0.1:{self.ports['kube-apiserver']}{path}",
                                 loopback.client_tls(self.bed_pki))

    def _kubelet_healthy(self) -> bool:
        return loopback.http_get(f"http://127.0.0.1:{self.ports['kubelet-healthz']}/healthz") == b"ok"

    def _node_ready(self) -> bool:
        node = self._api(f"/api/v1/nodes/{self.plan.name}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

    def _apply(self, kubectl: Path, objects: list[dict]) -> None:
        done = subprocess.run(
            [str(kubectl), f"--kubeconfig={self.dir / 'kubeconfig'}", "apply", "--server-side", "--force-conflicts",
             f"--field-manager={cluster.MANAGER}", "-f", "-"],
            input=yaml.safe_dump_all(objects), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"applying the node's cluster objects failed: {done.stderr.strip()}")

    def _wait_dns(self) -> None:
        def available() -> bool:
            status = self._api("/apis/apps/v1/namespaces/kube-system/deployments/coredns").get("status", {})
            return status.get("availableReplicas", 0) >= 1
        wait_until(available, "CoreDNS (cluster DNS) available", 120, log_path=self.log_path("kubelet"),
                   interval=0.25)

    # ---- down ----------------------------------------------------------------------------
    @staticmethod
    def _remove_shared(absent: list[str]) -> list[str]:
        """What the machine's first node found absent, removed by its last (under the
        registry's lock); says what had to stay."""
        kept = []
        for item in absent:
            if item.startswith("iptables:"):
                table = item.split(":", 1)[1]
                if not network.delete_table_if_empty(table):
                    kept.append(f"the host's iptables table {table} holds rules no node made: left")
            elif not teardown.remove_if_only_leftovers(Path(item)):
                kept.append(f"{item} holds files no node made: left")
        return kept

    def down(self) -> None:
        p, paths = self.plan, self.paths
        netns_files: set[str] = set()
        for name in reversed(COMPONENTS):
            record = self.processes.get(name)
            if name == "containerd" and record is not None and is_alive(record):
                try:
                    netns_files = containerd.sandbox_netns(paths)
                    containerd.kill_all_tasks(paths)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    self.progress(f"node: containerd did not answer ({exc}); its shims are killed instead")
            if record is not None:
                stop(record)
                del self.processes[name]
                self.save()
        netns_files |= network.pod_netns(p)
        shims = containerd.kill_shims(paths)
        if shims:
            self.progress(f"node: killed {len(shims)} leftover shim(s)")
        left = teardown.kill_cgroup(p.cgroup_root)
        if left:
            self.progress(f"node: killed {left} process(es) left in the node's cgroups")
        problems = []
        teardown.unmount_all([str(paths.base)], exact=netns_files)
        teardown.remove_netns_files(netns_files)
        problems += network.tear_down(p)
        problems += [f"cgroup {g}" for g in teardown.remove_cgroup(p.cgroup_root)]
        teardown.remove_log_links(paths.pod_logs)
        teardown.remove_cni_cache(p.cni_network, containerd.sandbox_ids(paths))
        # Every sandbox is gone: no address of the pool is in use any more.
        shutil.rmtree(paths.cni_ipam_dir, ignore_errors=True)
        released = kernel.release(self.registry, p.id, self._remove_shared)
        if released is not None:
            written, left, kept = released
            if written:
                self.progress(f"node: kernel settings put back: {', '.join(f'{k}={v}' for k, v in written.items())}")
            problems += [f"kernel setting {k} changed by someone else meanwhile (now {v}): left" for k, v in left.items()]
            for note in kept:
                self.progress(f"node: {note}")
        problems += [f"port {self.ports[n]} ({n}) still listening" for n in PORT_NAMES if is_listening(self.ports[n])]
        mounts = teardown.mount_points(Path("/proc/self/mountinfo").read_text(), [str(paths.base)], netns_files)
        problems += [f"mount {m}" for m in mounts]
        if problems:
            raise RuntimeError("the node left behind: " + "; ".join(problems))
