"""Where commands print their tables."""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 200
"""Columns a table may take when stdout is a pipe or a file: rich would take
80 and cut addresses and headers short, which a script reading the output
cannot undo."""


def stdout_console() -> Console:
    """A console as wide as the terminal, or ``PIPE_WIDTH`` when there is none."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
