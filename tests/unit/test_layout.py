"""The product package's shape: its layering (import-linter, as kopf checks its own), and
modules and classes small enough to read (README, "Architecture")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "trackop"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_layering_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: pure api/ and specs/, the Kubernetes
    client only in kube.py (and controller wiring), psycopg and SQLAlchemy only in postgres/
    and schema/, and no layer importing one above it."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=SRC.parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and " kept" in done.stdout, done.stdout


def test_the_contracts_cover_every_package():
    """A new package under src/trackop must be placed in the layers contract, or its imports go unchecked."""
    import tomllib

    config = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")
    named = {part.strip() for layer in layers["layers"] for part in layer.replace(":", "|").split("|")}
    present = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert present <= named, f"not in the layers contract: {sorted(present - named)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_classes_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it by job"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"class {node.name} has {length} lines"
