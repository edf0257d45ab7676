"""The node's images, built on this machine with no registry, cached by their inputs.

Each image is one layer, written as a ``docker-archive`` tarball (what ``ctr images import``
takes with the image's name) under ``~/.cache/trackop/images/<name>-<key>/``, where the key
covers every input of the build; the reference is ``trackop.local/<name>:<key>``:

- ``pause``: the sandbox process (pause.c), ``gcc -static``, one file.
- ``coredns``: the CoreDNS binary built from the Go module proxy (static, CGO off), one file.
- ``postgres``: Debian bookworm's PostgreSQL 15 server packages with an entrypoint of the
  official image's contract (postgres-entrypoint.sh: POSTGRES_PASSWORD, POSTGRES_USER,
  POSTGRES_DB, PGDATA, ``-c`` args), its postgres user at uid 999, STOPSIGNAL SIGINT.
- ``training``: Debian bookworm's python3 (``mmdebstrap --variant=minbase`` from the
  machine's own apt sources) with a virtualenv in ``/opt/venv`` holding the MLflow client
  (``mlflow-skinny``, ``psycopg[binary]``, ``boto3``) at the versions of constraints.txt,
  installed by pip from PyPI inside the image's root, with the image's own python3, so
  the wheels match the interpreter that runs them (pip trusts this machine's CA bundle for
  the download, which may hold a local proxy's CA; the copy is removed from the image). (A virtualenv made on the host would
  point at the host's interpreter, here a pyenv build, which the image does not have.)
  Debian's packages are whatever the mirror serves on the day of the build: the key names
  the suite and package list, not the package versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from .. import binaries

FORMAT = "1"  # bump to rebuild every image after a change to how they are made
REGISTRY = "trackop.local"
SUITE = "bookworm"
TRAINING_PACKAGES = ("python3", "python3-venv", "ca-certificates")
TRAINING_REQUIREMENTS = ("mlflow-skinny", "psycopg[binary]", "boto3")
# Debian bookworm's PostgreSQL server; the official image's uid and gid for its postgres user.
POSTGRES_MAJOR = "15"
POSTGRES_PACKAGES = (f"postgresql-{POSTGRES_MAJOR}",)
POSTGRES_UID = 999
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Progress = Callable[[str], None]


# ---- docker-archive (pure parts) ------------------------------------------------------
def image_config(diff_ids: list[str], *, entrypoint: list[str] | None = None, cmd: list[str] | None = None,
                 env: list[str] | None = None, workdir: str = "/", stop_signal: str | None = None) -> dict:
    config: dict = {"Env": env or [f"PATH={BASE_PATH}"], "WorkingDir": workdir}
    if stop_signal:
        config["StopSignal"] = stop_signal
    if entrypoint:
        config["Entrypoint"] = entrypoint
    if cmd:
        config["Cmd"] = cmd
    return {"architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}


def archive_manifest(config_name: str, ref: str, layer_names: list[str]) -> list[dict]:
    return [{"Config": config_name, "RepoTags": [ref], "Layers": layer_names}]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_docker_archive(path: Path, ref: str, layers: list[Path], config: Callable[[list[str]], dict]) -> None:
    """``path``: a docker-archive of ``layers`` (uncompressed tars) named ``ref``; ``config``
    makes the image config from the layers' diff IDs."""
    digests = [_sha256_file(layer) for layer in layers]
    config_bytes = json.dumps(config([f"sha256:{d}" for d in digests]), sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{d}/layer.tar" for d in digests]
    manifest = json.dumps(archive_manifest(config_name, ref, layer_names)).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, layer in zip(layer_names, layers):
            archive.add(layer, arcname=name)
        _add_bytes(archive, config_name, config_bytes)
        _add_bytes(archive, "manifest.json", manifest)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def directory_layer(path: Path, directories: list[tuple[str, int, int]]) -> None:
    """A layer of empty directories: (path in the image, mode, owner uid and gid)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as layer:
        for name, mode, owner in directories:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, owner, owner, 0
            layer.addfile(info)


def single_file_layer(path: Path, name: str, data: bytes, mode: int = 0o755) -> None:
    """A layer holding one file at ``/<name>``, owned by root, reproducible."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as layer:
        _add_bytes(layer, name, data, mode)


# ---- the cache -------------------------------------------------------------------------
def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256(FORMAT.encode())
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _cached(name: str, key: str, build: Callable[[Path, str], None]) -> tuple[str, Path]:
    """(reference, archive path) of image ``name`` with ``key``, built into the cache if missing."""
    ref = f"{REGISTRY}/{name}:{key}"
    target = binaries.cache_root() / "images" / f"{name}-{key}"
    archive = target / "image.tar"
    binaries._fill_once(target, archive.is_file, lambda staging: build(staging, ref))
    return ref, archive


def _tool_version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[0]


def pause_source() -> Path:
    return Path(__file__).with_name("pause.c")


def ensure_pause(progress: Progress) -> tuple[str, Path]:
    source = pause_source()
    key = _key(source.read_bytes(), _tool_version(["gcc", "--version"]))

    def build(staging: Path, ref: str) -> None:
        binary = staging / "pause"
        binaries._run_build(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)], cwd=staging,
                            env=None, what="the pause image (gcc -static)", progress=progress)
        single_file_layer(staging / "layer.tar", "pause", binary.read_bytes())
        write_docker_archive(staging / "image.tar", ref, [staging / "layer.tar"],
                             lambda ids: image_config(ids, entrypoint=["/pause"]))
        _tidy(staging)

    return _cached("pause", key, build)


