"""``cube top``: the cluster at a glance, refreshed in place: nodes with bars of what is
allocated of what they offer, the jobs not stopped, and the tasks that have not ended.

A frame is built from one read of ``GET /v1/nodes``, ``GET /v1/tasks`` and ``GET /v1/jobs``
by pure functions (:func:`frame`), so ``--once`` prints exactly what the live view shows.
A job's allocations are counted from the tasks already read (one request per refresh, not
one per job), as ``docker stats`` counts what runs: those whose every task runs, of those
with a task that has not ended.
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
from rich.table import Column, Table
from rich.text import Text

from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.tasks import task_table
from cube.errors import CubeError
from cube.job.model import Job, JobStatus
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


def summary(nodes: Sequence[Node], tasks: Sequence[Task], jobs: Sequence[Job] = ()) -> str:
    """``nodes: 2 ready, 1 down · jobs: 1 running · tasks: 5 running, 1 pending``: zero
    counts left out, and jobs only when there is one not stopped."""
    node_counts = Counter(n.state for n in nodes)
    task_counts = Counter(t.state for t in tasks)
    job_counts = Counter(j.status for j in jobs if not j.stopped)
    node_part = ", ".join(f"{node_counts[s]} {s.value}" for s in NodeState if node_counts[s])
    task_part = ", ".join(f"{task_counts[s]} {s.value}" for s in State if task_counts[s])
    job_part = ", ".join(f"{job_counts[s]} {s.value}" for s in JobStatus if job_counts[s])
    jobs_text = f" · jobs: {job_part}" if job_part else ""
    return f"nodes: {node_part or 'none'}{jobs_text} · tasks: {task_part or 'none'}"


def _runs(tasks: Sequence[Task]) -> bool:
    """Whether an allocation runs: every one of its tasks (its size, when known) is Running."""
    size = tasks[0].alloc.size if tasks[0].alloc is not None else None
    whole = size is None or len(tasks) >= size
    return whole and all(t.state is State.RUNNING for t in tasks)


def job_view(jobs: Sequence[Job], tasks: Sequence[Task]) -> Table:
    """The jobs not stopped: status, allocations running of those live, and why."""
    live: dict[str, dict[str, list[Task]]] = {}  # job -> allocation -> its live tasks
    for t in tasks:
        if t.alloc is not None and not t.is_terminal:
            live.setdefault(t.alloc.job, {}).setdefault(t.alloc.id, []).append(t)
    table = out.make_table("JOB", "STATUS", "ALLOCS RUNNING", Column("REASON"))
    for j in sorted(jobs, key=lambda j: j.id):
        if j.stopped:
            continue
        allocs = live.get(j.id, {})
        running = sum(1 for mine in allocs.values() if _runs(mine))
        out.add_row(table, j.id, out.title(j.status), f"{running}/{len(allocs)}", j.status_reason)
    return table


def frame(
    nodes: Sequence[Node],
    tasks: Sequence[Task],
    *,
    jobs: Sequence[Job] = (),
    source: str,
    now: datetime,
    error: str = "",
) -> Group:
    """One screen of ``cube top``: a header, the nodes, the jobs not stopped (if any), the
    tasks that have not ended."""
    head = Text(f"{source}  {now:%H:%M:%S}  ", style="bold")
    head.append(out.inert(summary(nodes, tasks, jobs)), style="default")
    parts: list[RenderableType] = [head]
    if error:
        parts.append(Text(out.inert(f"manager not answering, retrying: {error}"), style="red"))
    parts.append(Text())
    parts.append(node_view(sorted(nodes, key=lambda n: n.name)) if nodes else Text("No nodes."))
    if any(not j.stopped for j in jobs):
        parts += [Text(), job_view(jobs, tasks)]
    live = sorted((t for t in tasks if not t.is_terminal), key=lambda t: t.created_at)
    parts.append(Text())
    parts.append(task_table(live) if live else Text("No task that has not ended."))
    return Group(*parts)


Snapshot = tuple[list[Node], list[Task], list[Job]]


def _read(client: ManagerClient) -> Snapshot:
    return client.nodes(), client.tasks(), client.jobs()


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
    bars), the jobs not stopped (their allocations running) and the tasks that have not
    ended, refreshed in place. Ctrl-C quits.

    With -o json: one snapshot, {"nodes": [...], "tasks": [...], "jobs": [...]}, as the
    API sends them.
    When stdout is not a terminal, a frame is printed after the other at each refresh.

    \b
    Example:
      cube top
      cube top -n 5
      cube top --once
      cube top -o json | jq '.nodes[] | {name, allocated}'
    """
    snapshot = _read(client)  # a manager that does not answer at first: exit 1
    if output == "json":
        nodes, tasks, jobs = (out.jsonable(part) for part in snapshot)
        out.echo_json({"nodes": nodes, "tasks": tasks, "jobs": jobs})
        return
    feed = _Feed(client, snapshot)
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

    def __init__(self, client: ManagerClient, snapshot: Snapshot) -> None:
        self._client = client
        self._last = snapshot

    def frame(self, *, read: bool = True) -> Group:
        error = ""
        if read:
            try:
                self._last = _read(self._client)
            except CubeError as exc:
                error = exc.message
        nodes, tasks, jobs = self._last
        source = self._client.base_url
        return frame(nodes, tasks, jobs=jobs, source=source, now=utcnow(), error=error)
