"""``cube alloc status``: allocations, one copy of a job's group on one node, through the
manager."""

from __future__ import annotations

import click
from rich.console import RenderableType
from rich.table import Column, Table

from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.job_views import alloc_table
from cube.cli.output import short
from cube.cli.tasks import placement_view, task_ports
from cube.errors import CubeError
from cube.job.model import Allocation


@click.group("alloc")
def alloc_group() -> None:
    """Inspect allocations: one copy of a job's group on one node.

    \b
    Example:
      cube alloc status --job shop
      cube alloc status 1a2b3c
    """


def alloc_tasks_table(client: ManagerClient, alloc: Allocation) -> Table:
    """An allocation's tasks, with the host ports their containers hold: where to reach
    each copy of a service (``curl 127.0.0.1:PORT``), which the allocation does not record."""
    table = out.make_table("TASK", "ID", "STATE", "PORTS", "EXIT", "RESTARTS")
    for name, t in alloc.tasks.items():
        try:
            ports = task_ports(client.task(t.id))
        except CubeError:  # forgotten meanwhile (a purge): the rest of the view still holds
            ports = ""
        row = (short(t.id), out.title(t.state), ports or out.DASH, out.or_dash(t.exit_code))
        out.add_row(table, name, *row, str(t.restarts))
    return table


@alloc_group.command("status")
@click.argument("alloc_id", metavar="[ID]", required=False)
@click.option("--job", "job_id", metavar="JOB", help="List only this job's allocations.")
@click.option("--node", metavar="NAME", help="List only the allocations placed on this node.")
@out.output_option
@handle_errors
@manager_option
def alloc_status_command(
    client: ManagerClient,
    alloc_id: str | None,
    job_id: str | None,
    node: str | None,
    output: out.Format,
) -> None:
    """List allocations (every job's, or one job's or node's), or show one: node, status,
    its tasks, history and placement.

    \b
    Example:
      cube alloc status
      cube alloc status --job shop --node w1
      cube alloc status 1a2b3c
      cube alloc status 1a2b3c -o json | jq .tasks
    """
    if alloc_id is None:
        list_allocs(client, job_id=job_id, node=node, output=output)
        return
    if job_id is not None or node is not None:
        raise click.UsageError("--job and --node filter the list: give them without an ID")
    alloc = client.allocation(alloc_id)
    if output == "json":
        out.print_json(alloc)
        return
    parts: list[RenderableType] = [
        out.details(
            [
                ("ID", alloc.id),
                ("Name", alloc.name),
                ("Node", out.or_dash(alloc.node)),
                ("Version", str(alloc.version)),
                ("Desired", f"{alloc.desired.value} {alloc.desired_reason}".strip()),
                ("Status", f"{out.title(alloc.status)}: {alloc.status_reason}"),
                ("Replaces", alloc.replaces or ""),
                ("Replaced by", alloc.replaced_by or ""),
                ("Reschedules", str(alloc.reschedule_attempts) if alloc.reschedule_events else ""),
            ]
        )
    ]
    parts.append(out.section("Tasks", alloc_tasks_table(client, alloc)))
    if alloc.events:
        events = out.make_table("TIME", "STATUS", Column("REASON"))
        for e in alloc.events:
            out.add_row(events, out.timestamp(e.time), out.title(e.status), e.reason)
        parts.append(out.section("Events", events))
    if alloc.placement is not None:
        parts.append(out.section("Placement", placement_view(alloc.placement)))
    out.show(*parts)


def list_allocs(
    client: ManagerClient, *, job_id: str | None, node: str | None, output: out.Format
) -> None:
    allocs = client.allocations(job=job_id, node=node)
    if output == "json":
        out.print_json(allocs)
    elif allocs:
        out.show(alloc_table(allocs))
    else:
        out.stderr_console().print("No allocations: jobs make them (`cube job run FILE`).")
