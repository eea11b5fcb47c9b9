"""``cube job ...``: submit, plan, inspect, scale and stop jobs, through the manager.

``cube job run`` and ``cube job scale`` follow the job until it is where it should be
(:mod:`cube.cli.job_follow`); ``cube job status JOB`` shows it (:mod:`cube.cli.job_views`);
the deployment commands (promote, pause, ...) are in :mod:`cube.cli.deployments`, and
``cube alloc status`` in :mod:`cube.cli.allocs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click
from rich.table import Column
from rich.text import Text

from cube.cli import deployments as deployment_commands
from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import EXIT_FAILED, handle_errors
from cube.cli.job_follow import follow_to_the_end, following
from cube.cli.job_views import blocked_view, failure_view, job_view
from cube.cli.output import short
from cube.errors import FieldError, InvalidSpec
from cube.job.blocked import BlockedGroup
from cube.job.model import Job
from cube.job.parse import parse_job, wrong_kind
from cube.job.spec import JobSpec
from cube.task.model import utcnow
from cube.task.parse import decode_spec_text
from cube.task.specfile import located, place, syntax_error_at


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
        data = decode_spec_text(text, fmt=fmt)
        if (other := wrong_kind(data, want_job=True)) is not None:
            raise InvalidSpec([FieldError(path, other)]) from None
        return parse_job(data), text
    except InvalidSpec as exc:
        if any(e.field in ("body", path) for e in exc.errors):  # not YAML, not a job file
            where = place(path, syntax_error_at(text, fmt))
            raise InvalidSpec([FieldError(where, e.message) for e in exc.errors]) from None
        raise InvalidSpec(located(path, text, exc.errors)) from None


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
        failed = plan.placement_failures.items()
        blocked = blocked_view([BlockedGroup(g, f.count, None, f) for g, f in failed])
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
            *([out.section("Placement Failure", Text(blocked))] if blocked else []),
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


# A VERSION of "-1" or "abc" reaches the command (not click's "No such option '-1'" or
# "'abc' is not a valid integer range") and is refused in one line naming the version.
@job_group.command("revert", context_settings={"ignore_unknown_options": True})
@click.argument("job_id", metavar="JOB")
@click.argument("version", required=False)
@following
@out.output_option
@handle_errors
@manager_option
def revert_command(
    client: ManagerClient,
    job_id: str,
    version: str | None,
    detach: bool,
    timeout: float,
    output: out.Format,
) -> None:
    """Go back to an earlier version (default: the last one that deployed successfully),
    and follow its deployment as `cube job run` does.

    The spec of that version becomes the job's next version; its allocations still
    running are kept, and no canary phase runs. Exit 0 once the revert's deployment
    succeeded, 1 with the reasons when it cannot.

    \b
    Example:
      cube job revert shop
      cube job revert shop 2 --detach
    """
    number = None if version is None else deployment_commands.version_number(version)
    job = client.revert_job(job_id, number)
    out.stderr_console().print(f"job {job.id}: {job.status_reason}")
    if detach:
        print_job(job, job.id, output)
        return
    follow_to_the_end(client, job.id, version=job.version, timeout=timeout, output=output)


for _command in deployment_commands.COMMANDS:
    job_group.add_command(_command)
