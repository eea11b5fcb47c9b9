"""``cube status``, ``cube logs`` and ``cube stop``: tasks, through the manager."""

from __future__ import annotations

import codecs
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.joblogs import print_job_logs
from cube.cli.output import SHORT_ID, short
from cube.scheduler import Decision
from cube.task.model import DesiredState, Task, TaskEvent, utcnow
from cube.task.spec import RestartPolicyName, TaskSpec
from cube.task.state import State


@click.command("status")
@click.argument("task_id", metavar="[ID]", required=False)
@click.option("--state", type=click.Choice([s.value for s in State]), help="Only tasks in it.")
@click.option("--node", help="Only tasks on this node.")
@out.output_option
@handle_errors
@manager_option
def status_command(
    client: ManagerClient,
    task_id: str | None,
    state: str | None,
    node: str | None,
    output: out.Format,
) -> None:
    """List tasks, or show one task in detail: by ID, a unique prefix of it, or the
    task's name when no other task has it.

    The detail view says why a task is where it is: its events and the
    scheduler's placement decision (with -o json: the task's JSON and "events").

    \b
    Example:
      cube status
      cube status --state running --node w1
      cube status 1a2b3c
      cube status web
      cube status -o json | jq -r '.[].id'
    """
    if task_id is None:
        tasks = client.tasks(state=state, node=node)
        if output == "json":
            out.print_json(tasks)
        elif tasks:
            out.show(task_table(sorted(tasks, key=lambda t: t.created_at)))
        else:
            out.stderr_console().print("No tasks.")
        return
    if state or node:
        raise click.UsageError("--state and --node filter the list; give them without an ID")
    task = client.task(task_id)
    events = client.events(task.id)
    if output == "json":
        # What the table shows: the task as the API sends it, and its events.
        out.echo_json({**out.jsonable(task), "events": out.jsonable(events)})
        return
    parts: list[RenderableType] = [task_details(task)]
    if events:
        parts.append(out.section("Events", event_table(events)))
    if task.placement is not None:
        parts.append(out.section("Placement", placement_view(task.placement)))
    out.show(*parts)


#: States in which a task's container exists, so the ports it published are bound.
_BOUND_IN = (State.SCHEDULED, State.RUNNING)
#: How much of a reason the task list shows; ``cube status ID`` has all of it.
REASON_WIDTH = 40


def task_ports(task: Task) -> str:
    """The host ports the task's container holds now, like ``docker ps``: none before it
    starts or after it ends (the spec's requested ports are in the detail view)."""
    if task.state not in _BOUND_IN:
        return ""
    return ", ".join(out.format_port(p.container, p.host, p.protocol) for p in task.ports)


def requested_ports(task: Task) -> str:
    return ", ".join(out.format_port(p.container, p.host, p.protocol) for p in task.spec.ports)


def ports_line(task: Task) -> str:
    """Bound ports, else what the spec asks for, saying so."""
    if bound := task_ports(task):
        return bound
    requested = requested_ports(task)
    return f"{requested} (requested, not bound)" if requested else ""


def list_reason(task: Task) -> str:
    """Why a task that does not run is where it is (Pending: why no node), cut short."""
    if task.state is State.RUNNING or not task.reason:
        return ""
    reason = out.inert(" ".join(task.reason.split()))  # cut after escaping: no half escape
    return reason if len(reason) <= REASON_WIDTH else reason[: REASON_WIDTH - 1] + "…"


def health_text(task: Task) -> str:
    """The last check's verdict, while the task's container lives: a task that ended
    is not Healthy any more, whatever its last check said."""
    return out.title(task.health) if task.spec.health and not task.is_terminal else ""


def alloc_line(task: Task) -> str:
    """The job allocation the task belongs to, as people name it: ``shop.web[2]``."""
    return task.alloc.name if task.alloc is not None else ""


