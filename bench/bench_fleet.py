"""Fleet: N TrackingBackends applied at once to one operator; time to all Ready, memory,
idle cost per backend (CPU, PostgreSQL statements, API requests, Events).

One script, one local test bed of its own (``trackop testbed up --dir DIR``, stopped at the
end unless ``--keep-bed``; the directory removed too if this script made it):

1. PostgreSQL gets ``pg_stat_statements`` (``shared_preload_libraries``, restarted once by
   the bed); an admin role (CREATEDB CREATEROLE, not a superuser) and its Secret ``pg-admin``
   in each of ``--namespaces`` namespaces; the API server's request rate with nothing of ours
   running (the background: kube-controller-manager) over ``--background`` s.
2. The operator: ``trackop run --all-namespaces --metrics-address ...`` as tests/kit.py
   starts it (no webhook), drift interval 60 s (trackop's default), through
   bench/fleet_operator.py, which only adds timing hooks on /metrics (the in-process Alembic
   lock, PostgreSQL connects). ``--singles`` backends applied one at a time first
   (apply -> Ready, then deleted): the serial baseline. The operator runs in a virtualenv of
   its own, by default one with only what the image ships (trackop without its test extra,
   dependencies held to constraints.txt: ``mlflow-skinny``, not the test extra's ``mlflow``),
   built once and cached under ~/.cache/trackop (bench/benchlib.py:image_venv);
   ``--operator-venv DIR`` picks another (``.venv``: the test virtualenv). This script itself
   runs in .venv. ``--operator-env KEY=VALUE`` (repeatable) adds to the environment of the
   operator and of the kopf baseline (e.g. ``MALLOC_ARENA_MAX=2``); recorded in the results, and
   a run with it writes a section of its own (the heading names the variables).
3. The fleet: N TrackingBackends (Inline migration, the default) created at once by 8 client
   threads, round-robin over the namespaces; wall time from the first create call to the
   last Ready=True seen by a cluster-wide watch. Operator RSS sampled every 0.25 s and its
   VmHWM; CPU seconds of the operator, PostgreSQL, the API server and etcd; PostgreSQL
   statements (pg_stat_statements calls and committed transactions); API requests
   (apiserver_request_total, background and this script's own requests subtracted); Events.
4. Idle: after all are Ready, ``--idle`` seconds (default two drift intervals): the same
   counters, per backend per drift interval.
5. The kopf baseline: bench/fleet_empty_operator.py (kopf, the same settings and handler
   kinds, empty bodies that only write Ready) with the same N in fresh namespaces, after
   the operator above has stopped, in the operator's virtualenv; also idle for
   ``--baseline-idle`` seconds.

Prints the tables and writes the section "Fleet" of bench/RESULTS.md (``--no-write``: print
only). Not part of the test suite.

    .venv/bin/python bench/bench_fleet.py --backends 100 [--dir /tmp/bench-fleet-bed]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from kubernetes import client, config, watch
from psycopg import sql

from trackop_testbed.bed import Testbed
from trackop_testbed.crd import install_crd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import (bed_down, bed_up, free_port, image_venv, machine, stop_process, venv_packages,  # noqa: E402
                      write_section)

HEADING = "## Fleet: N backends at once"
GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
FINALIZER = "trackop.dev/finalizer"
DRIFT_INTERVAL = 60.0  # trackop's default
# trackop's default (ten drift intervals): between two full reconciles of a backend, its drift
# checks compare a fingerprint (drift.py). A backend's first full reconcile after provisioning
# is its eleventh drift check (the fingerprint is taken when it became Ready, after its timer
# started): an idle window of twelve intervals holds it for every backend, with eleven
# comparisons, close to the steady state (one full reconcile in eleven checks).
FULL_CHECK_INTERVAL = 10 * DRIFT_INTERVAL
IDLE_WINDOW = FULL_CHECK_INTERVAL + 2 * DRIFT_INTERVAL
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {100: 30.0, 300: 90.0}  # seconds to all Ready, from the issue
RSS_TARGET_MB = 250
IDLE_CPU_TARGET = 0.02


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # reaped children: cutime, cstime
    return ticks / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """A server and its live children (PostgreSQL's backends), plus the children it reaped."""
    total = cpu_seconds(root, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError):
                continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK, sum(values[:8]) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append((time.perf_counter(), status_kib(self.pid, "VmRSS")))
            except OSError:
                return
            self.stopped.wait(self.period)

    def peak_mb(self, since: float = 0.0) -> float:
        return max((kib for t, kib in self.samples if t >= since), default=0) / 1024


# ---------------------------------------------------------------------------- the bed


def code_version() -> str:
    """The commit the operator ran from, and any uncommitted changes under src/ at its start
    (others work in the same tree)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return f"`{git('rev-parse', '--short', 'HEAD')}`" + (f" with uncommitted changes in {', '.join(dirty)}"
                                                        if dirty else "")


def bed_pids(directory: Path) -> dict[str, int]:
    state = json.loads((directory / "state.json").read_text())
    return {name: record["pid"] for name, record in state["processes"].items()}


class Postgres:
    def __init__(self, pg: dict) -> None:
        self.admin = {"host": pg["host"], "port": int(pg["port"]), "user": pg["user"], "password": pg["password"]}
        self.superuser = pg["user"]

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(**self.admin, dbname=dbname, autocommit=True)

    def enable_pg_stat_statements(self, bed: Testbed) -> str:
        """pg_stat_statements on (restarts PostgreSQL once); returns '' or why not."""
        with self.connect() as conn:
            preload = str(conn.execute("SHOW shared_preload_libraries").fetchone()[0])
            if "pg_stat_statements" not in preload:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                data_dir = Path(str(conn.execute("SHOW data_directory").fetchone()[0]))
                # One entry per (role, database, statement): 300 databases × the migration's
                # statements outgrow the default 5000, and evicted entries lose their counts.
                # Not known to the server before the library is loaded, so ALTER SYSTEM refuses
                # it: appended to the file ALTER SYSTEM writes (read at the restart below).
                with open(data_dir / "postgresql.auto.conf", "a") as auto:
                    auto.write("pg_stat_statements.max = 100000\n")
        if "pg_stat_statements" not in preload:
            bed.stop_component("postgres")
            bed.start_component("postgres")
        try:
            with self.connect() as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT pg_stat_statements_reset()")
        except psycopg.Error as exc:
            return f"pg_stat_statements unavailable: {exc}"
        return ""

    def counters(self, pss: bool) -> dict[str, float]:
        """Statements (pg_stat_statements calls, the superuser's own left out) and committed
        transactions (pg_stat_database, all databases; includes this script's own few)."""
        with self.connect() as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            out = {"xact_commit": float(conn.execute("SELECT sum(xact_commit) FROM pg_stat_database").fetchone()[0])}
            if pss:
                row = conn.execute(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
                    "WHERE r.rolname <> %s", (self.superuser,)).fetchone()
                out["calls"] = float(row[0])
                out["dealloc"] = float(conn.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()[0])
            out["sessions"] = float(conn.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()[0])
        return out

    def track(self, what: str) -> None:
        """pg_stat_statements.track (top or none), by ALTER SYSTEM and a reload."""
        with self.connect() as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET pg_stat_statements.track = {}").format(sql.Literal(what)))
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # backends pick the reload up at their next command

    def top_statements(self, roles_like: str, limit: int = 12) -> list[tuple[str, float]]:
        with self.connect() as conn:
            return [(q, float(c)) for q, c in conn.execute(
                "SELECT regexp_replace(query, '\\s+', ' ', 'g'), sum(calls) FROM pg_stat_statements s "
                "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname LIKE %s "
                "GROUP BY 1 ORDER BY 2 DESC LIMIT %s", (roles_like, limit)).fetchall()]

    def clone_times(self, template: str, n: int) -> list[float]:
        """Seconds for the template-clone idea, as the superuser: CREATE DATABASE ... TEMPLATE
        of a migrated backend database (nobody connected to it: the operator has stopped),
        owned by a new role, then every table, sequence and view in it given to that role."""
        times = []
        with self.connect() as conn:
            for _ in range(n):
                name = f"mlflow_fleetclone_{uuid.uuid4().hex[:8]}"
                started = time.perf_counter()
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(template), sql.Identifier(name)))
                with self.connect(name) as clone:
                    clone.execute(sql.SQL("""DO $$ DECLARE r record; BEGIN
                        FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v', 'p')
                                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                                                   AND d.deptype IN ('a', 'i') AND c.relkind = 'S') LOOP
                            EXECUTE format('ALTER %s public.%I OWNER TO %I',
                                CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                                r.relname, {});
                        END LOOP; END $$""").format(sql.Literal(name)))
                    revision = clone.execute("SELECT version_num FROM alembic_version").fetchone()
                times.append(time.perf_counter() - started)
                assert revision, "the clone has no alembic_version row"
        return times

    def admin_role(self) -> tuple[str, str]:
        user, password = f"adm_fleet_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CREATEDB CREATEROLE").format(
                sql.Identifier(user), sql.Literal(password)))
        return user, password

    def server_version(self) -> str:
        with self.connect() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def drop(self, databases: list[str], roles: list[str]) -> list[str]:
        problems = []
        with self.connect() as conn:
            for name in dict.fromkeys(databases):
                try:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                except psycopg.Error as exc:
                    problems.append(f"database {name}: {exc}")
            for role in dict.fromkeys(roles):
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except psycopg.Error as exc:
                    problems.append(f"role {role}: {exc}")
        return problems


