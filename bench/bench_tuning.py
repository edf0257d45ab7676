"""Tuning: MLflow metric-logging throughput, 16 concurrent clients through the tracking server.

On the test bed (control plane + PostgreSQL), one operator process this script starts
(``trackop.cli run --namespace <its own namespace>``, as bench_ready.py does) reconciles two or
three TrackingBackends in a fresh namespace, with a non-superuser admin role (CREATEDB CREATEROLE)
and its Secret ``pg-admin``:

  U (untuned): ``spec.server: {port, workers: 1}``, and ``spec.postgres.tuning.pool: {size: 5,
      maxOverflow: 10}`` only, which is what MLflow does without trackop: with
      MLFLOW_SQLALCHEMYSTORE_POOL_SIZE/MAX_OVERFLOW unset, MLflow 3.17 passes neither to
      ``sqlalchemy.create_engine`` and SQLAlchemy's QueuePool defaults (5, 10) apply. Without
      a tuning block trackop would set its own default, 2/3 (``--untuned-pool trackop``).
      No database setting, no connection limit.
  T (tuned): ``spec.server: {port, workers: --tuned-workers}`` and ``spec.postgres.tuning:
      {workMem, pool: {size, maxOverflow}, maxConnections}``; defaults picked after exploring:
      2 workers (one uvicorn worker is held to one core by the GIL), pool 16/1 in each (one
      connection per client, however the clients' keep-alive connections are split between the
      workers, so the pool never opens and closes overflow connections; maxOverflow 0 would
      mean SQLAlchemy's 10 in MLflow), workMem 16MB, maxConnections = the connection budget
      rounded up to 8 (2 workers x 2 engines x 17 + 4 = 72).
  Tb (the issue's suggestion, unless --no-brief-variant): 2 workers, workMem 16MB, pool 4/4.

All tracking servers run from the backends' own Deployments through the local kubelet
(``LocalKubelet.start_deployment``), each on its own loopback port, at the same time; the
benchmark waits for /health and for every backend Ready.

Load: 16 client *processes* (multiprocessing, spawn), started once and kept for every round
(MLflow's import costs each of them seconds of CPU: that stays out of the windows). Each has
``MlflowClient("http://127.0.0.1:<port>")`` and one run per backend (created, and one warm-up
metric logged, before the first round), and calls ``log_metric`` (one metric per call,
increasing step) in a loop for ``--duration`` seconds from a common start time.
Counted: calls that succeeded and completed inside the window (metrics/s = that / duration),
exceptions (the client runs with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0, so a failed request is
an error instead of minutes of back-off inside a latency), and each call's latency.
Rounds are interleaved U, T, Tb, U, T, Tb, ... (``-n`` of each); reported: the median throughput
of each, the ratios T/U and Tb/U, errors, pooled p50/p99 latency, and where the CPU went in each window
(server process tree, the whole PostgreSQL server incl. exited backends via the postmaster's
cutime, the 16 clients' getrusage, the machine from /proc/stat) and new PostgreSQL sessions
(pg_stat_database.sessions: the pool's overflow churn). Rows in ``metrics`` are counted
before and after each round as a check of the client-side count.

Cleanup: servers stopped (RunningPod.stop()), backends deleted (deletionPolicy Delete), their
databases and roles and the admin role dropped as the superuser (IF EXISTS), the namespace
deleted, the operator stopped.

    .venv/bin/python bench/bench_tuning.py [--testbed /tmp/bed1/testbed.json] [-n 2] [--duration 20]

Prints a table and writes the section "Tuning: metric-logging throughput" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ready as br  # noqa: E402  (Postgres, Operator, Cluster, machine, other_operators)
from kubernetes import client  # noqa: E402
from psycopg import sql  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from benchlib import free_port, machine, write_section  # noqa: E402

HEADING = "## Tuning: metric-logging throughput, 16 clients through the tracking server"
GROUP, VERSION, PLURAL = br.GROUP, br.VERSION, br.PLURAL
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- clients


def client_worker(conn, index: int) -> None:
    """One client process: commands from the parent over ``conn``.

    ("prepare", port) -> create a run on that server and log one warm-up metric; replies "ready".
    ("go", port, start_at, end_at) -> log_metric in a loop in [start_at, end_at); replies stats.
    None -> exit.
    """
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # a failed request is an error, not a back-off
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    import random
    import resource

    from mlflow.tracking import MlflowClient

    clients: dict[int, tuple[object, str]] = {}
    step = 0
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        if cmd[0] == "prepare":
            port = cmd[1]
            try:
                mc = MlflowClient(f"http://127.0.0.1:{port}")
                run = mc.create_run("0", run_name=f"bench-client-{index}")
                mc.log_metric(run.info.run_id, "warmup", 0.0, step=0)
                clients[port] = (mc, run.info.run_id)
                conn.send(("ready", None))
            except Exception as exc:  # reported to the parent, which stops
                conn.send(("failed", f"{type(exc).__name__}: {exc}"[:500]))
            continue
        _, port, start_at, end_at = cmd
        mc, run_id = clients[port]
        ok, late, errors, first_error, latencies = 0, 0, 0, "", []
        while time.time() < start_at:
            time.sleep(min(0.005, max(0.0, start_at - time.time())))
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        while time.time() < end_at:
            step += 1
            t0 = time.perf_counter()
            try:
                mc.log_metric(run_id, "loss", random.random(), step=step)
                good = True
            except Exception as exc:
                good = False
                if not first_error:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
            t1 = time.perf_counter()
            if time.time() > end_at:  # finished after the window closed: not counted
                late += 1
                continue
            if good:
                ok += 1
                latencies.append(t1 - t0)
            else:
                errors += 1
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        conn.send(("done", {"ok": ok, "late": late, "errors": errors, "first_error": first_error,
                            "latencies": latencies, "cpu": cpu}))


class ClientPool:
    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")  # no fork of a process holding API clients and threads
        self.conns = []
        self.procs = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_worker, args=(child, i), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def prepare(self, port: int, timeout: float = 300) -> None:
        for c in self.conns:
            c.send(("prepare", port))
        for c in self.conns:
            if not c.poll(timeout):
                raise SystemExit(f"a client did not get ready on port {port} in {timeout:.0f} s")
            state, detail = c.recv()
            if state != "ready":
                raise SystemExit(f"a client failed to prepare on port {port}: {detail}")

    def go(self, port: int, start_at: float, end_at: float) -> None:
        for c in self.conns:
            c.send(("go", port, start_at, end_at))

    def collect(self, timeout: float) -> list[dict]:
        out = []
        for c in self.conns:
            if not c.poll(timeout):
                raise SystemExit("a client did not report after its window")
            out.append(c.recv()[1])
        return out

    def stop(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)


# ---------------------------------------------------------------------------- CPU accounting


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own utime+stime, reaped children's cutime+cstime) in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is state (field 3): ppid is field 4, utime..cstime fields 14..17
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, plus what it reaped (its cutime/cstime).

    Children that exit and are reaped by ``root`` (PostgreSQL backends, by the postmaster) stay
    counted through the parent's cutime, so a delta over a window includes short-lived ones.
    """
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                stats[int(entry.name)] = st
                children.setdefault(st[0], []).append(int(entry.name))
    if root not in stats:
        return 0.0
    ticks = stats[root][2]  # the root's reaped children (descendants' reaped ones are in theirs)
    todo = [root]
    while todo:
        pid = todo.pop()
        ticks += stats[pid][1]
        if pid != root:
            ticks += stats[pid][2]
        todo.extend(children.get(pid, []))
    return ticks / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals[:8]) - idle) / CLK_TCK, sum(vals[:8]) / CLK_TCK


