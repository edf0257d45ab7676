"""The test bed's subcommands of the ``trackop`` command: ``trackop testbed up|down --dir DIR``
and ``trackop dev``. The product CLI loads them from the ``trackop.commands`` entry points
(testbed/pyproject.toml); each ``register_*`` adds one subcommand to its subparsers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bed import Testbed

DEFAULT_DEV_DIR = Path("/tmp/trackop-dev")


def _progress(message: str) -> None:
    print(f"trackop: {message}", file=sys.stderr, flush=True)


def _testbed_up(args: argparse.Namespace) -> int:
    info = Testbed(args.dir, progress=_progress, node=args.node).up()
    print(json.dumps({"testbed": str(Path(args.dir).resolve() / "testbed.json"),
                      "kubeconfig": info["kubeconfig"]}))
    return 0


def _testbed_down(args: argparse.Namespace) -> int:
    Testbed(args.dir, progress=_progress).down()
    return 0


def _dev(args: argparse.Namespace) -> int:
    from . import quickstart

    return quickstart.run(args.dir, exit_after=args.exit, progress=_progress)


def register_testbed(commands: argparse._SubParsersAction) -> None:
    """``trackop testbed up|down --dir DIR``."""
    testbed = commands.add_parser("testbed", help="the local test bed (control plane, node, PostgreSQL, S3)")
    bed_commands = testbed.add_subparsers(dest="action", required=True)
    up = bed_commands.add_parser("up", help="start the bed in the background (reuses a running one)")
    up.add_argument("--dir", required=True, type=Path)
    up.add_argument("--node", action=argparse.BooleanOptionalAction, default=None,
                    help="a real node (kubelet, containerd, kube-proxy, CoreDNS); default: where the machine "
                         "allows it, unless TRACKOP_TESTBED_NODE=0")
    up.set_defaults(func=_testbed_up)
    down = bed_commands.add_parser("down", help="stop exactly what 'up' started")
    down.add_argument("--dir", required=True, type=Path)
    down.set_defaults(func=_testbed_down)


def register_dev(commands: argparse._SubParsersAction) -> None:
    """``trackop dev [--dir DIR] [--exit]``."""
    dev = commands.add_parser("dev", help="the quickstart on the local test bed")
    dev.add_argument("--dir", type=Path, default=DEFAULT_DEV_DIR, help="the bed's directory (default %(default)s)")
    dev.add_argument("--exit", action="store_true", help="stop everything once the run is logged")
    dev.set_defaults(func=_dev)
