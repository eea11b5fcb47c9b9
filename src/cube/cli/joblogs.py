"""``cube logs --job``: print a job's merged log stream, which the manager builds.

Each line is prefixed with where it comes from, ``web[1] api@w2 | ``: group and
allocation index, task, node. In a terminal each allocation's prefix has a colour of its
own; piped, output is plain (and ``NO_COLOR`` turns colours off anywhere). That a node
went quiet or came back is said on stderr, so stdout holds the job's output only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import BinaryIO

import click

from cube.cli import output as out
from cube.job.logs import LogRecord

#: ANSI foreground colours the prefixes take in turn: cyan, yellow, magenta, green, blue,
#: red, then their bright forms.
PALETTE = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92", "94", "91")


def prefix(record: LogRecord) -> str:
    return out.inert(f"{record.group}[{record.index}] {record.task}@{record.node} | ")


def note(record: LogRecord) -> str:
    """The one line that says a node went quiet, or answers again."""
    if record.kind == "quiet":
        why = f" ({record.text})" if record.text else ""
        return out.inert(
            f"cube: node {record.node} went quiet{why}; the other allocations go on streaming"
        )
    return out.inert(f"cube: node {record.node} is back; its allocations' output follows")


class JobLogPrinter:
    """Writes records as prefixed lines: raw output, or made inert with ``escape``."""

    def __init__(self, sink: BinaryIO, *, colour: bool, escape: bool) -> None:
        self.sink, self.colour, self.escape = sink, colour, escape
        self._colours: dict[str, str] = {}

    def write(self, record: LogRecord) -> None:
        if record.kind != "line":
            self.sink.flush()
            click.echo(note(record), err=True)
            return
        text = out.inert(record.text, lines=True) if self.escape else record.text
        self.sink.write((self._prefix(record) + text + "\n").encode(errors="replace"))
        self.sink.flush()

    def _prefix(self, record: LogRecord) -> str:
        if not self.colour:
            return prefix(record)
        code = self._colours.setdefault(record.alloc, PALETTE[len(self._colours) % len(PALETTE)])
        return f"\x1b[{code}m{prefix(record)}\x1b[0m"


def wants_colour(stream: BinaryIO) -> bool:
    """Colours for a terminal, unless ``NO_COLOR`` (https://no-color.org) is set."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def print_job_logs(records: Iterable[LogRecord], *, escape: bool, job: str = "") -> None:
    """Print the records; when there were none, one line on stderr says so (an empty
    answer looked like a command that did nothing: no allocation placed yet, or tasks
    that wrote nothing)."""
    sink = sys.stdout.buffer
    printer = JobLogPrinter(sink, colour=wants_colour(sink), escape=escape)
    lines = 0
    for record in records:
        printer.write(record)
        lines += record.kind == "line"
    if not lines:
        click.echo(
            out.inert(
                f"cube: no output from job {job} (no allocation placed yet, or its tasks"
                f" wrote nothing): `cube job status {job}` shows its allocations"
            ),
            err=True,
        )
