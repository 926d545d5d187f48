"""``ringkv local-cluster``: the seed's three nodes on this machine, in one terminal.

Runs the README's three ``ringkv node`` command lines as child processes,
waits until each reports SERVING on the gRPC health service, shows a table,
and stops them all cleanly on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from ringkv.cli.args import Commands
from ringkv.client.channels import PLAINTEXT, Security
from ringkv.client.health import wait_until_serving
from ringkv.core.errors import RingkvError

_STARTUP_TIMEOUT_S = 30.0


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "local-cluster",
        help="run the seed's 3-node cluster on this machine",
        description="Run nodes node1..nodeN on ports BASE..BASE+N-1 until Ctrl-C.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default: 3)")
    parser.add_argument("--base-port", type=int, default=50051, help="first port (default: 50051)")
    parser.add_argument("--replicas", type=int, default=2, help="replication factor (default: 2)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="parent of each node's data dir"
    )
    parser.add_argument("--engine", default="lmdb", help="storage engine (default: lmdb)")
    security = parser.add_argument_group(
        "security", "passed to every node as they are (see ringkv node --help)"
    )
    for flag in _NODE_SECURITY_FLAGS:
        security.add_argument(flag, type=Path, metavar="FILE")
    security.add_argument("--peer-port-offset", type=int, metavar="N")
    parser.set_defaults(handler=handle, parser=parser)


_NODE_SECURITY_FLAGS = (
    "--tls-cert",
    "--tls-key",
    "--tls-ca",
    "--auth-token-file",
    "--operator-token-file",
    "--member-token-file",
)


def security_flags(args: argparse.Namespace) -> list[str]:
    """The node flags of the security options given."""
    flags = []
    for flag in (*_NODE_SECURITY_FLAGS, "--peer-port-offset"):
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            flags += [flag, str(value)]
    return flags


def _client_security(args: argparse.Namespace) -> Security:
    """How to check the nodes' health: their CA (or their own certificate)
    verifies them, and their certificate is the client certificate in case
    the port asks for one (``--peer-port-offset 0``)."""
    tls_ca = args.tls_ca or args.tls_cert
    if tls_ca is None:
        return PLAINTEXT
    return Security.of(tls_ca=tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)


def node_command_lines(
    nodes: int,
    base_port: int,
    replicas: int,
    data_dir: Path,
    engine: str,
    *,
    extra_flags: Sequence[str] = (),
) -> list[list[str]]:
    """The seed's command lines (``-id nodeK -addr 0.0.0.0:PORT -peers ...``)."""
    addresses = {f"node{i + 1}": f"127.0.0.1:{base_port + i}" for i in range(nodes)}
    lines = []
    for node_id, address in addresses.items():
        peers = ",".join(f"{peer}={addr}" for peer, addr in addresses.items() if peer != node_id)
        port = address.rsplit(":", 1)[1]
        seed_flags = ["-id", node_id, "-addr", f"0.0.0.0:{port}", "-peers", peers]
        own_flags = ["--engine", engine, "--data-dir", str(data_dir / node_id)]
        node = [sys.executable, "-m", "ringkv", "node"]
        lines.append([*node, *seed_flags, "-replicas", str(replicas), *own_flags, *extra_flags])
    return lines


def _runnable_command() -> str:
    """``ringkv`` as the user can type it here: the bare name when it is on
    the PATH (and is this one), else the path this process was started by
    (``.venv/bin/ringkv`` from ``scripts/cluster``), else ``python -m ringkv``."""
    started_as = Path(sys.argv[0])
    on_path = shutil.which("ringkv")
    if on_path is not None and started_as.exists() and Path(on_path).samefile(started_as):
        return "ringkv"
    if started_as.name == "ringkv" and started_as.exists():
        relative = os.path.relpath(started_as.resolve())
        return shlex.quote(relative if os.sep in relative else f".{os.sep}{relative}")
    return f"{shlex.quote(sys.executable)} -m ringkv"


def stop_processes(children: Sequence[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    """SIGTERM every child still running, then wait for each, killing one that
    has not stopped within ``timeout_s`` (a node drains its calls first)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _exit_reason(status: int) -> str:
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:  # a real-time signal has no name
        return f"was killed by signal {-status}"


def handle(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 16:
        args.parser.error("--nodes must be between 1 and 16")
    console = Console(stderr=True)
    lines = node_command_lines(
        args.nodes,
        args.base_port,
        args.replicas,
        args.data_dir,
        args.engine,
        extra_flags=security_flags(args),
    )
    try:
        security = _client_security(args)
    except RingkvError as error:
        args.parser.error(error.message)
    children = [subprocess.Popen(line) for line in lines]
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        table = Table(title="ringkv local cluster")
        for column in ("node", "address", "pid", "state"):
            table.add_column(column)
        healthy = True
        for index, child in enumerate(children):
            address = f"127.0.0.1:{args.base_port + index}"
            serving = child.poll() is None and wait_until_serving(
                address, timeout=deadline - time.monotonic(), security=security
            )
            healthy &= serving
            state = "[green]SERVING[/]" if serving else "[red]not serving[/]"
            table.add_row(f"node{index + 1}", address, str(child.pid), state)
        console.print(table)
        if not healthy:
            console.print("[red]a node did not start; stopping the cluster[/]")
            return 1
        tls = f" --tls-ca {args.tls_ca or args.tls_cert}" if security.tls_ca else ""
        token = " --token ..." if args.auth_token_file is not None else ""
        console.print(
            f"Try: {_runnable_command()} set hello world --endpoint "
            f"127.0.0.1:{args.base_port}{tls}{token}  (Ctrl-C stops the cluster)",
            soft_wrap=True,  # a command broken over lines does not paste
        )
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        if stopping:
            return 0
        for index, child in enumerate(children):
            status = child.poll()
            if status is not None:
                console.print(
                    f"[red]node{index + 1} (pid {child.pid}) {_exit_reason(status)}; "
                    "stopping the others[/] (its log is above)"
                )
        return 1
    finally:
        stop_processes(children)
