"""A change of one job's records, made on copies: saved off the loop, then shown.

Why: the job service's writes (jobs, versions, allocations, deployments) were made on the
event loop, each slice of a pass one SQLite transaction committed there, and the records
changed in place before the store had them: a change the store refused (a full disk) was
shown all the same, and lost at the next restart. They now go the way of every change of
a task or a node (:mod:`cube.manager.registry`, :mod:`cube.store.aio`): made on a draft,
saved through the store's one ordered path (SQLite's own thread, so the loop goes on
while it commits; a PostgreSQL store would await its pool), and shown once saved.

A :class:`JobDraft` is one change of one job: a submit, a scale, a stop or purge, a
deployment moved by hand, or the job's share of a pass's slice. It holds a copy of the
job, the allocations it changes (each copied on its first change: a pass that derives 3
of a job's 1,000 allocations copies 3) or adds, its new versions and deployments, and
what to do once it is shown (start and stop tasks). Whoever decides reads the job
through the draft, so it sees its own changes and nobody else does.

:class:`JobWrites` commits drafts: one change of a job at a time (its guard,
:mod:`cube.manager.guards`, held from the draft's making to its showing, so a change
starts from the last one's result), the job's writes queued together (the drafts of one
slice of a pass are one transaction: see :class:`~cube.store.aio.OffLoopStore`), then
:meth:`JobRecords.publish <cube.manager.job_records.JobRecords.publish>` and
:meth:`Deployments.publish <cube.manager.deployments.Deployments.publish>`. A draft the
store refuses is never shown: the resources its placements held on their nodes are given
back, the caller gets the error (an API request answers 503; a pass logs it and the next
pass makes the change again), and the job is marked *stale*: before anyone changes it
again, its records are read back from the store (:meth:`JobWrites.refresh`). For a
refusal that changes nothing; but a write whose answer was lost (committed, and its
caller cancelled or told otherwise, or one write of the draft refused and another kept)
is shown then, so that a placement saved but not shown is not placed a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

from cube.job.deployment import Deployment
from cube.job.model import Allocation, AllocDesired, Job, JobVersion
from cube.log import get_logger
from cube.manager.guards import Guards
from cube.manager.job_records import JobRecords
from cube.store.aio import AsyncStore
from cube.task.model import Task

if TYPE_CHECKING:
    from cube.manager.deployments import Deployments
    from cube.manager.nodes import NodeRegistry

log = get_logger("cube.manager.jobs")


class JobDraft:
    """One change of one job, on copies (see the module docstring)."""

    def __init__(self, records: JobRecords, job: Job) -> None:
        self.records = records
        #: The job as the change makes it (a copy: its fields are plain values).
        self.job = job.model_copy()
        self.versions: list[JobVersion] = []
        #: Allocations changed or added, by ID (copies of the records).
        self.allocs: dict[str, Allocation] = {}
        self._added: list[str] = []
        #: Deployments saved by the change, by ID (new ones, and new states of old ones).
        self.deployments: dict[str, Deployment] = {}
        #: Delete the job and everything of it.
        self.purge = False
        #: Tasks to start, their resources held on their nodes until the draft is shown
        #: (then started) or refused (then given back).
        self.holds: list[tuple[str, Task]] = []
        #: What to do once shown (stop tasks, log), in order.
        self.effects: list[Callable[[], None]] = []

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def changed(self) -> bool:
        """Whether there is anything to save."""
        return bool(
            self.purge
            or self.versions
            or self.allocs
            or self.deployments
            or self.records.jobs.get(self.id) != self.job
        )

    # --- versions -----------------------------------------------------------------------------
    def version(self, number: int) -> JobVersion:
        for v in self.versions:
            if v.number == number:
                return v
        return self.records.versions[self.id][number]

    def current_version(self) -> JobVersion:
        return self.version(self.job.version)

    def job_versions(self) -> list[JobVersion]:
        known = self.records.versions.get(self.id, {})
        return sorted([*known.values(), *self.versions], key=lambda v: v.number)

    # --- allocations --------------------------------------------------------------------------
    def alloc(self, alloc_id: str) -> Allocation | None:
        """The job's allocation as the change has it (read only: :meth:`edit` to change it)."""
        draft = self.allocs.get(alloc_id)
        if draft is not None:
            return draft
        record = self.records.allocs.get(alloc_id)
        return record if record is not None and record.job == self.id else None

    def edit(self, alloc_id: str) -> Allocation:
        """The job's allocation to change: a copy, made on the first change. Its fields are
        assigned; ``tasks`` and ``events`` are copies too (``transition`` appends)."""
        draft = self.allocs.get(alloc_id)
        if draft is None:
            record = self.alloc(alloc_id)
            if record is None:
                raise KeyError(alloc_id)
            draft = self.allocs[alloc_id] = record.model_copy(
                update={"tasks": dict(record.tasks), "events": list(record.events)}
            )
        return draft

    def add(self, alloc: Allocation) -> None:
        """A new allocation of the job."""
        self.allocs[alloc.id] = alloc
        self._added.append(alloc.id)

    def alloc_ids(self) -> list[str]:
        """The IDs of the job's allocations, oldest first."""
        return [*self.records.alloc_ids(self.id), *self._added]

    def allocations(self) -> list[Allocation]:
        """The job's allocations as the change has them, oldest first."""
        allocs = [a for a in map(self.alloc, self.alloc_ids()) if a is not None]
        return sorted(allocs, key=lambda a: a.created_at)

    def live_nodes(self) -> set[str]:
        """The nodes the job's live allocations are on."""
        return {
            a.node
            for a in map(self.alloc, self.alloc_ids())
            if a is not None
            and a.node is not None
            and not a.is_terminal
            and a.desired is AllocDesired.RUN
        }

    # --- once shown ---------------------------------------------------------------------------
    def then(self, effect: Callable[[], None]) -> None:
        """Do ``effect`` once the change is shown (never, if it is refused)."""
        self.effects.append(effect)


