"""The Helm chart's files, without helm or a cluster: the CRD copy, the versions, the
RBAC rules' justifications, the names the operator and the chart must agree on, and the
strictness of values.schema.json. (tests/integration/test_helm_chart.py lints, renders
and dry-runs the chart.)"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from trackop import cli
from trackop.settings import Settings
from trackop.specs.webhook_configurations import MUTATING_NAME, SERVICE_PORT, VALIDATING_NAME
from trackop.webhook.service import CERT_SECRET

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "trackop"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
RBAC_TEMPLATES = [CHART / "templates" / "rbac.yaml", CHART / "templates" / "peering.yaml"]


def test_the_chart_crd_is_a_copy_of_deploy_crds():
    source = ROOT / "deploy" / "crds" / "trackop.dev_trackingbackends.yaml"
    copy = CHART / "crds" / source.name
    assert copy.read_bytes() == source.read_bytes(), (
        f"the chart's CRD differs from {source.relative_to(ROOT)}: cp {source.relative_to(ROOT)} "
        f"{copy.relative_to(ROOT)}")


def test_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == package


def test_kopf_peering_crds():
    crds = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text())}
    assert {name: (c["spec"]["group"], c["spec"]["scope"], c["spec"]["names"]["kind"], c["spec"]["versions"][0]["name"])
            for name, c in crds.items()} == {
        "clusterkopfpeerings.kopf.dev": ("kopf.dev", "Cluster", "ClusterKopfPeering", "v1"),
        "kopfpeerings.kopf.dev": ("kopf.dev", "Namespaced", "KopfPeering", "v1"),
    }
    for crd in crds.values():
        # kopf writes keepalives into .status; without a status subresource it patches the object itself.
        assert "subresources" not in crd["spec"]["versions"][0]
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize("template", RBAC_TEMPLATES, ids=lambda p: p.name)
def test_every_rbac_rule_says_why(template: Path):
    lines = template.read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"\s*- apiGroups:", line)]
    assert rules, f"no rules found in {template.name}"
    for i in rules:
        above = lines[i - 1].strip()
        assert above.startswith("#") and len(above) > 10, (
            f"{template.name}:{i + 1}: the rule has no comment saying which call needs it")
        # The comment names the verbs it justifies.
        comment = " ".join(line.strip("# ") for line in _comment_block(lines, i))
        verbs = re.search(r"verbs: \[([^\]]*)\]", "\n".join(lines[i:i + 5])).group(1)
        for verb in (v.strip() for v in verbs.split(",")):
            assert re.search(rf"\b{verb}\b", comment), f"{template.name}:{i + 1}: verb {verb} is not explained"


def _comment_block(lines: list[str], rule: int) -> list[str]:
    block = []
    i = rule - 1
    while i >= 0 and lines[i].strip().startswith("#"):
        block.insert(0, lines[i])
        i -= 1
    return block


def test_rbac_source_has_no_wildcards():
    for template in RBAC_TEMPLATES:
        for line in template.read_text().splitlines():
            if not line.strip().startswith("#"):
                assert "'*'" not in line and '"*"' not in line and "[*" not in line and "*]" not in line, line


def test_the_chart_and_the_operator_agree_on_names():
    rbac = (CHART / "templates" / "rbac.yaml").read_text()
    assert f"resourceNames: [{MUTATING_NAME}]" in rbac
    assert f"resourceNames: [{VALIDATING_NAME}]" in rbac
    assert SERVICE_PORT == 443
    service = (CHART / "templates" / "webhook-service.yaml").read_text()
    assert "port: 443" in service and "targetPort: webhook" in service
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert CERT_SECRET in notes
    assert MUTATING_NAME in notes and VALIDATING_NAME in notes


def test_failure_policy_enum_and_default_match_the_operator():
    run = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if a.dest == "webhook_failure_policy")
    enum = SCHEMA["properties"]["webhook"]["properties"]["failurePolicy"]["enum"]
    assert sorted(enum) == sorted(run.choices)
    assert VALUES["webhook"]["failurePolicy"] == Settings().webhook.failure_policy  # what the flag defaults to


def _objects(schema: dict, path: str = ""):
    if schema.get("type") == "object" and "properties" in schema:
        yield path or "(root)", schema
        for name, sub in schema["properties"].items():
            yield from _objects(sub, f"{path}.{name}".lstrip("."))


def test_schema_is_closed_at_every_level_of_the_charts_own_keys():
    levels = dict(_objects(SCHEMA))
    assert {"(root)", "image", "operator", "webhook", "webhook.certManager", "webhook.certManager.issuerRef",
            "peering", "metrics", "metrics.serviceMonitor", "networkPolicy", "podDisruptionBudget",
            "serviceAccount"} <= set(levels)
    for path, schema in levels.items():
        assert schema.get("additionalProperties") is False, f"{path} accepts unknown keys"


def _keys(values: dict, schema: dict, path: str = ""):
    for key, value in values.items():
        assert key in schema.get("properties", {}), f"values.yaml key {path}{key} is not in values.schema.json"
        sub = schema["properties"][key]
        if isinstance(value, dict) and "properties" in sub:
            yield from _keys(value, sub, f"{path}{key}.")
        yield f"{path}{key}"


def test_every_values_key_is_in_the_schema_and_documented():
    keys = list(_keys(VALUES, SCHEMA))
    assert "webhook.certManager.issuerRef.name" in keys
    # Every top-level key has a comment just above it or as its first line (docs/install.md
    # is written from them).
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-zA-Z]\w*:", line):
            documented = lines[i - 1].startswith("#") or lines[i + 1].strip().startswith("#")
            assert documented, f"values.yaml: {line.split(':')[0]} has no comment"


def test_ci_values_files_exist_and_parse():
    files = sorted((CHART / "ci").glob("*-values.yaml"))
    assert len(files) >= 2
    for path in files:
        list(_keys(yaml.safe_load(path.read_text()), SCHEMA))
