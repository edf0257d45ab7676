"""The bed's side of its node (node/): the choice made when a bed is created, the API
server's flags and certificates for it, and the node's part of ``up``, ``down`` and
testbed.json. Kept apart so that bed.py reads the same with or without a node."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from .node import availability, cluster
from .node.machine import Registry
from .node.network import host_routes
from .node.plan import NodePlan, node_name, plan_for
from .node.runner import COMPONENTS, PORT_NAMES, NodeRunner

if TYPE_CHECKING:
    from .bed import BedState, Testbed

mode = availability.mode


def plan_new(bed: Testbed, state: BedState) -> None:
    """At a bed's creation: a node plan (and so the bed's own Service range) if wanted and possible."""
    if bed.node_mode == "off":
        return
    reason = availability.unavailable_reason()
    if reason is not None:
        if bed.node_mode == "on":
            raise RuntimeError(f"the node cannot run on this machine: {reason}")
        bed.progress(f"node: not started: {reason}; the bed is the control plane only")
        return
    slot, node_id = Registry().claim(bed.dir, host_routes())
    plan = plan_for(slot, node_id, node_name())
    state.node = plan.to_json()
    state.service_cidr = plan.service_cidr


def _plan(state: BedState) -> NodePlan | None:
    return NodePlan.from_json(state.node) if state.node else None


def port_names(state: BedState) -> tuple[str, ...]:
    return PORT_NAMES if state.node else ()


def kubernetes_ip(state: BedState) -> str:
    return str(ipaddress.ip_network(state.service_cidr)[1])


def extra_apiserver_ips(state: BedState) -> tuple[str, ...]:
    """kube-proxy, in the node's namespace, reaches the API server at the host's veth address."""
    plan = _plan(state)
    return (plan.host_ip,) if plan else ()


def apiserver_flags(state: BedState, pki_dir: Path) -> list[str]:
    if not state.node:
        return ["--authorization-mode=RBAC"]
    return [
        # The kubelet's own credentials (system:node:<name>) are authorised as a kubelet's.
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        # The Node's Hostname resolves to 127.0.0.1, where the kubelet listens.
        "--kubelet-preferred-address-types=Hostname",
        f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
    ]


def client_networks(state: BedState) -> list[str]:
    """Networks the bed's PostgreSQL accepts password logins from besides loopback."""
    plan = _plan(state)
    return [plan.pod_cidr] if plan else []


def _runner(bed: Testbed, state: BedState) -> NodeRunner:
    return NodeRunner(bed.dir, _plan(state), state.ports, state.processes, lambda: bed._save_state(state),
                      bed.progress)


def up(bed: Testbed, state: BedState, kubectl: Path) -> dict | None:
    """The node's part of ``up``; what testbed.json says of it, or None without a node."""
    if bed.node_mode == "off":
        if state.node:
            bed.progress(f"node: not started ({availability.ENV}=0 or --no-node)")
        return None
    if not state.node:
        if bed.node_mode == "on":
            raise RuntimeError(f"the bed in {bed.dir} was made without a node (its Service range and "
                               "certificates are chosen then): a node needs a new bed directory")
        return None
    reason = availability.unavailable_reason()
    if reason is not None:
        if bed.node_mode == "on":
            raise RuntimeError(f"the node cannot run on this machine: {reason}")
        bed.progress(f"node: not started: {reason}")
        return None
    return _runner(bed, state).up(kubectl)


def down(bed: Testbed, state: BedState) -> Exception | None:
    """The node's part of ``down``, first; its error is returned so the rest still stops."""
    if not state.node:
        return None
    try:
        _runner(bed, state).down()
    except Exception as exc:  # reported after the rest of the bed is down
        return exc
    return None


def start_component(bed: Testbed, state: BedState, name: str) -> None:
    runner = _runner(bed, state)
    runner.start(name)
    runner.wait_ready(name)


def add_to_info(info: dict, node_info: dict) -> None:
    """testbed.json's node keys (DESIGN.md): the node, its images, and how Pods reach the bed."""
    info["node"] = node_info["node"]
    info["images"] = node_info["images"]
    info["postgres"]["in_cluster"] = {"host": cluster.in_cluster_host("postgres"),
                                      "port": cluster.BED_SERVICES["postgres"]}
    info["s3"]["in_cluster_endpoint"] = f"http://{cluster.in_cluster_host('s3')}:{cluster.BED_SERVICES['s3']}"
