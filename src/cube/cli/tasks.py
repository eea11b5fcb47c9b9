"""``cube run``, ``cube status``, ``cube logs`` and ``cube stop``: tasks, through the manager."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from cube import errors
from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.options import SIZE, parse_labels
from cube.scheduler import Decision
from cube.task.model import DesiredState, Task, TaskEvent, utcnow
from cube.task.spec import RestartPolicyName, TaskRequest, TaskSpec, load_spec_file, parse_request
from cube.task.state import State
from cube.units import format_duration, parse_duration

#: Seconds between two looks at a task while ``cube run --wait`` waits.
POLL_INTERVAL = 0.5
SHORT_ID = 12


def short(task_id: str) -> str:
    return task_id[:SHORT_ID]


# --- cube run: a request from a spec file and flags


@dataclass(frozen=True)
class RunFlags:
    """What ``cube run``'s flags say; ``None`` or empty means "not given"."""

    name: str | None = None
    image: str | None = None
    command: tuple[str, ...] = ()
    cpu: float | None = None
    memory: int | None = None
    disk: int | None = None
    ports: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    restart: str | None = None
    max_restarts: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    constraints: dict[str, str] = field(default_factory=dict)
    task_id: str | None = None

    def apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` (a spec as a dict) with these flags laid over it.

        Plain values and lists (command, ports) replace the spec's; mappings
        (env, labels, constraints, resources, restart) are merged key by key, so
        ``-e DEBUG=1`` adds a variable instead of dropping the file's others.
        """
        data = dict(spec)
        plain = {"name": self.name, "image": self.image, "id": self.task_id}
        data.update({k: v for k, v in plain.items() if v is not None})
        if self.command:
            data["command"] = list(self.command)
        if self.ports:
            data["ports"] = list(self.ports)
        _merge(data, "resources", {"cpu": self.cpu, "memory": self.memory, "disk": self.disk})
        _merge(data, "restart", {"policy": self.restart, "max_attempts": self.max_restarts})
        _merge(data, "env", self.env)
        _merge(data, "labels", self.labels)
        _merge(data, "constraints", self.constraints)
        return data


def _merge(data: dict[str, Any], key: str, values: dict[str, Any]) -> None:
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        data[key] = {**(data.get(key) or {}), **given}


def build_request(spec_file: Path | None, flags: RunFlags) -> TaskRequest:
    """The request to send: the file's spec (if any) with the flags over it, validated.

    Validation is the spec's own, so an error names the field (``resources.memory``)
    and the limits live in one place.
    """
    base = load_spec_file(spec_file).model_dump(mode="json", exclude_none=True) if spec_file else {}
    return parse_request(flags.apply(base))


class RunCommand(click.Command):
    """``cube run``: everything after ``--`` is the container's command, never a flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        command: list[str] = []
        if "--" in args:
            cut = args.index("--")
            args, command = args[:cut], args[cut + 1 :]
        rest = super().parse_args(ctx, args)
        ctx.params["command"] = tuple(command)
        return rest

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- COMMAND [ARGS]...]"]


def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    return parse_labels(values, option=param.opts[-1])


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_SPEC_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("run", cls=RunCommand)
@click.argument("spec_file", required=False, type=_SPEC_PATH)
@click.option("-f", "--file", "file_option", type=_SPEC_PATH, help="The spec file, as an option.")
@click.option("--name", help="Task name: lowercase letters, digits and '-'.")
@click.option("--image", help="Container image, e.g. cube-busybox:latest.")
@click.option("--cpu", type=float, help="CPU cores to reserve, e.g. 0.5.")
@click.option("--memory", type=SIZE, help="Memory to reserve and limit to, e.g. 64MiB.")
@click.option("--disk", type=SIZE, help="Disk to reserve, e.g. 1GiB.")
@click.option(
    "-p",
    "--port",
    "ports",
    multiple=True,
    metavar="[HOST:]PORT[/udp]",
    help="Publish a container port, e.g. 8080:80 (repeatable).",
)
@click.option(
    "-e",
    "--env",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="Set an environment variable (repeatable).",
)
@click.option(
    "--restart",
    type=click.Choice([p.value for p in RestartPolicyName]),
    help="When to restart the container after it exits.",
)
@click.option("--max-restarts", type=int, metavar="N", help="Give up after N restarts.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="Label the task (repeatable).",
)
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="Run only on nodes with this label (repeatable).",
)
@click.option("--id", "task_id", help="Choose the ID: the same request sent twice runs one task.")
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait until the task runs; exit 1 if it fails first or --timeout passes.",
)
@click.option(
    "--timeout",
    default="60s",
    show_default=True,
    callback=_duration,
    metavar="DURATION",
    help="How long --wait waits, e.g. 90s or 2m.",
)
@out.output_option
@handle_errors
@manager_option
def run_command(
    client: ManagerClient,
    spec_file: Path | None,
    file_option: Path | None,
    wait: bool,
    timeout: float,
    output: out.Format,
    **flags: Any,
) -> None:
    """Run a task, from a YAML/JSON spec file or from flags (flags override the file).

    Prints the task's ID (the task's JSON with -o json); progress goes to stderr.

    \b
    Example:
      cube run examples/web.yaml
      cube run --name sleeper --image cube-busybox:latest --memory 16MiB -- sleep 3600
      ID=$(cube run examples/web.yaml --name web2 -p 8081:8080 --wait)
    """
    if spec_file and file_option:
        raise click.UsageError("give the spec file once: as SPEC_FILE or with -f")
    task = client.run(build_request(spec_file or file_option, RunFlags(**flags)))
    if output == "table":
        click.echo(task.id)
    if wait:
        task = wait_for(client, task, timeout=timeout)
    if output == "json":
        out.print_json(task)
    if wait:
        check_running(task, timeout=timeout)
        out.stderr_console().print(Text(f"{short(task.id)} running on {task.node}"))


# --- cube run --wait

WaitStatus = Literal["running", "waiting", "ended"]


def will_restart(task: Task) -> bool:
    """Whether a Failed or Completed task's restart policy brings it back on its node."""
    restart = task.spec.restart
    if task.desired is DesiredState.STOP or restart.policy is RestartPolicyName.NEVER:
        return False
    if restart.policy is RestartPolicyName.ON_FAILURE and task.state is not State.FAILED:
        return False
    return restart.max_attempts is None or task.restarts < restart.max_attempts


def wait_status(task: Task) -> WaitStatus:
    if task.state is State.RUNNING:
        return "running"
    if task.is_terminal and not will_restart(task):
        return "ended"
    return "waiting"


def describe(task: Task) -> str:
    """``'1a2b3c4d5e6f Pending: no node has 2.0 free CPU'``: the spinner's text."""
    text = f"{short(task.id)} {out.title(task.state)}"
    if task.node:
        text += f" on {task.node}"
    if task.restarts:
        text += f" (restarts: {task.restarts})"
    return f"{text}: {task.reason}" if task.reason else text


def wait_for(
    client: ManagerClient,
    task: Task,
    *,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Task:
    """Poll the task until it runs, ends for good, or ``timeout`` seconds pass."""
    deadline = clock() + timeout
    with out.progress(describe(task)) as show:
        while wait_status(task) == "waiting" and clock() < deadline:
            sleep(max(min(POLL_INTERVAL, deadline - clock()), 0.0))
            task = client.task(task.id)
            show(describe(task))
    return task


def check_running(task: Task, *, timeout: float) -> None:
    """Raise the error ``cube run --wait`` ends with, unless the task runs."""
    status = wait_status(task)
    if status == "running":
        return
    code = task.exit_code
    why = task.reason or ("no reason given" if code is None else f"exit code {code}")
    if status == "ended":
        raise errors.CubeError(f"task {short(task.id)} {task.state.value}: {why}")
    raise errors.CubeError(
        f"task {short(task.id)} still {task.state.value} after {format_duration(timeout)}: {why}"
    )


# --- cube status


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
    """List tasks, or show one task in detail (ID or a unique prefix of it).

    The detail view says why a task is where it is: its events and the
    scheduler's placement decision.

    \b
    Example:
      cube status
      cube status --state running --node w1
      cube status 1a2b3c
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
    if output == "json":
        out.print_json(task)
        return
    parts: list[RenderableType] = [task_details(task)]
    events = client.events(task.id)
    if events:
        parts.append(out.section("Events", event_table(events)))
    if task.placement is not None:
        parts.append(out.section("Placement", placement_view(task.placement)))
    out.show(*parts)


def task_ports(task: Task) -> str:
    """Published ports once the task runs, the requested ones before."""
    published = [out.format_port(p.container, p.host, p.protocol) for p in task.ports]
    requested = [out.format_port(p.container, p.host, p.protocol) for p in task.spec.ports]
    return ", ".join(published or requested)


def task_table(tasks: Sequence[Task]) -> Table:
    with_health = any(t.spec.health for t in tasks)
    table = out.make_table(
        Column("ID", no_wrap=True, min_width=SHORT_ID),  # on a narrow terminal, others give way
        "NAME",
        Column("STATE", no_wrap=True, min_width=len("Completed")),
        *("NODE", "IMAGE", "PORTS", "AGE", "RESTARTS"),
        *(["HEALTH"] if with_health else []),
    )
    now = utcnow()
    for t in tasks:
        row = [
            short(t.id),
            t.name,
            out.title(t.state),
            out.or_dash(t.node),
            t.spec.image,
            task_ports(t) or out.DASH,
            out.age(t.created_at, now=now),
            str(t.restarts),
        ]
        if with_health:
            row.append(out.title(t.health) if t.spec.health else out.DASH)
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
        text += f", at most {restart.max_attempts} times"
    return f"{text}; restarted {task.restarts} times" if task.restarts else text


def _mapping(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def task_details(task: Task) -> Table:
    spec, now = task.spec, utcnow()
    return out.details(
        [
            ("ID", task.id),
            ("Name", spec.name),
            ("Image", spec.image),
            ("Command", shlex.join(spec.command)),
            ("State", state_line(task)),
            ("Health", out.title(task.health) if spec.health else ""),
            ("Node", out.or_dash(task.node)),
            ("Container", short(task.container_id or "")),
            ("Ports", task_ports(task)),
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
        return Text(str(raw))
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
@click.argument("task_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the task ends.")
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@handle_errors
@manager_option
def logs_command(client: ManagerClient, task_id: str, follow: bool, tail: int | None) -> None:
    """Print a task's output (its container's stdout and stderr).

    \b
    Example:
      cube logs 1a2b3c --tail 20
      cube logs -f 1a2b3c
    """
    sink = sys.stdout.buffer
    try:
        for chunk in client.logs(task_id, tail=tail, follow=follow):
            sink.write(chunk)
            sink.flush()
    except KeyboardInterrupt:  # Ctrl-C is how one stops following: not an error
        pass
    except BrokenPipeError:  # `cube logs ID | head`: the reader has what it wanted
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (tests): nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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
        click.echo(f"stopped {task.id}")
    else:
        click.echo(f"stopping {task.id}")
        out.stderr_console().print(
            Text(f"its node has not confirmed yet; `cube status {short(task.id)}` shows when")
        )
