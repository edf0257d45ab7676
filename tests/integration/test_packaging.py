"""The image's Python part without a Docker engine: the builder stage's steps, in a fresh
virtualenv, from a build context holding only what the Dockerfile copies.

The pinned wheels are downloaded once into ~/.cache/trackop/wheels (PyPI on the first
run); the installs themselves run offline, as the image's second install does, so a
requirement that constraints.txt does not cover fails here.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

import dockerfile
from dockerfile import CONSTRAINTS, ROOT, WHEEL_CACHE

PYPROJECT_MLFLOW = next(line.split("==")[1] for line in tomllib.loads((ROOT / "pyproject.toml").read_text())
                        ["project"]["dependencies"] if line.startswith("mlflow-skinny=="))


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _context(target: Path) -> Path:
    """The build context as the Dockerfile and .dockerignore see it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    target.mkdir()
    for source in dockerfile.builder_copies(dockerfile.stages()[0]):
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, target / source, ignore=ignore)
        else:
            shutil.copy2(path, target / source)
    return target


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """/opt/trackop of the image, built here the way the builder stage builds it."""
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("packaging")
    context = _context(tmp / "context")
    venv = tmp / "opt-trackop"
    _run(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    fetched = dockerfile.fill_wheel_cache(venv / "bin" / "python")
    # RUN pip install --no-deps --requirement constraints.txt
    _run(*pip, "install", "--quiet", "--no-index", "--find-links", WHEEL_CACHE, "--no-deps",
         "--requirement", context / "constraints.txt")
    # RUN pip wheel --no-deps . && pip install --no-index --constraint constraints.txt trackop && pip check
    _run(*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp / "wheels", context)
    _run(*pip, "install", "--quiet", "--no-index", "--find-links", tmp / "wheels", "--constraint",
         context / "constraints.txt", "trackop")
    _run(*pip, "check")
    print(f"\n[packaging] image virtualenv built in {time.monotonic() - started:.1f}s "
          f"({len(fetched)} wheels downloaded)", file=sys.__stderr__)
    return venv


def _image_env(home: Path) -> dict[str, str]:
    """The final stage's environment: HOME and TMPDIR under /tmp, no bytecode written."""
    home.mkdir(exist_ok=True)
    return {"PATH": f"{home.parent / 'opt-trackop' / 'bin'}:/usr/bin:/bin", "HOME": str(home),
            "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def test_the_wheel_holds_the_package_and_its_metadata(image_venv):
    wheel = next((image_venv.parent / "wheels").glob("trackop-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "trackop/controller/handlers.py" in names and "trackop/cli.py" in names
    assert not any(n.startswith(("tests/", "bench/", "hack/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "trackop = trackop.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# The test bed, its local kubelet and the quickstart: the package in testbed/ and the modules
# it is made of. The product never ships or imports them (make installs them next to it).
TEST_BED_PACKAGE = "trackop_testbed"
TEST_BED_MODULES = {TEST_BED_PACKAGE, "testbed", "kubelet", "dev", "quickstart"}


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every name an import statement could load as a module: each dotted part of
    ``import a.b`` and ``from a.b import c`` (c too: it may be a submodule)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(part for alias in node.names for part in alias.name.split("."))
        elif isinstance(node, ast.ImportFrom):
            found.update((node.module or "").split("."))
            found.update(alias.name for alias in node.names)
    return found - {""}


def test_the_wheel_holds_no_test_bed(image_venv):
    wheel = zipfile.ZipFile(next((image_venv.parent / "wheels").glob("trackop-*.whl")))
    names = wheel.namelist()
    sources = [n for n in names if n.endswith(".py")]
    assert "trackop/cli.py" in sources
    for name in sources:
        parts = set(Path(name).with_suffix("").parts)
        assert not parts & TEST_BED_MODULES, f"{name}: test bed code in the wheel"
        text = wheel.read(name).decode()
        imported = _imported_modules(ast.parse(text, name)) & TEST_BED_MODULES
        assert not imported, f"{name} imports {sorted(imported)}"
        assert TEST_BED_PACKAGE not in text, f"{name} names {TEST_BED_PACKAGE} (an import by name?)"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert TEST_BED_PACKAGE not in wheel.read(entry_points).decode()


def test_installed_exactly_the_pins(image_venv):
    frozen = _run(image_venv / "bin" / "python", "-m", "pip", "freeze", "--all", "--disable-pip-version-check")
    installed = {}
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        installed[canonicalize_name(name)] = version
    trackop = installed.pop("trackop")
    assert trackop == dockerfile.stages()[-1].all("ARG")[0].args.partition("=")[2]
    for tool in ("pip", "setuptools", "wheel"):  # the virtualenv's own
        installed.pop(tool, None)
    assert installed == {name: version for name, (_, version) in dockerfile.pins(CONSTRAINTS).items()}


def test_the_entrypoint_runs(image_venv, tmp_path):
    env = _image_env(tmp_path / "home")
    trackop = image_venv / "bin" / "trackop"
    assert "run" in _run(trackop, "--help", env=env)
    help_text = _run(trackop, "run", "--help", env=env)
    assert "--all-namespaces" in help_text and "--webhook-address" in help_text


def test_the_image_has_no_test_bed_commands(image_venv, tmp_path):
    """``testbed`` and ``dev`` come from the test bed's package (its entry points), which
    the image does not have: argparse refuses them as it refuses any unknown command."""
    env = _image_env(tmp_path / "home")
    trackop = image_venv / "bin" / "trackop"
    for command in (["testbed", "up", "--dir", str(tmp_path / "bed")], ["dev", "--exit"]):
        result = subprocess.run([str(trackop), *command], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 2, result
        assert f"invalid choice: '{command[0]}'" in result.stderr
    assert not (tmp_path / "bed").exists()


IMPORT_ALL = """
import importlib, pkgutil, trackop
import trackop.controller.handlers  # the operator's handlers, as `trackop run` loads them
for module in pkgutil.walk_packages(trackop.__path__, "trackop."):
    importlib.import_module(module.name)
from trackop.schema import migration, revisions
migration.preload()  # MLflow's migrations, as the operator loads them at startup
print(revisions.BUNDLED_MLFLOW_VERSION)
"""


def test_the_operator_imports_with_nothing_written(image_venv, tmp_path):
    """Every module imports with only the pinned runtime dependencies (a module that needs
    a test-only package fails here), and nothing is written into the virtualenv, which is
    read-only in the image."""
    env = _image_env(tmp_path / "home")
    before = {p: p.stat().st_mtime_ns for p in image_venv.rglob("*")}
    bundled = _run(image_venv / "bin" / "python", "-c", IMPORT_ALL, env=env).strip()
    assert bundled == PYPROJECT_MLFLOW
    assert {p: p.stat().st_mtime_ns for p in image_venv.rglob("*")} == before
    # Bytecode was compiled at install time, so imports stay fast without writing it.
    assert any((image_venv / "lib").rglob("trackop/controller/__pycache__/handlers.*.pyc"))
