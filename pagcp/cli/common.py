"""What every command shares: an argument parser with one-line errors and the error handling of ``main``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pagcp.errors import PagcpError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``python -m pagcp.X: error: <what> (see --help)``; help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends each flag's line with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if "default" in text or unset or isinstance(action, argparse._HelpAction):
            return text
        return f"{text} (default: %(default)s)"


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