# ---------------------------------------------------------------------------- API server


def apiserver_requests(api: client.ApiClient) -> Counter:
    """apiserver_request_total summed over codes etc., by (resource[/subresource], verb)."""
    response = api.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False,
                            _return_http_data_only=True)
    out: Counter = Counter()
    for line in response.data.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        out[(resource or "(non-resource)", labels.get("verb", ""))] += float(line.rsplit(" ", 1)[1])
    return out


def minus(a: Counter, b: Counter) -> Counter:
    return Counter({k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)})


def operator_requests(delta: Counter, background: Counter, seconds: float, own: Counter) -> Counter:
    """delta less the background rate × seconds less this script's own requests, per key, floored at 0."""
    out = Counter()
    for key, value in delta.items():
        rest = value - background.get(key, 0) * seconds - own.get(key, 0)
        if rest > 0.5:
            out[key] = rest
    return out


def breakdown(requests: Counter, per: float, top: int = 8) -> str:
    items = sorted(requests.items(), key=lambda kv: -kv[1])
    parts = [f"{verb} {resource} {value / per:.2f}" for (resource, verb), value in items[:top]]
    rest = sum(v for _, v in items[top:])
    if rest:
        parts.append(f"other {rest / per:.2f}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- operators


def healthz(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class Process:
    """An operator process, logging to a file; stopped with SIGTERM (kill after 30 s)."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str], health_url: str) -> None:
        self.argv, self.log_path, self.env, self.health_url = argv, log_path, env, health_url
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_line: str | None, timeout: float = 120) -> float:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        started = time.perf_counter()
        while not healthz(self.health_url) or (ready_line and ready_line not in self.logs()):
            if self.process.poll() is not None:
                raise SystemExit(f"{self.argv[:4]} exited ({self.process.returncode}):\n{self.logs()[-3000:]}")
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"{self.argv[:4]} not ready in {timeout:.0f} s:\n{self.logs()[-3000:]}")
            time.sleep(0.2)
        return time.perf_counter() - started

    def stop(self) -> None:
        stop_process(self.process)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def scrape(port: int) -> dict[str, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# ---------------------------------------------------------------------------- the fleet


class ReadyWatch(threading.Thread):
    """One cluster-wide watch on TrackingBackends with our label: when each was first seen
    with kopf's finalizer and with Ready=True (perf_counter)."""

    def __init__(self, custom: client.CustomObjectsApi, selector: str) -> None:
        super().__init__(daemon=True)
        self.custom, self.selector = custom, selector
        self.finalized: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.status: dict[str, dict] = {}
        self.requests = Counter()  # this script's own requests
        self.stopped = threading.Event()
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=self.selector)
            self.requests[("trackingbackends", "LIST")] += 1
            version = listing["metadata"]["resourceVersion"]
            self.started.set()
            while not self.stopped.is_set():
                w = watch.Watch()
                self.requests[("trackingbackends", "WATCH")] += 1
                for event in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                      label_selector=self.selector, resource_version=version, timeout_seconds=30,
                                      allow_watch_bookmarks=True):
                    now = time.perf_counter()
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("BOOKMARK", "DELETED"):
                        continue
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    if key not in self.finalized and FINALIZER in (obj["metadata"].get("finalizers") or []):
                        self.finalized[key] = now
                    conditions = (obj.get("status") or {}).get("conditions") or []
                    if key not in self.ready and any(c.get("type") == "Ready" and c.get("status") == "True"
                                                     for c in conditions):
                        self.ready[key] = now
                        self.status[key] = obj.get("status") or {}
                    if self.stopped.is_set():
                        w.stop()
                        break
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.started.set()


@dataclass
class Fleet:
    label: str
    namespaces: list[str]
    n: int
    prefix: str = "fb"  # names PREFIX-0000, ...: never reused (deletionPolicy Retain keeps a database)
    names: list[str] = field(default_factory=list)  # namespace/name
    t0: float = 0.0
    t_created: float = 0.0
    t_ready: float = 0.0
    watch: ReadyWatch | None = None


