"""What the benchmarks share: the machine's description, a loopback port, a timed
`mlflow db upgrade`, writing one benchmark's section of RESULTS.md, a bed of their own,
stopping the operators they start, and a virtualenv with only what the image ships."""

from __future__ import annotations

import fcntl
import hashlib
import json
import secrets
import os
import shutil
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
    # --no-node: the benchmarks run their Pods on the stand-in kubelet (LocalKubelet) for now.
    out = subprocess.run([trackop_bin(), "testbed", "up", "--dir", str(directory), "--no-node"], check=True,
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


# ---- the image's packages, for running the operator as it ships ----

ROOT = Path(__file__).resolve().parents[1]
VENV_CACHE = Path.home() / ".cache" / "trackop"


def image_venv_key() -> str:
    """What decides the image's packages: pyproject.toml and constraints.txt (as hack/setup.sh
    keys .venv)."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def image_venv() -> Path:
    """A virtualenv holding what the image installs and nothing more: trackop without its test
    extra, its dependencies held to constraints.txt (so ``mlflow-skinny``, not the test extra's
    full ``mlflow`` with numpy, pandas, pyarrow, scipy). Cached under
    ~/.cache/trackop/bench-image-venv-KEY (KEY: pyproject.toml and constraints.txt), built
    once. Unlike the image, trackop itself is installed editable (``pip install -e``, like
    .venv), so the operator runs the working tree's src/ without a rebuild; its dependencies
    are the image's, pinned by the same file."""
    target = VENV_CACHE / f"bench-image-venv-{image_venv_key()}"
    stamp = target / ".trackop-image-venv"  # written last: a venv without it is incomplete
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    with open(VENV_CACHE / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second run waits, then reuses it
        if stamp.exists():
            return target
        started = time.perf_counter()
        shutil.rmtree(target, ignore_errors=True)
        print(f"building the image-like virtualenv {target} (once per pyproject.toml and constraints.txt)",
              flush=True)
        try:
            # The interpreter the benchmark runs on (.venv's Python; the image's is 3.11 too).
            subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(target)], check=True)
            python = str(target / "bin" / "python")
            pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
            # As the Dockerfile's builder stage: the pins first, then trackop against the same pins.
            subprocess.run([*pip, "--no-deps", "--requirement", str(ROOT / "constraints.txt")], check=True, cwd=ROOT)
            subprocess.run([*pip, "--constraint", str(ROOT / "constraints.txt"), "--editable", str(ROOT)],
                           check=True, cwd=ROOT)
            subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "check"], check=True)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        stamp.write_text(image_venv_key() + "\n")
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return target


def venv_packages(python: Path) -> dict[str, str]:
    """Every distribution installed for ``python``: name -> version."""
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m, json; print(json.dumps("
                          "{d.metadata['Name']: d.version for d in m.distributions()}))"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


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
