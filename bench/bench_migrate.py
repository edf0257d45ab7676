"""Schema migration: in-process ``trackop.schema.migration.migrate`` vs the ``mlflow db upgrade`` CLI.

On the bed's PostgreSQL, N fresh empty databases each (owned by a fresh role, as trackop
provisions them):
  (a) ``mlflow db upgrade <url>`` as a subprocess: wall time, peak RSS (os.wait4 ru_maxrss);
  (b) ``migrate(url)`` in this process after one ``preload()``: wall time per call, plus
      the one-time import/preload cost and this process's peak RSS.
Prints a table and writes the section "Schema migration" of bench/RESULTS.md.

    .venv/bin/python bench/bench_migrate.py [--testbed /tmp/bed1/testbed.json] [-n 5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

# Only psycopg before the measured import: SQLAlchemy, Alembic and MLflow must load inside
# the timed import/preload of (b). (psycopg itself is also what SQLAlchemy's dialect loads.)
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
from benchlib import machine, run_cli, write_section  # noqa: E402

HEADING = "## Schema migration: in-process vs `mlflow db upgrade`"


def rss_mb() -> float:
    """Peak RSS of this process so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Bed:
    def __init__(self, testbed: Path) -> None:
        pg = json.loads(testbed.read_text())["postgres"]
        self.admin = {"host": pg["host"], "port": int(pg["port"]), "user": pg["user"], "password": pg["password"]}
        self.created: list[tuple[str, str]] = []

    def fresh_database(self) -> tuple[str, str]:
        """A new role and an empty database it owns; returns (database name, URL)."""
        suffix = uuid.uuid4().hex[:10]
        role = name = f"bench_mig_{suffix}"
        password = f"p@ss:/w%rd#?{suffix}"
        with psycopg.connect(**self.admin, dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
        self.created.append((name, role))
        url = (
            f"postgresql+psycopg://{role}:{quote(password, safe='')}"
            f"@{self.admin['host']}:{self.admin['port']}/{name}?sslmode=disable"
        )
        return name, url

    def revision(self, name: str) -> str | None:
        with psycopg.connect(**self.admin, dbname=name, autocommit=True) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None

    def server_version(self) -> str:
        with psycopg.connect(**self.admin, dbname="postgres", autocommit=True) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def drop_all(self) -> None:
        with psycopg.connect(**self.admin, dbname="postgres", autocommit=True) as conn:
            for name, role in self.created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        self.created.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", type=Path, default=Path("/tmp/bed1/testbed.json"))
    parser.add_argument("-n", type=int, default=5, help="repetitions of each (default 5)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    mlflow = Path(sys.executable).parent / "mlflow"
    bed = Bed(args.testbed)
    rss_start = rss_mb()
    try:
        # (a) the bare CLI, one fresh process per database.
        cli: list[tuple[float, float]] = []
        for i in range(args.n):
            name, url = bed.fresh_database()
            cli.append(run_cli(mlflow, url))
            head_cli = bed.revision(name)
            print(f"(a) mlflow db upgrade #{i + 1}: {cli[-1][0]:.2f} s, {cli[-1][1]:.0f} MB -> {head_cli}", flush=True)

        # (b) in-process: pay imports and script parsing once, then migrate each database.
        started = time.perf_counter()
        from trackop.schema import migration, revisions

        import_s = time.perf_counter() - started
        migration.preload()
        preload_s = time.perf_counter() - started
        rss_after_preload = rss_mb()
        heavy = sorted(m for m in ("pandas", "numpy", "pyarrow", "scipy") if m in sys.modules)
        n_modules = len(sys.modules)
        inproc: list[float] = []
        for i in range(args.n):
            name, url = bed.fresh_database()
            result = migration.migrate(url)
            assert result.before is None and result.after == revisions.head_revision() == bed.revision(name)
            inproc.append(result.seconds)
            print(f"(b) migrate #{i + 1}: {result.seconds:.2f} s -> {result.after}", flush=True)
        rss_peak = rss_mb()
        assert head_cli == revisions.head_revision()
        pg_version = bed.server_version()
    finally:
        bed.drop_all()

    med_cli = statistics.median(w for w, _ in cli)
    med_rss_cli = statistics.median(r for _, r in cli)
    med_in = statistics.median(inproc)
    ratio = med_in / med_cli
    first_ratio = (preload_s + med_in) / med_cli
    m = machine()
    versions = {
        pkg: importlib.metadata.version(pkg) for pkg in ("mlflow-skinny", "mlflow", "SQLAlchemy", "alembic", "psycopg")
    }
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    table = "\n".join([
        "| | median wall | runs (s) | peak RSS |",
        "| --- | --- | --- | --- |",
        f"| (a) `mlflow db upgrade <url>` (subprocess) | {med_cli:.2f} s | {fmt(w for w, _ in cli)} "
        f"| {med_rss_cli:.0f} MB per process (max {max(r for _, r in cli):.0f}) |",
        f"| (b) `migrate(url)` in-process, after `preload()` | {med_in:.2f} s | {fmt(inproc)} "
        f"| {rss_peak:.0f} MB for the whole process (bench baseline {rss_start:.0f} MB) |",
        f"| one-time `import trackop.schema.migration` + `preload()` | {preload_s:.2f} s | import {import_s:.2f} s "
        f"| {rss_after_preload:.0f} MB after preload |",
    ])
    summary = (
        f"Ratio (b)/(a) of medians: **{ratio:.2f}** ({med_in:.2f} s / {med_cli:.2f} s). "
        f"Counting the one-time preload into the first in-process migration: "
        f"{first_ratio:.2f}."
    )
    print()
    print(table)
    print(summary)
    if args.no_write:
        return
    heavy_note = (
        f"Note: after `preload()` this process held {n_modules} modules, including "
        f"{', '.join(heavy)}: this virtualenv also has the full `mlflow` (the test extra), and "
        "MLflow's package import loads them when present. An operator image with only "
        "`mlflow-skinny` does not have them, so its import cost and RSS are lower than (b) here "
        "(DESIGN.md: 1.1 s import, 139 MB). Both (a) and (b) pay for them alike."
        if heavy else f"After `preload()` this process held {n_modules} modules (no pandas/numpy/pyarrow)."
    )
    section = f"""{HEADING}

Fresh empty database per run (a new role owns it, as trackop provisions them), N={args.n}
each, on the test bed's PostgreSQL {pg_version}; every run ends at Alembic head
`{head_cli}`. (a) runs `.venv/bin/mlflow db upgrade <url>` as a subprocess, wall time and
peak RSS from `os.wait4`; (b) runs `trackop.schema.migration.migrate(url)` in the bench process
after a one-time `import trackop.schema.migration` + `preload()` (imports MLflow's store and Alembic,
parses the migration scripts); its time per call includes taking the advisory lock.

{table}

{summary}

{heavy_note}

Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']},
Python {m['python']}; {", ".join(f"{k} {v}" for k, v in versions.items())}.
Measured {time.strftime("%Y-%m-%d")}.

Rerun (from the repository root, with a running bed):

```sh
.venv/bin/python bench/bench_migrate.py --testbed {args.testbed} -n {args.n}
```
"""
    write_section(args.results, HEADING, section)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