def backend_spec(pg: dict) -> dict:
    return {"postgres": {"external": {"host": pg["host"], "port": int(pg["port"]), "sslMode": "disable",
                                      "adminSecretRef": {"name": "pg-admin"}}}}


def make_namespaces(core: client.CoreV1Api, names: list[str], admin: tuple[str, str]) -> None:
    for ns in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        core.create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name="pg-admin"),
            string_data={"username": admin[0], "password": admin[1]}))


def apply_fleet(custom: client.CustomObjectsApi, fleet: Fleet, pg: dict, timeout: float) -> None:
    fleet.watch = ReadyWatch(custom, f"bench.trackop.dev/fleet={fleet.label}")
    fleet.watch.start()
    fleet.watch.started.wait(30)
    if fleet.watch.error:
        raise fleet.watch.error
    spec = backend_spec(pg)
    jobs = [(fleet.namespaces[i % len(fleet.namespaces)], f"{fleet.prefix}-{i:04d}") for i in range(fleet.n)]

    def create(job: tuple[str, str]) -> None:
        ns, name = job
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend",
            "metadata": {"name": name, "labels": {"bench.trackop.dev/fleet": fleet.label}}, "spec": spec})

    fleet.names = [f"{ns}/{name}" for ns, name in jobs]
    fleet.t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, jobs))
    fleet.t_created = time.perf_counter()
    fleet.watch.requests[("trackingbackends", "POST")] += fleet.n
    deadline = fleet.t0 + timeout
    last_print = 0.0
    while len(fleet.watch.ready) < fleet.n:
        if fleet.watch.error:
            raise fleet.watch.error
        now = time.perf_counter()
        if now > deadline:
            raise SystemExit(f"only {len(fleet.watch.ready)} of {fleet.n} Ready after {timeout:.0f} s")
        if now - last_print > 15:
            print(f"  {now - fleet.t0:5.0f} s: {len(fleet.watch.ready)}/{fleet.n} Ready "
                  f"(finalizer on {len(fleet.watch.finalized)}), load {load()}", flush=True)
            last_print = now
        time.sleep(0.2)
    fleet.t_ready = max(fleet.watch.ready.values())
    fleet.watch.stopped.set()


def events_count(core: client.CoreV1Api, namespaces: set[str]) -> tuple[int, Counter]:
    """Events about TrackingBackends in our namespaces: occurrences (count), by reason."""
    by_reason: Counter = Counter()
    for e in core.list_event_for_all_namespaces(field_selector="involvedObject.kind=TrackingBackend").items:
        if e.metadata.namespace in namespaces:
            by_reason[e.reason] += (e.count or 1) if e.series is None else (e.series.count or 1)
    return sum(by_reason.values()), by_reason


def migration_seconds(core: client.CoreV1Api, namespaces: set[str]) -> dict[str, list[float]]:
    """Seconds from the SchemaMigrated Events, by kind: "cloned" (from the template database)
    or "migrated" (MLflow's migrations in the database itself)."""
    out: dict[str, list[float]] = {"cloned": [], "migrated": []}
    for e in core.list_event_for_all_namespaces(field_selector="involvedObject.kind=TrackingBackend").items:
        if e.metadata.namespace in namespaces and e.reason == "SchemaMigrated":
            match = re.search(r" in ([0-9.]+)s", e.message or "")
            kind = (e.message or "").split(" ", 1)[0]
            if match and kind in out:
                out[kind].append(float(match.group(1)))
    return out


@dataclass
class Snapshot:
    t: float
    op_cpu: float
    pg_cpu: float
    api_cpu: float
    etcd_cpu: float
    busy: float
    total: float
    pg: dict[str, float]
    api: Counter
    metrics: dict[str, float]
    events: int
    load: str


def snapshot(op_pid: int, pids: dict[str, int], pg: Postgres, pss: bool, api: client.ApiClient,
             metrics_port: int | None, core: client.CoreV1Api, namespaces: set[str]) -> Snapshot:
    busy, total = machine_busy()
    return Snapshot(time.perf_counter(), cpu_seconds(op_pid), tree_cpu_seconds(pids["postgres"]),
                    cpu_seconds(pids["kube-apiserver"]), cpu_seconds(pids["etcd"]), busy, total,
                    pg.counters(pss), apiserver_requests(api),
                    scrape(metrics_port) if metrics_port else {}, events_count(core, namespaces)[0], load())


