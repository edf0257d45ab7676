"""The manifests in examples/, without a cluster: every TrackingBackend parses as the
operator parses it, the Secrets each one references are templated in the file or named
in its header, the connection budget the comments promise holds, and a pod that opts in
to injection names a backend that admits its namespace.
(tests/integration/test_examples.py sends them all to the API server as a dry run.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trackop.api import connections, tuning, v1alpha1
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import GROUP, SUPERUSER_RESERVED_CONNECTIONS, VERSION, BackendSpec
from trackop.webhook import injection

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))
# The quickstart predates the header convention and is applied by `trackop dev`.
HEADER_EXEMPT = {"quickstart.yaml"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in FILES for doc in documents(path)]


def backends() -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in all_documents() if doc["kind"] == "TrackingBackend"]


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_the_examples_cover_the_set_ups():
    names = {p.name for p in FILES}
    assert {"quickstart.yaml", "rds-s3.yaml", "cloudsql-gcs.yaml", "cnpg-minio.yaml", "training-job.yaml"} <= names
    parsed = [parse(d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]) for _, d in backends()]
    assert {p.injection_mode for p in parsed} == {"Server", "Direct"}
    assert {p.artifacts.kind for p in parsed if p.artifacts} >= {"s3", "gcs"}
    assert any(p.artifacts and p.artifacts.kind == "s3" and p.artifacts.endpoint for p in parsed)  # MinIO
    assert any(p.artifacts and p.artifacts.kind == "s3" and not p.artifacts.endpoint for p in parsed)  # AWS


@pytest.mark.parametrize("path", [p for p in FILES if p.name not in HEADER_EXEMPT], ids=lambda p: p.name)
def test_every_example_says_what_it_shows_and_which_secrets_it_expects(path):
    text = header(path)
    assert "What it shows" in text and "Secrets it expects" in text, f"{path.name}: header incomplete"


@pytest.mark.parametrize("path,doc", backends(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_backend_parses(path, doc):
    meta = doc["metadata"]
    spec = parse(meta["namespace"], meta["name"], doc["spec"])  # raises SpecError
    assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
    if spec.tuning is not None and spec.tuning.max_connections is not None:
        server = spec.tracking_server
        limit = tuning.connection_limit(spec.tuning)
        server_wide = spec.tuning.scope == tuning.SCOPE_SERVER  # max_connections less the superusers' slots
        budget = connections.connection_budget(spec.tuning, server.replicas if server else 0,
                                          server.workers if server else 0, database_limit=limit,
                                          role_limit=limit,
                                          server_max_connections=spec.tuning.max_connections if server_wide else None,
                                          reserved_slots=SUPERUSER_RESERVED_CONNECTIONS, used_by_others=0)
        assert budget.required <= budget.limit, f"{path.name}: {meta['name']} is over its own connection budget"


def _secret_keys_needed(spec: BackendSpec) -> dict[str, set[str]]:
    needed = {spec.postgres.admin_secret: {"username", "password"}}
    if spec.password_secret:
        needed.setdefault(spec.password_secret.name, set()).add(spec.password_secret.key)
    if spec.artifacts and spec.artifacts.credentials_secret:
        needed.setdefault(spec.artifacts.credentials_secret, set()).update(spec.artifacts.credential_keys)
    return needed


@pytest.mark.parametrize("path,doc", backends(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_referenced_secrets_are_templated_or_named_in_the_header(path, doc):
    meta = doc["metadata"]
    spec = parse(meta["namespace"], meta["name"], doc["spec"])
    templates = {d["metadata"]["name"]: d for d in documents(path)
                 if d["kind"] == "Secret" and d["metadata"]["namespace"] == meta["namespace"]}
    text = header(path)
    for name, keys in _secret_keys_needed(spec).items():
        if name in templates:
            assert keys <= set(templates[name].get("stringData") or {}), f"{path.name}: Secret {name} lacks {keys}"
        elif path.name not in HEADER_EXEMPT:
            assert name in text, f"{path.name}: Secret {name} is neither templated nor named in the header"
        if path.name not in HEADER_EXEMPT:
            assert all(key in text for key in keys), f"{path.name}: the header does not name {name}'s keys {keys}"


def _pod_templates() -> list[tuple[Path, dict, dict]]:
    found = []
    for path, doc in all_documents():
        template = (doc.get("spec") or {}).get("template")
        if doc["kind"] in ("Job", "Deployment") and template:
            found.append((path, doc, template))
    return found


def test_opted_in_pods_name_a_backend_that_admits_them():
    specs = {(d["metadata"]["namespace"], d["metadata"]["name"]): parse(d["metadata"]["namespace"],
                                                                            d["metadata"]["name"], d["spec"])
             for _, d in backends()}
    namespaces = {d["metadata"]["name"]: d["metadata"].get("labels") or {}
                  for _, d in all_documents() if d["kind"] == "Namespace"}
    opted_in = 0
    for path, doc, template in _pod_templates():
        meta = template.get("metadata") or {}
        if (meta.get("labels") or {}).get(v1alpha1.INJECT_LABEL) != "true":
            continue
        opted_in += 1
        pod_namespace = doc["metadata"]["namespace"]
        reference = injection.parse_backend_reference(
            (meta.get("annotations") or {}).get(v1alpha1.BACKEND_ANNOTATION), pod_namespace)
        assert reference in specs, f"{path.name}: {doc['metadata']['name']} names no backend of the examples"
        spec = specs[reference]
        assert injection.admits_namespace(spec.namespace, spec.namespace_selector, pod_namespace,
                                          namespaces[pod_namespace], "trackop-system"), \
            f"{path.name}: backend {reference} does not admit namespace {pod_namespace}"
        assert not any(e.get("name", "").startswith(("MLFLOW_", "PG"))
                       for c in template["spec"]["containers"] for e in c.get("env") or []), \
            "the point of injection: no tracking settings in the manifest"
    assert opted_in >= 1
