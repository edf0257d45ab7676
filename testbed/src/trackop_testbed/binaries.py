"""Build the test bed's Go programs from the Go module proxy and cache them.

The control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) is built by
the small Go module in ``hack/`` (see the comment at the top of its ``go.mod``); MinIO
and fake-gcs-server, whose go.mods have no replace directives, are built with ``go
install``. Binaries land under ``$XDG_CACHE_HOME/trackop/bin/<key>/`` where the key covers
every input of the build, so a machine builds each version once and a changed input
builds anew. Azurite (Node) is ``npm install``-ed the same way, under
``$XDG_CACHE_HOME/trackop/npm/azurite-<version>-<key>/``, never globally.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

K8S_VERSION = "v1.35.4"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
# The node's programs, built by the same hack/ module as a second set (node/ runs them).
NODE = ("kubelet", "kube-proxy", "kube-scheduler")
# Cluster DNS for the node. v1.14.7 builds with Go 1.25 and client-go v0.35.4, the bed's
# Kubernetes minor (v1.15 wants Go 1.26 and client-go v0.37); its go.mod has no replace
# directives, so `go install` builds it in its own module graph.
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "v1.14.7"
MINIO_MODULE = "github.com/minio/minio"
# MinIO publishes no semver tags; this is its last commit on the module proxy.
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
# Google Cloud Storage emulator; its go.mod has no replace directives either.
FAKE_GCS_MODULE = "github.com/fsouza/fake-gcs-server"
FAKE_GCS_VERSION = "v1.56.1"
# Azure Storage emulator (Microsoft's), from npm; only its blob service runs on the bed.
AZURITE_PACKAGE = "azurite"
AZURITE_VERSION = "3.37.0"
# Helm, for linting, rendering and dry-running deploy/helm/trackop. v3.20.2 is the newest
# v3 release whose go.mod asks for Go 1.25 (v3.21+ want 1.26, and the bed needs only 1.25).
HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.20.2"
# The Kubernetes minor of the client-go v3.20.2 builds with (v0.35.1): helm's Makefile stamps
# it, and without it `helm template` assumes Kubernetes v1.20 and `helm lint` checks
# deprecations against 1.20.
HELM_K8S_MINOR = "35"
# CRDs of the third-party APIs the chart can render objects of (prometheus-operator's
# ServiceMonitor; cert-manager's Certificate, Issuer, ClusterIssuer), so that the bed can
# dry-run them: plain YAML files in these modules, fetched with `go mod download`.
THIRD_PARTY_CRDS = {
    ("github.com/prometheus-operator/prometheus-operator", "v0.91.0"): (
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",),
    ("github.com/cert-manager/cert-manager", "v1.21.2"): (
        "deploy/crds/cert-manager.io_certificates.yaml",
        "deploy/crds/cert-manager.io_issuers.yaml",
        "deploy/crds/cert-manager.io_clusterissuers.yaml",
    ),
}
# CloudNativePG's Cluster CRD, for spec.postgres.managed engine CloudNativePG: the bed checks
# that the API server accepts the Cluster trackop writes (no CloudNativePG operator runs
# there). Kept apart from THIRD_PARTY_CRDS, which the chart's tests install: a test first
# checks the condition for a cluster without it.
CNPG_CRDS = {
    ("github.com/cloudnative-pg/cloudnative-pg", "v1.29.0"): ("config/crd/bases/postgresql.cnpg.io_clusters.yaml",),
}

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trackop"


def hack_dir() -> Path:
    """The Go module that builds the control plane: ``$TRACKOP_HACK_DIR`` or the checkout's ``hack/``."""
    if os.environ.get("TRACKOP_HACK_DIR"):
        return Path(os.environ["TRACKOP_HACK_DIR"])
    for parent in Path(__file__).resolve().parents:
        if (parent / "hack" / "go.mod").is_file():
            return parent / "hack"
    raise FileNotFoundError(
        "hack/go.mod not found: run from a trackop checkout or set TRACKOP_HACK_DIR"
    )