def metric(m: dict[str, float], name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


@dataclass
class Phase:
    """Deltas between two snapshots."""

    seconds: float
    op_cpu: float
    pg_cpu: float
    api_cpu: float
    etcd_cpu: float
    busy: float
    cores: float
    statements: float | None
    xacts: float
    sessions: float
    api: Counter
    events: int
    metrics: dict[str, float]
    load_before: str
    load_after: str


def delta(a: Snapshot, b: Snapshot) -> Phase:
    keys = set(a.metrics) | set(b.metrics)
    return Phase(b.t - a.t, b.op_cpu - a.op_cpu, b.pg_cpu - a.pg_cpu, b.api_cpu - a.api_cpu, b.etcd_cpu - a.etcd_cpu,
                 b.busy - a.busy, (b.total - a.total) / (b.t - a.t),
                 (b.pg["calls"] - a.pg["calls"]) if "calls" in a.pg else None,
                 b.pg["xact_commit"] - a.pg["xact_commit"], b.pg["sessions"] - a.pg["sessions"],
                 minus(b.api, a.api), b.events - a.events,
                 {k: b.metrics.get(k, 0) - a.metrics.get(k, 0) for k in keys}, a.load, b.load)


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=100, help="N TrackingBackends applied at once (default 100)")
    parser.add_argument("--namespaces", type=int, default=4, help="spread over this many namespaces (default 4)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-fleet-bed"), help="the bed's directory")
    parser.add_argument("--keep-bed", action="store_true", help="leave the bed running at the end")
    parser.add_argument("--idle", type=float, default=IDLE_WINDOW,
                        help="seconds of idle measurement after all are Ready (default twelve drift intervals: "
                             "one full reconcile and eleven fingerprint checks per backend)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between all Ready and the idle window")
    parser.add_argument("--singles", type=int, default=3, help="backends applied one at a time first (default 3)")
    parser.add_argument("--background", type=float, default=DRIFT_INTERVAL,
                        help="seconds of API server background measured before any operator (default 60: "
                             "kube-controller-manager's discovery runs every 30 s)")
    parser.add_argument("--baseline-idle", type=float, default=DRIFT_INTERVAL,
                        help="seconds of idle measurement of the kopf baseline (default one interval; 0: none)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the kopf empty-handler baseline")
    parser.add_argument("--py-spy", type=Path, default=None,
                        help="py-spy binary: record the operator during provisioning (raw stacks next to its log)")
    parser.add_argument("--operator-venv", type=Path, default=None,
                        help="the virtualenv that runs the operator and the kopf baseline (default: one with only "
                             "what the image ships, trackop without its test extra held to constraints.txt, built "
                             "once and cached under ~/.cache/trackop; `--operator-venv .venv`: the test virtualenv, "
                             "with the full mlflow, as runs before 2026-12-01 14:00 did)")
    parser.add_argument("--operator-env", type=env_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the operator and the kopf baseline (repeatable), e.g. "
                             "MALLOC_ARENA_MAX=2; recorded in the results and the rerun command, and written to a "
                             "section of its own")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    # Stopped by a signal (also SIGINT, which a shell ignores in background jobs): clean up.
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    n = args.backends
    run_id = uuid.uuid4().hex[:6]
    made_dir = not args.dir.exists()
    log_dir = Path(tempfile.mkdtemp(prefix="trackop-bench-fleet-"))
    print(f"fleet of {n}, run {run_id}, logs in {log_dir}; load {load()}", flush=True)
    # The operator's interpreter; this script (the driver: bed, clients, measurements) stays on its own.
    venv = args.operator_venv.resolve() if args.operator_venv else image_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"--operator-venv {args.operator_venv}: no {python}")
    packages = venv_packages(python)
    print(f"operator virtualenv {venv}: mlflow-skinny {packages.get('mlflow-skinny', '-')}, "
          f"mlflow {packages.get('mlflow', 'not installed')}, numpy {packages.get('numpy', 'not installed')}, "
          f"{len(packages)} distributions", flush=True)

    problems: list[str] = []
    operator = baseline = None
    namespaces: list[str] = []
    result: dict = {"n": n, "load_start": load(), "venv": venv, "packages": packages,
                    "venv_python": subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                                                  capture_output=True, text=True).stdout.strip()}
    info = bed_up(args.dir)
    try:
        pids = bed_pids(args.dir)
        pg = Postgres(info["postgres"])
        why_not = pg.enable_pg_stat_statements(Testbed(args.dir))
        pss = not why_not
        if why_not:
            print(f"warning: {why_not}; counting committed transactions only", flush=True)
        pids = bed_pids(args.dir)  # PostgreSQL may have restarted
        api = config.new_client_from_config(config_file=info["kubeconfig"])
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        install_crd(api)
        admin = pg.admin_role()
        fleet_ns = [f"fleet-{run_id}-{i}" for i in range(args.namespaces)]
        single_ns = f"fleet-{run_id}-single"
        base_ns = [f"fleetbase-{run_id}-{i}" for i in range(args.namespaces)]
        namespaces = [*fleet_ns, single_ns]
        make_namespaces(core, namespaces, admin)
        ours = set(fleet_ns)

        # The API server's background (kube-controller-manager, leases), nothing of ours running.
        a = apiserver_requests(api)
        time.sleep(args.background)
        b = apiserver_requests(api)
        background = Counter({k: v / args.background for k, v in minus(b, a).items() if v > 0})
        # Each scrape of /metrics is itself a request: ours, not background.
        background.pop(("(non-resource)", "GET"), None)
        print(f"API server background: {sum(background.values()):.2f} requests/s", flush=True)

        # The operator.
        health, metrics_port = free_port(), free_port()
        env = {**os.environ, "TRACKOP_DRIFT_INTERVAL": f"{DRIFT_INTERVAL:g}",
               "TRACKOP_FULL_CHECK_INTERVAL": f"{FULL_CHECK_INTERVAL:g}", "PYTHONUNBUFFERED": "1",
               "KUBECONFIG": info["kubeconfig"], "VIRTUAL_ENV": str(venv),
               "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
        env.pop("TRACKOP_VERBOSE", None)
        env.update(dict(args.operator_env))  # the baseline below starts with the same env
        if args.operator_env:
            print(f"operator and baseline environment adds {extra_env(args)}", flush=True)
        operator = Process([str(python), str(ROOT / "bench" / "fleet_operator.py"), "run", "--all-namespaces",
                            "--kubeconfig", info["kubeconfig"], "--health-address", f"127.0.0.1:{health}",
                            "--metrics-address", f"127.0.0.1:{metrics_port}"],
                           log_dir / "operator.log", env, f"http://127.0.0.1:{health}/healthz")
        result["code"] = code_version()
        healthy = operator.start("trackop ready")
        time.sleep(3)
        result["rss_preloaded"] = status_kib(operator.pid, "VmRSS") / 1024
        result["cpu_startup"] = cpu_seconds(operator.pid)
        print(f"operator pid {operator.pid} ready in {healthy:.1f} s, {result['rss_preloaded']:.0f} MB", flush=True)
        sampler = RssSampler(operator.pid)
        sampler.start()

        # Serial baseline: one backend at a time.
        singles = []
        before_singles = pg.counters(pss)
        for i in range(args.singles):
            one = Fleet(f"{run_id}-single{i}", [single_ns], 1, prefix=f"single{i}")
            apply_fleet(custom, one, info["postgres"], 120)
            singles.append(one.t_ready - one.t0)
            name = one.names[0].split("/")[1]
            custom.delete_namespaced_custom_object(GROUP, VERSION, single_ns, PLURAL, name)
            deadline = time.monotonic() + 60
            while custom.list_namespaced_custom_object(GROUP, VERSION, single_ns, PLURAL)["items"]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"single backend {name} not deleted in 60 s")
                time.sleep(0.2)
            print(f"single #{i + 1}: apply -> Ready {singles[-1]:.2f} s", flush=True)
        result["singles"] = singles
        after_singles = pg.counters(pss)
        result["single_statements"] = ((after_singles["calls"] - before_singles["calls"]) / len(singles)
                                       if pss and singles else None)
        # Not during the fleet's provisioning: N × ~800 new (role, database, statement) entries
        # would evict one another (each eviction sorts the whole table under a lock) and slow
        # PostgreSQL down for the measurement. Statements per backend come from the singles.
        if pss:
            pg.track("none")
        time.sleep(2)

        # The fleet.
        fleet = Fleet(run_id, fleet_ns, n)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([str(args.py_spy), "record", "--pid", str(operator.pid), "--format", "raw",
                                    "--rate", "50", "--nonblocking", "--threads", "--output",
                                    str(log_dir / "provisioning.pyspy.txt")],
                                   stdout=subprocess.DEVNULL, stderr=open(log_dir / "py-spy.log", "wb"))
            time.sleep(1)
        s0 = snapshot(operator.pid, pids, pg, pss, api, metrics_port, core, ours)
        print(f"applying {n}; load {load()}", flush=True)
        apply_fleet(custom, fleet, info["postgres"], max(600, 6 * n))
        s1 = snapshot(operator.pid, pids, pg, pss, api, metrics_port, core, ours)
        if pss:
            pg.track("top")
        spy_cpu = None
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            _, _, usage = os.wait4(spy.pid, 0)
            spy.returncode = 0  # reaped here; keep Popen quiet
            spy_cpu = usage.ru_utime + usage.ru_stime
        rss_fleet_peak = sampler.peak_mb(fleet.t0)
        result["hwm_after_fleet"] = status_kib(operator.pid, "VmHWM") / 1024
        wall = fleet.t_ready - fleet.t0
        print(f"all {n} Ready in {wall:.1f} s (creates took {fleet.t_created - fleet.t0:.1f} s); "
              f"peak RSS {rss_fleet_peak:.0f} MB; load {load()}", flush=True)
        ready_times = sorted(t - fleet.t0 for t in fleet.watch.ready.values())
        finalizer_times = sorted(t - fleet.t0 for t in fleet.watch.finalized.values())
        migrations = migration_seconds(core, ours)
        provisioning = delta(s0, s1)
        provisioning_events = events_count(core, ours)[1]

        # Idle.
        time.sleep(args.settle)
        s2 = snapshot(operator.pid, pids, pg, pss, api, metrics_port, core, ours)
        print(f"idle for {args.idle:.0f} s; load {load()}", flush=True)
        time.sleep(args.idle)
        s3 = snapshot(operator.pid, pids, pg, pss, api, metrics_port, core, ours)
        idle = delta(s2, s3)
        idle_events = events_count(core, ours)[1] - provisioning_events
        result["hwm_end"] = status_kib(operator.pid, "VmHWM") / 1024
        result["rss_end"] = status_kib(operator.pid, "VmRSS") / 1024
        sampler.stopped.set()
        top_idle = pg.top_statements("adm_fleet_%", 6) if pss else []
        operator.stop()
        clones = pg.clone_times(fleet.watch.status[fleet.names[0]]["database"]["name"], 3)
        print(f"template clone of a migrated database: {', '.join(f'{c:.2f}' for c in clones)} s", flush=True)
        profile = analyse_py_spy(log_dir / "provisioning.pyspy.txt", 50) if args.py_spy else None
        print(f"idle: operator CPU {idle.op_cpu / idle.seconds:.2%}, {idle.events} Events; load {load()}", flush=True)

        # The kopf baseline: empty handlers, the same N, fresh namespaces.
        base = None
        if not args.no_baseline:
            make_namespaces(core, base_ns, admin)
            namespaces += base_ns
            bhealth = free_port()
            # The same interpreter and packages as the operator, so the ratios compare kopf with kopf.
            baseline = Process([str(python), "-m", "kopf", "run", "--standalone",
                                "--namespace", f"fleetbase-{run_id}-*",
                                "--liveness", f"http://127.0.0.1:{bhealth}/healthz",
                                str(ROOT / "bench" / "fleet_empty_operator.py")],
                               log_dir / "baseline.log", {**env}, f"http://127.0.0.1:{bhealth}/healthz")
            baseline.start(None)
            time.sleep(3)
            brss0 = status_kib(baseline.pid, "VmRSS") / 1024
            bsampler = RssSampler(baseline.pid)
            bsampler.start()
            bfleet = Fleet(f"{run_id}-base", base_ns, n)
            c0 = cpu_seconds(baseline.pid)
            b_api0 = apiserver_requests(api)
            print(f"baseline: applying {n} to kopf with empty handlers; load {load()}", flush=True)
            apply_fleet(custom, bfleet, info["postgres"], max(600, 4 * n))
            c1 = cpu_seconds(baseline.pid)
            b_api1 = apiserver_requests(api)
            bwall = bfleet.t_ready - bfleet.t0
            base = {"wall": bwall, "cpu": c1 - c0, "rss0": brss0, "peak": bsampler.peak_mb(bfleet.t0),
                    "api": operator_requests(minus(b_api1, b_api0), background, bwall, bfleet.watch.requests),
                    "load": load()}
            print(f"baseline: all {n} Ready in {bwall:.1f} s, CPU {c1 - c0:.1f} s; load {load()}", flush=True)
            if args.baseline_idle > 0:
                time.sleep(args.settle)
                c2, t2 = cpu_seconds(baseline.pid), time.perf_counter()
                time.sleep(args.baseline_idle)
                base["idle_cpu"] = (cpu_seconds(baseline.pid) - c2) / (time.perf_counter() - t2)
            base["hwm"] = status_kib(baseline.pid, "VmHWM") / 1024
            bsampler.stopped.set()
            baseline.stop()

        pg_version = pg.server_version()
        databases = [st.get("database", {}).get("name") for st in fleet.watch.status.values()]
        roles = [st.get("database", {}).get("role") for st in fleet.watch.status.values()]
        result.update(wall=wall, creates=fleet.t_created - fleet.t0, ready_times=ready_times,
                      finalizer_times=finalizer_times, migrations=migrations, prov=provisioning, idle=idle,
                      rss_peak=rss_fleet_peak, base=base, background=background, pss=pss, why_not=why_not,
                      pg_version=pg_version, top_idle=top_idle, own=fleet.watch.requests, log_dir=log_dir,
                      load_end=load(), events_by_reason=provisioning_events, idle_events=idle_events,
                      clones=clones, profile=profile, py_spy=bool(args.py_spy), spy_cpu=spy_cpu)
    finally:
        for p in (operator, baseline):
            if p is not None:
                p.stop()
        # Leave nothing behind on a kept bed: finalizers off, namespaces, databases, roles.
        try:
            if namespaces:
                for obj in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]:
                    if obj["metadata"]["namespace"] in namespaces and obj["metadata"].get("finalizers"):
                        custom.patch_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"], PLURAL,
                                                              obj["metadata"]["name"], {"metadata": {"finalizers": None}})
                for ns in namespaces:
                    core.delete_namespace(ns)
            with pg.connect() as conn:
                databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'mlflow_fleet%'")]
                # The template databases (owned by the admin role, so before it), as docs/backend.md removes them.
                templates = [r[0] for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE 'trackop template%'")]
                for name in templates:
                    conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
                databases += templates
                roles = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'mlflow_fleet%' "
                                                    "OR rolname LIKE 'adm_fleet_%' OR rolname = 'trackop_template' "
                                                    "ORDER BY rolname LIKE 'adm_%'")]
            problems += pg.drop(databases, roles)
        except Exception as exc:  # noqa: BLE001 - the bed goes down anyway
            problems.append(f"cleanup: {type(exc).__name__}: {exc}")
        if not args.keep_bed:
            down = bed_down(args.dir)
            if down:
                problems.append(down)
            elif made_dir:
                shutil.rmtree(args.dir, ignore_errors=True)
    for p in problems[:20]:
        print(f"warning: {p}", flush=True)
    report(args, result)


