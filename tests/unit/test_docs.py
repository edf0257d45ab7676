"""The docs cannot fall behind the code: every condition and Event reason the source sets is
in docs/troubleshooting.md (under the right condition), every reason listed there exists in
the source, the chart values docs/install.md names exist in the chart, and the docs' own
links resolve.

Reasons are collected from the source's syntax tree, in the shapes the code writes them:
``StepFailed(cond.X, "Reason", ...)``, ``Condition(cond.X, "Status", "Reason", ...)``
and ``Progress(cond.X, ready, "Reason", ...)`` (a conditional ``"A" if c else "B"`` counts
both), ``PodTrouble("Reason", ...)``, ``ArtifactsError("Reason", ...)``,
``reason = "Reason"`` on PostgresError's subclasses, and for Events ``did("Reason", ...)``,
``("Normal"|"Warning", "Reason", message)`` tuples, ``post_event(..., type, "Reason", ...)``
and ``reason="Reason"`` keywords.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from trackop.api import conditions

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "trackop"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
INSTALL = ROOT / "docs" / "install.md"
VALUES = ROOT / "deploy" / "helm" / "trackop" / "values.yaml"
NEW_DOCS = [ROOT / "docs" / name for name in ("install.md", "troubleshooting.md", "security.md")]
CAMEL = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*")
# cond.DATABASE_READY -> "DatabaseReady"
CONDITION_TYPES = {name: value for name, value in vars(conditions).items()
                   if name.isupper() and isinstance(value, str)}


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _call_name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _condition_type(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in CONDITION_TYPES:
        return CONDITION_TYPES[node.attr]
    return None


def source_reasons() -> tuple[dict[str, set[str | None]], set[str]]:
    """(condition reason -> condition types it is set on (None: decided at run time),
    Event reasons)."""
    condition: dict[str, set[str | None]] = {}
    events: set[str] = set()

    def add(reason: str, type_: str | None) -> None:
        assert CAMEL.fullmatch(reason), f"reason {reason!r} is not CamelCase"
        condition.setdefault(reason, set()).add(type_)

    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        reason_classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                          and any(isinstance(s, ast.Assign) and any(getattr(t, "id", "") == "reason"
                                                                     for t in s.targets) for s in node.body)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name, args = _call_name(node.func), node.args
                if name == "StepFailed" and len(args) > 1:
                    for reason in _strings(args[1]):
                        add(reason, _condition_type(args[0]))
                elif name == "Progress" and len(args) > 2:
                    # specs.progress.Progress: a wait's verdict, which becomes its condition.
                    for reason in _strings(args[2]):
                        add(reason, _condition_type(args[0]))
                elif name == "PodTrouble" and args:
                    # specs.progress.PodTrouble: a stuck pod's reason, on the waiting step's condition.
                    for reason in _strings(args[0]):
                        add(reason, None)
                elif name == "Condition" and len(args) > 2:
                    for reason in _strings(args[2]):
                        add(reason, _condition_type(args[0]))
                elif name in ("ArtifactsError", "NotChecked") and args:
                    for reason in _strings(args[0]):
                        add(reason, conditions.ARTIFACTS_READY)
                elif name == "did" and args:
                    events.update(_strings(args[0]))
                elif name == "post_event" and len(args) > 3:
                    events.update(_strings(args[3]))
                for keyword in node.keywords:
                    if keyword.arg == "reason":
                        events.update(s for s in _strings(keyword.value) if CAMEL.fullmatch(s))
            elif isinstance(node, ast.Tuple) and len(node.elts) == 3 \
                    and _strings(node.elts[0]) in (["Normal"], ["Warning"]):
                events.update(_strings(node.elts[1]))
            elif isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") in reason_classes for b in node.bases):
                # Subclasses of an error class with a reason (PostgresError): the reason the
                # failing step's condition gets.
                for statement in node.body:
                    if isinstance(statement, ast.Assign) and any(getattr(t, "id", "") == "reason"
                                                                 for t in statement.targets):
                        for reason in _strings(statement.value):
                            add(reason, None)
    return condition, events


def doc_reasons() -> tuple[dict[str, set[str]], set[str]]:
    """(condition reason -> the condition headings it is listed under, Event reasons) from
    the tables of docs/troubleshooting.md: the first cell of a row, in backticks."""
    condition: dict[str, set[str]] = {}
    events: set[str] = set()
    section = heading = ""
    for line in TROUBLESHOOTING.read_text().splitlines():
        if line.startswith("## "):
            section, heading = line[3:].strip(), ""
        elif line.startswith("### "):
            heading = line[4:].strip()
        match = re.match(r"\|\s*`([A-Za-z]+)`\s*\|", line)
        if not match:
            continue
        if section == "Conditions and reasons":
            condition.setdefault(match.group(1), set()).add(heading)
        elif section == "Events":
            events.add(match.group(1))
    return condition, events


def test_the_collector_sees_the_known_shapes():
    """Guards the collector itself: one reason of each shape it reads."""
    condition, events = source_reasons()
    assert conditions.DATABASE_READY in condition["AdminSecretMissing"]       # StepFailed
    assert conditions.PENDING_RESTART in condition["NoRestartNeeded"]         # Condition, conditional
    assert conditions.ARTIFACTS_READY in condition["BucketNotFound"]          # ArtifactsError
    assert conditions.SERVER_READY in condition["RollingOut"]                 # Progress
    assert None in condition["ImagePullBackOff"]                              # PodTrouble
    assert None in condition["ServerUnreachable"]                             # PostgresError subclass
    assert "PostgresError" not in condition                                   # the base class itself
    assert {"RoleReconciled", "InjectionMissed", "InjectionSkipped", "Retained"} <= events


def test_every_condition_reason_in_the_source_is_documented():
    documented, _ = doc_reasons()
    condition, _ = source_reasons()
    missing = sorted(set(condition) - set(documented))
    assert not missing, f"docs/troubleshooting.md lacks condition reasons {missing}"


def test_each_reason_is_documented_under_its_condition():
    documented, _ = doc_reasons()
    condition, _ = source_reasons()
    for reason, types in sorted(condition.items()):
        headings = documented.get(reason, set())
        # None: a type decided at run time (Waiting, PostgresError reasons), not checked here.
        for type_ in types - {None}:
            assert type_ in headings, f"{reason} is set on {type_} but documented under {sorted(headings)}"


def test_every_event_reason_in_the_source_is_documented():
    _, documented = doc_reasons()
    _, events = source_reasons()
    missing = sorted(events - documented)
    assert not missing, f"docs/troubleshooting.md lacks Event reasons {missing}"


def test_every_documented_reason_exists_in_the_source():
    documented_conditions, documented_events = doc_reasons()
    condition, events = source_reasons()
    stale = sorted(set(documented_conditions) - set(condition))
    assert not stale, f"docs/troubleshooting.md lists condition reasons the code no longer sets: {stale}"
    stale = sorted(documented_events - events)
    assert not stale, f"docs/troubleshooting.md lists Event reasons the code no longer posts: {stale}"


def _values_keys(values: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _values_keys(value, f"{prefix}{key}.")
    return keys


def test_the_values_install_md_names_exist_in_the_chart():
    keys = _values_keys(yaml.safe_load(VALUES.read_text()))
    table = [line for line in INSTALL.read_text().splitlines() if re.match(r"\|\s*`[a-zA-Z]", line)]
    named = {m for line in table for m in re.findall(r"`([a-zA-Z][\w.]*)`", line.split("|")[1])}
    assert named, "docs/install.md has no values table"
    unknown = sorted(named - keys)
    assert not unknown, f"docs/install.md names values the chart does not have: {unknown}"


@pytest.mark.parametrize("doc", NEW_DOCS + [ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    for doc in NEW_DOCS:
        assert f"(docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"


_LUA_HARNESS = """
local check = load("return function(obj) " .. io.read("a") .. " end")()
local cases = {
  none = {metadata = {generation = 1}},
  stale = {metadata = {generation = 2}, status = {observedGeneration = 1,
           conditions = {{type = "Ready", status = "True", reason = "Ready", message = "ok"}}}},
  ready = {metadata = {generation = 2}, status = {observedGeneration = 2, conditions = {
           {type = "DatabaseReady", status = "True"}, {type = "Ready", status = "True", reason = "Ready", message = "ok"}}}},
  migrating = {metadata = {generation = 1}, status = {observedGeneration = 1,
               conditions = {{type = "Ready", status = "False", reason = "Migrating", message = "Job"}}}},
  failed = {metadata = {generation = 1}, status = {observedGeneration = 1,
            conditions = {{type = "Ready", status = "False", reason = "AdminSecretMissing", message = "m"}}}},
}
for _, name in ipairs({"none", "stale", "ready", "migrating", "failed"}) do
  print(name .. " " .. check(cases[name]).status)
end
"""


def test_the_argo_cd_health_check_in_install_md():
    # hack/setup.sh installs lua5.4 (Debian), the Lua Argo CD runs health checks in.
    assert shutil.which("lua5.4") or shutil.which("lua"), "no Lua interpreter: run hack/setup.sh"
    block = re.search(r"```yaml\n(apiVersion: v1\nkind: ConfigMap\n.*?)```", INSTALL.read_text(), re.S).group(1)
    script = yaml.safe_load(block)["data"]["resource.customizations.health.trackop.dev_TrackingBackend"]
    harness = Path(shutil.which("lua5.4") or shutil.which("lua"))
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(_LUA_HARNESS)
        file.flush()
        result = subprocess.run([str(harness), file.name], input=script, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == ["none Progressing", "stale Progressing", "ready Healthy",
                                             "migrating Progressing", "failed Degraded"]