# ---------------------------------------------------------------------------- backends


@dataclass
class Backend:
    label: str  # "U" or "T"
    name: str
    port: int
    workers: int
    tuning: dict | None
    database: str = ""
    role: str = ""
    server: object = None  # RunningPod
    pool_env: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    db_settings: list = field(default_factory=list)
    conn_limit: int | None = None
    tuning_applied: str = ""

    def spec_text(self) -> str:
        server = f"`server: {{port: <free>, workers: {self.workers}}}`"
        if self.tuning is None:
            return f"{server}, no `tuning`"
        return f"{server}, `tuning: {json.dumps(self.tuning, separators=(', ', ': ')).replace(chr(34), '')}`"


def body(b: Backend, pg: dict) -> dict:
    postgres = {"external": {"host": pg["host"], "port": int(pg["port"]), "sslMode": "disable",
                             "adminSecretRef": {"name": "pg-admin"}}}
    if b.tuning is not None:
        postgres["tuning"] = b.tuning
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend", "metadata": {"name": b.name},
            "spec": {"postgres": postgres, "server": {"port": b.port, "workers": b.workers},
                     "deletionPolicy": "Delete"}}


def wait_for(what: str, check, timeout: float = 120, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def healthy(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


# ---------------------------------------------------------------------------- rounds


@dataclass
class Round:
    label: str
    seconds: float
    ok: int
    errors: int
    late: int
    first_error: str
    latencies: list[float]
    server_cpu: float
    pg_cpu: float
    client_cpu: float
    machine_cpu: float
    sessions: int
    rows: int

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_round(b: Backend, clients: ClientPool, pg: br.Postgres, postmaster: int, duration: float) -> Round:
    def rows() -> int:
        with pg.connect(b.database) as conn:
            return conn.execute("SELECT count(*) FROM metrics").fetchone()[0]

    # Sessions are read from the postgres database, so these reads do not count themselves.
    # Backends flush their statistics at most once a second: the count lags by about that.
    with pg.connect() as stats:
        def sessions() -> int:
            stats.execute("SELECT pg_stat_clear_snapshot()")
            return stats.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                                 (b.database,)).fetchone()[0]

        rows0 = rows()
        start_at = time.time() + 1.0
        end_at = start_at + duration
        clients.go(b.port, start_at, end_at)
        while time.time() < start_at:
            time.sleep(0.002)
        s0, p0, m0 = tree_cpu(b.server.process.pid), tree_cpu(postmaster), machine_busy()
        sess0 = sessions()
        while time.time() < end_at:
            time.sleep(0.002)
        s1, p1, m1 = tree_cpu(b.server.process.pid), tree_cpu(postmaster), machine_busy()
        sess1 = sessions()
    results = clients.collect(timeout=180)
    time.sleep(0.5)
    rows1 = rows()
    return Round(
        label=b.label, seconds=duration,
        ok=sum(r["ok"] for r in results), errors=sum(r["errors"] for r in results),
        late=sum(r["late"] for r in results),
        first_error=next((r["first_error"] for r in results if r["first_error"]), ""),
        latencies=[x for r in results for x in r["latencies"]],
        server_cpu=s1 - s0, pg_cpu=p1 - p0, client_cpu=sum(r["cpu"] for r in results),
        machine_cpu=m1[0] - m0[0], sessions=sess1 - sess0, rows=rows1 - rows0,
    )


# ---------------------------------------------------------------------------- results


def ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:.0f} ms" if x >= 0.0095 else f"{x * 1000:.1f} ms"


