"""Following a job until it is where it should be: ``cube job run`` and ``cube job scale``.

A service or system job is where it should be once every allocation runs, a batch job once
it is complete; it cannot get there when an allocation fits no node or a batch failed.
Whether it is there is a pure judgement of the manager's answer (:func:`judge`), so it is
tested without a cluster.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import click

from cube.cli import deployments as deployment_commands
from cube.cli import output as out
from cube.cli.client import ManagerClient
from cube.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED
from cube.job.blocked import blocked_groups
from cube.job.holders import is_holder
from cube.job.model import AllocDesired, AllocStatus, JobStatus
from cube.job.spec import JobType
from cube.job.wire import JobDetail

#: Seconds between two looks at the job while ``cube job run`` follows it.
POLL = 0.5

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class GroupProgress:
    name: str
    wanted: int | None  # None: a system group (one per eligible node)
    placed: int = 0
    running: int = 0
    complete: int = 0
    failed: int = 0
    #: Canaries of the version followed that run (they hold no slot until promoted).
    canaries: int = 0
    #: Allocations of earlier versions that still hold a slot and run (not replaced yet).
    older: int = 0

    def line(self) -> str:
        of = f" of {self.wanted}" if self.wanted is not None else ""
        text = f"{self.name}: {self.placed} placed, {self.running} running{of}"
        if self.complete:
            text += f", {self.complete} complete"
        if self.failed:
            text += f", {self.failed} failed"
        if self.canaries:
            text += f", {self.canaries} {'canary' if self.canaries == 1 else 'canaries'} running"
        if self.older:
            text += f"; {self.older} of an earlier version running"
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
    #: A batch job's end, as ``cube job status`` says it (``Complete: all 10 allocations
    #: completed``): a batch job has no deployment whose end says it is over.
    end: str = ""

    def line(self) -> str:
        return self.summary or self.groups_line()

    def groups_line(self) -> str:
        return "; ".join(g.line() for g in self.groups)


def judge(detail: JobDetail) -> Verdict:
    """Whether ``detail``'s job is where it should be, cannot get there, or is on its way.

    Only allocations of the current version count. A placement that found no node (a
    placement failure of the job's, :mod:`cube.job.blocked`: it has no allocation) fails
    the run once nothing else is in flight (no allocation starting or stopping, which
    could free what it needs); its reason names the filters that stopped the nodes.
    """
    job, spec = detail.job, detail.spec
    current = [a for a in detail.allocations if is_holder(a) and a.version == job.version]
    running = [a for a in detail.allocations if a.status is AllocStatus.RUNNING]
    groups = []
    for group in spec.groups:
        mine = [a for a in current if a.group == group.name]
        wanted = None if spec.type is JobType.SYSTEM else group.wanted
        counts = Counter(a.status for a in mine)
        beside = [a for a in running if a.group == group.name and a.version != job.version]
        groups.append(
            GroupProgress(
                group.name,
                wanted,
                placed=len(mine),
                running=counts[AllocStatus.RUNNING],
                complete=counts[AllocStatus.COMPLETE],
                failed=counts[AllocStatus.FAILED],
                canaries=sum(
                    1
                    for a in running
                    if a.group == group.name and a.canary and a.version == job.version
                ),
                older=sum(1 for a in beside if is_holder(a)),
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
        if verdict.done:
            verdict.end = f"{out.title(job.status)}: {job.status_reason}"
    elif spec.type is JobType.SYSTEM:
        verdict.done = bool(current) and all(a.status is AllocStatus.RUNNING for a in current)
    else:
        verdict.done = all(g.running == g.wanted for g in groups) and not any(
            not is_holder(a) and a.desired is AllocDesired.STOP and not a.is_terminal
            for a in detail.allocations
        )
    if verdict.done:
        return verdict
    blocked = blocked_groups(spec, detail.allocations, detail.placement_failures)
    in_flight = any(
        (a.desired is AllocDesired.RUN and a.status is AllocStatus.PENDING)
        or (a.desired is AllocDesired.STOP and not a.is_terminal)
        for a in detail.allocations
    )
    if blocked and not in_flight:
        verdict.failed += [f"{job.id}.{g.filtered_line}" for g in blocked]
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
    json`` shows it), or exit 1 with the reasons it cannot get where it should be.

    Ctrl-C stops following, not the job: it says so (and how to find it again) and exits
    130, as a command interrupted in a shell does."""
    try:
        verdict = follow(client, job_id, version=version, timeout=timeout)
    except KeyboardInterrupt:
        click.echo(
            f"\njob {job_id}: no longer followed (Ctrl-C); the job goes on:"
            f" `cube job status {job_id}` shows it, `cube job stop {job_id}` stops it",
            err=True,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
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
    if verdict.end:
        click.echo(f"job {job_id}: {verdict.end}")
