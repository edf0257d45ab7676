"""The local test bed: etcd, kube-apiserver, kube-controller-manager, PostgreSQL, and the
object stores MinIO (S3), fake-gcs-server (Google Cloud Storage) and Azurite (Azure Blob).

Every server binds to 127.0.0.1 on a free port and runs detached in the background;
``DIR/state.json`` records exactly what ``up`` started, ``DIR/testbed.json`` tells
clients how to reach it (the format in DESIGN.md). ``up`` on a running bed reuses it and
restarts only what has stopped; ``down`` stops exactly the recorded processes.

``TRACKOP_KUBECONFIG`` swaps the Kubernetes part for an existing cluster (kind, or any
kubeconfig): then only PostgreSQL and the object stores are started here.

A real node (node/: kube-scheduler, containerd, the kubelet, kube-proxy, CoreDNS) starts
after the control plane where the machine allows it (``node=`` or ``TRACKOP_TESTBED_NODE``
say otherwise); bed_node.py is the glue.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pwd
import secrets
import signal
import ssl
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trackop import pki

from . import bed_node, binaries, loopback, postgres_server
from .pki import kubeconfig as _kubeconfig
from .pki import make_service_account_key, write_private
from .procs import ProcessRecord, free_ports, is_alive, is_listening, spawn, stop, tail, wait_bindable, wait_until

SERVICE_CIDR = "10.0.0.0/24"
S3_REGION = "us-east-1"
PG_SUPERUSER = "postgres"
# Start order; ``down`` stops in reverse.
COMPONENTS = ("postgres", "s3", "gcs", "azure", "etcd", "kube-apiserver", "kube-controller-manager")
KUBE_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
PORT_NAMES = ("postgres", "s3", "gcs", "azure", "etcd", "etcd-peer", "kube-apiserver",
              "kube-controller-manager")
# fake-gcs-server checks no project; clients that create buckets must name one.
GCS_PROJECT = "trackop-testbed"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class BedState:
    """What the bed is made of; saved as DIR/state.json (mode 0600: it holds passwords)."""

    ports: dict[str, int]
    pg_password: str
    s3_access_key: str
    s3_secret_key: str
    external_kubeconfig: str | None = None
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    # Azurite's storage account (AZURITE_ACCOUNTS), generated per bed; empty in a state
    # written before the Azure part existed, filled in by ``up``.
    azure_account: str = ""
    azure_key: str = ""
    # The node's plan (node.plan.NodePlan), chosen when the bed is made; None: no node.
    node: dict | None = None
    # The Service range: the node's own (unique on the machine) or the shared default.
    service_cidr: str = SERVICE_CIDR

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["processes"] = {name: rec.to_json() for name, rec in self.processes.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "BedState":
        data = dict(data)
        data["processes"] = {n: ProcessRecord.from_json(r) for n, r in data.get("processes", {}).items()}
        return cls(**data)


class Testbed:
    """One bed in one directory. Safe to construct for a bed another process started."""

    def __init__(self, directory: Path | str, progress: Progress = _quiet, node: bool | None = None) -> None:
        """``node``: True, a real node or an error saying why not; False, none; None
        (default): ``TRACKOP_TESTBED_NODE`` (0 or 1), else a node where the machine allows."""
        self.dir = Path(directory).resolve()
        self.progress = progress
        self.node_mode = bed_node.mode(node)

    # ---- paths -------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def info_path(self) -> Path:
        return self.dir / "testbed.json"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    def log_path(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    @property
    def kubeconfig(self) -> Path:
        state = self.load_state()
        if state and state.external_kubeconfig:
            return Path(state.external_kubeconfig)
        return self.dir / "kubeconfig"

    # ---- state -------------------------------------------------------------------------
    def load_state(self) -> BedState | None:
        if not self.state_path.exists():
            return None
        return BedState.from_json(json.loads(self.state_path.read_text()))

    def _save_state(self, state: BedState) -> None:
        write_private(self.state_path, json.dumps(state.to_json(), indent=2).encode())

    def info(self) -> dict:
        """The contents of testbed.json: how clients reach the bed."""
        return json.loads(self.info_path.read_text())

    def _write_info(self, state: BedState, node_info: dict | None = None) -> None:
        info = {
            "kubeconfig": str(self.kubeconfig),
            "postgres": {
                "host": "127.0.0.1",
                "port": state.ports["postgres"],
                "user": PG_SUPERUSER,
                "password": state.pg_password,
            },
            "s3": {
                "endpoint": f"http://127.0.0.1:{state.ports['s3']}",
                "access_key": state.s3_access_key,
                "secret_key": state.s3_secret_key,
                "region": S3_REGION,
            },
            "gcs": {
                "endpoint": f"http://127.0.0.1:{state.ports['gcs']}",
                "project": GCS_PROJECT,
            },
            "azure": {
                "endpoint": _azure_endpoint(state),
                "account": state.azure_account,
                "key": state.azure_key,
                "connection_string": _azure_connection_string(state),
            },
        }
        if node_info:
            bed_node.add_to_info(info, node_info)
        write_private(self.info_path, json.dumps(info, indent=2).encode())

    def _components(self, state: BedState) -> tuple[str, ...]:
        if state.external_kubeconfig:
            return tuple(c for c in COMPONENTS if c not in KUBE_COMPONENTS)
        return COMPONENTS

    # ---- lifecycle ---------------------------------------------------------------------
    def up(self) -> dict:
        """Start (or reuse) the bed and wait until every part is healthy; return testbed.json."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The unprivileged PostgreSQL user must be able to enter the bed directory.
            os.chmod(self.dir, 0o711)
        state = self.load_state() or self._new_state()
        _complete_state(state)
        self._save_state(state)
        wanted = self._components(state)
        kube = not state.external_kubeconfig
        bins = binaries.ensure_all(self.progress) if kube else binaries.ensure_stores(self.progress)
        if kube:
            self._ensure_pki(state)
            _link(self.dir / "kubectl", bins["kubectl"])

        started = time.monotonic()
        for name in wanted:
            record = state.processes.get(name)
            if record is not None and is_alive(record):
                self.progress(f"{name}: running (pid {record.pid}), reused")
            else:
                if name == "kube-apiserver":
                    self._wait_ready("etcd", state)
                if name == "kube-controller-manager":
                    self._wait_ready("kube-apiserver", state)
                state.processes[name] = self._start(name, state, bins)
                self._save_state(state)
        for name in wanted:
            self._wait_ready(name, state)
        node_info = None
        if kube:
            self._wait_default_service_account()
            node_info = bed_node.up(self, state, bins["kubectl"])
        self._write_info(state, node_info)
        self.progress(f"test bed ready in {time.monotonic() - started:.1f}s: {self.info_path}")
        return self.info()

    def down(self) -> None:
        """Stop exactly what ``up`` started; keep the data so a later ``up`` resumes it."""
        state = self.load_state()
        if state is None:
            return
        node_error = bed_node.down(self, state)
        for name in reversed(COMPONENTS):
            record = state.processes.pop(name, None)
            if record is not None:
                stop(record)
                self._save_state(state)
        still = [f"{n}:{p}" for n, p in state.ports.items() if is_listening(p)]
        if still:
            raise RuntimeError(f"ports still listening after down: {', '.join(still)}")
        if node_error:
            raise node_error

    def stop_component(self, name: str, sig: int | None = None) -> None:
        """Stop one part (for fault tests: a PostgreSQL or API server outage), with its own
        stop signal or ``sig`` (SIGKILL: a crash)."""
        state = self._require_state()
        record = state.processes.pop(name, None)
        if record is not None:
            stop(dataclasses.replace(record, stop_signal=sig) if sig is not None else record)
        self._save_state(state)

    def restart_component(self, name: str, sig: int | None = None) -> None:
        """Stop one part and start it again with the same arguments, port, data and
        certificates (clients' kubeconfigs and URLs stay valid); wait until it is ready."""
        self.stop_component(name, sig)
        self.start_component(name)

    def start_component(self, name: str) -> None:
        """Start one stopped part again on its old port and data, and wait until it is ready."""
        state = self._require_state()
        if name in bed_node.COMPONENTS:
            bed_node.start_component(self, state, name)
            return
        record = state.processes.get(name)
        if record is None or not is_alive(record):
            for port_name in (name, f"{name}-peer"):
                if port_name in state.ports:
                    wait_bindable(state.ports[port_name])
            bins = binaries.ensure_all(_quiet) if not state.external_kubeconfig else \
                binaries.ensure_stores(_quiet)
            state.processes[name] = self._start(name, state, bins)
            self._save_state(state)
        self._wait_ready(name, state)

    def _require_state(self) -> BedState:
        state = self.load_state()
        if state is None:
            raise RuntimeError(f"no test bed in {self.dir}: run 'trackop testbed up --dir {self.dir}'")
        return state

    # ---- first start -------------------------------------------------------------------
    def _new_state(self) -> BedState:
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
        external = os.environ.get("TRACKOP_KUBECONFIG")
        state = BedState(
            ports=ports,
            pg_password=secrets.token_urlsafe(24),
            s3_access_key="trackop" + secrets.token_hex(6),
            s3_secret_key=secrets.token_urlsafe(30),
            external_kubeconfig=str(Path(external).resolve()) if external else None,
        )
        if not external:
            bed_node.plan_new(self, state)
        _complete_state(state)
        return state

    def _ensure_pki(self, state: BedState) -> None:
        if (self.dir / "kubeconfig").exists():
            return
        d = self.pki_dir
        ca = pki.make_ca("trackop-testbed-ca")
        serving = pki.issue(
            ca, "kube-apiserver", server=True,
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"),
            ip_addresses=("127.0.0.1", bed_node.kubernetes_ip(state), *bed_node.extra_apiserver_ips(state)),
        )
        admin = pki.issue(ca, "trackop-admin", organizations=("system:masters",), client=True)
        kcm = pki.issue(ca, "system:kube-controller-manager", client=True)
        sa_private, sa_public = make_service_account_key()
        files = {
            "ca.crt": ca.cert_pem, "ca.key": ca.key_pem,
            "apiserver.crt": serving.cert_pem, "apiserver.key": serving.key_pem,
            "admin.crt": admin.cert_pem, "admin.key": admin.key_pem,
            "sa.key": sa_private, "sa.pub": sa_public,
        }
        if state.node:
            # The API server's client certificate for the kubelet (logs, exec, port-forward).
            kubelet_client = pki.issue(ca, "kube-apiserver-kubelet-client", client=True)
            files.update({"apiserver-kubelet-client.crt": kubelet_client.cert_pem,
                          "apiserver-kubelet-client.key": kubelet_client.key_pem})
        for name, data in files.items():
            write_private(d / name, data)
        server = f"https://127.0.0.1:{state.ports['kube-apiserver']}"
        write_private(self.dir / "kube-controller-manager.kubeconfig",
                      _kubeconfig(server, ca.cert_pem, kcm, "system:kube-controller-manager"))
        # Written last: its presence means the PKI is complete.
        write_private(self.dir / "kubeconfig", _kubeconfig(server, ca.cert_pem, admin, "trackop-admin"))

    # ---- starting ----------------------------------------------------------------------
    def _start(self, name: str, state: BedState, bins: dict[str, Path]) -> ProcessRecord:
        self.progress(f"{name}: starting on 127.0.0.1:{state.ports.get(name, '-')}")
        log = self.log_path(name)
        p = state.ports
        d = self.pki_dir
        if name == "postgres":
            user = postgres_server.server_user()
            bindir = postgres_server.find_bindir()
            data = self.dir / "postgres" / "data"
            if user is not None:
                postgres_server.check_reachable(self.dir, user)
            if not (data / "PG_VERSION").exists():
                postgres_server.initdb(bindir, data, PG_SUPERUSER, state.pg_password, user)
            for cidr in bed_node.client_networks(state):
                postgres_server.allow_network(data, cidr)
            if user is not None:
                # The server (running as ``user``) appends to its own log.
                log.parent.mkdir(parents=True, exist_ok=True)
                log.touch()
                entry = pwd.getpwnam(user)
                os.chown(log, entry.pw_uid, entry.pw_gid)
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
            return spawn(name, postgres_server.server_argv(bindir, data, p["postgres"]), log,
                         user=user, stop_signal=signal.SIGINT)
        if name == "s3":
            env = {
                **_base_env(),
                "MINIO_ROOT_USER": state.s3_access_key,
                "MINIO_ROOT_PASSWORD": state.s3_secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_REGION": S3_REGION,
            }
            argv = [str(bins["minio"]), "server", "--quiet", "--address", f"127.0.0.1:{p['s3']}",
                    str(self.dir / "s3")]
            return spawn(name, argv, log, env=env)
        if name == "gcs":
            # -public-host and -external-url: the URLs fake-gcs-server hands out (resumable
            # upload locations, media links) point back at the loopback port, not at
            # storage.googleapis.com.
            endpoint = f"http://127.0.0.1:{p['gcs']}"
            argv = [str(bins["fake-gcs-server"]), "-scheme", "http", "-host", "127.0.0.1",
                    "-port", str(p["gcs"]), "-public-host", f"127.0.0.1:{p['gcs']}",
                    "-external-url", endpoint, "-backend", "filesystem",
                    "-filesystem-root", str(self.dir / "gcs"), "-log-level", "warn"]
            return spawn(name, argv, log, env=_base_env())
        if name == "azure":
            data = self.dir / "azurite"
            data.mkdir(parents=True, exist_ok=True)
            # AZURITE_ACCOUNTS replaces the well-known devstoreaccount1 with this bed's own
            # account and key. --disableTelemetry: no calls home from the bed.
            env = {**_base_env(), "AZURITE_ACCOUNTS": f"{state.azure_account}:{state.azure_key}"}
            argv = [str(bins["azurite-blob"]), "--blobHost", "127.0.0.1", "--blobPort", str(p["azure"]),
                    "--location", str(data), "--skipApiVersionCheck", "--loose",
                    "--disableTelemetry", "--disableProductStyleUrl"]
            return spawn(name, argv, log, env=env, cwd=data)
        if name == "etcd":
            client = f"http://127.0.0.1:{p['etcd']}"
            peer = f"http://127.0.0.1:{p['etcd-peer']}"
            argv = [str(bins["etcd"]), "--name=bed", f"--data-dir={self.dir / 'etcd'}",
                    f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=bed={peer}", "--unsafe-no-fsync=true", "--log-level=warn"]
            return spawn(name, argv, log, env=_base_env())
        if name == "kube-apiserver":
            argv = [
                str(bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1",
                # Without it the API server looks for a default route and fails on a host
                # that has none (controller-runtime#669).
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['kube-apiserver']}",
                f"--cert-dir={d}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--service-cluster-ip-range={state.service_cidr}",
                "--allow-privileged=true",
                *bed_node.apiserver_flags(state, d),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--v=0",
            ]
            return spawn(name, argv, log, env=_base_env())
        if name == "kube-controller-manager":
            kubeconfig = self.dir / "kube-controller-manager.kubeconfig"
            argv = [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kube-controller-manager']}",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--cluster-signing-cert-file={d / 'ca.crt'}",
                f"--cluster-signing-key-file={d / 'ca.key'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={state.service_cidr}",
                "--controllers=*",
                "--v=0",
            ]
            return spawn(name, argv, log, env=_base_env())
        raise ValueError(f"unknown component {name!r}")

    # ---- readiness ---------------------------------------------------------------------
    def _wait_ready(self, name: str, state: BedState) -> None:
        p = state.ports
        record = state.processes.get(name)
        checks: dict[str, tuple[Callable[[], bool], float]] = {
            "postgres": (lambda: postgres_server.is_ready(p["postgres"], PG_SUPERUSER, state.pg_password), 60),
            "s3": (lambda: _http_ok(f"http://127.0.0.1:{p['s3']}/minio/health/ready"), 60),
            "gcs": (lambda: _http_ok(f"http://127.0.0.1:{p['gcs']}/_internal/healthcheck"), 60),
            "azure": (lambda: _is_azurite(f"{_azure_endpoint(state)}?comp=list"), 60),
            "etcd": (lambda: b'"health":"true"' in _http_get(f"http://127.0.0.1:{p['etcd']}/health"), 60),
            "kube-apiserver": (
                lambda: _http_get(f"https://127.0.0.1:{p['kube-apiserver']}/readyz", self._admin_tls()) == b"ok",
                120,
            ),
            "kube-controller-manager": (
                lambda: _http_get(f"https://127.0.0.1:{p['kube-controller-manager']}/healthz",
                                  _insecure_tls()) == b"ok",
                120,
            ),
        }
        check, timeout = checks[name]
        wait_until(check, f"{name} on 127.0.0.1:{p.get(name)}", timeout, record=record,
                   log_path=self.log_path(name))

    def _admin_tls(self) -> ssl.SSLContext:
        return loopback.client_tls(self.pki_dir)

    def _wait_default_service_account(self) -> None:
        """Pods need their namespace's ``default`` ServiceAccount, which KCM creates."""
        port = self._require_state().ports["kube-apiserver"]
        url = f"https://127.0.0.1:{port}/api/v1/namespaces/default/serviceaccounts/default"
        wait_until(lambda: b'"name":"default"' in _http_get(url, self._admin_tls()).replace(b" ", b""),
                   "default ServiceAccount from kube-controller-manager", 60,
                   log_path=self.log_path("kube-controller-manager"))

    def logs(self, name: str, lines: int = 40) -> str:
        return tail(self.log_path(name), lines)


def _complete_state(state: BedState) -> None:
    """Fill in what a state written before a part existed lacks: its port and account.

    A new port is one that is free now and not recorded for another part of this bed
    (a stopped part's port is free, yet still its own).
    """
    missing = [name for name in (*PORT_NAMES, *bed_node.port_names(state)) if name not in state.ports]
    if missing:
        taken = set(state.ports.values())
        fresh = [port for port in free_ports(len(missing) + len(taken)) if port not in taken]
        state.ports.update(zip(missing, fresh))
    if not state.azure_account:
        # Storage account names: 3-24 lowercase letters and digits.
        state.azure_account = "trackop" + secrets.token_hex(6)
        # Azure account keys are 64 random bytes, base64-encoded.
        state.azure_key = base64.b64encode(secrets.token_bytes(64)).decode()


def _azure_endpoint(state: BedState) -> str:
    """Azurite's blob endpoint for this bed's account (path style: the account is the first segment)."""
    return f"http://127.0.0.1:{state.ports['azure']}/{state.azure_account}"


def _azure_connection_string(state: BedState) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={state.azure_account};"
            f"AccountKey={state.azure_key};BlobEndpoint={_azure_endpoint(state)};")


def _is_azurite(url: str) -> bool:
    """True once Azurite answers: an unauthenticated request gets its 403, from its server."""
    try:
        with _open(url) as response:
            server = response.headers.get("Server", "")
    except urllib.error.HTTPError as exc:
        server = exc.headers.get("Server", "")
    return server.startswith("Azurite-Blob")


def _link(link: Path, target: Path) -> None:
    """A convenience link in the bed directory to a cached binary."""
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    link.symlink_to(target)


_base_env = loopback.base_env
_insecure_tls = loopback.insecure_tls
_open = loopback.open_url
_http_get = loopback.http_get
_http_ok = loopback.http_ok
