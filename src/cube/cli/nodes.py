"""``cube nodes``: the worker machines the manager knows, and what they hold."""

from __future__ import annotations

from collections.abc import Sequence

import click
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.job_views import alloc_table
from cube.node import MachineStats, Node, NodeState
from cube.task.model import utcnow


@click.group("nodes", invoke_without_command=True)
@out.output_option
@handle_errors
@manager_option
@click.pass_context
def nodes_group(ctx: click.Context, client: ManagerClient, output: out.Format) -> None:
    """List the cluster's nodes: capacity, what is allocated, what they measure.

    CPU, MEMORY and DISK are what tasks reserved of what the node offers;
    CPU% and MEM USED are what the machine measured.

    \b
    Example:
      cube nodes
      cube nodes -o json | jq -r '.[] | select(.state == "ready") | .name'
      cube nodes show w1
      cube nodes drain w1
    """
    if ctx.invoked_subcommand is not None:
        return
    nodes = client.nodes()
    if output == "json":
        out.print_json(nodes)
    elif nodes:
        out.show(node_table(sorted(nodes, key=lambda n: n.name)))
    else:
        out.stderr_console().print("No nodes: start one with `cube worker`.")


@nodes_group.command("show")
@click.argument("name")
@out.output_option
@handle_errors
@manager_option
def show_command(client: ManagerClient, name: str, output: out.Format) -> None:
    """Show one node in detail, with the job allocations it holds (with -o json: the
    node's JSON and "allocations").

    \b
    Example:
      cube nodes show w1
      cube nodes show w1 -o json | jq -r '.allocations[].name'
    """
    node = client.node(name)
    allocs = [a for a in client.allocations(node=node.name) if not a.is_terminal]
    if output == "json":
        out.echo_json({**out.jsonable(node), "allocations": out.jsonable(allocs)})
        return
    parts: list[RenderableType] = [node_details(node)]
    if allocs:
        parts.append(out.section("Allocations", alloc_table(allocs)))
    out.show(*parts)


@nodes_group.command("drain")
@click.argument("name")
@out.output_option
@handle_errors
@manager_option
def drain_command(client: ManagerClient, name: str, output: out.Format) -> None:
    """Move a node's tasks to other nodes and place nothing new on it.

    The tasks go back to the scheduler (same IDs, history kept); their copies on the
    drained node are stopped. `cube nodes undrain` lets it take tasks again.

    \b
    Example:
      cube nodes drain w1      # before maintenance on w1
      cube nodes undrain w1    # after
    """
    node = client.drain(name)
    _show_change(
        node,
        output,
        f"draining: its tasks move to other nodes and nothing new is placed on it"
        f" (`cube nodes undrain {node.name}` ends it)",
        NodeState.DRAINING,
    )


@nodes_group.command("undrain")
@click.argument("name")
@out.output_option
@handle_errors
@manager_option
def undrain_command(client: ManagerClient, name: str, output: out.Format) -> None:
    """Let a drained node take tasks again.

    \b
    Example:
      cube nodes undrain w1
    """
    _show_change(client.undrain(name), output, "takes tasks again", NodeState.READY)


def _show_change(node: Node, output: out.Format, what: str, expected: NodeState) -> None:
    """One line: what the change does, and the node's state only when it is not the one
    the change leads to (a Down node drained), not ``w1 draining (draining)``."""
    if output == "json":
        out.print_json(node)
        return
    state = "" if node.state is expected else f"; it is {node.state.value} now"
    click.echo(out.inert(f"node {node.name} {what}{state}"))


def memory_used(stats: MachineStats | None) -> str:
    if stats is None or not stats.memory_total:
        return out.DASH
    return out.format_size(stats.memory_total - stats.memory_available)


def node_table(nodes: Sequence[Node]) -> Table:
    table = out.make_table(
        "NAME",
        "ADDRESS",
        "STATE",
        "CPU",
        "MEMORY",
        "DISK",
        "CPU%",
        "MEM USED",
        "TASKS",
        "LAST SEEN",
    )
    now = utcnow()
    for n in nodes:
        out.add_row(
            table,
            n.name,
            n.address,
            out.title(n.state),
            out.ratio(n.allocated.cpu, n.capacity.cpu, out.format_cpu),
            out.ratio(n.allocated.memory, n.capacity.memory, out.format_size),
            out.ratio(n.allocated.disk, n.capacity.disk, out.format_size),
            out.percent(n.stats.cpu_percent) if n.stats else out.DASH,
            memory_used(n.stats),
            str(n.tasks),
            f"{out.age(n.last_seen, now=now)} ago" if n.last_seen else "never",
        )
    return table


def resource_table(node: Node) -> Table:
    """Capacity, allocated and free of each resource, one row each."""
    table = out.make_table("RESOURCE", "CAPACITY", "ALLOCATED", "FREE")
    free = node.free
    out.add_row(
        table,
        "cpu",
        *(out.format_cpu(r.cpu) for r in (node.capacity, node.allocated, free)),
    )
    for resource in ("memory", "disk"):
        amounts = (getattr(r, resource) for r in (node.capacity, node.allocated, free))
        out.add_row(table, resource, *(out.format_size(a) for a in amounts))
    return table


def stats_lines(stats: MachineStats) -> list[tuple[str, str]]:
    load = " ".join(f"{x:.2f}" for x in stats.load_avg)
    return [
        ("CPU", f"{out.percent(stats.cpu_percent)} of {stats.cpu_count} cores, load {load}"),
        (
            "Memory",
            f"{memory_used(stats)} used of {out.format_size(stats.memory_total)}"
            f" ({out.format_size(stats.memory_available)} available)",
        ),
        (
            "Disk",
            f"{out.format_size(stats.disk_free)} free of {out.format_size(stats.disk_total)}",
        ),
        ("Sampled", out.timestamp(stats.sampled_at)),
    ]


def node_details(node: Node) -> Group:
    state = out.title(node.state) + (f": {node.reason}" if node.reason else "")
    head = out.details(
        [
            ("Name", node.name),
            ("Address", node.address),
            ("State", state),
            ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(node.labels.items()))),
            ("Allows", ", ".join(node.allows) or "nothing beyond isolated containers"),
            ("Tasks", str(node.tasks)),
            ("Host ports", ", ".join(str(p) for p in sorted(node.used_ports))),
            ("Registered", out.timestamp(node.registered_at)),
            ("Last seen", out.timestamp(node.last_seen) if node.last_seen else "never"),
        ]
    )
    parts: list[RenderableType] = [head, Text(), resource_table(node)]
    if node.stats is not None:
        parts.append(out.section("Measured", out.details(stats_lines(node.stats))))
    return Group(*parts)
