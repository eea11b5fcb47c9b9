"""``cube job promote | pause | resume | fail | history | deployments``.

``cube job run`` follows a service or system job's deployment (:func:`judge_deployment`,
pure): exit 0 once it succeeded (or waits for its canaries to be promoted), 1 once it
failed or was rolled back, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import click
from rich.table import Column
from rich.text import Text

from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors
from cube.cli.output import short
from cube.errors import FieldError, InvalidSpec
from cube.job.deployment import Deployment, DeploymentStatus


@dataclass(frozen=True)
class DeploymentVerdict:
    done: bool
    failed: str | None
    line: str


def judge_deployment(d: Deployment) -> DeploymentVerdict:
    """Where deployment ``d`` stands for ``cube job run``: done, failed (why), or going."""
    parts = []
    for name, g in d.groups.items():
        text = f"{name}: {g.placed} placed, {g.healthy} healthy of {g.desired}"
        if g.desired_canaries and not g.promoted:
            text += f", {len(g.canaries)} of {g.desired_canaries} canaries"
        parts.append(text)
    line = "; ".join(parts) or d.status_reason
    if d.status is DeploymentStatus.SUCCESSFUL:
        return DeploymentVerdict(True, None, line)
    if d.status is DeploymentStatus.WAITING:
        return DeploymentVerdict(True, None, f"waiting for promotion: {d.status_reason}")
    if d.status.active:
        return DeploymentVerdict(False, None, line)
    return DeploymentVerdict(
        False,
        f"deployment of version {d.version} {d.status.title.lower()}: {d.status_reason}",
        line,
    )


def deployment_of(client: ManagerClient, job_id: str, version: int) -> Deployment | None:
    """The newest deployment of ``version`` of the job, or None (not made yet)."""
    mine = [d for d in client.job_deployments(job_id) if d.version == version]
    return mine[-1] if mine else None


def deployment_line(d: Deployment) -> str:
    return f"version {d.version}: {d.status.title}: {d.status_reason}"


def print_deployment(d: Deployment, job_id: str, output: out.Format) -> None:
    """What a command that moved a deployment prints: one line, or the deployment's JSON."""
    if output == "json":
        out.print_json(d)
    else:
        click.echo(f"job {job_id}: {deployment_line(d)}")


@click.command("promote")
@click.argument("job_id", metavar="JOB")
@out.output_option
@handle_errors
@manager_option
def promote_command(client: ManagerClient, job_id: str, output: out.Format) -> None:
    """Promote the healthy canaries of a job's deployment: the rolling update goes on.

    \b
    Example:
      cube job promote shop
      cube job promote shop -o json | jq .status
    """
    print_deployment(client.promote_job(job_id), job_id, output)


@click.command("pause")
@click.argument("job_id", metavar="JOB")
@out.output_option
@handle_errors
@manager_option
def pause_command(client: ManagerClient, job_id: str, output: out.Format) -> None:
    """Pause a job's running deployment: nothing more is replaced until it resumes.

    \b
    Example:
      cube job pause shop
      cube job resume shop
    """
    print_deployment(client.pause_job(job_id), job_id, output)


@click.command("resume")
@click.argument("job_id", metavar="JOB")
@out.output_option
@handle_errors
@manager_option
def resume_command(client: ManagerClient, job_id: str, output: out.Format) -> None:
    """Resume a job's paused deployment.

    \b
    Example:
      cube job resume shop
    """
    print_deployment(client.resume_job(job_id), job_id, output)


@click.command("fail")
@click.argument("job_id", metavar="JOB")
@out.output_option
@handle_errors
@manager_option
def fail_command(client: ManagerClient, job_id: str, output: out.Format) -> None:
    """Fail a job's running deployment: its canaries stop, and the job goes back to the
    last version whose deployment succeeded.

    \b
    Example:
      cube job fail shop
    """
    print_deployment(client.fail_job(job_id), job_id, output)


@click.command("history")
@click.argument("job_id", metavar="JOB")
@out.output_option
@handle_errors
@manager_option
def history_command(client: ManagerClient, job_id: str, output: out.Format) -> None:
    """List the versions of a job, oldest first, each with what changed and how its
    deployment went.

    \b
    Example:
      cube job history shop
      cube job history shop -o json | jq '.[-1].changes'
    """
    entries = client.job_history(job_id)
    if output == "json":
        out.print_json(entries)
        return
    table = out.make_table(
        "VERSION", "SUBMITTED", "GROUPS", "DEPLOYMENT", Column("CHANGES", overflow="fold")
    )
    for e in entries:
        status = DeploymentStatus(e.deployment).title if e.deployment else out.DASH
        groups = ", ".join(
            f"{name}={'system' if count is None else count}" for name, count in e.groups.items()
        )
        first = "first version" if e.version == 1 else "none"
        changes = Text("\n").join(out.inert_text(c) for c in e.changes) if e.changes else first
        out.add_row(table, str(e.version), out.timestamp(e.submitted_at), groups, status, changes)
    out.show(table)


@click.command("deployments")
@click.argument("job_id", metavar="JOB")
@out.output_option
@handle_errors
@manager_option
def deployments_command(client: ManagerClient, job_id: str, output: out.Format) -> None:
    """List a job's deployments, oldest first: version, status and why.

    \b
    Example:
      cube job deployments shop
    """
    deployments = client.job_deployments(job_id)
    if output == "json":
        out.print_json(deployments)
        return
    table = out.make_table("ID", "VERSION", "STATUS", "HEALTHY", Column("REASON", overflow="fold"))
    for d in deployments:
        healthy = sum(g.healthy for g in d.groups.values())
        desired = sum(g.desired for g in d.groups.values())
        version = f"{d.from_version} -> {d.version}" if d.from_version else str(d.version)
        status = d.status.title + (" (revert)" if d.revert else "")
        out.add_row(table, short(d.id), version, status, f"{healthy}/{desired}", d.status_reason)
    out.show(table)


COMMANDS = (
    promote_command,
    pause_command,
    resume_command,
    fail_command,
    history_command,
    deployments_command,
)


def version_number(given: str) -> int:
    """A version as ``cube job history`` lists them: 1, 2, ..."""
    if not given.isdigit() or int(given) < 1:
        why = (
            f"must be a version number as `cube job history` lists them (1, 2, ...), not {given!r}"
        )
        raise InvalidSpec([FieldError("version", why)])
    return int(given)
