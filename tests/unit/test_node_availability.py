"""Whether a bed starts a node (trackop_testbed.node.availability, trackop_testbed.bed_node):
asked for, possible here, and said clearly when not."""

from __future__ import annotations

import types

import pytest

from trackop_testbed import bed_node
from trackop_testbed.node import availability


@pytest.mark.parametrize(("flag", "env", "expected"), [
    (None, None, "auto"), (None, "0", "off"), (None, "off", "off"), (None, "1", "on"), (None, "yes", "on"),
    (True, "0", "on"), (False, "1", "off"),
])
def test_mode_from_the_flag_then_the_environment(monkeypatch, flag, env, expected):
    if env is None:
        monkeypatch.delenv(availability.ENV, raising=False)
    else:
        monkeypatch.setenv(availability.ENV, env)
    assert availability.mode(flag) == expected


def test_not_root_is_the_first_reason(monkeypatch):
    monkeypatch.setattr(availability.os, "geteuid", lambda: 1000)
    assert "root" in availability.unavailable_reason()


def test_missing_packages_are_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(availability.os, "geteuid", lambda: 0)
    monkeypatch.setattr(availability.shutil, "which", lambda name: None if name in ("containerd", "conntrack") else "/x")
    reason = availability.unavailable_reason()
    assert "containerd" in reason and "conntrack" in reason and "make setup" in reason


def _bed(mode: str, messages: list[str]):
    return types.SimpleNamespace(node_mode=mode, progress=messages.append, dir="/tmp/x")


def _state():
    return types.SimpleNamespace(node=None, service_cidr="10.0.0.0/24", ports={})


def test_auto_says_why_not_and_the_bed_is_the_control_plane_only(monkeypatch):
    monkeypatch.setattr(availability, "unavailable_reason", lambda: "iptables is not usable here: no")
    messages: list[str] = []
    state = _state()
    bed_node.plan_new(_bed("auto", messages), state)
    assert state.node is None and state.service_cidr == "10.0.0.0/24"
    assert messages == ["node: not started: iptables is not usable here: no; the bed is the control plane only"]


def test_on_makes_it_an_error_and_off_asks_nothing(monkeypatch):
    monkeypatch.setattr(availability, "unavailable_reason", lambda: "it needs root")
    with pytest.raises(RuntimeError, match="it needs root"):
        bed_node.plan_new(_bed("on", []), _state())

    def never():
        raise AssertionError("not asked when off")

    monkeypatch.setattr(availability, "unavailable_reason", never)
    state = _state()
    bed_node.plan_new(_bed("off", []), state)
    assert state.node is None


def test_a_bed_without_a_node_keeps_the_api_servers_flags_and_gets_no_node_ports():
    state = _state()
    assert bed_node.apiserver_flags(state, None) == ["--authorization-mode=RBAC"]
    assert bed_node.port_names(state) == () and bed_node.client_networks(state) == []
    assert bed_node.kubernetes_ip(state) == "10.0.0.1"


def test_testbed_json_gains_the_node_keys():
    info = {"postgres": {"host": "127.0.0.1"}, "s3": {"endpoint": "http://127.0.0.1:1"}}
    bed_node.add_to_info(info, {"node": {"name": "vm"}, "images": {"training": "t", "postgres": "p"}})
    assert info["node"] == {"name": "vm"} and info["images"] == {"training": "t", "postgres": "p"}
    assert info["postgres"]["in_cluster"] == {"host": "postgres.trackop-testbed.svc.cluster.local", "port": 5432}
    assert info["s3"]["in_cluster_endpoint"] == "http://s3.trackop-testbed.svc.cluster.local:9000"
