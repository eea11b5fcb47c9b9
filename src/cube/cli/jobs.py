"""``cube job ...`` and ``cube alloc status``: jobs and their allocations, through the manager.

``cube job run`` submits a job file and follows it until the job is where it should be
(service and system: every allocation running; batch: complete), or cannot get there
(an allocation that fits no node, a batch that failed). Whether it is there is a pure
judgement of the manager's answer (:func:`judge`), so it is tested without a cluster.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import click
from rich.console import RenderableType
from rich.table import Column, Table

from cube.cli import deployments as deployment_commands
from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import EXIT_FAILED, handle_errors
from cube.cli.output import short
from cube.cli.tasks import placement_view, task_ports
from cube.errors import CubeError, FieldError, InvalidSpec
from cube.job.model import Allocation, AllocDesired, AllocStatus, Job, JobStatus
from cube.job.reconcile import is_holder
from cube.job.spec import JobSpec, JobType, parse_job_text
from cube.job.summary import group_summaries
from cube.job.wire import JobDetail
from cube.task.model import utcnow
from cube.task.specfile import place, syntax_error_at
from cube.task.state import State

#: Seconds between two looks at the job while ``cube job run`` follows it.
POLL = 0.5

P = ParamSpec("P")
R = TypeVar("R")


def read_job_file(path: str) -> tuple[JobSpec, str]:
    """The job file's spec and text; errors name the file and the field path (exit 2),
    or the line and column of a syntax error, as ``cube run``'s do."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidSpec([FieldError(path, f"cannot read job file: {reason}")]) from None
    fmt: Literal["json", "yaml"] = "json" if Path(path).suffix.lower() == ".json" else "yaml"
    try:
        return parse_job_text(text, fmt=fmt), text
    except InvalidSpec as exc:
        where = place(path, syntax_error_at(text, fmt))
        raise InvalidSpec(
            [
                FieldError(where if e.field == "body" else f"{path}: {e.field}", e.message)
                for e in exc.errors
            ]
        ) from None


# --- following a job ----------------------------------------------------------------------------


@dataclass
class GroupProgress:
    name: str
    wanted: int | None  # None: a system group (one per eligible node)
    placed: int = 0
    running: int = 0
    complete: int = 0
    failed: int = 0

    def line(self) -> str:
        of = f" of {self.wanted}" if self.wanted is not None else ""
        text = f"{self.name}: {self.placed} placed, {self.running} running{of}"
        if self.complete:
            text += f", {self.complete} complete"
        if self.failed:
            text += f", {self.failed} failed"
        return text


@dataclass
class Verdict:
    """Where a job stands: done, failed (with reasons), or still on its way."""

    done: bool
    failed: list[str] = field(default_factory=list)
    groups: list[GroupProgress] = field(default_factory=list)
    #: The deployment's own line, if one is followed (its progress; at the end, its status).
    summary: str = ""
    #: Failed because allocations fit no node: the job stays, and waits for one.
    blocked: bool = False

    def line(self) -> str:
        return self.summary or self.groups_line()

    def groups_line(self) -> str:
        return "; ".join(g.line() for g in self.groups)


def judge(detail: JobDetail) -> Verdict:
    """Whether ``detail``'s job is where it should be, cannot get there, or is on its way.

    Only allocations of the current version count. A placement that found no node
    fails the run once nothing else is in flight (no allocation starting or stopping,
    which could free what it needs); its reason names the filter that stopped it.
    """
    job, spec = detail.job, detail.spec
    current = [a for a in detail.allocations if is_holder(a) and a.version == job.version]
    groups = []
    for group in spec.groups:
        mine = [a for a in current if a.group == group.name]
        wanted = None if spec.type is JobType.SYSTEM else group.wanted
        counts = Counter(a.status for a in mine)
        groups.append(
            GroupProgress(
                group.name,
                wanted,
                placed=sum(1 for a in mine if a.node is not None),
                running=counts[AllocStatus.RUNNING],
                complete=counts[AllocStatus.COMPLETE],
                failed=counts[AllocStatus.FAILED],
            )
        )
    verdict = Verdict(done=False, groups=groups)
    if job.status is JobStatus.FAILED:
        verdict.failed.append(f"job {job.id} failed: {job.status_reason}")
        return verdict
    if job.status is JobStatus.DEAD:
        verdict.failed.append(f"job {job.id} was stopped")
        return verdict
    if spec.type is JobType.BATCH:
        verdict.done = job.status is JobStatus.COMPLETE
    elif spec.type is JobType.SYSTEM:
        verdict.done = bool(current) and all(a.status is AllocStatus.RUNNING for a in current)
    else:
        verdict.done = all(g.running == g.wanted for g in groups) and not any(
            not is_holder(a) and a.desired is AllocDesired.STOP and not a.is_terminal
            for a in detail.allocations
        )
    if verdict.done:
        return verdict
    unplaced = [a for a in current if a.node is None and a.placement is not None]
    in_flight = any(
        (a.node is not None and a.status is AllocStatus.PENDING)
        or (a.desired is AllocDesired.STOP and not a.is_terminal)
        for a in detail.allocations
    )
    if unplaced and not in_flight:
        verdict.failed += [f"{a.name} cannot be placed: {a.status_reason}" for a in unplaced]
        verdict.blocked = True
    return verdict


