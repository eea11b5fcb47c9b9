"""The one place where errors become CLI exit codes and one readable line.

Exit codes: 0 ok, 1 the operation failed, 2 usage (bad flags or bad input); 130 when
Ctrl-C stops a command that follows something (``cube job run``), as in a shell.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from cube import errors
from cube.cli.output import inert

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

P = ParamSpec("P")
R = TypeVar("R")


def exit_code_for(exc: errors.CubeError) -> int:
    return EXIT_USAGE if isinstance(exc, errors.InvalidSpec) else EXIT_FAILED


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """One ``Error:`` line on stderr; whatever the message quotes from the cluster or the
    input is made inert (escape sequences shown, not obeyed)."""
    click.echo(f"Error: {inert(message)}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn any CubeError raised by a command into one line on stderr and an exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except errors.CubeError as exc:
            fail(exc.message, exit_code_for(exc))
            raise AssertionError("unreachable") from None

    return wrapper
