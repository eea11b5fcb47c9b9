"""The job loop: when a pass runs, which jobs it looks at, and how it shares the event loop.

One level-triggered loop drives every job, woken by a submission, a change of an
allocation's task, a change of a node, and the plan's ``wake_at`` (a reschedule delay).
Per job, a pass

1. derives each allocation's status from its tasks
   (:func:`cube.manager.allocs.derive_status`, pure);
2. asks :func:`cube.job.reconcile.reconcile` what must change, with the clock passed in;
3. hands the plan to the applier (:mod:`cube.manager.job_applier`).

**At scale** (bench/jobs.py, docs/benchmarks.md section 5): a pass looks only at the
jobs that changed (see :mod:`cube.manager.job_changes`), and at every job every
:data:`FULL_PASS` seconds; it works in slices of :data:`SLICE` seconds, each job's
changes a draft (:mod:`cube.manager.job_drafts`), the slice's drafts saved together (one
store transaction, awaited off the loop: the loop answers the nodes meanwhile) and shown
once saved; and a placement costs O(nodes examined) (:mod:`cube.manager.pass_views`),
not O(nodes).

A pass that fails, or a job's changes the store refuses, is logged and the loop goes
on: nothing refused was shown, the job is reconciled again by the next pass from the
records (read back from the store first), so nothing is lost but time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cube.background import wait_event
from cube.errors import StoreUnavailable
from cube.job.blocked import blocked_status
from cube.job.model import AllocDesired, AllocStatus
from cube.job.reconcile import reconcile
from cube.job.spec import JobType
from cube.log import get_logger
from cube.manager.allocs import derive_status, on_bad_node, task_views
from cube.manager.deployments import Deployments
from cube.manager.job_applier import Applier
from cube.manager.job_changes import JobChanges, Todo
from cube.manager.job_drafts import JobDraft, JobWrites
from cube.manager.job_orphans import Orphans
from cube.manager.job_records import JobRecords
from cube.manager.pass_views import PassViews
from cube.node import Node

if TYPE_CHECKING:
    from cube.manager.core import Manager

log = get_logger("cube.manager.jobs")

#: The longest pause between two passes when nothing wakes the loop (the safety net).
SAFETY_PASS = 5.0
#: The longest and the shortest pause between two passes (see JobLoop.run).
MAX_PAUSE = 0.5
MIN_PAUSE = 0.05
#: How long one job places before the pass commits, lets the loop answer the nodes and
#: the API, and goes on (with fresh node views). A pass that held the loop for seconds
#: made simulated workers miss the manager's calls and stop their tasks (bench/jobs.py).
SLICE = 0.1
#: Seconds between two passes over every job (the others look only at the jobs that
#: changed: see cube.manager.job_changes). The safety net for a change nobody reported.
FULL_PASS = 30.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobLoop:
    """The passes over the jobs; see the module docstring."""

    def __init__(
        self,
        manager: Manager,
        records: JobRecords,
        changes: JobChanges,
        applier: Applier,
        orphans: Orphans,
        deployments: Deployments,
        writes: JobWrites,
    ) -> None:
        self.manager = manager
        self.records = records
        #: What the next pass looks at: a pass reconciles the jobs that changed.
        self.changes = changes
        self.applier = applier
        self.orphans = orphans
        self.deployments = deployments
        self.writes = writes
        self._wake = asyncio.Event()
        self._wake_at: datetime | None = None
        #: Passes completed.
        self.passes = 0
        #: Passes completed that looked at every job.
        self.full_passes = 0
        self._full_due = 0.0  #: time.monotonic() of the next pass over every job
        #: CPU seconds the current pass took itself (not what the loop ran while it waited).
        self._cpu = 0.0
        #: Slices of the last pass (a pause for the loop between two).
        self.slices = 0

    def wake(self) -> None:
        """Something changed (a node, the cluster's capacity): the next pass finds what."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            timeout = SAFETY_PASS
            if self._wake_at is not None:
                timeout = min(timeout, max(0.0, (self._wake_at - utc_now()).total_seconds()))
            await wait_event(self._wake, timeout)
            self._wake.clear()
            full = time.monotonic() >= self._full_due
            if full:
                self._full_due = time.monotonic() + FULL_PASS
            began = time.monotonic()
            try:
                await self.run_pass(utc_now(), full=full)
            except Exception as exc:  # a pass that fails must not end the loop: the next heals
                log.error("job pass failed", exc=exc)
            cpu = self._cpu
            self.passes += 1
            self.manager.telemetry.reconciled(time.monotonic() - began)
            # As the task dispatcher does: a pause as long as the CPU the pass took lets a
            # burst of wakes (every task change wakes it) gather into the next pass, so
            # that passes take at most about half the manager's time. Not after a pass
            # that stopped with placements left (the pass's budget, the send backlog):
            # the loop ran everything else between its slices, and a pause as long as
            # the pass halved the rate at which a large job is placed (bench/jobs.py).
            pause = MIN_PAUSE if self.changes.unfinished else min(cpu, MAX_PAUSE)
            await asyncio.sleep(max(MIN_PAUSE, pause))

    # --- the pass -----------------------------------------------------------------------------
    async def reconcile_all(self, now: datetime) -> None:
        """One pass over every job (see the module docstring)."""
        await self.run_pass(now, full=True)

    async def run_pass(self, now: datetime, *, full: bool = False) -> None:
        """One pass over the jobs that need it (:class:`JobChanges`; every job if ``full``).

        The pass works in slices of about :data:`SLICE` seconds: each job's changes are a
        draft; at the end of a slice its drafts are saved together (one store transaction,
        not one per record), awaited off the loop, so that the loop answers the nodes and
        the API meanwhile; then shown, and their tasks started and stopped. Then it goes
        on with fresh node views (the task dispatcher may have placed meanwhile). A job
        whose slice ended with placements left is reconciled again in the same pass; one
        whose changes the store refused, by the next pass (:meth:`_slice`).
        """
        self._cpu, started_cpu = 0.0, time.process_time()
        self.applier.begin_pass()
        if full:
            self.orphans.stop_unknown()
        self.orphans.forget_stopped()
        views = PassViews(self.manager.list_nodes())
        todo = self._todo(now, full=full)
        self._cpu += time.process_time() - started_cpu
        await self._refresh(todo)
        self.slices = 0
        while todo:
            self.slices += 1
            todo = await self._slice(todo, views, now)
            if todo:
                await asyncio.sleep(0)  # (a slice that saved nothing has not let the loop run)
                views = views.refreshed(self.manager.list_nodes())
        self._wake_at = self.changes.wake_at()
        if full:
            self.full_passes += 1
        if self.changes.unfinished:
            self.wake()  # more to place: the next pass goes on

    async def _refresh(self, todo: dict[str, Todo]) -> None:
        """Read the stale jobs of ``todo`` back from the store (a change of theirs failed:
        see :mod:`cube.manager.job_drafts`); one that cannot be waits for the next pass."""
        for job_id in [j for j in todo if j in self.writes.stale]:
            try:
                async with self.writes.change(job_id):  # (under its guard: read back, then shown)
                    pass
            except StoreUnavailable as exc:
                log.warning("a job's records could not be read back", job=job_id, error=exc.message)
                del todo[job_id]
                self.changes.job_changed(job_id)

    async def _slice(
        self, todo: dict[str, Todo], views: PassViews, now: datetime
    ) -> dict[str, Todo]:
        """One slice of a pass: the jobs of ``todo`` until :data:`SLICE` seconds have gone,
        their drafts saved together, then shown; returns what is left for the next slice.

        Each job's guard is held from its draft's making to its showing; one being changed
        by an operation (a submit, a stop) is left to the next pass, which that operation
        asks for. A job whose changes the store refused is logged and left to the next
        pass (nothing of it was shown; its records are read back first)."""
        cpu = time.process_time()
        started = time.perf_counter()
        again: dict[str, Todo] = {}
        drafts: list[JobDraft] = []
        async with contextlib.AsyncExitStack() as guards:
            for n, (job_id, what) in enumerate(todo.items()):
                job = self.records.jobs.get(job_id)
                if job is None:  # purged during a pause
                    continue
                if n and time.perf_counter() - started >= SLICE:
                    again[job_id] = what  # after the pause, with the others
                    continue
                if self.writes.guards.busy(job_id) or job_id in self.writes.stale:
                    self.changes.job_changed(job_id)  # an operation is changing it
                    continue
                # Free: taken at once, without letting the loop run.
                await guards.enter_async_context(self.writes.guards.hold(job_id))
                draft = self.writes.draft(job)
                self.applier.begin_slice(started + SLICE)
                try:
                    if self.reconcile_job(draft, views, now, derive=what.derive, lazy=what.lazy):
                        again[job_id] = Todo(set())  # cut by the slice: it goes on
                    drafts.append(draft)
                except Exception as exc:
                    log.error("reconciling a job failed", job=job_id, exc=exc)
                    self.writes.discard(draft)
                    self.applier.take_rest(job_id)
            self._cpu += time.process_time() - cpu
            refused = await self.writes.commit_all(drafts)  # the loop goes on meanwhile
        self.applier.saved()
        cpu = time.process_time()
        for job_id, error in refused.items():
            why = "a job's changes were refused; the next pass makes them"
            log.warning(why, job=job_id, error=str(error))
            again.pop(job_id, None)
            self.applier.take_rest(job_id)
            self.changes.job_changed(job_id)
        self._cpu += time.process_time() - cpu
        return again

    def _todo(self, now: datetime, *, full: bool) -> dict[str, Todo]:
        records = self.records

        def system() -> Iterable[str]:
            return (j for j, job in records.jobs.items() if records.job_type(job) is JobType.SYSTEM)

        return self.changes.todo(
            records.jobs,
            self.manager.nodes,
            now,
            full=full,
            jobs_on=records.jobs_on,
            system=system,
            blocked=self.applier.blocks.jobs,
            generation=self.manager.dispatcher.generation,
        )

    def reconcile_job(
        self,
        draft: JobDraft,
        views: PassViews,
        now: datetime,
        *,
        derive: Collection[str] | None = None,
        lazy: bool = False,
    ) -> bool:
        """Derive, reconcile and apply one job on its ``draft`` (placing on ``views``, which
        it updates).

        ``derive``: the allocations to derive (None: all); ``lazy``: stop there unless one
        of them changed. Returns whether the job's slice ended with placements left.
        """
        job = draft.job
        rest = self.applier.take_rest(job.id)
        if derive is not None and not derive and rest is not None and rest[0] == job.version:
            # The rest of a plan a slice (or pass) left, if nothing but time passed since: a
            # change of the job would have marked it for a whole reconcile (derive None).
            version = draft.current_version()
            return self.applier.apply_rest(draft, version, rest, views, now)
        ids = draft.alloc_ids() if derive is None else derive
        changed = False
        for alloc_id in list(ids):
            if draft.alloc(alloc_id) is not None:
                changed |= self._derive(draft, alloc_id, views, now)
        current = self.deployments.current(job, draft)
        if lazy and not changed and (current is None or not current.active):
            return False  # (a deployment judges its allocations' health on any task change)
        advanced = self.deployments.advance(draft, now, views)  # may revert: a new version
        deployment = advanced.deployment
        version = draft.current_version()
        allocs = draft.allocations()
        plan = reconcile(job, version, allocs, views.nodes, now, deployment=deployment)
        cut = self.applier.apply(draft, version, plan, views, now, deployment=deployment)
        due = [t for t in (plan.wake_at, advanced.wake_at) if t is not None]
        self.changes.due(job.id, min(due, default=None))
        status, reason = plan.status, plan.status_reason  # judged before the placements
        failures = self.applier.blocks.failures(job.id)
        if failures:
            status, reason = blocked_status(
                version.spec, status, reason, draft.allocations(), failures
            )
        if (job.status, job.status_reason) != (status, reason):
            job.status, job.status_reason, job.updated_at = status, reason, now
        return cut

    def _derive(
        self, draft: JobDraft, alloc_id: str, nodes: Mapping[str, Node], now: datetime
    ) -> bool:
        """Bring the allocation's status and task records in line with its tasks (in the
        draft: an allocation that changes is copied there).

        Returns whether the allocation's status changed."""
        alloc = draft.alloc(alloc_id)
        assert alloc is not None
        where = alloc.node
        if where is None or (alloc.is_terminal and alloc.status is not AllocStatus.LOST):
            return False
        tasks = {name: self.manager.tasks.get(t.id) for name, t in alloc.tasks.items()}
        changed = False
        seen = task_views(t for t in tasks.values() if t is not None)
        if seen and seen != {k: v for k, v in alloc.tasks.items() if k in seen}:
            alloc = draft.edit(alloc_id)
            alloc.tasks = {**alloc.tasks, **seen}
            changed = True
        if (
            alloc.desired is AllocDesired.RUN
            and not alloc.is_terminal
            and any(t is None for t in tasks.values())
        ):
            # Saved with its node, its tasks not yet (a crash in between): start them now.
            node = nodes.get(where)
            if node is not None:
                self.applier.start_tasks(draft, alloc, node)
        derived = None if on_bad_node(alloc, nodes) else derive_status(alloc, tasks)
        moved = derived is not None and derived.status is not None
        if derived is not None and derived.status is not None:
            alloc = draft.edit(alloc_id)
            alloc.transition(derived.status, derived.reason, now=now)
            changed = True
            log.info("allocation", alloc=alloc.id, name=alloc.name, status=derived.status.value)
        if derived is not None:
            why = f"{alloc.name} {derived.status}: {derived.reason}"
            for task_id in derived.leftovers:
                draft.then(functools.partial(self.applier.stop_task, task_id, why))
        if changed:
            draft.edit(alloc_id).updated_at = now
        return moved
