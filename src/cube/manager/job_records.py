"""The job service's records: every job, its versions and its allocations, in memory.

Loaded from the store when the manager starts; every change after that is a draft
(:mod:`cube.manager.job_drafts`: the operations in :mod:`cube.manager.jobs`, the applier,
the pass) saved first and then published here, so that what the API shows is what a
restarted manager resumes from. Kept apart because every other part reads them, and two
indices (allocations by job, by node) must stay in step with the allocations themselves:
only :meth:`JobRecords.publish` and :meth:`JobRecords.reload` (and, as the records are
loaded, :meth:`JobRecords.add`) change them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from cube.job.model import Allocation, AllocDesired, Job, JobVersion
from cube.job.spec import JobType
from cube.manager.lookup import find_alloc, not_found
from cube.store.base import Store

if TYPE_CHECKING:
    from cube.manager.job_drafts import JobDraft


class JobRecords:
    """Jobs, versions and allocations, with allocations indexed by job and by node."""

    def __init__(self, store: Store) -> None:
        self.jobs: dict[str, Job] = {j.id: j for j in store.list_jobs()}
        self.versions: dict[str, dict[int, JobVersion]] = {
            j: {v.number: v for v in store.job_versions(j)} for j in self.jobs
        }
        self.allocs: dict[str, Allocation] = {}
        #: Allocation IDs by job and by node (a dict as an ordered set: oldest first).
        self._by_job: dict[str, dict[str, None]] = {}
        self._by_node: dict[str, dict[str, None]] = {}
        loaded = store.list_allocations()
        # An older Cube recorded a placement that found no node as an allocation without
        # one; none is made now (cube.job.blocked), and the next pass finds again that it
        # does not fit. Ignored, and its predecessor is again the holder of its slot.
        unplaced = {a.id for a in loaded if a.node is None}
        for alloc in loaded:
            if alloc.id in unplaced:
                continue
            if alloc.replaced_by in unplaced:
                alloc.replaced_by = None
            self.add(alloc)

    # --- jobs and versions --------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        if (job := self.jobs.get(job_id)) is None:
            raise not_found("job", job_id, self.jobs)
        return job

    def current_version(self, job: Job) -> JobVersion:
        return self.versions[job.id][job.version]

    def job_versions(self, job_id: str) -> list[JobVersion]:
        self.job(job_id)
        return [self.versions[job_id][n] for n in sorted(self.versions.get(job_id, {}))]

    def job_type(self, job: Job) -> JobType:
        return self.current_version(job).spec.type

    # --- allocations --------------------------------------------------------------------------
    def allocations(self, *, job: str | None = None, node: str | None = None) -> list[Allocation]:
        ids: Collection[str] = self.allocs
        if job is not None:
            ids = self._by_job.get(job, {})
        elif node is not None:
            ids = self._by_node.get(node, {})
        allocs = [
            a
            for a in map(self.allocs.__getitem__, ids)
            if (job is None or a.job == job) and (node is None or a.node == node)
        ]
        return sorted(allocs, key=lambda a: a.created_at)

    def allocation(self, alloc_id: str) -> Allocation:
        return find_alloc(self.allocs, alloc_id)

    def alloc_ids(self, job: str) -> Collection[str]:
        """The IDs of the job's allocations, oldest first (do not change it)."""
        return self._by_job.get(job, {})

    def jobs_on(self, node: str) -> Iterable[str]:
        """The jobs of the allocations on ``node`` (one per allocation)."""
        return (self.allocs[a].job for a in self._by_node.get(node, {}))

    def live_nodes(self, job: str) -> set[str]:
        """The nodes the job's live allocations are on."""
        return {
            a.node
            for a in map(self.allocs.__getitem__, self._by_job.get(job, {}))
            if a.node is not None and not a.is_terminal and a.desired is AllocDesired.RUN
        }

    def add(self, alloc: Allocation) -> None:
        """Keep ``alloc`` (new, or in place of its older record), indexed by job and node."""
        old = self.allocs.get(alloc.id)
        if old is not None and old.node is not None and old.node != alloc.node:
            self._by_node.get(old.node, {}).pop(alloc.id, None)
        self.allocs[alloc.id] = alloc
        self._by_job.setdefault(alloc.job, {})[alloc.id] = None
        if alloc.node is not None:
            self._by_node.setdefault(alloc.node, {})[alloc.id] = None

    def forget(self, alloc: Allocation) -> None:
        self.allocs.pop(alloc.id, None)
        self._by_job.get(alloc.job, {}).pop(alloc.id, None)
        if alloc.node is not None:
            self._by_node.get(alloc.node, {}).pop(alloc.id, None)

    # --- changes: published once saved -------------------------------------------------------
    def publish(self, draft: JobDraft) -> None:
        """Show a saved change of one job: its records become the draft's."""
        if draft.purge:
            self.reload(draft.id, None, [], [])
            return
        self.jobs[draft.id] = draft.job
        for v in draft.versions:
            self.versions.setdefault(draft.id, {})[v.number] = v
        for alloc in draft.allocs.values():
            self.add(alloc)

    def reload(
        self,
        job_id: str,
        job: Job | None,
        versions: Iterable[JobVersion],
        allocs: Iterable[Allocation],
    ) -> None:
        """The job's records as the store holds them (None: it has no such job)."""
        for alloc in [self.allocs[a] for a in list(self._by_job.pop(job_id, {}))]:
            self.forget(alloc)
        if job is None:
            self.jobs.pop(job_id, None)
            self.versions.pop(job_id, None)
            return
        self.jobs[job_id] = job
        self.versions[job_id] = {v.number: v for v in versions}
        for alloc in allocs:
            self.add(alloc)
