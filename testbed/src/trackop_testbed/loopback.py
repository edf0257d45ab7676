"""HTTP to the bed's own servers on loopback (or the node's addresses): never through a
proxy named in the environment, and with the bed's client certificates where needed."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path

# No proxy settings or credentials from the caller's environment leak into the servers; the
# system directories first, where iptables, mount and the CNI tools live.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


def system_env() -> dict[str, str]:
    env = base_env()
    env["PATH"] = SYSTEM_PATH + (":" + env["PATH"] if env.get("PATH") else "")
    return env


def insecure_tls() -> ssl.SSLContext:
    """For servers that make their own self-signed certificate at start (KCM, the scheduler)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_tls(pki_dir: Path, name: str = "admin") -> ssl.SSLContext:
    """The bed's CA and the client certificate ``pki_dir/<name>.crt``."""
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(pki_dir / f"{name}.crt"), str(pki_dir / f"{name}.key"))
    return ctx


def open_url(url: str, context: ssl.SSLContext | None = None, timeout: float = 2):
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    return opener.open(url, timeout=timeout)


def http_get(url: str, context: ssl.SSLContext | None = None) -> bytes:
    with open_url(url, context) as response:
        return response.read().strip()


def http_ok(url: str) -> bool:
    with open_url(url) as response:
        return response.status == 200


def get_json(url: str, context: ssl.SSLContext | None = None, timeout: float = 5) -> dict:
    with open_url(url, context, timeout) as response:
        return json.loads(response.read())