def tuned_spec(workers: int, size: int, overflow: int, work_mem: str, max_connections: int | None) -> dict:
    """A tuning block with maxConnections = the connection budget rounded up to 8, unless given."""
    per_engine = size + (overflow or 10)  # MLflow drops a maxOverflow of 0: SQLAlchemy's 10 applies
    budget = workers * 2 * per_engine + 4  # 2 engines per worker, + migration 2 + operator 2
    return {"workMem": work_mem, "pool": {"size": size, "maxOverflow": overflow},
            "maxConnections": max_connections or -(-budget // 8) * 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", type=Path, default=Path("/tmp/bed1/testbed.json"))
    parser.add_argument("-n", type=int, default=2, help="rounds of each backend, interleaved U, T, ... (default 2)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per round (default 20)")
    parser.add_argument("--clients", type=int, default=16, help="client processes (default 16)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of load on each backend before the measured rounds, discarded (default 5): "
                             "fills the pools and warms the servers")
    parser.add_argument("--untuned-pool", choices=("mlflow", "trackop"), default="mlflow",
                        help="U's pool: mlflow = tuning.pool {size: 5, maxOverflow: 10}, SQLAlchemy's defaults, "
                             "which MLflow uses when not told otherwise (default); trackop = no tuning block, "
                             "so trackop's default 2/3")
    parser.add_argument("--tuned-workers", type=int, default=2)
    parser.add_argument("--tuned-pool-size", type=int, default=16,
                        help="default 16: one connection per client in each worker")
    parser.add_argument("--tuned-max-overflow", type=int, default=1, help="default 1 (0 would mean 10 in MLflow)")
    parser.add_argument("--tuned-work-mem", default="16MB")
    parser.add_argument("--tuned-max-connections", type=int, default=None,
                        help="default: the connection budget (workers x 2 engines x pool, + 4), rounded up to 8")
    parser.add_argument("--no-brief-variant", action="store_true",
                        help="leave out Tb, the issue's suggested tuning (2 workers, workMem 16MB, pool 4/4)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    info = json.loads(args.testbed.read_text())
    pg = br.Postgres(info["postgres"])
    cluster = br.Cluster(info["kubeconfig"], info["postgres"])
    log_dir = Path(tempfile.mkdtemp(prefix="trackop-bench-tuning-"))
    operator = br.Operator(info["kubeconfig"], log_dir / "operator.log", ["--namespace", cluster.namespace])
    others_before = br.other_operators()
    for pid, cmd in others_before:
        print(f"warning: another trackop operator runs (pid {pid}): {cmd}", flush=True)

    suffix = uuid.uuid4().hex[:6]
    variants = [("U", "untuned", 1, {"pool": {"size": 5, "maxOverflow": 10}} if args.untuned_pool == "mlflow" else None),
                ("T", "tuned", args.tuned_workers,
                 tuned_spec(args.tuned_workers, args.tuned_pool_size, args.tuned_max_overflow, args.tuned_work_mem,
                            args.tuned_max_connections))]
    if not args.no_brief_variant:
        variants.append(("Tb", "tuned-b", 2, tuned_spec(2, 4, 4, "16MB", None)))
    ports: list[int] = []
    while len(ports) < len(variants):
        port = free_port()
        if port not in ports:
            ports.append(port)
    backends = [Backend(label, f"{prefix}-{suffix}", port, workers, tun)
                for (label, prefix, workers, tun), port in zip(variants, ports)]

    from trackop_testbed.kubelet import LocalKubelet

    kubelet = LocalKubelet(cluster.api, workdir=log_dir / "kubelet")
    apps = client.AppsV1Api(cluster.api)
    rounds: list[Round] = []
    problems: list[str] = []
    clients: ClientPool | None = None
    namespace_made = False
    load_before = os.getloadavg()
    try:
        admin_user, admin_password = pg.admin_role()
        cluster.setup(admin_user, admin_password)
        namespace_made = True
        operator.start(settle=1.0)
        print(f"namespace {cluster.namespace}, admin role {admin_user}, operator pid {operator.process.pid}; "
              f"logs in {log_dir}", flush=True)
        clients = ClientPool(args.clients)  # imports MLflow in the background while the backends converge

        for b in backends:
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL,
                                                           body(b, info["postgres"]))
            cluster.backends.append(b.name)
        for b in backends:
            def deployment(b=b):
                try:
                    return apps.read_namespaced_deployment(f"{b.name}-mlflow", cluster.namespace)
                except client.ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise
            dep = wait_for(f"Deployment {b.name}-mlflow", deployment)
            b.pool_env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env
                          if e.name.startswith("MLFLOW_SQLALCHEMYSTORE")}
            b.server = kubelet.start_deployment(cluster.namespace, f"{b.name}-mlflow")
            print(f"{b.label}: {b.name}, server pid {b.server.process.pid} on :{b.port} "
                  f"({b.workers} worker(s), {b.pool_env})", flush=True)
        for b in backends:
            def up(b=b):
                if not b.server.alive():
                    raise SystemExit(f"{b.name}'s server exited:\n{b.server.logs()[-3000:]}")
                return healthy(b.port)
            wait_for(f"{b.name}'s /health", up, timeout=120, interval=0.5)
        for b in backends:
            def ready(b=b):
                obj = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, b.name)
                return obj if condition(obj, "Ready").get("status") == "True" else None
            obj = wait_for(f"{b.name} Ready", ready)
            db = obj["status"].get("database") or {}
            b.database, b.role = db.get("name", ""), db.get("role", "")
            pg.databases.append(b.database)
            pg.roles.insert(1, b.role)  # dropped before the admin role that made it
            b.budget = obj["status"].get("connectionBudget") or {}
            applied = condition(obj, "TuningApplied")
            b.tuning_applied = (f"{applied.get('status')} {applied.get('reason')}: {applied.get('message')}"
                                if applied else "none")
            with pg.connect() as conn:
                b.conn_limit = conn.execute("SELECT datconnlimit FROM pg_database WHERE datname = %s",
                                            (b.database,)).fetchone()[0]
                b.db_settings = [r[0] for r in conn.execute(
                    "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                    "WHERE d.datname = %s AND s.setrole = 0", (b.database,)).fetchall()]
            print(f"{b.label} Ready: database {b.database}, budget {b.budget}, connection limit {b.conn_limit}, "
                  f"database settings {b.db_settings or 'none'}; TuningApplied {b.tuning_applied}", flush=True)

        with pg.connect() as conn:
            postmaster = _stat(conn.execute("SELECT pg_backend_pid()").fetchone()[0])[0]  # a backend's parent
            pg_version = str(conn.execute("SHOW server_version").fetchone()[0])
            pg_notes = {k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone()[0]
                        for k in ("max_connections", "fsync", "synchronous_commit", "shared_buffers", "work_mem")}

        started = time.perf_counter()
        for b in backends:
            clients.prepare(b.port)
        print(f"{args.clients} clients ready (runs created, one warm-up metric each) "
              f"{time.perf_counter() - started:.1f} s after the backends were Ready", flush=True)

        for b in backends:
            r = run_round(b, clients, pg, postmaster, args.warmup)
            print(f"warm-up {b.label}: {r.rate:.1f} metrics/s, {r.errors} errors (discarded)", flush=True)
        order = [b for _ in range(args.n) for b in backends]
        for i, b in enumerate(order):
            r = run_round(b, clients, pg, postmaster, args.duration)
            rounds.append(r)
            print(f"round {i + 1} {b.label}: {r.rate:.1f} metrics/s ({r.ok} ok, {r.errors} errors, {r.late} late), "
                  f"p50 {ms(pct(r.latencies, 0.5))} p99 {ms(pct(r.latencies, 0.99))}; CPU s: server "
                  f"{r.server_cpu:.1f}, postgres {r.pg_cpu:.1f}, clients {r.client_cpu:.1f}, machine "
                  f"{r.machine_cpu:.1f} of {args.duration * len(os.sched_getaffinity(0)):.0f}; "
                  f"new PG sessions {r.sessions}; rows +{r.rows}", flush=True)
            if r.first_error:
                print(f"  first error: {r.first_error}", flush=True)
            if r.rows < r.ok:
                problems.append(f"round {i + 1}: {r.rows} metric rows written but {r.ok} calls counted")
        load_after = os.getloadavg()
        others_during = [o for o in br.other_operators(operator.process.pid)]
    finally:
        if clients is not None:
            clients.stop()
        for b in backends:
            if b.server is not None:
                b.server.stop()
        if cluster.backends:
            problems += cluster.delete_backends()
        operator.stop()
        problems += pg.drop_all()
        if namespace_made:
            problems += cluster.delete_namespace()
    for p in problems:
        print(f"warning: {p}", flush=True)

    ncpu = len(os.sched_getaffinity(0))
    by = {b.label: [r for r in rounds if r.label == b.label] for b in backends}
    med = {lab: statistics.median(r.rate for r in rs) for lab, rs in by.items()}
    ratio = med["T"] / med["U"]

    def per_metric(label: str, attr: str) -> float:  # ms of CPU per logged metric
        rs = by[label]
        return 1000 * sum(getattr(r, attr) for r in rs) / sum(r.ok for r in rs)

    def total(label: str) -> float:  # ms of CPU per logged metric in server, PostgreSQL and clients
        return sum(per_metric(label, a) for a in ("server_cpu", "pg_cpu", "client_cpu"))

    def cores(label: str, attr: str) -> float:
        return statistics.mean(getattr(r, attr) / r.seconds for r in by[label])

    def other(label: str) -> float:  # cores used by everything else on the machine
        return statistics.mean((r.machine_cpu - r.server_cpu - r.pg_cpu - r.client_cpu) / r.seconds
                               for r in by[label])

    def sessions(label: str) -> float:
        return statistics.mean(r.sessions / r.seconds for r in by[label])

    lines = [
        "| backend | spec | metrics/s per round (in order) | median metrics/s | errors | p50 | p99 "
        "| CPU ms per metric: server / PostgreSQL / clients | cores used: server / PostgreSQL / clients / rest of machine "
        "| new PG sessions/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in backends:
        rs = by[b.label]
        lat = [x for r in rs for x in r.latencies]
        lines.append(
            f"| {b.label} | {b.spec_text()} | {', '.join(f'{r.rate:.1f}' for r in rs)} | **{med[b.label]:.1f}** "
            f"| {sum(r.errors for r in rs)} | {ms(pct(lat, 0.5))} | {ms(pct(lat, 0.99))} "
            f"| {per_metric(b.label, 'server_cpu'):.1f} / {per_metric(b.label, 'pg_cpu'):.1f} / "
            f"{per_metric(b.label, 'client_cpu'):.1f} "
            f"| {cores(b.label, 'server_cpu'):.2f} / {cores(b.label, 'pg_cpu'):.2f} / {cores(b.label, 'client_cpu'):.2f}"
            f" / {other(b.label):.2f} | {sessions(b.label):.1f} |")
    table = "\n".join(lines)
    summary = f"Ratio T/U of median throughput: **{ratio:.2f}** ({med['T']:.1f} / {med['U']:.1f} metrics/s)"
    if "Tb" in med:
        summary += f"; Tb/U: **{med['Tb'] / med['U']:.2f}** ({med['Tb']:.1f} / {med['U']:.1f})"
    summary += ". CPU per logged metric (server + PostgreSQL + clients, less sensitive to the other work): " + \
        ", ".join(f"{b.label} {total(b.label):.1f} ms" for b in backends) + \
        f" (U/T {total('U') / total('T'):.2f}" + (f", U/Tb {total('U') / total('Tb'):.2f}" if "Tb" in med else "") + ")."
    print()
    print(table)
    print(summary)
    for b in backends:
        print(f"{b.label}: pool env {b.pool_env}; budget {b.budget}; connection limit {b.conn_limit}; "
              f"database settings {b.db_settings or 'none'}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; PostgreSQL {pg_notes}")
    if args.no_write:
        return

    m = machine()
    versions = {pkg: importlib.metadata.version(pkg)
                for pkg in ("mlflow", "SQLAlchemy", "psycopg", "uvicorn", "fastapi", "kopf")}
    u, t = backends[0], backends[1]
    cmd = f".venv/bin/python bench/bench_tuning.py --testbed {args.testbed} -n {args.n} --duration {args.duration:g}"
    defaults = {"clients": 16, "warmup": 5.0, "untuned_pool": "mlflow", "tuned_workers": 2, "tuned_pool_size": 16,
                "tuned_max_overflow": 1, "tuned_work_mem": "16MB", "tuned_max_connections": None}
    for key, default in defaults.items():
        if getattr(args, key) != default:
            cmd += f" --{key.replace('_', '-')} {getattr(args, key):g}" if isinstance(default, float) else \
                f" --{key.replace('_', '-')} {getattr(args, key)}"
    if args.no_brief_variant:
        cmd += " --no-brief-variant"

    tb = next((b for b in backends if b.label == "Tb"), None)

    def describe(b: Backend) -> str:
        return (f"pool env in the Deployment {b.pool_env}; database settings "
                f"{', '.join(b.db_settings) or 'none'}; connection limit {b.conn_limit}; connection budget "
                f"{b.budget.get('required')} of {b.budget.get('limit')}")

    u_note = ("That is MLflow's own default: without MLFLOW_SQLALCHEMYSTORE_POOL_SIZE/MAX_OVERFLOW, "
              "MLflow 3.17 passes neither to `create_engine`, so SQLAlchemy's QueuePool defaults (5, 10) "
              "apply; trackop always sets those variables (2/3 without a tuning block), so giving "
              "5/10 is how to get MLflow's behaviour, and the block holds nothing else (no database "
              "setting, no connection limit: TuningApplied says \"no settings\")."
              if u.tuning else "No tuning block: trackop's default pool 2/3, not MLflow's 5/10.")
    tb_line = (f"\n- **Tb** (the issue's suggestion): {tb.spec_text()}; {describe(tb)}." if tb else "")

    def spread_note(label: str) -> str:
        a, b = [r.rate for r in by["U"]], [r.rate for r in by[label]]
        if len(a) < 2:
            return "not comparable with (one round each)"
        overlap = min(a) <= max(b) and min(b) <= max(a)
        return "within" if overlap else "outside"

    def busy(label: str) -> float:
        return statistics.mean(r.machine_cpu / (r.seconds * ncpu) for r in by[label])

    rest = [(r.machine_cpu - r.server_cpu - r.pg_cpu - r.client_cpu) / r.seconds for r in rounds]
    u_srv = cores("U", "server_cpu")
    bottleneck = (
        f"With servers, clients and PostgreSQL on {ncpu} CPUs, a logged metric cost U {total('U'):.1f} ms of CPU, "
        f"{per_metric('U', 'server_cpu'):.1f} ms of it in the tracking server's Python (uvicorn, Flask, "
        f"SQLAlchemy ORM), {per_metric('U', 'client_cpu'):.1f} ms in the clients and "
        f"{per_metric('U', 'pg_cpu'):.1f} ms in PostgreSQL, and U's single worker ran at {u_srv:.2f} cores, "
        f"{'close to' if u_srv >= 0.8 else 'below'} the one core its GIL allows, with the machine "
        f"{busy('U'):.0%} busy: the bottleneck is the server's Python, first that one-core cap and then the "
        f"machine's CPUs, not PostgreSQL (single-row inserts never use work_mem, and commits do not flush here).")
    churn = "ends" if sessions("T") < 1 else "reduces"
    effect = (
        f"T {f'lifts the cap with {t.workers} workers' if t.workers > 1 else 'keeps one worker'} (server {u_srv:.2f} → {cores('T', 'server_cpu'):.2f} "
        f"cores, machine {busy('T'):.0%} busy) and its pool {churn} the overflow churn of U's "
        f"{u.pool_env.get('MLFLOW_SQLALCHEMYSTORE_POOL_SIZE')}/{u.pool_env.get('MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW')} "
        f"under {args.clients} concurrent requests ({sessions('U'):.1f} → {sessions('T'):.1f} new sessions/s, "
        f"each a backend fork and a SCRAM handshake; PostgreSQL {per_metric('U', 'pg_cpu'):.1f} → "
        f"{per_metric('T', 'pg_cpu'):.1f} ms, all {total('U'):.1f} → {total('T'):.1f} ms per metric)")
    if tb:
        effect += (f", while Tb has the second worker ({cores('Tb', 'server_cpu'):.2f} cores) but its 4/4 pool "
                   f"still churns ({sessions('Tb'):.1f} new sessions/s, {total('Tb'):.1f} ms per metric)")
    effect += (f"; T/U {ratio:.2f} is {spread_note('T')} the round-to-round spread"
               + (f" and Tb/U {med['Tb'] / med['U']:.2f} {spread_note('Tb').split(' ')[0]} it" if tb else "")
               + f", which comes from other work on the machine ({min(rest):.2f}-{max(rest):.2f} cores).")
    others_note = (f"\nOther work ran on the machine during the run (the \"rest of machine\" column; load average "
                   f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, including this benchmark's own "
                   f"processes){f'; {len(others_during)} other trackop operator process(es) on the machine' if others_during else ''}, "
                   "so single rounds vary; the rounds are interleaved so that it hits every backend alike.")
    section = f"""{HEADING}

{args.clients} client processes, each `MlflowClient("http://127.0.0.1:<port>")` with one run per
backend, call `log_metric` (one metric per call) in a loop for {args.duration:g} s from a common
start; rounds interleaved {", ".join(r.label for r in rounds)} ({args.n} of each), one script, one run,
all servers up throughout. Counted: calls that succeeded and returned inside the window
(metrics/s = count / {args.duration:g} s, checked against the rows added to `metrics`); errors,
with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 so that a failed request counts instead of hiding in
a back-off; latency per call, pooled over a backend's rounds. The clients had imported
MLflow, created their runs and put {args.warmup:g} s of load on each server (discarded)
before the first window.
The TrackingBackends (external PostgreSQL, a non-superuser admin with CREATEDB CREATEROLE)
were reconciled by the benchmark's own operator (`trackop.cli run --namespace <its
namespace>`); each tracking server is `mlflow server` (uvicorn) run from the backend's
Deployment by the local kubelet, on its own loopback port.

- **U** (untuned): {u.spec_text()}; {describe(u)}. {u_note} One worker as the issue asks
  (MLflow's CLI defaults to 4, trackop to 2).
- **T** (tuned, picked after exploring): {t.spec_text()}; {describe(t)}.
  Each worker's pool has one connection per client, so no request opens a connection however
  uvicorn splits the clients' keep-alive connections between the workers; maxOverflow 1
  because MLflow turns 0 into SQLAlchemy's 10. maxConnections is the budget this implies.{tb_line}

{table}

{summary}

CPU columns: the server's process tree (uvicorn and its workers), the whole PostgreSQL server
(live backends and the ones the postmaster reaped during the window), the 16 clients'
getrusage, and the rest of /proc/stat's busy time; per metric = CPU seconds / metrics logged.
New PG sessions: `pg_stat_database.sessions` of the backend's database (flushed by backends
at most once a second, so approximate). The bed's PostgreSQL {pg_version} runs with
fsync={pg_notes['fsync']}, synchronous_commit={pg_notes['synchronous_commit']}, shared_buffers {pg_notes['shared_buffers']}.{others_note}

{bottleneck}
{effect}

Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, Python {m['python']};
{", ".join(f"{k} {v}" for k, v in versions.items())}. Measured {time.strftime("%Y-%m-%d")}.

Rerun (from the repository root, with a running bed that has the CRD installed):

```sh
{cmd}
```
"""
    write_section(args.results, HEADING, section)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
