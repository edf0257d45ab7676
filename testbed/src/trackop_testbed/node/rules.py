"""The node's iptables rules, as ``iptables-restore --noflush`` input (pure).

On the host, every rule the bed adds is in a chain of its own (``TRACKOP-<id>-*``), reached
by jumps that match the bed's veth only, and carries the comment ``trackop-bed <id>``, so
removing one bed's rules never touches another's:

- nat PREROUTING: what Pods reach of the host (the API server, PostgreSQL, S3), DNAT from
  the host's veth address to the same port on 127.0.0.1 (``route_localnet`` on the veth);
- filter INPUT: from the node, only those DNATed connections and replies get in;
- mangle and filter FORWARD: nothing is forwarded to or from the node's veth, so nothing
  of the pod network leaves the machine.

In the node's namespace (gone with it at ``down``): the ``kubernetes`` Service's address
DNATed to the API server through the veth (its Endpoints may not hold a loopback address,
so kube-proxy has none), and FORWARD from the bridge only to the bridge or the veth.
"""

from __future__ import annotations

import shlex

from .plan import NodePlan

BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _comment(plan: NodePlan) -> str:
    return f'-m comment --comment "{plan.tag}"'


def host_rules(plan: NodePlan, published_ports: list[int]) -> str:
    c = _comment(plan)
    pre, inp, fwd = f"{plan.chain}-PRE", f"{plan.chain}-IN", f"{plan.chain}-FWD"
    nat = [f":{pre} - [0:0]"]
    nat += [f"-A {pre} -d {plan.host_ip}/32 -p tcp -m tcp --dport {port} {c} -j DNAT --to-destination 127.0.0.1:{port}"
            for port in sorted(set(published_ports))]
    nat.append(f"-I PREROUTING 1 -i {plan.host_if} {c} -j {pre}")
    filt = [f":{inp} - [0:0]", f":{fwd} - [0:0]",
            f"-A {inp} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT {c} -j ACCEPT",
            f"-A {inp} {c} -j DROP",
            f"-A {fwd} {c} -j DROP",
            f"-I INPUT 1 -i {plan.host_if} {c} -j {inp}",
            f"-I FORWARD 1 -i {plan.host_if} {c} -j {fwd}",
            f"-I FORWARD 1 -o {plan.host_if} {c} -j {fwd}"]
    mangle = [f":{fwd} - [0:0]",
              f"-A {fwd} {c} -j DROP",
              f"-I FORWARD 1 -i {plan.host_if} {c} -j {fwd}",
              f"-I FORWARD 1 -o {plan.host_if} {c} -j {fwd}"]
    return _script({"nat": nat, "filter": filt, "mangle": mangle})


def node_rules(plan: NodePlan, apiserver_port: int) -> str:
    """Inside the node's namespace."""
    c = _comment(plan)
    to_api = f"-d {plan.kubernetes_ip}/32 -p tcp -m tcp --dport 443 {c} -j DNAT --to-destination {plan.host_ip}:{apiserver_port}"
    guard = f"{plan.chain}-FWD"
    forward = [f":{guard} - [0:0]",
               f"-A {guard} -o {plan.bridge} {c} -j RETURN",
               f"-A {guard} -o {plan.node_if} {c} -j RETURN",
               f"-A {guard} {c} -j DROP",
               f"-I FORWARD 1 -i {plan.bridge} {c} -j {guard}"]
    return _script({
        "nat": [f"-A PREROUTING -i {plan.bridge} {to_api}", f"-A OUTPUT {to_api}"],
        "filter": forward,
        "mangle": list(forward),
    })


def teardown(saved: dict[str, str], plan: NodePlan) -> str:
    """Delete every rule tagged with the bed's id from the built-in chains, then flush and
    delete the bed's own chains; ``saved`` is ``iptables-save -t TABLE`` output per table."""
    tables: dict[str, list[str]] = {}
    for table, text in saved.items():
        lines: list[str] = []
        own_chains: list[str] = []
        for line in text.splitlines():
            if line.startswith(":") and line[1:].split(" ", 1)[0].startswith(f"{plan.chain}-"):
                own_chains.append(line[1:].split(" ", 1)[0])
            elif line.startswith("-A ") and _tagged(line, plan):
                chain = line.split()[1]
                if chain in BUILTIN_CHAINS:
                    lines.append("-D " + line[3:])
        lines += [f"-F {chain}" for chain in own_chains]
        lines += [f"-X {chain}" for chain in own_chains]
        if lines:
            tables[table] = lines
    return _script(tables) if tables else ""


def tagged_rules(saved: dict[str, str], plan: NodePlan) -> list[str]:
    """Every rule or chain of the bed still present (what ``down`` must leave: none)."""
    found = []
    for table, text in saved.items():
        for line in text.splitlines():
            if (line.startswith("-A ") and _tagged(line, plan)) or line.startswith(f":{plan.chain}-"):
                found.append(f"{table}: {line}")
    return found


def _tagged(line: str, plan: NodePlan) -> bool:
    try:
        words = shlex.split(line)
    except ValueError:
        return False
    return any(a == "--comment" and b == plan.tag for a, b in zip(words, words[1:]))


def _script(tables: dict[str, list[str]]) -> str:
    out: list[str] = []
    for table, lines in tables.items():
        out.append(f"*{table}")
        out += lines
        out.append("COMMIT")
    return "\n".join(out) + "\n"
