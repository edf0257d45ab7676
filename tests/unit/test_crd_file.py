"""The CRD file, without a cluster: every field is documented (kubectl explain is the
API's manual), so adding a field without a description fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "trackop.dev_trackingbackends.yaml"

# The API server forbids anything but name/generateName under metadata, description included.
UNDOCUMENTABLE = {"metadata"}


def undocumented(schema: dict, path: str = "") -> list[str]:
    """Paths of the fields under ``schema`` (properties, list items, map values) that have
    no non-empty description."""
    missing = []
    children = [(f"{path}.{name}".lstrip("."), sub) for name, sub in (schema.get("properties") or {}).items()]
    if isinstance(schema.get("items"), dict):
        children.append((f"{path}[]", schema["items"]))
    if isinstance(schema.get("additionalProperties"), dict):
        children.append((f"{path}{{}}", schema["additionalProperties"]))
    for child_path, child in children:
        if child_path in UNDOCUMENTABLE:
            continue
        if not str(child.get("description") or "").strip():
            missing.append(child_path)
        missing.extend(undocumented(child, child_path))
    return missing


@pytest.fixture(scope="module")
def root_schema() -> dict:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_every_field_has_a_description(root_schema):
    assert str(root_schema.get("description") or "").strip()
    assert undocumented(root_schema) == []


def test_the_walk_covers_spec_and_status(root_schema):
    props = root_schema["properties"]
    assert {"spec", "status"} <= set(props)
    assert "postgres" in props["spec"]["properties"]
    assert "conditions" in props["status"]["properties"]
    # The walker really looks at nested objects and list items.
    items = {"properties": {"e": {"description": "  "}}}
    schema = {"properties": {
        "spec": {"description": "d", "properties": {"a": {"description": "d", "properties": {"b": {}}}}},
        "status": {"description": "d", "properties": {"c": {"description": "d", "items": items}}},
    }}
    assert undocumented(schema) == ["spec.a.b", "status.c[]", "status.c[].e"]
