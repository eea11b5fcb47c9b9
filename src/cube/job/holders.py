"""The holders of a job's slots, and what they say of the job as a whole.

A slot's *holder* is its allocation that the manager still wants and that nothing has
replaced yet (see :mod:`cube.job.reconcile`); the rest are history. Apart from the
reconciler because more than it reads holders (the job summary, the placement failures,
``cube job run``'s progress), and because a job's status is a verdict on the
holders as they stand, not a step of the plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from cube.job.model import Allocation, AllocDesired, AllocStatus, JobStatus
from cube.job.spec import JobSpec, JobType, reschedule_policy


def is_holder(alloc: Allocation) -> bool:
    """Whether the allocation holds its slot: wanted, not replaced yet, not a canary."""
    return alloc.desired is AllocDesired.RUN and alloc.replaced_by is None and not alloc.canary


def failed_for_good(spec: JobSpec, allocs: Sequence[Allocation]) -> Allocation | None:
    """Batch: the first holder whose reschedule attempts are used up (the job has failed)."""
    if spec.type is not JobType.BATCH:
        return None
    for group in spec.groups:
        policy = reschedule_policy(spec, group)
        for alloc in allocs:
            if (
                alloc.group == group.name
                and alloc.index < group.wanted
                and is_holder(alloc)
                and alloc.status is AllocStatus.FAILED
                and policy.exhausted(alloc.reschedule_attempts)
            ):
                return alloc
    return None


def job_status(
    spec: JobSpec, allocs: Sequence[Allocation], doomed: Allocation | None
) -> tuple[JobStatus, str]:
    """The job's status and why, derived from its holders as they stand."""
    holders = [a for a in allocs if is_holder(a)]
    live = [a for a in holders if not a.is_terminal]
    if doomed is not None:
        why = f"{doomed.name} failed for good"
        if doomed.status_reason:
            why += f": {doomed.status_reason}"
        if live:
            return JobStatus.RUNNING, f"{why}; waiting for {len(live)} to finish"
        return JobStatus.FAILED, why
    if spec.type is JobType.BATCH:
        complete = {(a.group, a.index) for a in holders if a.status is AllocStatus.COMPLETE}
        wanted = sum(g.wanted for g in spec.groups)
        if (
            sum(1 for g in spec.groups for i in range(g.wanted) if (g.name, i) in complete)
            == wanted
        ):
            done = "the allocation" if wanted == 1 else f"all {wanted} allocations"
            return JobStatus.COMPLETE, f"{done} completed"
    running = sum(1 for a in live if a.status is AllocStatus.RUNNING)
    if running:
        return JobStatus.RUNNING, f"{running} allocation{'' if running == 1 else 's'} running"
    if spec.type is not JobType.SYSTEM and all(g.wanted == 0 for g in spec.groups):
        return JobStatus.RUNNING, "every group is scaled to 0"
    policies = {g.name: reschedule_policy(spec, g) for g in spec.groups}
    given_up = sum(
        1
        for a in holders
        if a.status is AllocStatus.FAILED
        and a.group in policies
        and policies[a.group].exhausted(a.reschedule_attempts)
    )
    if given_up:
        return JobStatus.PENDING, f"no allocation runs; {given_up} failed for good"
    return JobStatus.PENDING, "no allocation runs yet"
