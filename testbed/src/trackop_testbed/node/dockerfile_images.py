"""The node's images that are built from Dockerfiles: buildah, daemonless, from Debian's packages.

- ``python``: the base both Dockerfiles take through ``BASE_IMAGE`` in place of
  ``python:3.11-slim-bookworm`` (Docker Hub is out of reach): Debian bookworm's python3 (3.11)
  with its venv module, ``python`` as a command, useradd and CA certificates, made by
  ``mmdebstrap`` like the other images (images.py).
- ``operator``: the project's own ``Dockerfile``, built from the checkout, exactly as a user
  builds it, with only ``BASE_IMAGE`` changed.
- ``mlflow``: ``deploy/images/mlflow/Dockerfile``, the official MLflow image's recipe with
  the PostgreSQL driver and boto3, at the bundled MLflow version.

buildah keeps its own storage under the cache (``~/.cache/trackop/buildah``); the built
image is written out as a ``docker-archive`` (what the node imports) and removed from that
storage. ``RUN`` steps download from PyPI on the host's network; the host's CA bundle and a
pip.conf naming it are mounted for those steps only (``--volume``), so the image keeps its
own bundle. The cache key covers the Dockerfile, every file of the build context, the
buildah command line (the base and build arguments with it) and buildah's version.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import binaries
from . import images

PYTHON_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
OPERATOR_DOCKERFILE = "Dockerfile"
MLFLOW_DOCKERFILE = "deploy/images/mlflow/Dockerfile"
# What the repository's .dockerignore lets into the context; the operator's key hashes
# exactly these, the MLflow image's only what it copies.
CONTEXT = ("constraints.txt", "pyproject.toml", "README.md", "src")
MLFLOW_CONTEXT = ("constraints.txt",)
# Where the host's CA bundle is mounted during RUN steps, and pip told so.
CA_IN_BUILD = "/etc/ssl/certs/ca-certificates.crt"
PIP_CONF = f"[global]\ncert = {CA_IN_BUILD}\n"

Progress = Callable[[str], None]


def context_files(root: Path, entries: Iterable[str] = CONTEXT) -> list[Path]:
    """The build context's files, sorted, without bytecode and build leftovers (.dockerignore)."""
    found: list[Path] = []
    for entry in entries:
        path = root / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found += [p for p in candidates
                  if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo", ".pyd")
                  and not any(part.endswith(".egg-info") for part in p.parts)]
    return found


def context_digest(root: Path, dockerfile: str, entries: Iterable[str] = CONTEXT) -> str:
    """A digest of the Dockerfile and every context file (their paths and contents)."""
    digest = hashlib.sha256()
    for path in [root / dockerfile, *context_files(root, entries)]:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def python_argv(output: Path) -> list[str]:
    return images._mmdebstrap(PYTHON_PACKAGES, [], output)


def ensure_python(progress: Progress) -> tuple[str, Path]:
    recipe = "\0".join(python_argv(Path("rootfs.tar")))
    key = images._key(recipe, images._tool_version(["mmdebstrap", "--version"]))

    def build(staging: Path, ref: str) -> None:
        rootfs = staging / "rootfs.tar"
        binaries._run_build(python_argv(rootfs), cwd=staging, env=images.build_env(),
                            what=f"the Python base image (mmdebstrap {images.SUITE} + python3)", progress=progress)
        env = [f"PATH={images.BASE_PATH}", "LANG=C.UTF-8"]
        images.write_docker_archive(staging / "image.tar", ref, [rootfs],
                                    lambda ids: images.image_config(ids, cmd=["python3"], env=env))
        images._tidy(staging)

    return images._cached("python", key, build)


def buildah_argv(*args: str) -> list[str]:
    """buildah on the bed's own storage (not the machine's /var/lib/containers)."""
    root = binaries.cache_root() / "buildah"
    return ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"), *args]


def build_argv(root: Path, dockerfile: str, ref: str, base_ref: str, ca_bundle: Path, pip_conf: Path,
               build_args: dict[str, str]) -> list[str]:
    """``buildah build`` of ``dockerfile`` in context ``root``: chroot isolation (no runtime
    needed), the host's network for pip, no intermediate layers kept, the base only from
    local storage."""
    argv = buildah_argv("build", "--isolation", "chroot", "--network", "host", "--layers=false", "--pull=never",
                        "--file", str(root / dockerfile), "--tag", ref,
                        "--build-arg", f"BASE_IMAGE={base_ref}",
                        "--volume", f"{ca_bundle}:{CA_IN_BUILD}:ro", "--volume", f"{pip_conf}:/etc/pip.conf:ro")
    for name, value in sorted(build_args.items()):
        argv += ["--build-arg", f"{name}={value}"]
    return [*argv, str(root)]


def _build_from_dockerfile(name: str, dockerfile: str, context: Iterable[str], build_args: dict[str, str],
                           progress: Progress) -> tuple[str, Path]:
    root = binaries.hack_dir().parent
    base_ref, base_archive = ensure_python(progress)
    # The recipe is part of the key, as for the mmdebstrap images: buildah's command line with
    # placeholder paths (it names the base and the build arguments) and the pip.conf it mounts.
    recipe = "\0".join(build_argv(Path("root"), dockerfile, "ref", base_ref, Path("ca"), Path("pip.conf"), build_args))
    key = images._key(context_digest(root, dockerfile, context), recipe, PIP_CONF,
                      images._tool_version(["buildah", "--version"]))

    def build(staging: Path, ref: str) -> None:
        env = images.build_env()

        def run(argv: list[str], what: str) -> None:
            binaries._run_build(argv, cwd=staging, env=env, what=what, progress=progress)

        run(buildah_argv("pull", "--quiet", f"docker-archive:{base_archive}"), f"buildah pull of {base_ref}")
        pip_conf = staging / "pip.conf"
        pip_conf.write_text(PIP_CONF)
        run(build_argv(root, dockerfile, ref, base_ref, images.host_ca_bundle(), pip_conf, build_args),
            f"the {name} image (buildah build of {dockerfile})")
        try:
            run(buildah_argv("push", "--quiet", ref, f"docker-archive:{staging / 'image.tar'}:{ref}"),
                f"buildah push of {ref} to a docker-archive")
        finally:
            subprocess.run(buildah_argv("rmi", ref), capture_output=True, env=env)
        images._tidy(staging)

    return images._cached(name, key, build)


def ensure_operator(progress: Progress) -> tuple[str, Path]:
    """The operator image from the project's own Dockerfile."""
    return _build_from_dockerfile("operator", OPERATOR_DOCKERFILE, CONTEXT, {}, progress)


def ensure_mlflow(mlflow_version: str, progress: Progress) -> tuple[str, Path]:
    """The MLflow server image at ``mlflow_version`` (the bundled one)."""
    return _build_from_dockerfile("mlflow", MLFLOW_DOCKERFILE, MLFLOW_CONTEXT, {"MLFLOW_VERSION": mlflow_version},
                                  progress)
