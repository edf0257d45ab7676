from trackop_testbed.pod_env import expand


def test_expand_replaces_known_names_and_keeps_unknown():
    env = {"A": "1", "B_C": "two"}
    assert expand("$(A)-$(B_C)", env) == "1-two"
    assert expand("$(NOPE)", env) == "$(NOPE)"


def test_expand_double_dollar_escapes():
    assert expand("$$(A) $$ $(A)", {"A": "x"}) == "$(A) $ x"


def test_expand_leaves_plain_dollars():
    assert expand("cost $5 and $A", {"A": "x"}) == "cost $5 and $A"