def ensure_coredns(binary: Path, progress: Progress) -> tuple[str, Path]:
    # The binary's cache directory name is its build key (binaries.ensure_coredns).
    key = _key(binary.parent.name)

    def build(staging: Path, ref: str) -> None:
        progress("making the CoreDNS image ...")
        single_file_layer(staging / "layer.tar", "coredns", binary.read_bytes())
        write_docker_archive(staging / "image.tar", ref, [staging / "layer.tar"],
                             lambda ids: image_config(ids, entrypoint=["/coredns"]))
        _tidy(staging)

    return _cached("coredns", key, build)


def training_requirements(constraints: str) -> list[str]:
    """The training image's pip requirements, each pinned as constraints.txt pins it."""
    pins = {}
    for line in constraints.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    pinned = []
    for requirement in TRAINING_REQUIREMENTS:
        name = requirement.split("[", 1)[0]
        if name not in pins:
            raise ValueError(f"constraints.txt pins no {name}")
        pinned.append(f"{requirement}=={pins[name]}")
    return pinned


def host_ca_bundle() -> Path:
    """The CA bundle this machine's own pip trusts (it may hold a local proxy's CA, which the
    image's fresh Debian bundle lacks); copied into the image's root for pip, then removed."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError("no CA bundle for pip: set PIP_CERT or install ca-certificates")


# Settings naming host paths, which inside the image's root name other files: PIP_CERT and
# REQUESTS_CA_BUNDLE (which overrides pip's --cert in pip's requests) would point pip at the
# image's own CA bundle.
HOST_PATH_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def build_env() -> dict[str, str]:
    """mmdebstrap's environment: the caller's without its pip and CA-bundle settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in HOST_PATH_SETTINGS}


def _mmdebstrap(packages: tuple[str, ...], hooks: list[str], output: Path) -> list[str]:
    """mmdebstrap with no mirror argument: it uses the machine's own apt sources. (Hooks run
    on the host with the root as ``$1``: an absolute link inside it, such as /var/run, would
    lead out of it, so they name real paths only.)"""
    excluded = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "locale", "info")]
    return ["mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(packages)}", *excluded, *hooks,
            '--customize-hook=rm -rf "$1"/tmp/* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*', SUITE, str(output)]


def mmdebstrap_argv(output: Path, requirements: Path, constraints: Path, ca_bundle: Path) -> list[str]:
    """The training image's root: python3, and a virtualenv with the MLflow client."""
    pip = ("/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --progress-bar off "
           "--cert /tmp/host-ca.crt -r /tmp/requirements.txt -c /tmp/constraints.txt")
    return _mmdebstrap(TRAINING_PACKAGES, [
        f"--customize-hook=copy-in {requirements} {constraints} /tmp",
        f"--customize-hook=upload {ca_bundle} /tmp/host-ca.crt",
        '--customize-hook=chroot "$1" python3 -m venv /opt/venv',
        f'--customize-hook=chroot "$1" {pip}',
    ], output)