def _go_env() -> dict[str, str]:
    if shutil.which("go") is None:
        raise FileNotFoundError("the Go toolchain is needed to build the test bed: install Go >= 1.25")
    # GOTOOLCHAIN=local: a go.mod that asks for a newer Go fails fast instead of downloading one.
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}


def _go_version() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], env=_go_env(), check=True, capture_output=True, text=True
    ).stdout.strip()


def _hack_key(commands: tuple[str, ...]) -> str:
    """The build key of a set of hack/ programs: the version, Go, hack/'s go.mod and go.sum,
    and those programs' own mains (another set's mains do not rebuild this one)."""
    digest = hashlib.sha256(K8S_VERSION.encode() + _go_version().encode())
    root = hack_dir()
    mains = [path for command in commands for path in (root / "cmd" / command).glob("*.go")]
    for path in sorted([root / "go.mod", root / "go.sum", *mains]):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # Without these /version says v0.0.0 and version-checking tools (Helm's kubeVersion) trip.
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


@contextmanager
def _build_lock(directory: Path):
    """One build at a time per cache, across processes (pytest and ``trackop dev`` together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fill_once(target: Path, present: Callable[[], bool], fill: Callable[[Path], None]) -> None:
    """Make ``target`` unless ``present()``: under the cache's lock (checked again inside it),
    ``fill`` writes into a staging directory that is then renamed into place, so a build cut
    short is never taken for a complete one. A ``target`` left by an older file set goes."""
    if present():
        return
    with _build_lock(target.parent):
        if present():
            return
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            fill(staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _run_build(argv: list[str], cwd: Path | None, env: dict[str, str], what: str, progress: Progress) -> None:
    """Run one Go build, report its wall time and the peak RSS of its largest process."""
    progress(f"building {what} (first time on this machine; cached afterwards) ...")
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        last_note = started
        while True:
            # wait4 reports this build's own peak: its largest process, compilers and linker included.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(1)
            if time.monotonic() - last_note >= 60:
                last_note = time.monotonic()
                progress(f"  ... still building {what}: {last_note - started:.0f}s")
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            output = log.read().decode(errors="replace")[-6000:]
            raise RuntimeError(f"building {what} failed (exit {proc.returncode}):\n{output}")
    peak_mib = usage.ru_maxrss / 1024  # KiB on Linux
    progress(f"built {what} in {time.monotonic() - started:.0f}s (peak RSS of one build process {peak_mib:.0f} MiB)")


def control_plane_dir() -> Path:
    return cache_root() / "bin" / f"k8s-{K8S_VERSION}-{_hack_key(CONTROL_PLANE)}"


def node_dir() -> Path:
    return cache_root() / "bin" / f"k8s-node-{K8S_VERSION}-{_hack_key(NODE)}"


def _build_hack_set(target: Path, commands: tuple[str, ...], what: str, progress: Progress) -> dict[str, Path]:
    found = {name: target / name for name in commands}
    _fill_once(target, lambda: all(p.is_file() for p in found.values()), lambda staging: _run_build(
        ["go", "build", "-trimpath", "-ldflags", _version_ldflags(K8S_VERSION), "-o", str(staging) + "/",
         *[f"./cmd/{name}" for name in commands]],
        cwd=hack_dir(), env=_go_env(), what=f"{what} ({', '.join(commands)})", progress=progress))
    return found


def ensure_control_plane(progress: Progress = _stderr) -> dict[str, Path]:
    """Paths of etcd, kube-apiserver, kube-controller-manager and kubectl, built if missing."""
    if os.environ.get("TRACKOP_BIN_DIR"):
        found = {name: Path(os.environ["TRACKOP_BIN_DIR"]) / name for name in CONTROL_PLANE}
        missing = [str(p) for p in found.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"TRACKOP_BIN_DIR lacks: {', '.join(missing)}")
        return found
    return _build_hack_set(control_plane_dir(), CONTROL_PLANE, f"Kubernetes {K8S_VERSION} control plane", progress)


def ensure_node(progress: Progress = _stderr) -> dict[str, Path]:
    """Paths of kubelet, kube-proxy, kube-scheduler and CoreDNS, built if missing
    (``$TRACKOP_NODE_BIN_DIR`` names a directory of prebuilt ones)."""
    if os.environ.get("TRACKOP_NODE_BIN_DIR"):
        found = {name: Path(os.environ["TRACKOP_NODE_BIN_DIR"]) / name for name in (*NODE, "coredns")}
        missing = [str(p) for p in found.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"TRACKOP_NODE_BIN_DIR lacks: {', '.join(missing)}")
        return found
    found = _build_hack_set(node_dir(), NODE, f"Kubernetes {K8S_VERSION} node", progress)
    found["coredns"] = ensure_coredns(progress)
    return found


def ensure_coredns(progress: Progress = _stderr) -> Path:
    """Path of CoreDNS, built with ``go install`` if missing."""
    return _go_install(COREDNS_MODULE, COREDNS_VERSION, "coredns", "TRACKOP_COREDNS",
                       f"{COREDNS_MODULE}@{COREDNS_VERSION}", progress)


def _go_install(module: str, version: str, binary_name: str, override_env: str, key_material: str,
                progress: Progress, ldflags: str = "-s -w") -> Path:
    """A ``go install module@version`` binary in the cache (``$override_env`` names a prebuilt one)."""
    if os.environ.get(override_env):
        return Path(os.environ[override_env])
    if ldflags != "-s -w":
        key_material += ldflags
    key = hashlib.sha256((key_material + _go_version()).encode()).hexdigest()[:12]
    target = cache_root() / "bin" / f"{binary_name}-{key}"
    binary = target / binary_name
    _fill_once(target, binary.is_file, lambda staging: _run_build(
        ["go", "install", "-trimpath", "-ldflags", ldflags, f"{module}@{version}"],
        cwd=None, env={**_go_env(), "GOBIN": str(staging), "GOFLAGS": ""}, what=f"{binary_name} {version}",
        progress=progress))
    return binary


def ensure_minio(progress: Progress = _stderr) -> Path:
    """Path of the MinIO server binary, built with ``go install`` if missing."""
    return _go_install(MINIO_MODULE, MINIO_VERSION, "minio", "TRACKOP_MINIO", MINIO_VERSION, progress)


def ensure_fake_gcs(progress: Progress = _stderr) -> Path:
    """Path of fake-gcs-server (the GCS emulator), built with ``go install`` if missing."""
    return _go_install(FAKE_GCS_MODULE, FAKE_GCS_VERSION, "fake-gcs-server", "TRACKOP_FAKE_GCS",
                       f"{FAKE_GCS_MODULE}@{FAKE_GCS_VERSION}", progress)


def _helm_ldflags() -> str:
    """What helm's Makefile stamps: its version, and the Kubernetes version it renders and lints for."""
    flags = ["-s", "-w", f"-X {HELM_MODULE}/internal/version.version={HELM_VERSION}"]
    for package in ("pkg/chartutil", "pkg/lint/rules"):
        flags += [f"-X {HELM_MODULE}/{package}.k8sVersionMajor=1",
                  f"-X {HELM_MODULE}/{package}.k8sVersionMinor={HELM_K8S_MINOR}"]
    return " ".join(flags)