PY_SPY_BUCKETS = (  # first match wins, on the whole stack of one sample
    ("migration: in psycopg/libpq (statements, connects)", lambda st: "trackop/schema/" in st and "psycopg" in st),
    ("migration: SQLAlchemy compile/reflect", lambda st: "trackop/schema/" in st and "sqlalchemy/" in st),
    ("migration: Alembic/MLflow scripts", lambda st: "trackop/schema/" in st),
    ("reconciler: PostgreSQL connect + checks", lambda st: "trackop/" in st and "psycopg" in st),
    ("reconciler: Kubernetes client", lambda st: "trackop/" in st and "kubernetes/" in st),
    ("reconciler: other", lambda st: "trackop/" in st),
    ("kopf (watch, queue, patches, Events)", lambda st: "kopf/" in st or "aiohttp" in st),
)


def analyse_py_spy(path: Path, rate: float) -> list[tuple[str, float]] | None:
    """py-spy raw stacks (non-idle samples) -> seconds per bucket."""
    if not path.exists():
        return None
    seconds: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        bucket = next((name for name, test in PY_SPY_BUCKETS if test(stack)), "other (GC, imports, metrics, ...)")
        seconds[bucket] += int(count) / rate
    return sorted(seconds.items(), key=lambda kv: -kv[1])


