"""Apply to Ready: a TrackingBackend reconciled by the operator vs a bare ``mlflow db upgrade``.

On the test bed (control plane + PostgreSQL), N runs of each, interleaved (a, b, a, b, ...)
so machine noise hits both alike:
  (a) as the superuser, a fresh role and an empty database it owns, then
      ``mlflow db upgrade <url>`` as a subprocess: wall time, peak RSS (os.wait4 ru_maxrss);
  (b) a TrackingBackend (external PostgreSQL of the bed, sslMode disable, adminSecretRef
      pg-admin) created in a fresh namespace, reconciled by an operator process this script
      starts (``trackop.cli run --all-namespaces`` with ``TRACKOP_SCHEMA_TEMPLATES=off``: MLflow
      preloaded at its startup, every database migrated in place, in-process): wall time
      from the create call returning to the watch delivering the object with condition
      Ready=True (a watch on the one object, not polling, so the latency is not quantized),
      and the operator process's peak RSS (VmHWM).
Where (b)'s time goes is read from the same watch (finalizer added by kopf), the operator's
log (handler finished) and the SchemaMigrated Event (migration seconds).
Prints a table and writes the section "Apply to Ready" of bench/RESULTS.md.

    .venv/bin/python bench/bench_ready.py [--testbed /tmp/bed1/testbed.json] [-n 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
from benchlib import Postgres, free_port, machine, run_cli, stop_process, write_section  # noqa: E402

HEADING = "## Apply to Ready: operator vs `mlflow db upgrade`"
GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
FINALIZER = "trackop.dev/finalizer"
READY_TIMEOUT = 120  # seconds, per backend
DRIFT_INTERVAL = 60  # the operator's drift timer: longer than a run, so it stays out of the way


# ---------------------------------------------------------------------------- machine


def proc_status_kib(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def healthz(address: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{address}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def other_operators(own_pid: int | None = None) -> list[tuple[int, str]]:
    """Other ``trackop.cli run`` processes on this machine: they would reconcile our backends too.

    Returns (pid, description); the description says whether its /healthz answers (kopf serves
    it once the operator is up; one whose startup keeps failing reconciles nothing).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), own_pid):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "trackop.cli" in words and "run" in words:
            address = words[words.index("--health-address") + 1] if "--health-address" in words[:-1] else "127.0.0.1:8080"
            state = "its /healthz answers" if healthz(address) else "its /healthz does not answer"
            found.append((int(entry.name), f"{' '.join(words)} ({state})"))
    return found


# ---------------------------------------------------------------------------- PostgreSQL


# ---------------------------------------------------------------------------- operator