def ensure_helm(progress: Progress = _stderr) -> Path:
    """Path of the ``helm`` CLI, built with ``go install`` if missing (``$TRACKOP_HELM`` names a prebuilt one)."""
    return _go_install(f"{HELM_MODULE}/cmd/helm", HELM_VERSION, "helm", "TRACKOP_HELM",
                       f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}", progress, ldflags=_helm_ldflags())


def ensure_module_files(module: str, version: str, paths: tuple[str, ...],
                        progress: Progress = _stderr) -> list[Path]:
    """Files of a Go module version, fetched once from the module proxy (``go mod download``)
    and kept under ``$XDG_CACHE_HOME/trackop/modules/<module>@<version>/`` by base name."""
    target = cache_root() / "modules" / f"{module.replace('/', '_')}@{version}"
    found = [target / Path(p).name for p in paths]

    def fetch(staging: Path) -> None:
        progress(f"fetching {module}@{version} from the Go module proxy ...")
        # GOFLAGS cleared: -mod=readonly means nothing outside a module and go mod download refuses it.
        done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=target.parent,
                              env={**_go_env(), "GOFLAGS": ""}, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"go mod download {module}@{version} failed:\n{done.stdout}{done.stderr}")
        source = Path(json.loads(done.stdout)["Dir"])
        for path in paths:
            shutil.copyfile(source / path, staging / Path(path).name)

    _fill_once(target, lambda: all(f.is_file() for f in found), fetch)
    return found


