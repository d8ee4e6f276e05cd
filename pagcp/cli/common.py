"""What every command shares: an argument parser with one-line errors and the error handling of ``main``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pagcp.errors import PagcpError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``python -m pagcp.X: error: <what> (see --help)``."""

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def guarded(prog: str, fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn``; a :class:`PagcpError` becomes one line on stderr naming the command and exit code 2.

    Returns ``(0, fn's result)``, ``(2, None)`` after an error, or ``(130, None)`` after Ctrl-C.
    """
    try:
        return 0, fn()
    except PagcpError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        return 130, None
