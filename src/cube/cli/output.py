"""How the CLI prints: Rich tables for people, the API's JSON for scripts.

Tables and details go to stdout; progress goes to stderr, so ``ID=$(cube run ...)``
and ``cube status -o json | jq`` see only the answer. Every cell is a
:class:`rich.text.Text`: a task's reason may contain ``[brackets]`` that Rich
would otherwise read as markup, and every text from the cluster passes
:func:`inert` first: a task's command or a node's labels are whatever someone
sent, and an escape sequence in them must not drive the reader's terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, TypeVar

import click
from pydantic import BaseModel
from rich.console import Console, Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from cube.scheduler.feasibility import format_cpu
from cube.task.model import SHORT_ID, short_task_id, utcnow
from cube.units import format_duration, format_size

__all__ = [
    "SHORT_ID",
    "Format",
    "add_row",
    "age",
    "details",
    "echo_json",
    "format_cpu",
    "format_port",
    "format_size",
    "inert",
    "inert_text",
    "jsonable",
    "make_table",
    "or_dash",
    "output_option",
    "percent",
    "print_json",
    "progress",
    "ratio",
    "section",
    "show",
    "stderr_console",
    "timestamp",
    "title",
]

Format = Literal["table", "json"]
F = TypeVar("F", bound=Callable[..., Any])

#: Width of output to a pipe or file. Tables take only the width they need, so this
#: just has to be more than any row: then ``grep`` and ``awk`` see every value whole.
PIPE_WIDTH = 1000
DASH = "-"


#: Characters that drive a terminal instead of showing: C0 controls, DEL and C1 controls
#: (``\x9b`` is a CSI on many terminals), and the Unicode bidi overrides that make text
#: read in another order than it is ("Trojan Source").
_CONTROL = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F]
_CONTROL += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_INERT = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROL}
_INERT_KEEP_LINES = {c: v for c, v in _INERT.items() if chr(c) not in "\n\t"}
_JSON_INERT = {c: f"\\u{c:04x}" for c in _CONTROL if c >= 0x20}


def inert(text: object, *, lines: bool = False) -> str:
    """``text`` made harmless to print: each control character is shown as its escape
    (``\\x1b``), as Python's ``repr`` would, so the reader sees that it was there.

    With ``lines``, newlines and tabs stay (``cube logs --escape``); otherwise a value
    stays on its line of a table.
    """
    return str(text).translate(_INERT_KEEP_LINES if lines else _INERT)


def inert_text(value: object) -> Text:
    """A Rich :class:`Text` of a value from the cluster, made :func:`inert`."""
    return Text(inert(value))


def output_option(func: F) -> F:
    """``-o/--output table|json``, passed to the command as ``output``."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="table for people; json (the API's JSON) for scripts.",
    )(func)


def _stdout_console() -> Console:
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


def stderr_console() -> Console:
    """Progress and notes: soft-wrapped, so a line in a CI log stays one line."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def show(*renderables: RenderableType) -> None:
    """Print to stdout, without the trailing blanks Rich pads every table row with."""
    console = _stdout_console()
    with console.capture() as captured:
        console.print(*renderables)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def print_json(value: BaseModel | Sequence[BaseModel]) -> None:
    """Pretty-printed JSON of API models: what the API sends, in its order and field order.

    Only the fields the API sent (``exclude_unset``): a field it leaves out, such as a
    listed task's ``placement``, must not come back as a ``null`` that looks like data.
    """
    echo_json(jsonable(value))


def jsonable(value: BaseModel | Sequence[BaseModel]) -> Any:
    """API models as the JSON the API sent: only the fields it sent (see print_json)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    return [item.model_dump(mode="json", exclude_unset=True) for item in value]


def echo_json(data: Any) -> None:
    """JSON for scripts, printed safely: ``json`` escapes C0 controls itself, and the
    others (DEL, C1, bidi overrides) can only occur inside strings, where ``\\uXXXX``
    is the same JSON."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False).translate(_JSON_INERT))


# --- tables and detail views


def make_table(*columns: str | Column) -> Table:
    """A borderless table, like ``docker ps``: easy to read, easy to grep and cut.

    A column given by name never wraps (IDs and names stay whole); pass a
    :class:`~rich.table.Column` for one that should (reasons).
    """
    cols = [Column(c, no_wrap=True) if isinstance(c, str) else c for c in columns]
    return Table(*cols, box=None, pad_edge=False, header_style="bold")


def add_row(table: Table, *cells: str | Text) -> None:
    table.add_row(*(c if isinstance(c, Text) else inert_text(c) for c in cells))


def details(rows: Iterable[tuple[str, str | RenderableType]]) -> Table:
    """``Key:  value`` lines, aligned; rows with an empty value are left out."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for key, value in rows:
        if value == "":
            continue
        grid.add_row(f"{key}:", inert_text(value) if isinstance(value, str) else value)
    return grid


def section(heading: str, body: RenderableType) -> Group:
    """A titled block of a detail view, after a blank line."""
    return Group(Text(), Text(heading, style="bold underline"), body)


@contextmanager
def progress(initial: str) -> Iterator[Callable[[str], None]]:
    """Show what a wait is waiting for, on stderr; yields a function to update the text.

    On a terminal it is a spinner line that disappears at the end; otherwise
    (CI logs, a file) each new text is printed once, as a plain line.
    """
    console = stderr_console()
    if console.is_terminal:
        with console.status(inert_text(initial)) as status:
            yield lambda text: status.update(inert_text(text))
        return
    shown: list[str] = []

    def print_changed(text: str) -> None:
        if not shown or shown[-1] != text:
            shown.append(text)
            console.print(inert_text(text))

    print_changed(initial)
    yield print_changed


# --- formatting of single values


def title(value: str) -> str:
    """States as shown to people: ``running`` -> ``Running``."""
    return value.capitalize() if value else DASH


def age(when: datetime | None, *, now: datetime | None = None) -> str:
    """How long ago: ``'45s'``, ``'3m'``, ``'2d'``; ``'-'`` for never."""
    if when is None:
        return DASH
    seconds = ((now or utcnow()) - when).total_seconds()
    return format_duration(max(seconds, 0.0))


def timestamp(when: datetime | None, *, now: datetime | None = None) -> str:
    """Local time with the age: ``'2024-05-01 12:00:03 (5m ago)'``."""
    if when is None:
        return DASH
    return f"{when.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({age(when, now=now)} ago)"


def format_port(container: int, host: int | None, protocol: str) -> str:
    """Like ``docker ps``: ``'8080->80/tcp'``, or ``'80/tcp'`` when not published."""
    return f"{host}->{container}/{protocol}" if host else f"{container}/{protocol}"


def ratio(used: float, total: float, fmt: Callable[[Any], str]) -> str:
    """``'0.5/4.0'``, ``'64MiB/8GiB'``: what is taken of what there is."""
    return f"{fmt(used)}/{fmt(total)}"


def or_dash(value: object) -> str:
    return DASH if value is None or value == "" else str(value)


def percent(value: float) -> str:
    return f"{value:.0f}%"


def short(task_id: str) -> str:
    """An ID as tables show it (see :func:`cube.task.model.short_task_id`)."""
    return short_task_id(task_id)


def silence_stdout() -> None:
    """After a BrokenPipeError (``cube logs ID | head``): point stdout at /dev/null, so
    the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (tests): nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