def follow(client: ManagerClient, job_id: str, *, version: int, timeout: float) -> Verdict:
    """Show the job's progress until it is done or failed: a batch job's by :func:`judge`,
    a service's or system job's by its deployment of ``version``
    (:func:`cube.cli.deployments.judge_deployment`)."""
    deadline = time.monotonic() + timeout
    with out.progress(f"job {job_id}: submitted") as update:
        while True:
            detail = client.job(job_id)
            verdict = judge(detail)
            if detail.spec.type is not JobType.BATCH and not verdict.failed:
                verdict = _by_deployment(client, detail, version, verdict)
            update(f"job {job_id}: {verdict.line()}")
            if verdict.done or verdict.failed:
                return verdict
            if time.monotonic() > deadline:
                verdict.failed.append(f"not there after {timeout:g}s: {verdict.line()}")
                return verdict
            time.sleep(POLL)


def _by_deployment(
    client: ManagerClient, detail: JobDetail, version: int, verdict: Verdict
) -> Verdict:
    """The verdict of the deployment of ``version`` (the job's may have moved on: a revert)."""
    d = detail.deployment
    if d is None or d.version != version:
        d = deployment_commands.deployment_of(client, detail.job.id, version)
    if d is None:
        return Verdict(done=False, groups=verdict.groups)
    seen = deployment_commands.judge_deployment(d)
    return Verdict(
        done=seen.done,
        failed=[seen.failed] if seen.failed else [],
        groups=verdict.groups,
        summary=seen.line if not seen.done else deployment_commands.deployment_line(d),
    )


# --- commands -----------------------------------------------------------------------------------


@click.group("job")
def job_group() -> None:
    """Run, inspect, scale and stop jobs: groups of tasks that run together.

    \b
    Example:
      cube job run examples/shop.yaml
      cube job status shop
      cube job scale shop web 5
      cube job stop shop
    """


def following(func: Callable[P, R]) -> Callable[P, R]:
    """The options of a command that follows its job: ``--detach`` and ``--timeout``."""
    detach = click.option(
        "--detach", is_flag=True, help="Return once submitted; do not follow the job."
    )
    timeout = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=300.0,
        show_default=True,
        help="Seconds to follow the job before giving up (exit 1).",
    )
    return detach(timeout(func))


def follow_to_the_end(
    client: ManagerClient, job_id: str, *, version: int, timeout: float, output: out.Format
) -> None:
    """Follow the job's ``version`` (progress on stderr); its last lines on stdout (the
    groups, and the deployment's end; with ``json``, the job as ``cube job status JOB -o
    json`` shows it), or exit 1 with the reasons it cannot get where it should be."""
    verdict = follow(client, job_id, version=version, timeout=timeout)
    if output == "json":  # where it stands, even when it cannot get there: scripts read it
        out.print_json(client.job(job_id))
    if verdict.failed:
        for reason in verdict.failed:
            click.echo(f"Error: {reason}", err=True)
        if verdict.blocked:
            click.echo(
                f"job {job_id} stays, blocked: it is placed when a node can take it"
                f" (`cube job stop {job_id}` gives up)",
                err=True,
            )
        raise SystemExit(EXIT_FAILED)
    if output == "json":
        return
    click.echo(f"job {job_id}: {verdict.groups_line()}")
    if verdict.summary:
        click.echo(f"deployment of {verdict.summary}")


def print_job(job: Job, line: str, output: out.Format) -> None:
    """What a command that changed a job prints: ``line``, or the job's JSON."""
    if output == "json":
        out.print_json(job)
    else:
        click.echo(line)


@job_group.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@following
@out.output_option
@handle_errors
@manager_option
def run_command(
    client: ManagerClient, file: str, detach: bool, timeout: float, output: out.Format
) -> None:
    """Submit a job file and follow it until it is where it should be.

    Progress per group goes to stderr: placed / running of count. Exit 0 once
    every allocation runs (service, system) or the job is complete (batch);
    exit 1 when it cannot get there, with the reasons (an allocation that fits
    no node names the filter that stopped it). The same file again changes
    nothing; a changed one becomes the job's next version. With -o json: the
    job as `cube job status JOB -o json` shows it at the end (with --detach,
    the job as submitted).

    \b
    Example:
      cube job run examples/shop.yaml
      cube job run examples/batch.yaml --detach
      cube job run examples/shop.yaml -o json | jq '.allocations[] | {name, node}'
    """
    spec, text = read_job_file(file)
    job, created = client.submit_job(text)
    note = f"version {job.version}" if created else f"version {job.version} (unchanged)"
    out.stderr_console().print(f"job {job.id}: {note}")
    if detach:
        print_job(job, job.id, output)
        return
    follow_to_the_end(client, spec.job, version=job.version, timeout=timeout, output=output)


