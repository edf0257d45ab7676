"""The machine-wide registry of the beds' nodes: which slot (plan.py) each bed directory
holds, and the global kernel settings the nodes share (kernel.py).

Several beds may run nodes on one machine at once (developers' test runs in parallel), so
what is global is counted here, under one lock: ``/run/trackop/nodes.json``. A bed's slot
stays its own for as long as its directory holds a state.json (its Service range is in its
etcd) or its network namespace exists; after that the slot is free again. A namespace
exists while its file in /run/netns is mounted: /run is not always a tmpfs (it is not on
this project's machines), and after a reboot the file is left unmounted.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from . import plan

R = TypeVar("R")

DEFAULT_ROOT = Path("/run/trackop")


def _netns_exists(node_id: str) -> bool:
    return os.path.ismount(f"/run/netns/trackop-{node_id}")


class Registry:
    """``/run/trackop/nodes.json`` and its lock (``root`` is a parameter for the unit tests)."""

    def __init__(self, root: Path = DEFAULT_ROOT, netns_exists: Callable[[str], bool] = _netns_exists) -> None:
        self.root = root
        self.netns_exists = netns_exists

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / "nodes.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / "nodes.json"
            data = json.loads(path.read_text()) if path.exists() else {}
            data.setdefault("beds", {})
            data.setdefault("kernel", {"original": {}, "absent": [], "holders": []})
            yield data
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, path)

    def _live(self, directory: str, entry: dict) -> bool:
        return (Path(directory) / "state.json").exists() or self.netns_exists(entry["id"])

    # ---- slots ---------------------------------------------------------------------------
    def claim(self, bed_dir: Path, host_routes: list[str]) -> tuple[int, str]:
        """The bed directory's (slot, id): the one it holds, or the lowest free slot whose
        block no host route overlaps, with a new id."""
        key = str(bed_dir.resolve())
        with self._locked() as data:
            beds = data["beds"]
            for directory in [d for d, e in beds.items() if d != key and not self._live(d, e)]:
                del beds[directory]
            if key in beds:
                return beds[key]["slot"], beds[key]["id"]
            taken = {entry["slot"] for entry in beds.values()}
            for slot in plan.SLOTS:
                if slot not in taken and not plan.overlaps(slot, host_routes):
                    node_id = secrets.token_hex(4)
                    beds[key] = {"slot": slot, "id": node_id}
                    return slot, node_id
        raise RuntimeError(f"no free node slot in {plan.NETWORK}: {len(taken)} beds hold one on this machine")

    def release(self, bed_dir: Path) -> None:
        with self._locked() as data:
            data["beds"].pop(str(bed_dir.resolve()), None)

    # ---- what the nodes share: global kernel settings and host paths --------------------
    def hold_shared(self, node_id: str, read: Callable[[str], str], keys: list[str],
                    absent: list[str]) -> dict[str, str]:
        """Count ``node_id`` among the nodes on this machine. The first one records the
        kernel settings ``keys`` as it finds them, and ``absent``: what did not exist before
        it began and nodes make (host paths that a kubelet, containerd or ``ip netns`` makes
        wherever the node's own directories are; ``iptables:<table>`` for the nftables tables
        iptables makes at its first rule). Returns the recorded settings."""
        with self._locked() as data:
            shared = data["kernel"]
            shared["holders"] = [h for h in shared["holders"] if h == node_id or self.netns_exists(h)]
            if not shared["holders"]:
                shared["original"] = {}
                shared["absent"] = list(absent)
            for key in keys:
                shared["original"].setdefault(key, read(key))
            if node_id not in shared["holders"]:
                shared["holders"].append(node_id)
            return dict(shared["original"])

    def release_shared(self, node_id: str, on_last: Callable[[dict[str, str], list[str]], R]) -> R | None:
        """Stop counting ``node_id``. If it was the last, ``on_last(settings, absent)`` puts
        the machine back, under the registry's lock (no node starts meanwhile), and its
        result is returned; else None."""
        with self._locked() as data:
            shared = data["kernel"]
            shared["holders"] = [h for h in shared["holders"] if h != node_id and self.netns_exists(h)]
            if shared["holders"]:
                return None
            result = on_last(shared.get("original", {}), shared.get("absent", []))
            shared["original"], shared["absent"] = {}, []
            return result
