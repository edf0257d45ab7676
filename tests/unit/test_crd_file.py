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


# ---- the CRD says what api.validation says, where a pattern or CEL can --------------------------

def field_schema(root: dict, path: str) -> dict:
    node = root
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def _cel_string(pattern: str) -> str:
    return '"' + pattern.replace("\\", "\\\\") + '"'


def _patterns() -> list[tuple[str, str]]:
    from trackop.api import validation as v

    stores = ("s3", "gcs", "azure")
    name = v.OBJECT_NAME_PATTERN
    return [
        *((f"spec.artifacts.{s}.endpoint", v.ENDPOINT_PATTERN) for s in stores),
        *((f"spec.artifacts.{s}.prefix", v.PREFIX_PATTERN) for s in stores),
        *((f"spec.artifacts.{s}.credentialsSecretRef.name", name) for s in stores),
        ("spec.artifacts.s3.credentialsSecretRef.accessKeyIdKey", v.SECRET_KEY_PATTERN),
        ("spec.artifacts.s3.credentialsSecretRef.secretAccessKeyKey", v.SECRET_KEY_PATTERN),
        ("spec.artifacts.gcs.credentialsSecretRef.key", v.SECRET_KEY_PATTERN),
        ("spec.artifacts.azure.credentialsSecretRef.key", v.SECRET_KEY_PATTERN),
        ("spec.postgres.passwordSecretRef.key", v.SECRET_KEY_PATTERN),
        ("spec.postgres.passwordSecretRef.name", name),
        ("spec.postgres.external.adminSecretRef.name", name),
        ("spec.postgres.managed.storage.storageClassName", name),
        ("spec.server.serviceAccountName", f"^({name[1:-1]})?$"),  # empty: no ServiceAccount
        ("spec.artifacts.s3.region", v.REGION_PATTERN),
        ("spec.artifacts.gcs.project", v.GCS_PROJECT_PATTERN),
        ("spec.artifacts.azure.container", v.AZURE_CONTAINER_PATTERN),
        ("spec.artifacts.azure.storageAccount", "^[a-z0-9]+$"),
        ("spec.schema.image", v.IMAGE_PATTERN),
        ("spec.server.image", v.IMAGE_PATTERN),
        ("spec.postgres.managed.image", v.IMAGE_PATTERN),
        ("spec.server.allowedHosts.[]", v.ALLOWED_HOST_PATTERN),
    ]


@pytest.mark.parametrize(("path", "pattern"), _patterns())
def test_the_crd_patterns_are_the_validators(root_schema, path, pattern):
    assert field_schema(root_schema, path)["pattern"] == pattern


def test_the_crd_rules_embed_the_validators_patterns(root_schema):
    from trackop.api import validation as v

    def rules(path: str) -> str:
        return " ".join(r["rule"] for r in field_schema(root_schema, path).get("x-kubernetes-validations") or [])

    for path in ("spec.artifacts.s3.bucket", "spec.artifacts.gcs.bucket"):
        assert _cel_string(v.IPV4_PATTERN) in rules(path)
    assert _cel_string(v.GCS_BUCKET_PARTS_PATTERN) in rules("spec.artifacts.gcs.bucket")
    for reserved in (*v.S3_RESERVED_PREFIXES, *v.S3_RESERVED_SUFFIXES):
        assert f"'{reserved}'" in rules("spec.artifacts.s3.bucket")
    for store in ("s3", "gcs", "azure"):
        assert _cel_string(v.DOT_SEGMENT_PATTERN) in rules(f"spec.artifacts.{store}.prefix")
    assert "'^[0-9]+$'" in rules("spec.artifacts.s3.region")
