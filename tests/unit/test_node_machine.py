"""The machine-wide registry (trackop_testbed.node.machine) and the kernel settings' restore
plan (trackop_testbed.node.kernel): beds on one machine never share a slot, and the kernel
settings go back when the last node goes, not before."""

from __future__ import annotations

from trackop_testbed.node import kernel, plan
from trackop_testbed.node.machine import Registry


def _registry(tmp_path, live: set[str]) -> Registry:
    return Registry(tmp_path / "run", netns_exists=lambda node_id: node_id in live)


def _bed(tmp_path, name: str):
    bed = tmp_path / name
    bed.mkdir()
    (bed / "state.json").write_text("{}")
    return bed


def test_beds_get_distinct_slots_and_keep_theirs(tmp_path):
    registry = _registry(tmp_path, set())
    a, b = _bed(tmp_path, "a"), _bed(tmp_path, "b")
    slot_a, id_a = registry.claim(a, [])
    slot_b, id_b = registry.claim(b, [])
    assert slot_a != slot_b and id_a != id_b
    assert registry.claim(a, []) == (slot_a, id_a), "a bed's slot is its own while its state exists"


def test_a_slot_under_a_host_route_is_skipped(tmp_path):
    registry = _registry(tmp_path, set())
    slot, _ = registry.claim(_bed(tmp_path, "a"), [str(plan.slot_block(1)), "default"])
    assert slot == 2


def test_a_removed_bed_frees_its_slot_unless_its_namespace_lives(tmp_path):
    a = _bed(tmp_path, "a")
    live: set[str] = set()
    registry = _registry(tmp_path, live)
    slot_a, id_a = registry.claim(a, [])
    (a / "state.json").unlink()
    live.add(id_a)
    assert registry.claim(_bed(tmp_path, "b"), [])[0] != slot_a, "its network namespace still exists"
    live.clear()
    assert registry.claim(_bed(tmp_path, "c"), [])[0] == slot_a


def test_kernel_settings_are_recorded_by_the_first_node_and_returned_by_the_last(tmp_path):
    live = {"n1", "n2"}
    registry = _registry(tmp_path, live)
    values = {"vm.overcommit_memory": "0"}
    assert registry.hold_shared("n1", values.__getitem__, list(values), ["/nonexistent/x"]) == {"vm.overcommit_memory": "0"}
    values["vm.overcommit_memory"] = "1"  # what the first node set
    assert registry.hold_shared("n2", values.__getitem__, list(values), []) == {"vm.overcommit_memory": "0"}
    assert registry.release_shared("n1", lambda *args: args) is None, "n2 still runs"
    assert registry.release_shared("n2", lambda *args: args) == ({"vm.overcommit_memory": "0"}, ["/nonexistent/x"])
    assert registry.release_shared("n2", lambda *args: args) == ({}, []), "recorded once, given back once"


def test_a_holder_whose_namespace_is_gone_is_not_waited_for(tmp_path):
    live = {"n1", "n2"}
    registry = _registry(tmp_path, live)
    registry.hold_shared("n1", lambda key: "0", ["k"], [])
    registry.hold_shared("n2", lambda key: "1", ["k"], [])
    live.discard("n1")  # crashed without down; its namespace was removed by hand
    assert registry.release_shared("n2", lambda *args: args) == ({"k": "0"}, [])


def test_to_change_lists_only_what_differs():
    assert kernel.to_change({"a": "1", "b": "0"}, {"a": "1", "b": "1"}) == {"b": "1"}


def test_restore_plan_puts_back_what_still_has_the_nodes_value():
    original = {"vm.overcommit_memory": "0", "kernel.panic": "1", "kernel.panic_on_oops": "0", "vm.panic_on_oom": "0"}
    current = {"vm.overcommit_memory": "1", "kernel.panic": "5", "kernel.panic_on_oops": "1", "vm.panic_on_oom": "0"}
    writes, left = kernel.restore_plan(original, current, kernel.KUBELET_WANTS)
    assert writes == {"vm.overcommit_memory": "0", "kernel.panic_on_oops": "0"}
    assert left == {"kernel.panic": "5"}, "changed by someone else meanwhile: left, and reported"


def test_the_kubelets_settings_are_the_ones_kubelet_1_35_wants():
    assert kernel.KUBELET_WANTS == {"vm.overcommit_memory": "1", "vm.panic_on_oom": "0", "kernel.panic": "10",
                                    "kernel.panic_on_oops": "1", "kernel.keys.root_maxkeys": "1000000",
                                    "kernel.keys.root_maxbytes": "25000000"}