def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 0.1 else f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


KEY_PACKAGES = ("kopf", "kubernetes", "mlflow-skinny", "mlflow", "SQLAlchemy", "alembic", "psycopg", "numpy",
                "pandas", "pyarrow", "scipy")


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def extra_env(args: argparse.Namespace) -> str:
    """``--operator-env`` as written: 'K=V K2=V2' ('' without)."""
    return " ".join(f"{k}={v}" for k, v in args.operator_env)


def rerun_command(args: argparse.Namespace, n: int, rerun_venv: str) -> str:
    return (f".venv/bin/python bench/bench_fleet.py --backends {n} --dir {args.dir}{rerun_venv}"
            + "".join(f" --operator-env {shlex.quote(f'{k}={v}')}" for k, v in args.operator_env)
            + (f" --py-spy {args.py_spy}" if args.py_spy else ""))


def describe_venv(args: argparse.Namespace, r: dict) -> tuple[str, str]:
    """The sentence on the operator's virtualenv for RESULTS.md, and the rerun option."""
    venv, packages = r["venv"], r["packages"]
    lowered = {k.lower(): v for k, v in packages.items()}
    present = [f"{k} {lowered[k.lower()]}" for k in KEY_PACKAGES if k.lower() in lowered]
    absent = [k for k in KEY_PACKAGES if k.lower() not in lowered]
    if args.operator_venv is None:
        what = (f"The operator and the kopf baseline ran in the image-like virtualenv (`{venv.name}` under "
                f"~/.cache/trackop, built by bench/benchlib.py:image_venv: trackop without its test extra, "
                f"installed editable, every dependency held to constraints.txt, as the Dockerfile installs)")
        rerun = ""
    elif venv == ROOT / ".venv":
        what = ("The operator and the kopf baseline ran in the test virtualenv `.venv` (trackop with its test "
                "extra: the full `mlflow`, which the image does not ship)")
        rerun = " --operator-venv .venv"
    else:
        what = f"The operator and the kopf baseline ran in the virtualenv `{venv}`"
        rerun = f" --operator-venv {args.operator_venv}"
    return (f"{what}: {len(packages)} distributions; {', '.join(present)}"
            + (f"; not installed: {', '.join(absent)}" if absent else "") + "."
            + (f" Both ran with `{extra_env(args)}` added to their environment (`--operator-env`)."
               if args.operator_env else ""), rerun)