def task_table(tasks: Sequence[Task]) -> Table:
    with_alloc = any(t.alloc for t in tasks)
    with_health = any(t.spec.health for t in tasks)
    with_reason = any(list_reason(t) for t in tasks)
    table = out.make_table(
        Column("ID", no_wrap=True, min_width=SHORT_ID),  # on a narrow terminal, others give way
        "NAME",
        *(["ALLOC"] if with_alloc else []),
        Column("STATE", no_wrap=True, min_width=len("Completed")),
        *("NODE", "IMAGE", "PORTS", "AGE", "RESTARTS"),
        *(["HEALTH"] if with_health else []),
        *(["REASON"] if with_reason else []),
    )
    now = utcnow()
    for t in tasks:
        row = [
            short(t.id),
            t.name,
            *([alloc_line(t) or out.DASH] if with_alloc else []),
            out.title(t.state),
            out.or_dash(t.node),
            t.spec.image,
            task_ports(t) or out.DASH,
            out.age(t.created_at, now=now),
            str(t.restarts),
        ]
        if with_health:
            row.append(health_text(t) or out.DASH)
        if with_reason:
            row.append(list_reason(t) or out.DASH)
        out.add_row(table, *row)
    return table


def state_line(task: Task) -> str:
    text = out.title(task.state)
    if task.desired is DesiredState.STOP and not task.is_terminal:
        text += " (stop requested)"
    return f"{text}: {task.reason}" if task.reason else text


def resources_line(spec: TaskSpec) -> str:
    r = spec.resources
    return f"cpu {out.format_cpu(r.cpu)}, memory {out.format_size(r.memory)}, disk " + (
        out.format_size(r.disk)
    )


def restart_line(task: Task) -> str:
    restart = task.spec.restart
    text = restart.policy.value
    if restart.policy is not RestartPolicyName.NEVER and restart.max_attempts is not None:
        text += f", max_attempts {restart.max_attempts}"
    return f"{text}; restarted {task.restarts} times" if task.restarts else text


def _mapping(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def task_details(task: Task) -> Table:
    spec, now = task.spec, utcnow()
    return out.details(
        [
            ("ID", task.id),
            ("Name", spec.name),
            ("Allocation", f"{alloc_line(task)} ({task.alloc.id})" if task.alloc else ""),
            ("Image", spec.image),
            ("Command", shlex.join(spec.command)),
            ("State", state_line(task)),
            ("Health", health_text(task)),
            ("Node", out.or_dash(task.node)),
            ("Container", short(task.container_id or "")),
            ("Ports", ports_line(task)),
            ("Resources", resources_line(spec)),
            ("Restart", restart_line(task)),
            ("Exit code", "" if task.exit_code is None else str(task.exit_code)),
            # Names only: values are often secrets, and a terminal is often shared.
            ("Env", ", ".join(sorted(spec.env))),
            ("Labels", _mapping(spec.labels)),
            ("Constraints", _mapping(spec.constraints)),
            ("Created", out.timestamp(task.created_at, now=now)),
            ("Started", out.timestamp(task.started_at, now=now) if task.started_at else ""),
            ("Finished", out.timestamp(task.finished_at, now=now) if task.finished_at else ""),
        ]
    )


def event_table(events: Sequence[TaskEvent]) -> Table:
    table = out.make_table("TIME", "STATE", Column("REASON", overflow="fold"), "EXIT CODE", "NODE")
    for e in events:
        change = out.title(e.state)
        if e.previous is not None and e.previous != e.state:
            change = f"{out.title(e.previous)} -> {change}"
        exit_code = out.or_dash(e.exit_code)
        time_ = e.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        out.add_row(table, time_, change, e.reason or out.DASH, exit_code, out.or_dash(e.node))
    return table


def placement_view(raw: dict[str, Any]) -> RenderableType:
    """The scheduler's decision: which node and why, or why none."""
    try:
        decision = Decision.model_validate(raw)
    except ValidationError:  # a manager of another version: show what it said
        return out.inert_text(raw)
    examined = f"{decision.examined} of {decision.total} nodes, {decision.candidates} feasible"
    if decision.limit:
        examined += f" (stops at {decision.limit} feasible)"
    parts: list[RenderableType] = [
        out.details(
            [
                ("Algorithm", decision.algorithm),
                ("Node", out.or_dash(decision.node)),
                ("Reason", decision.reason),
                ("Examined", examined),
                ("Filtered", ", ".join(f"{n} {k}" for k, n in decision.filtered_counts.items())),
            ]
        )
    ]
    if decision.scores:
        scores = out.make_table("CANDIDATE", "SCORE", "RAW")
        for name, s in decision.scores.items():
            out.add_row(scores, name, f"{s.score:.3f}", f"{s.raw:.4g}")
        parts += [Text(), scores]
    if decision.filtered:
        filtered = out.make_table("FILTERED OUT", Column("REASON", overflow="fold"))
        for name, reason in decision.filtered.items():
            out.add_row(filtered, name, reason)
        parts += [Text(), filtered]
    return Group(*parts)


# --- cube logs, cube stop


@click.command("logs")
@click.argument("task_id", metavar="[ID]", required=False)
@click.option("--job", "job_id", metavar="JOB", help="Every allocation of this job, merged.")
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new output until the task (job) ends."
)
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@click.option("--group", metavar="G", help="With --job: only this group's allocations.")
@click.option("--task", "task_name", metavar="T", help="With --job: only the tasks named T.")
@click.option("--since", metavar="DURATION", help="With --job: only output of the last 5m, 1h...")
@click.option(
    "--escape",
    is_flag=True,
    help="Show control characters as escapes (\\x1b) instead of passing them to the terminal.",
)
@handle_errors
@manager_option
def logs_command(
    client: ManagerClient,
    task_id: str | None,
    job_id: str | None,
    follow: bool,
    tail: int | None,
    group: str | None,
    task_name: str | None,
    since: str | None,
    escape: bool,
) -> None:
    """Print a task's output (its container's stdout and stderr), byte for byte like
    `docker logs`: colours and cursor moves reach your terminal. Output you do not
    trust? --escape shows every control character but newline and tab as an escape.

    With --job, the output of every allocation of the job, merged, each line prefixed
    with its group and allocation index, task and node (`web[1] api@w2 | ...`, a colour
    per allocation in a terminal). With -f it goes on with allocations placed later
    (replacements, scale-up, new versions) until the job is over, and when a node stops
    answering it says so on stderr and goes on with the others.

    \b
    Example:
      cube logs 1a2b3c --tail 20
      cube logs -f 1a2b3c
      cube logs --escape web
      cube logs --job shop -f --group web --since 5m
    """
    if job_id is not None:
        if task_id is not None or tail is not None:
            raise click.UsageError("--job streams every allocation: give no ID and no --tail")
        params = {"follow": "true" if follow else "false"}
        params |= {k: v for k, v in (("group", group), ("task", task_name), ("since", since)) if v}
        _print_until_stopped(
            lambda: print_job_logs(client.job_logs(job_id, **params), escape=escape, job=job_id)
        )
        return
    if task_id is None:
        raise click.UsageError("give a task ID, or --job JOB")
    if group or task_name or since:
        raise click.UsageError("--group, --task and --since go with --job")
    chunks = client.logs(task_id, tail=tail, follow=follow)
    _print_until_stopped(lambda: _write_all(_escaped(chunks) if escape else chunks))