def postgres_argv(output: Path, entrypoint: Path) -> list[str]:
    """The PostgreSQL image's root: Debian's server packages, the postgres user at the
    official image's uid and gid (999) before the packages make one, no cluster of the
    packages' own (createcluster.d), and the entrypoint."""
    uid = POSTGRES_UID
    return _mmdebstrap(POSTGRES_PACKAGES, [
        f"--essential-hook=echo 'postgres:x:{uid}:{uid}:PostgreSQL administrator:/var/lib/postgresql:/bin/bash'"
        ' >> "$1"/etc/passwd',
        f"--essential-hook=echo 'postgres:x:{uid}:' >> \"$1\"/etc/group",
        '--essential-hook=mkdir -p "$1"/etc/postgresql-common/createcluster.d && '
        'echo "create_main_cluster = false" > "$1"/etc/postgresql-common/createcluster.d/trackop.conf',
        f"--customize-hook=upload {entrypoint} /usr/local/bin/docker-entrypoint.sh",
        '--customize-hook=chmod 755 "$1"/usr/local/bin/docker-entrypoint.sh',
        f'--customize-hook=mkdir -p "$1"/var/lib/postgresql/data && chown {uid}:{uid} "$1"/var/lib/postgresql/data',
    ], output)


def ensure_training(constraints_file: Path, progress: Progress) -> tuple[str, Path]:
    constraints = constraints_file.read_text()
    requirements = training_requirements(constraints)
    recipe = "\0".join(mmdebstrap_argv(Path("rootfs.tar"), Path("r"), Path("c"), Path("ca")))
    key = _key(recipe, "\n".join(requirements), constraints, _tool_version(["mmdebstrap", "--version"]))

    def build(staging: Path, ref: str) -> None:
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n")
        shutil.copyfile(constraints_file, staging / "constraints.txt")
        rootfs = staging / "rootfs.tar"
        argv = mmdebstrap_argv(rootfs, staging / "requirements.txt", staging / "constraints.txt", host_ca_bundle())
        binaries._run_build(argv, cwd=staging, env=build_env(), what=f"the training image (mmdebstrap {SUITE} + pip)",
                            progress=progress)
        env = [f"PATH=/opt/venv/bin:{BASE_PATH}", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"]
        write_docker_archive(staging / "image.tar", ref, [rootfs],
                             lambda ids: image_config(ids, cmd=["python3"], env=env))
        _tidy(staging)

    return _cached("training", key, build)


def postgres_entrypoint() -> Path:
    return Path(__file__).with_name("postgres-entrypoint.sh")


def ensure_postgres(progress: Progress) -> tuple[str, Path]:
    entrypoint = postgres_entrypoint()
    # The recipe is part of the key: its argv with placeholder paths, and the /run layer.
    recipe = "\0".join(postgres_argv(Path("rootfs.tar"), Path("entrypoint"))) + "run/postgresql 3777"
    key = _key(recipe, entrypoint.read_bytes(), _tool_version(["mmdebstrap", "--version"]))

    def build(staging: Path, ref: str) -> None:
        rootfs = staging / "rootfs.tar"
        # mmdebstrap empties /run at the end: the socket directory comes in a layer of its own,
        # as the official image has it (postgres's, mode 3777).
        directory_layer(staging / "run.tar", [("run/postgresql", 0o3777, POSTGRES_UID)])
        binaries._run_build(postgres_argv(rootfs, entrypoint), cwd=staging, env=build_env(),
                            what=f"the PostgreSQL image (mmdebstrap {SUITE} + postgresql-{POSTGRES_MAJOR})",
                            progress=progress)
        env = [f"PATH=/usr/lib/postgresql/{POSTGRES_MAJOR}/bin:{BASE_PATH}", "LANG=C.UTF-8",
               "PGDATA=/var/lib/postgresql/data"]
        # SIGINT: PostgreSQL's fast shutdown, the official image's STOPSIGNAL.
        write_docker_archive(staging / "image.tar", ref, [rootfs, staging / "run.tar"], lambda ids: image_config(
            ids, entrypoint=["docker-entrypoint.sh"], cmd=["postgres"], env=env, stop_signal="SIGINT"))
        _tidy(staging)

    return _cached("postgres", key, build)


def _tidy(staging: Path) -> None:
    """Keep the archive only."""
    for path in staging.iterdir():
        if path.name != "image.tar":
            path.unlink()