def report(args: argparse.Namespace, r: dict) -> None:
    n = r["n"]
    prov: Phase = r["prov"]
    idle: Phase = r["idle"]
    base = r["base"]
    intervals = idle.seconds / DRIFT_INTERVAL
    single = statistics.median(r["singles"])
    target = TARGETS.get(n)
    own_prov = Counter(r["own"]) + Counter({("events", "LIST"): 1, ("(non-resource)", "GET"): 1})
    prov_api = operator_requests(prov.api, r["background"], prov.seconds, own_prov)
    # This script's own in the idle window: the first snapshot's Events listing and /metrics scrape.
    idle_api = operator_requests(idle.api, r["background"], idle.seconds,
                                 Counter({("events", "LIST"): 1, ("(non-resource)", "GET"): 1}))
    m, mi = prov.metrics, idle.metrics
    reconciles = metric(m, 'trackop_reconciles_total{handler="reconcile",result="ready"}')
    not_ready = metric(m, 'trackop_reconciles_total{handler="reconcile",result="not_ready"}')
    handler_sum = m.get('trackop_reconcile_duration_seconds_sum{handler="reconcile"}', 0)
    handler_count = m.get('trackop_reconcile_duration_seconds_count{handler="reconcile"}', 0) or 1
    drifts = sum(v for k, v in mi.items() if k.startswith('trackop_reconciles_total{handler="drift"'))
    prov_drifts = sum(v for k, v in m.items() if k.startswith('trackop_reconciles_total{handler="drift"'))
    idle_reconciles = sum(v for k, v in mi.items() if k.startswith('trackop_reconciles_total{handler="reconcile"'))
    drift_sum = mi.get('trackop_reconcile_duration_seconds_sum{handler="drift"}', 0)
    # Every drift check, and its thread's CPU, by result (the fingerprint matched, or a full reconcile ran).
    checks = {r: mi.get(f'trackop_drift_checks_total{{result="{r}"}}', 0) for r in ("unchanged", "full")}
    check_cpu = {r: mi.get(f'trackop_drift_check_cpu_seconds_total{{result="{r}"}}', 0) for r in ("unchanged", "full")}
    all_checks = sum(checks.values())
    held, held_cpu = m.get("bench_alembic_lock_held_seconds_total", 0), m.get("bench_alembic_lock_held_cpu_seconds_total", 0)
    waited, taken = m.get("bench_alembic_lock_wait_seconds_total", 0), m.get("bench_alembic_lock_acquisitions_total", 0)
    connects, connect_s = m.get("bench_pg_connects_total", 0), m.get("bench_pg_connect_seconds_total", 0)
    idle_connects = mi.get("bench_pg_connects_total", 0)
    wall = r["wall"]
    rt, ft = r["ready_times"], r["finalizer_times"]
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    idle_cpu = idle.op_cpu / idle.seconds
    per_iv = lambda x: x / n / intervals  # noqa: E731
    peak = max(r["rss_peak"], r["hwm_end"])
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    rows = [
        "| | measured | target | |",
        "| --- | --- | --- | --- |",
        f"| all {n} Ready, from the first create | **{wall:.1f} s** ({wall / n * 1000:.0f} ms per backend) "
        f"| {'under %.0f s' % target if target else '—'} | "
        f"{verdict(wall < target) + (f' (×{wall / target:.1f})' if wall >= target else '') if target else '—'} |",
        f"| operator peak RSS (VmHWM) | **{peak:.0f} MB** ({r['rss_preloaded']:.0f} MB after startup, "
        f"{r['rss_end']:.0f} MB at the end) | under {RSS_TARGET_MB} MB | {verdict(peak < RSS_TARGET_MB)} |",
        f"| operator CPU while idle ({idle.seconds:.0f} s, {intervals:.1f} drift intervals) | **{idle_cpu:.2%}** "
        f"of one core ({idle.op_cpu:.1f} CPU s) | under 2% | {verdict(idle_cpu < IDLE_CPU_TARGET)} |",
        f"| Events per backend per interval, idle | **{per_iv(idle.events):.2f}** ({idle.events} in the window) "
        f"| 0 | {verdict(idle.events == 0)} |",
        f"| drift checks per backend per interval, idle | {per_iv(all_checks):.2f} ({all_checks:.0f}: "
        f"{checks['unchanged']:.0f} fingerprint matches at {check_cpu['unchanged'] / max(checks['unchanged'], 1) * 1000:.1f} "
        f"ms CPU each, {checks['full']:.0f} full reconciles ({checks['full'] / max(all_checks, 1):.0%}) at "
        f"{check_cpu['full'] / max(checks['full'], 1) * 1000:.1f} ms CPU each, {drift_sum / max(drifts, 1) * 1000:.0f} ms "
        f"wall; the checks' threads {sum(check_cpu.values()):.1f} CPU s of the window's {idle.op_cpu:.1f}) | — | |",
        "| PostgreSQL statements per backend per interval, idle | "
        + (f"**{per_iv(idle.statements):.1f}** (pg_stat_statements calls)" if idle.statements is not None else "—")
        + f"; {per_iv(idle.xacts):.1f} commits, {per_iv(idle.sessions):.1f} sessions "
        f"({per_iv(idle_connects):.1f} connects by the reconciler) | — | |",
        f"| API requests per backend per interval, idle | **{per_iv(sum(idle_api.values())):.2f}** "
        f"({breakdown(idle_api, n * intervals, 6) or 'none'}) | — | |",
        f"| API requests per backend, provisioning | **{sum(prov_api.values()) / n:.1f}** "
        f"({breakdown(prov_api, n)}) | — | |",
        "| PostgreSQL per backend, provisioning | "
        + (f"{r['single_statements']:.0f} statements (pg_stat_statements, the single backends; off during "
           "the fleet), " if r.get("single_statements") is not None else "")
        + f"{prov.xacts / n:.0f} commits, {prov.sessions / n:.1f} sessions | — | |",
        f"| CPU per backend, provisioning | operator {prov.op_cpu / n:.2f} s, PostgreSQL {prov.pg_cpu / n:.2f} s, "
        f"kube-apiserver {prov.api_cpu / n:.3f} s, etcd {prov.etcd_cpu / n:.3f} s | — | |",
    ]
    table = "\n".join(rows)

    ratios = [f"- serial baseline, the same operator: one backend alone, apply → Ready "
              f"{', '.join(f'{x:.2f}' for x in r['singles'])} s (median {single:.2f} s); × {n} = {single * n:.0f} s; "
              f"the fleet took **{wall / (single * n):.2f}×** that."]
    if base:
        bapi = sum(base["api"].values()) / n
        ratios.append(
            f"- kopf with empty handlers (bench/fleet_empty_operator.py, same settings, handlers that only "
            f"write Ready), the same {n} in fresh namespaces after trackop stopped: all Ready in "
            f"**{base['wall']:.1f} s**, {base['cpu']:.1f} CPU s, peak RSS {max(base['peak'], base['hwm']):.0f} MB "
            f"({base['rss0']:.0f} MB at start), {bapi:.1f} API requests per backend"
            + (f", idle CPU {base['idle_cpu']:.2%}" if "idle_cpu" in base else "")
            + f" (load {base['load']}). trackop/kopf-empty: wall **{wall / base['wall']:.1f}×**, "
            f"RSS {peak / max(base['peak'], base['hwm']):.1f}×"
            + (f", idle CPU {idle_cpu / base['idle_cpu']:.1f}×" if base.get("idle_cpu") else "") + ".")

    mig = r["migrations"]
    median = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    template_builds = r["events_by_reason"].get("TemplateBuilt", 0)
    busy_cores = prov.busy / prov.seconds
    lines = [
        f"- {n} creates took {fmt_s(r['creates'])} (8 client threads); kopf had put its finalizer on all of them "
        f"{ft[-1]:.1f} s after the first create (median {statistics.median(ft):.1f} s); Ready arrived at a steady "
        f"pace: 10% at {q(rt, 0.1):.1f} s, 50% at {q(rt, 0.5):.1f} s, 90% at {q(rt, 0.9):.1f} s, last at {rt[-1]:.1f} s "
        f"({n / max(rt[-1] - rt[0], 1e-9):.2f} per second after the first).",
        f"- the reconcile handler ran {reconciles:.0f} times to Ready ({not_ready:.0f} not ready), "
        f"{handler_sum:.0f} s of handler wall time in all, mean {handler_sum / handler_count:.1f} s each while "
        f"{handler_sum / wall:.1f} ran at once on average (kopf's thread pool for sync handlers); the drift "
        f"timer ran {prov_drifts:.0f} full reconciles during provisioning (kopf starts an object's timer when it first "
        f"sees it: after 60 s a backend whose create handler still waits for a worker is provisioned by its "
        f"timer), and {idle_reconciles:.0f} create/resume handlers ran in the idle window.",
        f"- the schema: {len(mig['cloned'])} databases cloned from the server's template database "
        f"(SchemaMigrated Events: median {median(mig['cloned']):.2f} s per clone, CREATE DATABASE ... TEMPLATE and "
        f"the hand-over to the role), {len(mig['migrated'])} migrated in place"
        + (f" (median {median(mig['migrated']):.1f} s, lock wait included)" if mig["migrated"] else "")
        + f"; the template itself was built {template_builds} time(s) during the fleet (the serial baseline's first "
        f"backend builds it on a fresh bed). The in-process Alembic lock (trackop.schema.migration._ALEMBIC_LOCK, one "
        f"migration at a time per process) was taken {taken:.0f} times and held {held:.1f} s = "
        f"**{held / wall:.0%} of the wall time**"
        + (f", {held / taken:.2f} s per migration, of which {held_cpu / taken:.2f} s CPU of the migrating thread; "
           f"handlers waited {waited:.0f} s for it in all." if taken else "."),
        f"- {connects:.0f} PostgreSQL connections opened by the reconciler (admin and login checks, "
        f"{connects / n:.1f} per backend), {connect_s:.1f} s in all ({connect_s / max(connects, 1) * 1000:.0f} ms each, "
        "SCRAM); the migration opens its own (NullPool).",
        f"- CPU during provisioning ({prov.seconds:.0f} s): operator {prov.op_cpu:.1f} s "
        f"({prov.op_cpu / prov.seconds:.2f} cores), PostgreSQL {prov.pg_cpu:.1f} s, kube-apiserver "
        f"{prov.api_cpu:.1f} s, etcd {prov.etcd_cpu:.1f} s; the machine was {busy_cores:.0%} of "
        f"{prov.cores:.0f} cores busy (other engineers' work included). Load {prov.load_before} → {prov.load_after}.",
        f"- idle: {all_checks:.0f} drift checks ({drifts:.0f} of them full reconciles) in {idle.seconds:.0f} s, "
        f"operator {idle.op_cpu:.1f} CPU s, "
        f"PostgreSQL {idle.pg_cpu:.1f} s, kube-apiserver {idle.api_cpu:.1f} s. Load {idle.load_before} → "
        f"{idle.load_after}.",
    ]
    if r["profile"]:
        total = sum(v for _, v in r["profile"])
        lines.append(f"- py-spy (50 Hz, non-idle samples of every thread, during provisioning) {total:.0f} s of "
                     f"samples against {prov.op_cpu:.0f} CPU s of the operator (py-spy itself used "
                     f"{r['spy_cpu'] or 0:.1f} CPU s): "
                     + "; ".join(f"{name} {v:.0f} s ({v / total:.0%})" for name, v in r["profile"]))
    clone = statistics.median(r["clones"])
    lines.append(f"- a clone by hand after the run, for comparison: `CREATE DATABASE ... TEMPLATE` of one of the "
                 f"fleet's databases with a new owner, then its tables, sequences and views given to that owner "
                 f"(superuser, nobody connected, an idle machine): {', '.join(f'{c:.2f}' for c in r['clones'])} s "
                 f"(median {clone:.2f} s), against {median(mig['cloned']):.2f} s per clone by the operator during "
                 f"the fleet.")
    if r["top_idle"]:
        lines.append("- the admin role's most frequent statements over the whole run (pg_stat_statements): "
                     + "; ".join(f"{c:.0f}× `{q_[:90]}`" for q_, c in r["top_idle"][:4]))
    print()
    print(table)
    print()
    print("\n".join(ratios))
    print("\n".join(lines))
    print(f"Events while provisioning, by reason: {dict(r['events_by_reason'])}; while idle: {dict(r['idle_events'])}")
    print(f"logs: {r['log_dir']}")
    venv_line, rerun_venv = describe_venv(args, r)
    rerun = rerun_command(args, n, rerun_venv)
    print(f"rerun: {rerun}")
    if args.no_write:
        return
    mach = machine()
    heading = HEADING.replace("N backends", f"{n} backends")
    if args.operator_env:  # not the same setup as the plain runs: a section of its own
        heading += ", operator environment " + ", ".join(f"`{k}={v}`" for k, v in args.operator_env)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    this_run = (f"- run {stamp}: all Ready {wall:.1f} s, peak RSS {peak:.0f} MB, idle CPU {idle_cpu:.2%}, "
                f"idle Events {idle.events}, serial-baseline ratio {wall / (single * n):.2f}"
                + (f", kopf-empty ratio {wall / base['wall']:.1f}" if base else "")
                + f"; load {r['load_start']} at the start, {prov.load_after} after provisioning"
                + f"; operator in {'the test virtualenv .venv' if r['venv'] == ROOT / '.venv' else 'the image-like virtualenv'}"
                + (f"; operator and baseline with {extra_env(args)}" if args.operator_env else "")
                + ("; py-spy recording" if r["py_spy"] else ""))
    earlier = []
    if args.results.exists():
        old = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", args.results.read_text(), re.S | re.M)
        if old:
            earlier = [line for line in old.group(1).splitlines() if line.startswith("- run ")]
    history = "\n".join([this_run, *earlier])
    section = f"""{heading}

{n} TrackingBackends (external PostgreSQL {r['pg_version']}, `sslMode: disable`, `adminSecretRef: pg-admin`,
a non-superuser admin with CREATEDB CREATEROLE; Inline migration, the default: new databases cloned from
the server's template database) created at once by
8 client threads, round-robin over {args.namespaces} namespaces, on the benchmark's own bed
(kube-apiserver v1.35.4). The operator is one `trackop run --all-namespaces --metrics-address ...`
process (as tests/kit.py starts it, no webhook), drift interval {DRIFT_INTERVAL:.0f} s and full-check interval
{FULL_CHECK_INTERVAL:.0f} s (the defaults), started through bench/fleet_operator.py, which only adds timing hooks
on /metrics (the in-process Alembic lock, which the template build no longer takes: it migrates in a child
process; PostgreSQL connects). {venv_line} "Ready" is the last Ready=True delivered by one cluster-wide watch.
Idle: the {idle.seconds:.0f} s after all were Ready and {args.settle:g} s more. PostgreSQL statements from
`pg_stat_statements` (the superuser's own left out); API requests from the API server's
`apiserver_request_total`, less its background rate measured before any operator ran
({sum(r['background'].values()):.2f}/s: kube-controller-manager) and less this script's own requests
(creates, its watch, the /metrics scrapes); the migration's own connections are PostgreSQL sessions.
Operator code: commit {r.get('code', '(not recorded)')}.
Load average (1/5/15 min) at the start {r['load_start']}, after provisioning {prov.load_after}, at the
end {r['load_end']}.

{table}

Runs of this size, newest first (the table and the text below are the newest):

{history}

Baselines, in the same run:

{chr(10).join(ratios)}

Where the time and CPU go:

{chr(10).join(lines)}

Events while provisioning, by reason: {", ".join(f"{k} {v}" for k, v in sorted(r['events_by_reason'].items()))};
while idle: {", ".join(f"{k} {v}" for k, v in sorted(r['idle_events'].items())) or "none"}.

Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']} RAM, Linux {mach['kernel']},
Python {mach['python']} (the driver), {r['venv_python']} (the operator).
Measured {stamp}.

Rerun (from the repository root; starts its own bed in `--dir` and stops it at the end):

```sh
{rerun}
```
"""
    write_section(args.results, heading, section)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
