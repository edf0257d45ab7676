"""The node's network: its namespace, the veth to the host, the Pods' bridge, routes, the
per-interface kernel settings and the iptables rules (rules.py), set up and torn down.

Host side: the veth's end ``tb<id>h`` with the host's address, routes of the bed's Pod and
Service ranges through it, ``route_localnet`` on it (DNAT to 127.0.0.1 of what arrives
there) and IPv6 off on it. Everything else lives in the namespace, and goes when it is
deleted: the bridge, the Service route to it, ``ip_forward``, kube-proxy's chains.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
from pathlib import Path

from .. import loopback
from . import rules
from .plan import NodePlan

TABLES = ("nat", "filter", "mangle")
CLONE_NEWNET = 0x40000000


def run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def nsenter(plan: NodePlan, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={plan.netns_path}", "--", *argv]


def link_exists(name: str, plan: NodePlan | None = None) -> bool:
    prefix = ["ip", "-n", plan.netns] if plan else ["ip"]
    return run([*prefix, "link", "show", name], check=False).returncode == 0


ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole", "unreachable", "prohibit",
               "throw", "nat"}


def host_routes() -> list[str]:
    """The prefixes the host routes, in every table (``ip route``'s first word, or the
    second after a route type)."""
    prefixes = []
    for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        words = line.split()
        if words:
            prefixes.append(words[1] if words[0] in ROUTE_TYPES and len(words) > 1 else words[0])
    return prefixes


def absent_tables() -> list[str]:
    """The host's nftables tables (of TABLES) that do not exist yet (iptables-save cannot
    tell: it prints a table's built-in chains whether it exists or not); none known without nft."""
    if shutil.which("nft") is None:
        return []
    present = run(["nft", "list", "tables"]).stdout.split("\n")
    return [table for table in TABLES if f"table ip {table}" not in present]


def delete_table_if_empty(table: str) -> bool:
    """Delete the host's nftables table if it holds nothing (built-in chains with policy
    ACCEPT only, no rule); True if it is gone."""
    if shutil.which("nft") is None:
        return False
    if run(["nft", "list", "table", "ip", table], check=False).returncode != 0:
        return True
    for line in run(["iptables-save", "-t", table]).stdout.splitlines():
        if line.startswith("-A ") or (line.startswith(":") and (line[1:].split()[0] not in rules.BUILTIN_CHAINS
                                                                or line.split()[1] != "ACCEPT")):
            return False
    return run(["nft", "delete", "table", "ip", table], check=False).returncode == 0


def create_namespace(plan: NodePlan) -> None:
    """The node's network namespace (idempotent; a file left unmounted by a reboot is replaced)."""
    if not os.path.ismount(plan.netns_path):
        if Path(plan.netns_path).exists():
            Path(plan.netns_path).unlink()
        run(["ip", "netns", "add", plan.netns])
    run(["ip", "-n", plan.netns, "link", "set", "lo", "up"])


def set_up(plan: NodePlan, published_ports: list[int], apiserver_port: int) -> None:
    """Idempotent: what exists already is kept."""
    create_namespace(plan)
    ns = ["ip", "-n", plan.netns]
    if not link_exists(plan.host_if):
        run(["ip", "link", "add", plan.host_if, "type", "veth", "peer", "name", plan.node_if, "netns", plan.netns])
    _sysctl(None, f"net.ipv6.conf.{plan.host_if}.disable_ipv6", "1")
    _sysctl(None, f"net.ipv4.conf.{plan.host_if}.route_localnet", "1")
    _sysctl(plan, f"net.ipv6.conf.{plan.node_if}.disable_ipv6", "1")
    _sysctl(plan, "net.ipv4.ip_forward", "1")
    run(["ip", "addr", "replace", f"{plan.host_ip}/30", "dev", plan.host_if])
    run([*ns, "addr", "replace", f"{plan.node_ip}/30", "dev", plan.node_if])
    run(["ip", "link", "set", plan.host_if, "up"])
    run([*ns, "link", "set", plan.node_if, "up"])
    # The bridge exists before the first Pod so that the Service route can name it.
    if not link_exists(plan.bridge, plan):
        run([*ns, "link", "add", plan.bridge, "type", "bridge"])
    _sysctl(plan, f"net.ipv6.conf.{plan.bridge}.disable_ipv6", "1")
    run([*ns, "addr", "replace", f"{plan.pod_gateway}/24", "dev", plan.bridge])
    run([*ns, "link", "set", plan.bridge, "up"])
    run([*ns, "route", "replace", plan.service_cidr, "dev", plan.bridge, "src", plan.pod_gateway])
    for cidr in (plan.pod_cidr, plan.service_cidr):
        run(["ip", "route", "replace", cidr, "via", plan.node_ip, "dev", plan.host_if])
    # Rules: the old ones (a re-run of ``up``) out first, then the whole set in one restore per side.
    remove_rules(plan, host=True)
    run(["iptables-restore", "--wait", "--noflush"], stdin=rules.host_rules(plan, published_ports))
    remove_rules(plan, host=False)
    run(nsenter(plan, ["iptables-restore", "--wait", "--noflush"]), stdin=rules.node_rules(plan, apiserver_port))


