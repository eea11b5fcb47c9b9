"""What a job's groups stand at: how many are wanted, queued, and in each status.

One pure reading of a job's allocations, shown by ``cube job status JOB`` (its Groups
table) and by the dashboard's job pages, so that both say the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from cube.job.holders import is_holder
from cube.job.model import Allocation, AllocStatus, Job
from cube.job.spec import JobSpec, JobType


@dataclass(frozen=True)
class GroupSummary:
    name: str
    #: The spec's count; None for a system group (one per eligible node).
    count: int | None
    #: The job is stopped: it wants none, and ``count`` is what a ``cube job run`` starts again.
    stopped: bool
    #: Wanted but with no allocation yet (Nomad's "queued"); None for a system group.
    queued: int | None
    statuses: Counter[AllocStatus]

    @property
    def desired(self) -> str:
        """``"3"``, ``"per node"``, ``"0 (stopped; count 3)"`` or ``"0 (stopped)"``."""
        if self.stopped:
            return "0 (stopped)" if self.count is None else f"0 (stopped; count {self.count})"
        return "per node" if self.count is None else str(self.count)


def group_summaries(job: Job, spec: JobSpec, allocs: Iterable[Allocation]) -> list[GroupSummary]:
    """Per group of ``spec`` (the job's current version): how many allocations should run,
    how many have no allocation yet (they wait for a node, or for the next pass), and how
    many hold their slot in each status.

    A stopped job wants none; its counts are those of the allocations the stop ended (the
    current version's, not replaced, not canaries), as ``nomad job status`` keeps counting
    a dead job's, not zeros everywhere.
    """
    allocs = list(allocs)
    system = spec.type is JobType.SYSTEM
    rows = []
    for group in spec.groups:
        mine = [a for a in allocs if a.group == group.name]
        if job.stopped:
            held = [
                a
                for a in mine
                if a.version == job.version and a.replaced_by is None and not a.canary
            ]
        else:
            held = [a for a in mine if is_holder(a)]
        queued = 0 if job.stopped else max(0, group.wanted - len(held))
        rows.append(
            GroupSummary(
                name=group.name,
                count=None if system else group.wanted,
                stopped=job.stopped,
                queued=None if system else queued,
                statuses=Counter(a.status for a in held),
            )
        )
    return rows
