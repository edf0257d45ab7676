"""What the benchmarks share: the machine's description, a loopback port, a timed
`mlflow db upgrade`, writing one benchmark's section of RESULTS.md, a bed of their own and
stopping the operators they start."""

from __future__ import annotations

import json
import secrets
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(mlflow: Path, url: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``mlflow db upgrade url``."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(mlflow), "db", "upgrade", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr.read()  # drain before waiting, so a chatty child cannot block
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    if proc.returncode != 0:
        raise SystemExit(f"mlflow db upgrade failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section under ``heading`` in RESULTS.md (or append it), leaving others alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ---- the bed, from a benchmark script ----

def trackop_bin() -> str:
    return str(Path(sys.executable).parent / "trackop")


def bed_up(directory: Path) -> dict:
    started = time.perf_counter()
    out = subprocess.run([trackop_bin(), "testbed", "up", "--dir", str(directory)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    info_path = Path(json.loads(out.strip().splitlines()[-1])["testbed"])
    print(f"bed up in {time.perf_counter() - started:.1f} s: {info_path}", flush=True)
    return json.loads(info_path.read_text())


def bed_down(directory: Path) -> str | None:
    proc = subprocess.run([trackop_bin(), "testbed", "down", "--dir", str(directory)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return None if proc.returncode == 0 else f"testbed down: {proc.returncode}: {proc.stdout[-1000:]}"


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 30 s: how the benchmarks stop the operators they started."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- the bed's PostgreSQL, as the superuser ----

class Postgres:
    """The bed's PostgreSQL as the superuser; remembers what it made, to drop it at the end."""

    def __init__(self, pg: dict) -> None:
        self.admin = {"host": pg["host"], "port": int(pg["port"]), "user": pg["user"], "password": pg["password"]}
        self.databases: list[str] = []
        self.roles: list[str] = []

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(**self.admin, dbname=dbname, autocommit=True)

    def admin_role(self) -> tuple[str, str]:
        """A platform admin as trackop expects one: not a superuser, CREATEDB CREATEROLE."""
        user, password = f"adm_bench_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CREATEDB CREATEROLE").format(
                sql.Identifier(user), sql.Literal(password)))
        self.roles.append(user)
        return user, password

    def fresh_database(self) -> tuple[str, str]:
        """A new role and an empty database it owns; returns (database name, URL)."""
        suffix = uuid.uuid4().hex[:10]
        role = name = f"bench_rdy_{suffix}"
        password = secrets.token_urlsafe(18)
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            self.roles.append(role)
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
            self.databases.append(name)
        url = (f"postgresql+psycopg://{role}:{quote(password, safe='')}"
               f"@{self.admin['host']}:{self.admin['port']}/{name}?sslmode=disable")
        return name, url

    def revision(self, name: str) -> str | None:
        with self.connect(name) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None

    def server_version(self) -> str:
        with self.connect() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def drop_all(self) -> list[str]:
        """Drop every database, then every role, this run made (or the operator made for it)."""
        problems = []
        with self.connect() as conn:
            for name in dict.fromkeys(self.databases):
                try:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                except psycopg.Error as exc:
                    problems.append(f"database {name}: {exc}")
            # Admin role last: it made the backends' roles (CREATEROLE).
            for role in reversed(list(dict.fromkeys(self.roles))):
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except psycopg.Error as exc:
                    problems.append(f"role {role}: {exc}")
        return problems
