"""Argument parsing that fails with one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TypeAlias


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``ringkv node: error: ...``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


Commands: TypeAlias = "argparse._SubParsersAction[ArgumentParser]"
"""Where each command module adds its subcommand parsers."""
