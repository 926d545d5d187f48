"""Argument parsing that fails with one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, TypeAlias


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``ringkv node: error: ...``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


Commands: TypeAlias = "argparse._SubParsersAction[ArgumentParser]"
"""Where each command module adds its subcommand parsers."""


DEFAULT_ENDPOINT = "127.0.0.1:50051"


def add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``: where the command finds the cluster."""
    parser.add_argument(
        "--endpoint",
        "--endpoints",
        dest="endpoints",
        default=os.environ.get("RINGKV_ENDPOINTS", DEFAULT_ENDPOINT),
        help="host:port of one or more nodes, comma-separated "
        f"(default: $RINGKV_ENDPOINTS or {DEFAULT_ENDPOINT})",
    )
