"""Every object in examples/ goes to the bed's API server as a server-side dry run: the
TrackingBackends against the installed CRD (OpenAPI schema, CEL rules, defaults), the rest
(Namespaces, Secrets, Jobs, Deployments, ...) against the built-in APIs, with strict field
validation so a misspelt field fails instead of being dropped.

Namespaced objects go into the test's own namespace (a dry run still needs it to exist);
nothing is stored."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.bed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture
def dry_run(bed_info: dict, trackop_crd: dict, tmp_path: Path):
    kubectl = Path(bed_info["kubeconfig"]).parent / "kubectl"

    def run(objects: list[dict]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(kubectl), "--kubeconfig", bed_info["kubeconfig"], "--cache-dir", str(tmp_path / "kcache"),
             "apply", "--server-side", "--dry-run=server", "--validate=strict", "--field-manager=trackop-examples",
             "-o", "yaml", "-f", "-"],
            input=yaml.safe_dump_all(objects), capture_output=True, text=True, timeout=60)

    return run


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_passes_a_server_side_dry_run(path, dry_run, namespace):
    objects = []
    for doc in _documents(path):
        doc = copy.deepcopy(doc)
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = namespace
        objects.append(doc)
    result = dry_run(objects)
    assert result.returncode == 0, f"{path.name}:\n{result.stderr}"
    returned = [d for d in yaml.safe_load_all(result.stdout) if d]
    returned = [item for d in returned for item in (d.get("items") if d.get("kind") == "List" else [d])]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in returned) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in objects)
    for sent, got in zip(objects, returned):
        if sent["kind"] == "TrackingBackend":
            # The API server applied the CRD's defaults to what it would store.
            assert got["spec"]["schema"]["migration"] in ("Inline", "Job")
            assert got["spec"]["deletionPolicy"] in ("Retain", "Delete")


def test_a_broken_example_is_refused(dry_run, namespace):
    """The dry run is not a rubber stamp: a misspelt field and a CEL violation fail."""
    backend = next(d for path in FILES for d in _documents(path) if d["kind"] == "TrackingBackend")
    misspelt = copy.deepcopy(backend)
    misspelt["metadata"]["namespace"] = namespace
    misspelt["spec"]["postgres"]["external"]["sslmode"] = misspelt["spec"]["postgres"]["external"].pop("sslMode",
                                                                                                        "require")
    result = dry_run([misspelt])
    assert result.returncode != 0 and "sslmode" in result.stderr
    two_stores = copy.deepcopy(backend)
    two_stores["metadata"]["namespace"] = namespace
    two_stores["spec"]["artifacts"] = {"s3": {"bucket": "abc"}, "gcs": {"bucket": "abc"}}
    result = dry_run([two_stores])
    assert result.returncode != 0 and "exactly one" in result.stderr
