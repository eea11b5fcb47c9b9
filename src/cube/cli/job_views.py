"""What ``cube job status JOB`` and ``cube alloc status`` show: a job's facts, its groups,
its allocations, and the newest failures with the last lines their tasks wrote."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import RenderableType
from rich.table import Column, Table
from rich.text import Text

from cube.cli import deployments as deployment_commands
from cube.cli import output as out
from cube.cli.client import ManagerClient
from cube.cli.output import short
from cube.errors import CubeError
from cube.job.blocked import BlockedGroup, blocked_groups
from cube.job.model import Allocation, AllocStatus
from cube.job.summary import group_summaries
from cube.job.wire import JobDetail
from cube.task.model import utcnow
from cube.task.state import State


def job_view(detail: JobDetail) -> list[RenderableType]:
    job, spec = detail.job, detail.spec
    head = out.details(
        [
            ("Job", job.id),
            ("Type", spec.type.value),
            ("Version", str(job.version)),
            ("Status", f"{out.title(job.status)}: {job.status_reason}"),
            ("Datacenters", ", ".join(spec.datacenters)),
            *(
                [("Deployment", deployment_commands.deployment_line(detail.deployment))]
                if detail.deployment is not None
                else []
            ),
        ]
    )
    states = (s.value.upper() for s in AllocStatus)
    groups = out.make_table("GROUP", "DESIRED", "QUEUED", *states)
    for row in group_rows(detail):
        out.add_row(groups, *row)
    blocked = blocked_view(
        blocked_groups(detail.spec, detail.allocations, detail.placement_failures)
    )
    return [
        head,
        out.section("Groups", groups),
        *([out.section("Placement Failure", Text(blocked))] if blocked else []),
        out.section("Allocations", alloc_table(detail.allocations)),
    ]


def blocked_view(groups: Sequence[BlockedGroup]) -> str:
    """Nomad's Placement Failure: per group, how many are not placed, why, and the
    filters that stopped how many nodes (empty: every placement found a node)."""
    paragraphs = []
    for g in groups:
        of = "" if g.wanted is None else f" of {g.wanted}"
        lines = [f'Group "{g.name}" ({g.waiting}{of} not placed):', *g.lines()]
        paragraphs.append("\n  ".join(lines))
    return "\n".join(paragraphs)


def group_rows(detail: JobDetail) -> list[list[str]]:
    """The Groups table: per group, how many allocations should run, how many have no
    allocation yet (QUEUED: Nomad's name), and how many hold their slot in each status
    (:func:`cube.job.summary.group_summaries`; a stopped job's DESIRED is 0, with its count).
    """
    rows = []
    for g in group_summaries(detail.job, detail.spec, detail.allocations):
        queued = out.DASH if g.queued is None else str(g.queued)
        rows.append([g.name, g.desired, queued, *(str(g.statuses[s]) for s in AllocStatus)])
    return rows


#: Failed allocations whose last log lines ``cube job status JOB`` shows, newest first.
FAILURES_SHOWN = 3
#: Log lines shown of each.
LOG_TAIL = 5


def failure_view(client: ManagerClient, detail: JobDetail) -> Table | None:
    """The newest failed allocations: why, and the last lines their failed task wrote."""
    failed = [a for a in detail.allocations if a.status is AllocStatus.FAILED]
    if not failed:
        return None
    table = out.make_table("ALLOC", Column("REASON"), Column("LAST LOG LINES"))
    for alloc in sorted(failed, key=lambda a: a.updated_at, reverse=True)[:FAILURES_SHOWN]:
        task = next((t for t in alloc.tasks.values() if t.state is State.FAILED), None)
        tail = ""
        if task is not None:
            try:
                tail = b"".join(client.logs(task.id, tail=LOG_TAIL)).decode(errors="replace")
            except CubeError as exc:
                tail = f"(no logs: {exc.message})"
        out.add_row(table, alloc.name, alloc.status_reason, tail.rstrip())
    return table


def alloc_table(allocs: Sequence[Allocation]) -> Table:
    table = out.make_table(
        "ID", "NAME", "NODE", "VERSION", "DESIRED", "STATUS", "RESTARTS", "AGE", Column("REASON")
    )
    now = utcnow()
    for a in sorted(allocs, key=lambda a: (a.job, a.group, a.index, a.created_at)):
        restarts = sum(t.restarts for t in a.tasks.values())
        out.add_row(
            table,
            short(a.id),
            a.name,
            out.or_dash(a.node),
            str(a.version),
            a.desired.value,
            out.title(a.status),
            str(restarts),
            out.age(a.created_at, now=now),
            a.status_reason,
        )
    return table
