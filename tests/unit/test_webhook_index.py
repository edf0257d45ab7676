"""trackop.webhook.index: what admission decisions read."""

from __future__ import annotations

from trackop.webhook.index import Index


def test_unknown_namespaces_default_to_their_name_label():
    assert Index().namespace_labels("team-x") == {"kubernetes.io/metadata.name": "team-x"}