def _write_all(chunks: Iterable[bytes]) -> None:
    sink = sys.stdout.buffer
    for chunk in chunks:
        sink.write(chunk)
        sink.flush()


def _print_until_stopped(print_all: Callable[[], None]) -> None:
    try:
        print_all()
    except KeyboardInterrupt:  # Ctrl-C is how one stops following: not an error
        pass
    except BrokenPipeError:  # `cube logs ID | head`: the reader has what it wanted
        out.silence_stdout()


def _escaped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with control characters made :func:`~cube.cli.output.inert`; decoded
    incrementally, so a character split across two chunks is still one character."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        yield out.inert(decoder.decode(chunk), lines=True).encode()
    yield out.inert(decoder.decode(b"", final=True), lines=True).encode()


@click.command("stop")
@click.argument("task_id", metavar="ID")
@out.output_option
@handle_errors
@manager_option
def stop_command(client: ManagerClient, task_id: str, output: out.Format) -> None:
    """Stop a task: its container gets SIGTERM, then SIGKILL after the spec's stop_timeout.

    \b
    Example:
      cube stop 1a2b3c
      cube status --state running -o json | jq -r '.[].id' | xargs -n1 cube stop
    """
    task = client.stop(task_id)
    if output == "json":
        out.print_json(task)
    elif task.is_terminal:
        click.echo(out.inert(f"stopped {task.id}"))
    else:
        click.echo(out.inert(f"stopping {task.id}"))
        out.stderr_console().print(
            out.inert_text(
                f"its node has not confirmed yet; `cube status {short(task.id)}` shows when"
            )
        )
