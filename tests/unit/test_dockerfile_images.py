"""The bed's Dockerfile builds (trackop_testbed.node.dockerfile_images), their pure parts:
what the cache key covers and the buildah command line; and the MLflow image's Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path

import dockerfile
from trackop_testbed.node import dockerfile_images as di

from trackop.schema import revisions

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_DOCKERFILE = ROOT / di.MLFLOW_DOCKERFILE


def _tree(tmp_path: Path) -> Path:
    for name, text in {"Dockerfile": "FROM x\n", "constraints.txt": "a==1\n", "pyproject.toml": "[project]\n",
                       "README.md": "# r\n", "src/pkg/__init__.py": "", "src/pkg/mod.py": "X = 1\n",
                       "src/pkg/__pycache__/mod.cpython-311.pyc": "junk", "src/pkg.egg-info/PKG-INFO": "junk",
                       "tests/test_x.py": "outside the context"}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_context_is_what_dockerignore_lets_in(tmp_path):
    root = _tree(tmp_path)
    names = [str(p.relative_to(root)) for p in di.context_files(root)]
    assert names == ["constraints.txt", "pyproject.toml", "README.md", "src/pkg/__init__.py", "src/pkg/mod.py"]
    ignored = (ROOT / ".dockerignore").read_text()
    assert all(f"!{entry}" in ignored for entry in di.CONTEXT)


def test_the_key_changes_with_any_context_file_and_the_dockerfile_only(tmp_path):
    root = _tree(tmp_path)
    first = di.context_digest(root, "Dockerfile")
    (root / "tests/test_x.py").write_text("changed")
    (root / "src/pkg/__pycache__/mod.cpython-311.pyc").write_text("changed")
    assert di.context_digest(root, "Dockerfile") == first
    (root / "src/pkg/mod.py").write_text("X = 2\n")
    second = di.context_digest(root, "Dockerfile")
    assert second != first
    (root / "Dockerfile").write_text("FROM y\n")
    assert di.context_digest(root, "Dockerfile") != second
    # The MLflow image copies only constraints.txt: the operator's source is not its input.
    mlflow = di.context_digest(root, "Dockerfile", di.MLFLOW_CONTEXT)
    (root / "src/pkg/mod.py").write_text("X = 3\n")
    assert di.context_digest(root, "Dockerfile", di.MLFLOW_CONTEXT) == mlflow


def test_build_argv_mounts_the_ca_for_run_steps_only_and_names_the_base(tmp_path):
    argv = di.build_argv(ROOT, "Dockerfile", "trackop.local/operator:k", "trackop.local/python:b",
                         Path("/etc/host-ca.crt"), tmp_path / "pip.conf", {"MLFLOW_VERSION": "3.17.2"})
    assert argv[0] == "buildah" and argv[argv.index("--root") + 1].endswith("trackop/buildah/storage")
    assert "--pull=never" in argv and argv[argv.index("--isolation") + 1] == "chroot"
    assert f"/etc/host-ca.crt:{di.CA_IN_BUILD}:ro" in argv and f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro" in argv
    build_args = [argv[i + 1] for i, word in enumerate(argv) if word == "--build-arg"]
    assert build_args == ["BASE_IMAGE=trackop.local/python:b", "MLFLOW_VERSION=3.17.2"]
    assert argv[-1] == str(ROOT) and argv[argv.index("--file") + 1] == str(ROOT / "Dockerfile")
    assert di.CA_IN_BUILD in di.PIP_CONF


def test_the_mlflow_image_is_the_bundled_mlflow_with_the_operators_pins():
    assert dockerfile.global_args(MLFLOW_DOCKERFILE) == dockerfile.global_args()
    (stage,) = dockerfile.stages(MLFLOW_DOCKERFILE)
    args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in stage.all("ARG")}
    assert args["MLFLOW_VERSION"] == revisions.BUNDLED_MLFLOW_VERSION
    (run,) = stage.all("RUN")
    assert re.search(r"pip install --constraint /tmp/constraints.txt\s", run.args)
    assert '"mlflow==${MLFLOW_VERSION}"' in run.args and '"psycopg[binary]"' in run.args and "boto3" in run.args
    assert "PATH=/opt/mlflow/bin:$PATH" in " ".join(i.args for i in stage.all("ENV"))
    assert dockerfile.builder_copies(stage) == list(di.MLFLOW_CONTEXT)
