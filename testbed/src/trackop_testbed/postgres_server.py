"""A real PostgreSQL server for the bed, from the distribution's packages."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import psycopg


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (Debian keeps them off PATH)."""
    if os.environ.get("TRACKOP_PG_BINDIR"):
        return Path(os.environ["TRACKOP_PG_BINDIR"])
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql)"
    )


def server_user() -> str | None:
    """PostgreSQL refuses to run as root; as root the bed runs it as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("TRACKOP_PG_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"running as root, PostgreSQL needs an unprivileged user {name!r}: create it "
            "(useradd --system postgres) or set TRACKOP_PG_USER"
        ) from None
    return name


def check_reachable(directory: Path, user: str) -> None:
    """Fail with a clear message if ``user`` cannot reach ``directory``."""
    entry = pwd.getpwnam(user)
    for ancestor in [directory, *directory.parents]:
        info = ancestor.stat()
        if info.st_uid == entry.pw_uid:
            continue
        if info.st_gid == entry.pw_gid and info.st_mode & stat.S_IXGRP:
            continue
        if not info.st_mode & stat.S_IXOTH:
            raise RuntimeError(
                f"PostgreSQL runs as {user!r}, which cannot enter {ancestor} (mode "
                f"{stat.filemode(info.st_mode)}): choose a bed directory under /tmp"
            )


def initdb(bindir: Path, data_dir: Path, superuser: str, password: str, user: str | None) -> None:
    """A fresh cluster with scram-sha-256 password authentication for every connection."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pwfile = data_dir.parent / "initdb.pw"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    os.chmod(data_dir, 0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (data_dir, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data_dir), "--username", superuser,
             "--pwfile", str(pwfile), "--auth", "scram-sha-256", "--encoding", "UTF8",
             "--locale", "C", "--no-instructions"],
            check=True, capture_output=True, text=True, user=user,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.strip()}") from None
    finally:
        pwfile.unlink(missing_ok=True)


BED_CONF = "trackop-bed.conf"


def server_argv(bindir: Path, data_dir: Path, port: int) -> list[str]:
    """The server's command line, after writing the bed's settings into the data directory.

    The settings live in a file that postgresql.conf includes, not on the command line,
    so that ``ALTER SYSTEM`` (postgresql.auto.conf) can override them as on a real server.
    TCP on loopback only and no Unix socket, so clients authenticate as they would on a
    remote server. fsync is off because the bed's data is disposable: a killed server
    still recovers, since its writes reached the OS (only an OS crash could lose commits).
    synchronous_commit stays on: off, a commit is acknowledged before its WAL leaves
    PostgreSQL's own buffers, and a crash (immediate shutdown) loses it, so a test that
    crashes the server would see acknowledged work vanish (a database's COMMENT did).
    """
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": "''",
        "fsync": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "logging_collector": "off",
    }
    (data_dir / BED_CONF).write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
    os.chmod(data_dir / BED_CONF, 0o644)
    main_conf = data_dir / "postgresql.conf"
    include = f"include_if_exists = '{BED_CONF}'\n"
    if include not in main_conf.read_text():
        with open(main_conf, "a") as handle:
            handle.write(include)
    return [str(bindir / "postgres"), "-D", str(data_dir)]


def is_ready(port: int, user: str, password: str) -> bool:
    with psycopg.connect(
        host="127.0.0.1", port=port, user=user, password=password, dbname="postgres", connect_timeout=2
    ) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def allow_network(data_dir: Path, cidr: str) -> None:
    """Password logins from ``cidr`` too (the node's Pods, whose connections the bed DNATs
    to the loopback listener with their own source address)."""
    hba = data_dir / "pg_hba.conf"
    line = f"host    all             all             {cidr:<23} scram-sha-256\n"
    if line not in hba.read_text():
        with open(hba, "a") as handle:
            handle.write(line)