class Operator:
    """``python -m trackop.cli run`` as tests/kit.py starts it, logging to a file.

    ``scope`` is ``["--all-namespaces"]`` (kit.py's) or ``["--namespace", ns]``.
    """

    def __init__(self, kubeconfig: str, log_path: Path, scope: list[str]) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.scope = scope
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self, settle: float) -> float:
        """Start, wait for /healthz and the startup handler, then ``settle`` s; returns seconds to /healthz."""
        # TRACKOP_VERBOSE keeps kopf's per-handler INFO lines, which the phase breakdown reads.
        # Templates off: each backend is migrated in place, in-process, with MLflow preloaded at
        # startup, the path this benchmark compares with `mlflow db upgrade` (managed servers,
        # clone fallbacks and MLflow upgrades still take it). With templates on, the first
        # backend's template is built in a child process and the rest are cloned: bench_fleet.
        env = {**os.environ, "TRACKOP_DRIFT_INTERVAL": str(DRIFT_INTERVAL), "PYTHONUNBUFFERED": "1",
               "TRACKOP_VERBOSE": "1", "TRACKOP_SCHEMA_TEMPLATES": "off"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trackop.cli", "run", *self.scope, "--kubeconfig", self.kubeconfig,
                 "--health-address", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            )
        started = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the operator exited ({self.process.returncode}):\n{self.logs()[-3000:]}")
            if healthz(f"127.0.0.1:{self.port}"):
                break
            if time.perf_counter() - started > 90:
                raise SystemExit(f"the operator's /healthz did not answer in 90 s:\n{self.logs()[-3000:]}")
            time.sleep(0.2)
        healthy = time.perf_counter() - started
        # The startup handler preloads MLflow and logs "trackop ready"; then settle a little more.
        deadline = time.perf_counter() + 60
        while "trackop ready" not in self.logs() and time.perf_counter() < deadline:
            time.sleep(0.2)
        if "trackop ready" not in self.logs():
            print("warning: no 'trackop ready' line in the operator's log after 60 s", flush=True)
        time.sleep(settle)
        return healthy

    def rss_kib(self, key: str) -> int:
        return proc_status_kib(self.process.pid, key)

    def stop(self) -> None:
        stop_process(self.process)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def creations_handled(self) -> list[float]:
        """Epoch seconds (ms resolution) of each "Handler 'reconcile_backend' succeeded" that ended a creation.

        kopf's plain log format does not name the object, so a run's line is found by its time.
        """
        pattern = re.compile(
            r"^\[([0-9-]+ [0-9:]+,\d{3})\] kopf\.objects +\[INFO +\] Handler 'reconcile_backend' succeeded\.\n"
            r"\[[^]]+\] kopf\.objects +\[INFO +\] Creation is processed", re.M)
        # asctime is local time, as time.time() is placed by fromtimestamp/timestamp.
        return [dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                for m in pattern.finditer(self.logs())]


# ---------------------------------------------------------------------------- the cluster


@dataclass
class ReadyRun:
    name: str
    seconds: float  # create returned -> Ready=True delivered by the watch
    finalizer: float | None = None  # create returned -> kopf's finalizer seen on the watch
    handler_done: float | None = None  # create returned -> kopf logged the handler's success
    migrate: float | None = None  # from the SchemaMigrated Event ("in X.Xs")
    epoch0: float = 0.0  # time.time() when the create returned, to place the operator's log lines
    database: str = ""
    role: str = ""
    revision: str = ""
    events: list[str] = field(default_factory=list)