class JobWrites:
    """Commits the job service's drafts; see the module docstring."""

    def __init__(
        self,
        store: AsyncStore,
        records: JobRecords,
        deployments: Deployments,
        nodes: NodeRegistry,
    ) -> None:
        self.store = store
        self.records = records
        self.deployments = deployments
        self.nodes = nodes
        #: One change of a job at a time.
        self.guards = Guards()
        #: Jobs whose last change failed: read back from the store before the next.
        self.stale: set[str] = set()

    @contextlib.asynccontextmanager
    async def change(self, job_id: str) -> AsyncIterator[None]:
        """Hold ``job_id``'s guard for the block, its records read back first if stale.
        Raises StoreUnavailable if they cannot be."""
        async with self.guards.hold(job_id):
            await self.refresh([job_id])
            yield

    def draft(self, job: Job) -> JobDraft:
        return JobDraft(self.records, job)

    async def refresh(self, job_ids: Iterable[str]) -> None:
        """Read the stale ones of ``job_ids`` back from the store (see the module docstring)."""
        for job_id in [j for j in job_ids if j in self.stale]:
            job = await self.store.find_job(job_id)
            versions = await self.store.job_versions(job_id) if job is not None else []
            allocs = await self.store.list_allocations(job=job_id)
            deployments = await self.store.list_deployments(job=job_id)
            self.records.reload(job_id, job, versions, allocs)
            self.deployments.reload(job_id, deployments)
            self.stale.discard(job_id)
            log.info("job records read back from the store", job=job_id)

    async def commit(self, draft: JobDraft) -> None:
        """Save ``draft``, then show it and do its effects. Raises what the store raised
        (nothing shown, the job stale)."""
        try:
            if draft.changed:
                await self._save(draft)
        except BaseException:
            self.discard(draft)
            raise
        self.records.publish(draft)
        self.deployments.publish(draft)
        self._release(draft)  # the tasks' own starts hold them now (no await in between)
        for effect in draft.effects:
            effect()

    async def commit_all(self, drafts: list[JobDraft]) -> dict[str, BaseException]:
        """:meth:`commit` drafts of different jobs together (their writes one transaction);
        returns the refused ones' errors by job."""
        results = await asyncio.gather(*map(self.commit, drafts), return_exceptions=True)
        return {
            d.id: r for d, r in zip(drafts, results, strict=True) if isinstance(r, BaseException)
        }

    def discard(self, draft: JobDraft) -> None:
        """A draft that will not be shown (refused, or its making failed)."""
        self.stale.add(draft.id)
        self._release(draft)

    def _release(self, draft: JobDraft) -> None:
        for node, task in draft.holds:
            self.nodes.release(node, task.id)

    async def _save(self, draft: JobDraft) -> None:
        """The draft's writes, queued together: the job first (a new version before what
        refers to it), its deployments, then its allocations."""
        writes = []
        if draft.purge:
            writes.append(self.store.delete_job(draft.id))
        else:
            if draft.versions or self.records.jobs.get(draft.id) != draft.job:
                writes.append(self.store.save_job(draft.job, draft.versions))
            writes += [self.store.save_deployment(d) for d in draft.deployments.values()]
            if draft.allocs:
                writes.append(self.store.save_allocations(list(draft.allocs.values())))
        results = await asyncio.gather(*writes, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