def _sysctl(plan: NodePlan | None, key: str, value: str) -> None:
    argv = ["sysctl", "-q", "-w", f"{key}={value}"]
    run(nsenter(plan, argv) if plan else argv)


def saved_rules(plan: NodePlan | None = None) -> dict[str, str]:
    """``iptables-save`` per table, on the host (``plan`` None) or in the node's namespace."""
    saved = {}
    for table in TABLES:
        argv = ["iptables-save", "-t", table]
        done = run(nsenter(plan, argv) if plan else argv, check=False)
        saved[table] = done.stdout if done.returncode == 0 else ""
    return saved


def remove_rules(plan: NodePlan, *, host: bool) -> None:
    script = rules.teardown(saved_rules(None if host else plan), plan)
    if script:
        argv = ["iptables-restore", "--wait", "--noflush"]
        run(argv if host else nsenter(plan, argv), stdin=script)


def pod_netns(plan: NodePlan, directory: Path = Path("/run/netns")) -> set[str]:
    """The Pods' network namespace files (``cni-*``, containerd's) whose interface has an
    address in this bed's Pod range: its own, also when containerd is gone. Only while the
    node's namespace lives (the Pods' veths end there)."""
    found = set()
    pods = ipaddress.ip_network(plan.pod_cidr)
    for entry in directory.glob("cni-*") if directory.is_dir() else ():
        out = run(["ip", "-n", entry.name, "-4", "-o", "addr", "show"], check=False).stdout
        for word in out.split():
            if "/" in word and word[0].isdigit():
                try:
                    if ipaddress.ip_interface(word).ip in pods:
                        found.add(str(entry))
                except ValueError:
                    continue
    return found


def netns_members(plan: NodePlan) -> list[int]:
    """Processes whose network namespace is the node's (none may be left at ``down``)."""
    try:
        inode = os.stat(plan.netns_path).st_ino
    except FileNotFoundError:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


def tear_down(plan: NodePlan) -> list[str]:
    """Remove the bed's host rules, kill what still runs in its namespace, delete the
    namespace (its veth, bridge, routes and rules with it); returns what is left, if any."""
    remove_rules(plan, host=True)
    for _ in range(50):
        members = netns_members(plan)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    if Path(plan.netns_path).exists():
        run(["ip", "netns", "del", plan.netns], check=False)
        Path(plan.netns_path).unlink(missing_ok=True)
    for _ in range(50):  # the kernel frees a namespace's interfaces shortly after its last user
        if not link_exists(plan.host_if):
            break
        time.sleep(0.1)
    return leftovers(plan)


def leftovers(plan: NodePlan) -> list[str]:
    left = [f"rule {r}" for r in rules.tagged_rules(saved_rules(), plan)]
    if link_exists(plan.host_if):
        left.append(f"interface {plan.host_if}")
    if Path(plan.netns_path).exists():
        left.append(f"network namespace {plan.netns}")
    routes = run(["ip", "-4", "route", "show"]).stdout
    left += [f"route {line}" for line in routes.splitlines() if plan.host_if in line.split()]
    return left


def in_netns(plan: NodePlan, call):
    """``call()`` in a thread that has joined the node's network namespace (sockets it
    opens live there); its result, or its exception raised here."""
    outcome: dict = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(plan.netns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {plan.netns_path}")
            finally:
                os.close(fd)
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{plan.netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def http_get_in_netns(plan: NodePlan, url: str) -> bool:
    """Whether ``url`` (a listener on the node namespace's loopback) answers 200."""
    try:
        return in_netns(plan, lambda: loopback.http_ok(url))
    except urllib.error.URLError:
        return False