class Cluster:
    def __init__(self, kubeconfig: str, pg: dict) -> None:
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.pg = pg
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.backends: list[str] = []

    def setup(self, admin_user: str, admin_password: str) -> None:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        self.core.create_namespaced_secret(self.namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name="pg-admin"),
            string_data={"username": admin_user, "password": admin_password}))

    def apply_and_wait_ready(self, name: str) -> ReadyRun:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend", "metadata": {"name": name},
            "spec": {"postgres": {"external": {
                "host": self.pg["host"], "port": int(self.pg["port"]), "sslMode": "disable",
                "adminSecretRef": {"name": "pg-admin"}}}},
        }
        created = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        t0, epoch0 = time.perf_counter(), time.time()
        self.backends.append(name)
        # Watch from the create's resourceVersion: every later change is delivered, none missed,
        # even one that happens before the watch request reaches the API server.
        run: ReadyRun | None = None
        finalizer_at = None
        last_ready: dict = {}
        w = watch.Watch()
        for event in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                              field_selector=f"metadata.name={name}",
                              resource_version=created["metadata"]["resourceVersion"],
                              timeout_seconds=READY_TIMEOUT):
            now = time.perf_counter()
            obj = event["object"]
            if event["type"] == "ERROR":
                w.stop()
                raise SystemExit(f"watch error on {name}: {obj}")
            if finalizer_at is None and FINALIZER in (obj.get("metadata", {}).get("finalizers") or []):
                finalizer_at = now - t0
            status = obj.get("status") or {}
            last_ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
            if last_ready.get("status") == "True":
                db = status.get("database") or {}
                run = ReadyRun(name, now - t0, finalizer_at, database=db.get("name", ""), role=db.get("role", ""),
                               revision=(status.get("schema") or {}).get("revision", ""))
                w.stop()
                break
        if run is None:
            raise SystemExit(f"{name} not Ready after {READY_TIMEOUT} s; last Ready condition: {last_ready}")
        run.epoch0 = epoch0
        return run

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name and e.involved_object.kind == "TrackingBackend"]

    def delete_backends(self, timeout: float = 60) -> list[str]:
        problems = []
        for name in self.backends:
            try:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            except client.ApiException as exc:
                if exc.status != 404:
                    problems.append(f"delete {name}: {exc.status} {exc.reason}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
            if not left:
                return problems
            time.sleep(0.3)
        for obj in left:  # the operator did not release them: drop the finalizer so the namespace can go
            name = obj["metadata"]["name"]
            problems.append(f"{name} still had its finalizer after {timeout:.0f} s; removed it")
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                       {"metadata": {"finalizers": None}})
        return problems

    def delete_namespace(self, timeout: float = 60) -> list[str]:
        try:
            self.core.delete_namespace(self.namespace)
        except client.ApiException as exc:
            return [] if exc.status == 404 else [f"delete namespace {self.namespace}: {exc.status} {exc.reason}"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.core.read_namespace(self.namespace)
            except client.ApiException as exc:
                if exc.status == 404:
                    return []
                raise
            time.sleep(0.5)
        return [f"namespace {self.namespace} still Terminating after {timeout:.0f} s (the namespace controller ends it)"]


def resolve_phases(run: ReadyRun, operator: Operator, cluster: Cluster) -> None:
    """Fill in the log- and Event-derived phases of one (b) run."""
    # The log has milliseconds: allow 2 ms either side of the run's window.
    done = [t - run.epoch0 for t in operator.creations_handled() if -0.002 <= t - run.epoch0 <= run.seconds + 0.002]
    run.handler_done = done[0] if len(done) == 1 else None
    events = sorted(cluster.events(run.name), key=lambda e: (e.event_time or e.first_timestamp or dt.datetime.min))
    run.events = [e.reason for e in events]
    for e in events:
        if e.reason == "SchemaMigrated":
            match = re.search(r" in ([0-9.]+)s", e.message or "")
            run.migrate = float(match.group(1)) if match else None


# ---------------------------------------------------------------------------- results


def med(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.0f} ms" if x < 0.1 else f"{x:.2f} s"


def runs(xs: list[float | None], digits: int = 2) -> str:
    return ", ".join("—" if x is None else f"{x:.{digits}f}" for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", type=Path, default=Path("/tmp/bed1/testbed.json"))
    parser.add_argument("-n", type=int, default=5, help="runs of each, interleaved (default 5)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait after the operator is healthy and has preloaded MLflow (default 3)")
    parser.add_argument("--all-namespaces", action="store_true",
                        help="run the operator with --all-namespaces as tests/kit.py does (default: only the "
                             "benchmark's namespace, so it never touches other backends on a shared bed)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    info = json.loads(args.testbed.read_text())
    mlflow = Path(sys.executable).parent / "mlflow"
    pg = Postgres(info["postgres"])
    cluster = Cluster(info["kubeconfig"], info["postgres"])
    log_dir = Path(tempfile.mkdtemp(prefix="trackop-bench-ready-"))
    scope = ["--all-namespaces"] if args.all_namespaces else ["--namespace", cluster.namespace]
    operator = Operator(info["kubeconfig"], log_dir / "operator.log", scope)
    others = other_operators()
    others_during: dict[int, str] = {}
    for pid, cmd in others:
        print(f"warning: another trackop operator runs (pid {pid}): {cmd}\n"
              "         if it watches this cluster and is healthy, it reconciles our backends too", flush=True)

    cli: list[tuple[float, float]] = []
    ready: list[ReadyRun] = []
    problems: list[str] = []
    contaminated = ""
    namespace_made = False
    try:
        admin_user, admin_password = pg.admin_role()
        cluster.setup(admin_user, admin_password)
        namespace_made = True
        print(f"namespace {cluster.namespace}, admin role {admin_user}", flush=True)
        healthy_s = operator.start(args.settle)
        rss_settled = operator.rss_kib("VmRSS") / 1024
        print(f"operator pid {operator.process.pid} ({' '.join(scope)}): /healthz after {healthy_s:.1f} s, "
              f"{rss_settled:.0f} MB RSS after preload; log {operator.log_path}", flush=True)

        for i in range(args.n):
            name, url = pg.fresh_database()
            cli.append(run_cli(mlflow, url))
            head_cli = pg.revision(name)
            print(f"(a) mlflow db upgrade #{i + 1}: {cli[-1][0]:.2f} s, {cli[-1][1]:.0f} MB -> {head_cli}", flush=True)

            run = cluster.apply_and_wait_ready(f"rdy-{i + 1}-{uuid.uuid4().hex[:6]}")
            pg.databases.append(run.database)
            pg.roles.insert(1, run.role)  # dropped before the admin role that made it
            ready.append(run)
            print(f"(b) apply -> Ready #{i + 1}: {run.seconds:.2f} s -> {run.revision}", flush=True)
        rss_peak = operator.rss_kib("VmHWM") / 1024
        time.sleep(0.5)  # let kopf post the last Events
        for run in ready:
            resolve_phases(run, operator, cluster)
        handled_here = sum(r.handler_done is not None for r in ready)
        if handled_here != len(ready):
            contaminated = (f"only {handled_here} of {len(ready)} backends were found reconciled in this "
                            "operator's log within their run: another operator raced it (other trackop "
                            f"operators now: {other_operators(operator.process.pid) or 'none'})")
        others_during = {p: d for p, d in other_operators(operator.process.pid) if p in dict(others)}
        assert all(r.revision == head_cli for r in ready), "a backend's schema revision differs from the CLI's"
        pg_version = pg.server_version()
    finally:
        if cluster.backends:
            problems += cluster.delete_backends()
        operator.stop()
        problems += pg.drop_all()
        if namespace_made:
            problems += cluster.delete_namespace()
    for p in problems:
        print(f"warning: {p}", flush=True)

    walls_a = [w for w, _ in cli]
    walls_b = [r.seconds for r in ready]
    med_a, med_b = statistics.median(walls_a), statistics.median(walls_b)
    ratio = med_b / med_a
    fin, done, mig = med([r.finalizer for r in ready]), med([r.handler_done for r in ready]), med([r.migrate for r in ready])
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    table = "\n".join([
        "| | median | min | max | runs (s, in order) | peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| (a) `mlflow db upgrade <url>` (subprocess) | {med_a:.2f} s | {min(walls_a):.2f} s | {max(walls_a):.2f} s "
        f"| {fmt(walls_a)} | {statistics.median(r for _, r in cli):.0f} MB per process (max {max(r for _, r in cli):.0f}) |",
        f"| (b) TrackingBackend create → Ready=True (operator) | {med_b:.2f} s | {min(walls_b):.2f} s "
        f"| {max(walls_b):.2f} s | {fmt(walls_b)} | {rss_peak:.0f} MB for the operator process "
        f"(VmHWM; {rss_settled:.0f} MB after preload) |",
    ])
    phases = "\n".join([
        "| (b) phase | median, after the create returned | runs (s, in order) |",
        "| --- | --- | --- |",
        f"| kopf's finalizer on the object (seen on the watch) | {s(fin)} | {runs([r.finalizer for r in ready], 3)} |",
        f"| handler `reconcile_backend` finished (operator log, ms) | {s(done)} "
        f"| {runs([r.handler_done for r in ready], 3)} |",
        f"| Ready=True delivered by the watch | {s(med_b)} | {runs(walls_b, 3)} |",
        f"| of which the schema migration (SchemaMigrated Event, 0.1 s steps) | {s(mig)} "
        f"| {runs([r.migrate for r in ready], 1)} |",
    ])
    verdict = "met" if ratio < 0.5 else "not met"
    summary = (f"Ratio (b)/(a) of medians: **{ratio:.2f}** ({med_b:.2f} s / {med_a:.2f} s); "
               f"target under 0.5: {verdict}.")
    if None not in (fin, done, mig):
        rest = done - fin - mig
        where = (
            f"Where (b)'s {med_b:.2f} s go (medians): {s(fin)} until kopf has seen the new object and "
            f"patched its finalizer in (it runs the handler on the resulting change), {s(mig)} migrating the schema with the "
            f"preloaded MLflow, {s(rest)} for the rest of the handler (admin Secret read, connection "
            f"Secret create, role and database statements, the schema check) and kopf's event "
            f"dispatch, and {s(med_b - done)} from the handler's return until the status patch "
            f"reached the watch. (a) spends the difference on a fresh Python process importing MLflow "
            f"(its CLI) and parsing the migration scripts before the same migration.")
    else:
        where = "Phase breakdown unavailable (see the warnings printed by the run)."
    print()
    print(table)
    print()
    print(phases)
    print(summary)
    print(where)
    events_seen = sorted({" → ".join(r.events) for r in ready})
    if others_during:
        print(f"warning: other trackop operator process(es) ran throughout: {others_during}", flush=True)
    print(f"Events per backend: {'; '.join(events_seen)}")
    if contaminated:
        raise SystemExit(f"not written to {args.results}: {contaminated}; rerun when no other trackop "
                         "operator watches this bed")
    if args.no_write:
        return
    scope_note = (")" if args.all_namespaces else
                  ";\nscoped to the benchmark's namespace, so that on a shared bed it neither resumes "
                  "other backends\nnor races another operator over them; `--all-namespaces` runs it "
                  "as tests/kit.py does)")
    others_note = "".join(
        f"Note: another trackop operator process ran on this machine throughout (pid {pid}, "
        f"{'/healthz answering' if 'does not' not in d else '/healthz not answering, so not reconciling'}). "
        "Each (b) run was checked to be handled by the benchmark's own operator (its log's "
        "creation line falls inside the run).\n" for pid, d in sorted(others_during.items()))
    m = machine()
    versions = {pkg: importlib.metadata.version(pkg)
                for pkg in ("kopf", "kubernetes", "mlflow-skinny", "mlflow", "SQLAlchemy", "alembic", "psycopg")}
    section = f"""{HEADING}

N={args.n} of each, interleaved (a, b, a, b, ...), on the test bed (kube-apiserver v1.35.4,
PostgreSQL {pg_version}); every run ends at Alembic head `{head_cli}`.
(a) as the superuser, a fresh role and an empty database it owns, then
`.venv/bin/mlflow db upgrade <url>` as a subprocess (wall time; peak RSS from `os.wait4`).
(b) a `TrackingBackend` (external PostgreSQL, `sslMode: disable`, `adminSecretRef: pg-admin`,
a non-superuser admin with CREATEDB CREATEROLE) created in a fresh namespace; wall time from
the create call returning until a watch on that object (from the create's resourceVersion,
so not quantized by polling) delivers condition Ready=True. The operator is one
`python -m trackop.cli run {'--all-namespaces' if args.all_namespaces else '--namespace <its namespace>'}` process started by the benchmark
(`TRACKOP_DRIFT_INTERVAL={DRIFT_INTERVAL}`{scope_note},
measured after /healthz answered, its startup handler had preloaded MLflow and {args.settle:g} s more.
Each (b) run does the whole reconcile: connection Secret, role, database, inline migration, status.

{table}

{summary}

{phases}

{where}
Events on each backend, in order: {'; '.join(events_seen)}.
{others_note}
Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']},
Python {m['python']}; {", ".join(f"{k} {v}" for k, v in versions.items())}.
Measured {time.strftime("%Y-%m-%d")}.

Rerun (from the repository root, with a running bed that has the CRD installed and no
other trackop operator watching it):

```sh
.venv/bin/python bench/bench_ready.py --testbed {args.testbed} -n {args.n}{" --all-namespaces" if args.all_namespaces else ""}
```
"""
    write_section(args.results, HEADING, section)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
