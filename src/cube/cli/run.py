"""``cube run``: a task from a spec file and flags, and waiting until it runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from cube import errors
from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.options import SIZE, duration_callback, pairs_callback
from cube.cli.output import short
from cube.job.parse import wrong_kind
from cube.task.model import DesiredState, Task
from cube.task.parse import decode_spec_text, parse_request
from cube.task.spec import (
    KEEP_SECRETS,
    RestartPolicyName,
    TaskRequest,
)
from cube.task.specfile import load_spec_file
from cube.task.state import State
from cube.units import format_duration

#: Seconds between two looks at a task while ``cube run --wait`` waits.
POLL_INTERVAL = 0.5


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
    max_attempts: int | None = None
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
        _merge(data, "restart", {"policy": self.restart, "max_attempts": self.max_attempts})
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
    base = (
        _read(spec_file).model_dump(mode="json", exclude_none=True, context=KEEP_SECRETS)
        if spec_file
        else {}
    )
    return parse_request(flags.apply(base))


def _read(spec_file: Path) -> TaskRequest:
    """The file's task spec; a job file given here is one line naming `cube job run`."""
    try:
        return load_spec_file(spec_file)
    except errors.InvalidSpec as exc:
        try:
            data = decode_spec_text(spec_file.read_text(encoding="utf-8"))
        except (errors.InvalidSpec, OSError, UnicodeDecodeError):
            data = None  # the file's own error says what is wrong
        if (other := wrong_kind(data, want_job=False)) is not None:
            raise errors.InvalidSpec([errors.FieldError(str(spec_file), other)]) from None
        raise exc from None


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
    callback=pairs_callback,
    help="Set an environment variable (repeatable).",
)
@click.option(
    "--restart",
    type=click.Choice([p.value for p in RestartPolicyName]),
    help="When to restart the container after it exits.",
)
@click.option(
    "--max-attempts",
    type=int,
    metavar="N",
    help="Give up after N restarts (the first start is not one): the spec's restart.max_attempts.",
)
@click.option("--max-restarts", type=int, hidden=True, help="Deprecated: --max-attempts.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    callback=pairs_callback,
    help="Label the task (repeatable).",
)
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    metavar="KEY=VALUE",
    callback=pairs_callback,
    help="Run only on nodes with this label (repeatable).",
)
@click.option("--id", "task_id", help="Choose the ID: the same request sent twice runs one task.")
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait until the task runs (or has run to exit code 0); exit 1 if it fails "
    "first or --timeout passes.",
)
@click.option(
    "--timeout",
    default="60s",
    show_default=True,
    callback=duration_callback,
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
    if (old := flags.pop("max_restarts")) is not None:
        if flags["max_attempts"] not in (None, old):
            raise click.UsageError("--max-restarts is the old name of --max-attempts: give one")
        out.stderr_console().print("--max-restarts is deprecated: use --max-attempts")
        flags["max_attempts"] = old
    task = client.run(build_request(spec_file or file_option, RunFlags(**flags)))
    if output == "table":
        click.echo(out.inert(task.id))
    if wait:
        task = wait_for(client, task, timeout=timeout)
    if output == "json":
        out.print_json(task)
    if wait:
        check_running(task, timeout=timeout)
        what = "completed" if task.state is State.COMPLETED else "running"
        out.stderr_console().print(out.inert_text(f"{short(task.id)} {what} on {task.node}"))


# --- cube run --wait

WaitStatus = Literal["running", "succeeded", "waiting", "ended"]


def will_restart(task: Task) -> bool:
    """Whether a Failed or Completed task's restart policy brings it back on its node."""
    restart = task.spec.restart
    if task.desired is DesiredState.STOP or restart.policy is RestartPolicyName.NEVER:
        return False
    if restart.policy is RestartPolicyName.ON_FAILURE and task.state is not State.FAILED:
        return False
    return restart.max_attempts is None or task.restarts < restart.max_attempts


def wait_status(task: Task) -> WaitStatus:
    """Where ``cube run --wait`` stands: ``succeeded`` is a task that ran to its end
    with exit code 0 and will not run again (a batch job done), as good as running."""
    if task.state is State.RUNNING:
        return "running"
    if task.is_terminal and not will_restart(task):
        succeeded = task.state is State.COMPLETED and task.exit_code == 0
        return "succeeded" if succeeded and task.desired is not DesiredState.STOP else "ended"
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
    """Poll the task until it runs, ends for good (successfully or not), or ``timeout``
    seconds pass."""
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
    if status in ("running", "succeeded"):
        return
    code = task.exit_code
    why = task.reason or ("no reason given" if code is None else f"exit code {code}")
    if status == "ended":
        raise errors.CubeError(f"task {short(task.id)} {task.state.value}: {why}")
    # The task stays, and may yet run: say so, and how to give up (a user who reads only
    # "still pending" runs the command again and has two).
    raise errors.CubeError(
        f"task {short(task.id)} still {task.state.value} after {format_duration(timeout)}: {why};"
        f" it stays and runs when it can (`cube stop {short(task.id)}` gives up)"
    )


# --- cube status