@job_group.command("plan")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@out.output_option
@handle_errors
@manager_option
def plan_command(client: ManagerClient, file: str, output: out.Format) -> None:
    """Show what running a job file would do now, without changing anything.

    What would be placed (and where), stopped, updated, kept, and what could not
    be placed and why. Exit 0 when everything can be placed, 1 when something
    cannot.

    \b
    Example:
      cube job plan examples/shop.yaml
      cube job plan examples/shop.yaml -o json | jq '.entries[] | select(.action == "place")'
    """
    _, text = read_job_file(file)
    plan = client.plan_job(text)
    if output == "json":
        out.print_json(plan)
    else:
        table = out.make_table("ACTION", "SLOT", "ALLOC", "NODE", Column("REASON", overflow="fold"))
        for e in plan.entries:
            slot = f"{e.group}[{e.index}]" if e.group is not None else out.DASH
            node = e.node or (out.DASH if e.placement is None else "none fits")
            out.add_row(table, e.action, slot, short(e.alloc or "") or out.DASH, node, e.reason)
        out.show(
            out.details(
                [
                    ("Job", f"{plan.job} version {plan.version}"),
                    ("Status", f"{out.title(plan.status)}: {plan.status_reason}"),
                ]
            ),
            out.section("Plan", table),
        )
    if plan.unplaceable:
        raise SystemExit(EXIT_FAILED)


@job_group.command("status")
@click.argument("job_id", metavar="[JOB]", required=False)
@out.output_option
@handle_errors
@manager_option
def status_command(client: ManagerClient, job_id: str | None, output: out.Format) -> None:
    """List jobs, or show one: its groups by state, its allocations, and for the newest
    failed allocations the reason (exit code) and the last lines their task wrote.

    \b
    Example:
      cube job status
      cube job status shop
      cube job status shop -o json | jq '.allocations[] | {node, status}'
    """
    if job_id is None:
        jobs = client.jobs()
        if output == "json":
            out.print_json(jobs)
        elif jobs:
            table = out.make_table("JOB", "VERSION", "STATUS", Column("REASON"), "AGE")
            now = utcnow()
            for j in jobs:
                age = out.age(j.created_at, now=now)
                out.add_row(table, j.id, str(j.version), out.title(j.status), j.status_reason, age)
            out.show(table)
        else:
            out.stderr_console().print("No jobs: submit one with `cube job run FILE`.")
        return
    detail = client.job(job_id)
    if output == "json":
        out.print_json(detail)
        return
    failures = failure_view(client, detail)
    out.show(*job_view(detail), *([out.section("Failures", failures)] if failures else []))


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
    return [
        head,
        out.section("Groups", groups),
        out.section("Allocations", alloc_table(detail.allocations)),
    ]


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


@job_group.command("stop")
@click.argument("job_id", metavar="JOB")
@click.option("--purge", is_flag=True, help="Also forget the job, its versions and allocations.")
@out.output_option
@handle_errors
@manager_option
def stop_command(client: ManagerClient, job_id: str, purge: bool, output: out.Format) -> None:
    """Stop every allocation of a job (a later `cube job run` starts it again).

    \b
    Example:
      cube job stop shop
      cube job stop shop --purge
      cube job stop shop -o json | jq .status
    """
    job = client.stop_job(job_id, purge=purge)
    print_job(job, f"job {job.id}: {'purged' if purge else 'stopping'}", output)


# A negative COUNT ("-1") reaches the command as an argument, not as an unknown option,
# so that it is refused in one line naming the count.
@job_group.command("scale", context_settings={"ignore_unknown_options": True})
@click.argument("job_id", metavar="JOB")
@click.argument("group")
@click.argument("count", type=int)
@following
@out.output_option
@handle_errors
@manager_option
def scale_command(
    client: ManagerClient,
    job_id: str,
    group: str,
    count: int,
    detach: bool,
    timeout: float,
    output: out.Format,
) -> None:
    """Set how many allocations of a group run (nothing else changes), and follow the job
    until they do, as `cube job run` does: exit 0 once the group is at its count, 1 with
    the reasons when it cannot get there. -o json prints what `cube job run -o json` does.

    \b
    Example:
      cube job scale shop web 5
      cube job scale shop web 0 --detach
      cube job scale shop web 3 -o json | jq '[.allocations[] | select(.status == "running")]'
    """
    if count < 0:
        raise InvalidSpec([FieldError("count", f"must be >= 0, not {count}")])
    job = client.scale_job(job_id, group, count)
    out.stderr_console().print(f"job {job.id}: version {job.version}, {group} at {count}")
    if detach:
        print_job(job, job.id, output)
        return
    follow_to_the_end(client, job.id, version=job.version, timeout=timeout, output=output)


for _command in deployment_commands.COMMANDS:
    job_group.add_command(_command)


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