def ensure_third_party_crds(progress: Progress = _stderr, crds: dict | None = None) -> list[Path]:
    """The ServiceMonitor and cert-manager CRD files (THIRD_PARTY_CRDS), fetched if missing."""
    return [path for (module, version), paths in (crds or THIRD_PARTY_CRDS).items()
            for path in ensure_module_files(module, version, paths, progress)]


def ensure_cnpg_crds(progress: Progress = _stderr) -> list[Path]:
    """CloudNativePG's Cluster CRD file (CNPG_CRDS), fetched if missing."""
    return ensure_third_party_crds(progress, CNPG_CRDS)


def _npm_env() -> dict[str, str]:
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise FileNotFoundError("Node.js and npm are needed to install Azurite for the test bed: install Node >= 20")
    # No update nagging, no audit or funding requests to the registry beyond the install itself.
    return {**os.environ, "NO_UPDATE_NOTIFIER": "1", "npm_config_update_notifier": "false",
            "npm_config_audit": "false", "npm_config_fund": "false"}


def _node_version() -> str:
    return subprocess.run(["node", "--version"], env=_npm_env(), check=True, capture_output=True,
                          text=True).stdout.strip()


def azurite_dir() -> Path:
    """Where ``npm install --prefix`` puts Azurite: keyed by its version and Node's."""
    key = hashlib.sha256((AZURITE_PACKAGE + "@" + AZURITE_VERSION + _node_version()).encode()).hexdigest()[:12]
    return cache_root() / "npm" / f"azurite-{AZURITE_VERSION}-{key}"


def ensure_azurite(progress: Progress = _stderr) -> Path:
    """Path of ``azurite-blob`` (Azurite's blob service alone), npm-installed into the cache if missing.

    Never a global install: ``npm install --prefix <cache dir>``, staged and renamed into
    place so a half-finished install is never taken for a complete one.
    """
    if os.environ.get("TRACKOP_AZURITE_BLOB"):
        return Path(os.environ["TRACKOP_AZURITE_BLOB"])
    target = azurite_dir()
    binary = target / "node_modules" / ".bin" / "azurite-blob"
    _fill_once(target, binary.is_file, lambda staging: _run_build(
        ["npm", "install", "--prefix", str(staging), "--no-save", "--no-audit", "--no-fund", "--omit=dev",
         f"{AZURITE_PACKAGE}@{AZURITE_VERSION}"],
        cwd=staging, env=_npm_env(), what=f"Azurite {AZURITE_VERSION} (npm install)", progress=progress))
    return binary


def ensure_all(progress: Progress = _stderr) -> dict[str, Path]:
    binaries = ensure_control_plane(progress)
    binaries.update(ensure_stores(progress))
    binaries["helm"] = ensure_helm(progress)
    ensure_third_party_crds(progress)  # for the chart's dry runs; small, and offline afterwards
    ensure_cnpg_crds(progress)
    return binaries


def ensure_stores(progress: Progress = _stderr) -> dict[str, Path]:
    """The object-store emulators: MinIO (S3), fake-gcs-server (GCS), Azurite (Azure Blob)."""
    return {
        "minio": ensure_minio(progress),
        "fake-gcs-server": ensure_fake_gcs(progress),
        "azurite-blob": ensure_azurite(progress),
    }
