"""``cube top``: the cluster at a glance, refreshed in place: nodes with bars of what is
allocated of what they offer, and the tasks that have not ended.

A frame is built from one read of ``GET /v1/nodes`` and ``GET /v1/tasks`` by pure
functions (:func:`frame`), so ``--once`` prints exactly what the live view shows.
A manager that stops answering is shown as such in the view, which keeps trying.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.tasks import task_table
from cube.errors import CubeError
from cube.node import Node, NodeState
from cube.task.model import Task, utcnow
from cube.task.state import State

#: Characters of a resource bar.
BAR_WIDTH = 10
FULL, EMPTY = "█", "░"


def bar(used: float, total: float, *, width: int = BAR_WIDTH) -> str:
    """``███░░░`` for ``used`` of ``total``: full cells rounded down, so a bar looks full
    only when nothing is left; more than the total (an overcommit) is a full bar."""
    if total <= 0:
        return EMPTY * width
    cells = min(width, int(width * max(used, 0.0) / total))
    return FULL * cells + EMPTY * (width - cells)


def _usage(used: float, total: float, label: str) -> Text:
    share = used / total if total > 0 else 0.0
    style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
    text = Text(bar(used, total), style=style)
    text.append(f" {label}", style="default")
    return text


def node_view(nodes: Sequence[Node]) -> Table:
    table = out.make_table("NODE", "STATE", "CPU", "MEMORY", "DISK", "TASKS")
    for n in nodes:
        cap, alloc = n.capacity, n.allocated
        out.add_row(
            table,
            n.name,
            out.title(n.state),
            _usage(alloc.cpu, cap.cpu, out.ratio(alloc.cpu, cap.cpu, out.format_cpu)),
            _usage(alloc.memory, cap.memory, out.ratio(alloc.memory, cap.memory, out.format_size)),
            _usage(alloc.disk, cap.disk, out.ratio(alloc.disk, cap.disk, out.format_size)),
            str(n.tasks),
        )
    return table


def summary(nodes: Sequence[Node], tasks: Sequence[Task]) -> str:
    """``nodes: 2 ready, 1 down · tasks: 5 running, 1 pending``: zero counts left out."""
    node_counts = Counter(n.state for n in nodes)
    task_counts = Counter(t.state for t in tasks)
    node_part = ", ".join(f"{node_counts[s]} {s.value}" for s in NodeState if node_counts[s])
    task_part = ", ".join(f"{task_counts[s]} {s.value}" for s in State if task_counts[s])
    return f"nodes: {node_part or 'none'} · tasks: {task_part or 'none'}"


def frame(
    nodes: Sequence[Node],
    tasks: Sequence[Task],
    *,
    source: str,
    now: datetime,
    error: str = "",
) -> Group:
    """One screen of ``cube top``: a header, the nodes, the tasks that have not ended."""
    head = Text(f"{source}  {now:%H:%M:%S}  ", style="bold")
    head.append(out.inert(summary(nodes, tasks)), style="default")
    parts: list[RenderableType] = [head]
    if error:
        parts.append(Text(out.inert(f"manager not answering, retrying: {error}"), style="red"))
    parts.append(Text())
    parts.append(node_view(sorted(nodes, key=lambda n: n.name)) if nodes else Text("No nodes."))
    live = sorted((t for t in tasks if not t.is_terminal), key=lambda t: t.created_at)
    parts.append(Text())
    parts.append(task_table(live) if live else Text("No task that has not ended."))
    return Group(*parts)


def _read(client: ManagerClient) -> tuple[list[Node], list[Task]]:
    return client.nodes(), client.tasks()


@click.command("top")
@click.option(
    "-n",
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two refreshes.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@out.output_option
@handle_errors
@manager_option
def top_command(client: ManagerClient, interval: float, once: bool, output: out.Format) -> None:
    """Watch the cluster: nodes (what is allocated of their CPU, memory and disk, as
    bars) and the tasks that have not ended, refreshed in place. Ctrl-C quits.

    With -o json: one snapshot, {"nodes": [...], "tasks": [...]}, as the API sends them.
    When stdout is not a terminal, a frame is printed after the other at each refresh.

    \b
    Example:
      cube top
      cube top -n 5
      cube top --once
      cube top -o json | jq '.nodes[] | {name, allocated}'
    """
    nodes, tasks = _read(client)  # a manager that does not answer at first: exit 1
    if output == "json":
        out.echo_json({"nodes": out.jsonable(nodes), "tasks": out.jsonable(tasks)})
        return
    feed = _Feed(client, nodes, tasks)
    first = feed.frame(read=False)
    if once:
        out.show(first)
        return
    console = Console(highlight=False)
    try:
        if console.is_terminal:
            with Live(first, console=console, auto_refresh=False, screen=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(feed.frame(), refresh=True)
        else:
            out.show(first)
            while True:
                time.sleep(interval)
                click.echo()
                out.show(feed.frame())
    except KeyboardInterrupt:
        return


class _Feed:
    """The frames of one ``cube top``: the last answer is kept, and shown with the error
    while the manager does not answer."""

    def __init__(self, client: ManagerClient, nodes: list[Node], tasks: list[Task]) -> None:
        self._client = client
        self._nodes, self._tasks = nodes, tasks

    def frame(self, *, read: bool = True) -> Group:
        error = ""
        if read:
            try:
                self._nodes, self._tasks = _read(self._client)
            except CubeError as exc:
                error = exc.message
        return frame(
            self._nodes, self._tasks, source=self._client.base_url, now=utcnow(), error=error
        )
