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
:data:`FULL_PASS` seconds; it works in slices of :data:`SLICE` seconds, each one store
transaction, with a pause between two so that the loop answers the nodes; and a
placement costs O(nodes examined) (:mod:`cube.manager.pass_views`), not O(nodes).

A pass that fails is logged with its traceback and the loop goes on: the next pass
starts from the records again, so nothing is lost but time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cube.job.blocked import blocked_status
from cube.job.model import Allocation, AllocDesired, AllocStatus, Job
from cube.job.reconcile import reconcile
from cube.job.spec import JobType
from cube.log import get_logger
from cube.manager.allocs import derive_status, on_bad_node, task_views
from cube.manager.deployments import Deployments
from cube.manager.job_applier import Applier
from cube.manager.job_changes import JobChanges, Todo
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
    ) -> None:
        self.manager = manager
        self.records = records
        #: What the next pass looks at: a pass reconciles the jobs that changed.
        self.changes = changes
        self.applier = applier
        self.orphans = orphans
        self.deployments = deployments
        self._wake = asyncio.Event()
        self._wake_at: datetime | None = None
        #: Passes completed.
        self.passes = 0
        #: Passes completed that looked at every job.
        self.full_passes = 0
        self._full_due = 0.0  #: time.monotonic() of the next pass over every job

    def wake(self) -> None:
        """Something changed (a node, the cluster's capacity): the next pass finds what."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            timeout = SAFETY_PASS
            if self._wake_at is not None:
                timeout = min(timeout, max(0.0, (self._wake_at - utc_now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            full = time.monotonic() >= self._full_due
            if full:
                self._full_due = time.monotonic() + FULL_PASS
            cpu = 0.0  # the pass's own: not what the loop ran during its pauses
            started, began = time.process_time(), time.monotonic()
            try:
                for _ in self.run_pass(utc_now(), full=full):
                    cpu += time.process_time() - started
                    await asyncio.sleep(0)
                    started = time.process_time()
            except Exception as exc:  # a pass that fails must not end the loop: the next heals
                log.error("job pass failed", exc=exc)
            cpu += time.process_time() - started
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
    def reconcile_all(self, now: datetime) -> None:
        """One pass over every job (see the module docstring), without pausing."""
        for _ in self.run_pass(now, full=True):
            pass

    def run_pass(self, now: datetime, *, full: bool = False) -> Iterator[None]:
        """One pass over the jobs that need it (:class:`JobChanges`; every job if ``full``).

        The pass works in slices of about :data:`SLICE` seconds: at the end of one it
        commits what it wrote (one store transaction per slice, not one per record; the
        sends of its placements start only after that, when the loop runs them) and
        pauses, so that the loop answers the nodes and the API; then it goes on with fresh
        node views (the task dispatcher may have placed meanwhile). A job whose slice
        ended with placements left is reconciled again in the same pass.
        """
        self.applier.begin_pass()
        if full:
            self.orphans.stop_unknown()
        self.orphans.forget_stopped()
        views = PassViews(self.manager.list_nodes())
        todo = self._todo(now, full=full)
        started = time.perf_counter()
        while todo:
            again: dict[str, Todo] = {}
            with self.manager.store.batch():
                for n, (job_id, what) in enumerate(todo.items()):
                    job = self.records.jobs.get(job_id)
                    if job is None:  # purged during a pause
                        continue
                    if n and time.perf_counter() - started >= SLICE:
                        again[job_id] = what  # after the pause, with the others
                        continue
                    self.applier.begin_slice(started + SLICE)
                    try:
                        if self.reconcile_job(job, views, now, derive=what.derive, lazy=what.lazy):
                            again[job_id] = Todo(set())  # cut by the slice: it goes on
                    except Exception as exc:
                        log.error("reconciling a job failed", job=job.id, exc=exc)
            if again:
                yield
                views = views.refreshed(self.manager.list_nodes())
                started = time.perf_counter()
            todo = again
        self._wake_at = self.changes.wake_at()
        if full:
            self.full_passes += 1
        if self.changes.unfinished:
            self.wake()  # more to place: the next pass goes on

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
            blocked=self.applier.blocked_jobs,
            generation=self.manager.dispatcher.generation,
        )

    def reconcile_job(
        self,
        job: Job,
        views: PassViews,
        now: datetime,
        *,
        derive: Collection[str] | None = None,
        lazy: bool = False,
    ) -> bool:
        """Derive, reconcile and apply one job (placing on ``views``, which it updates).

        ``derive``: the allocations to derive (None: all); ``lazy``: stop there unless one
        of them changed. Returns whether the job's slice ended with placements left.
        """
        rest = self.applier.take_rest(job.id)
        if derive is not None and not derive and rest is not None and rest[0] == job.version:
            # The rest of a plan a slice (or pass) left, if nothing but time passed since: a
            # change of the job would have marked it for a whole reconcile (derive None).
            version = self.records.current_version(job)
            return self.applier.apply_rest(job, version, rest, views, now)
        ids = self.records.alloc_ids(job.id) if derive is None else derive
        changed = False
        for alloc_id in list(ids):
            if (alloc := self.records.allocs.get(alloc_id)) is not None:
                changed |= self._derive(alloc, views, now)
        current = self.deployments.current(job)
        if lazy and not changed and (current is None or not current.active):
            return False  # (a deployment judges its allocations' health on any task change)
        allocs = self.records.allocations(job=job.id)
        # (may revert: a new version)
        advanced = self.deployments.advance(job, allocs, now, views)
        deployment = advanced.deployment
        version = self.records.current_version(job)
        plan = reconcile(job, version, allocs, views.nodes, now, deployment=deployment)
        cut = self.applier.apply(job, version, plan, views, now, deployment=deployment)
        due = [t for t in (plan.wake_at, advanced.wake_at) if t is not None]
        self.changes.due(job.id, min(due, default=None))
        status, reason = plan.status, plan.status_reason  # judged before the placements
        failures = self.applier.failures(job.id)
        if failures:
            allocs = self.records.allocations(job=job.id)
            status, reason = blocked_status(version.spec, status, reason, allocs, failures)
        if (job.status, job.status_reason) != (status, reason):
            job.status, job.status_reason, job.updated_at = status, reason, now
            self.manager.store.save_job(job)
        return cut

    def _derive(self, alloc: Allocation, nodes: Mapping[str, Node], now: datetime) -> bool:
        """Bring the allocation's status and task records in line with its tasks.

        Returns whether the allocation's status changed."""
        if alloc.node is None or (alloc.is_terminal and alloc.status is not AllocStatus.LOST):
            return False
        tasks = {name: self.manager.tasks.get(t.id) for name, t in alloc.tasks.items()}
        changed = False
        seen = task_views(t for t in tasks.values() if t is not None)
        if seen and seen != {k: v for k, v in alloc.tasks.items() if k in seen}:
            alloc.tasks.update(seen)
            changed = True
        if (
            alloc.desired is AllocDesired.RUN
            and not alloc.is_terminal
            and any(t is None for t in tasks.values())
        ):
            # Saved with its node, its tasks not yet (a crash in between): start them now.
            node = nodes.get(alloc.node)
            if node is not None:
                self.applier.start_tasks(alloc, node)
        derived = None if on_bad_node(alloc, nodes) else derive_status(alloc, tasks)
        moved = derived is not None and derived.status is not None
        if derived is not None and derived.status is not None:
            alloc.transition(derived.status, derived.reason, now=now)
            changed = True
            log.info("allocation", alloc=alloc.id, name=alloc.name, status=derived.status.value)
        if derived is not None:
            for task_id in derived.leftovers:
                self.applier.stop_task(task_id, f"{alloc.name} {derived.status}: {derived.reason}")
        if changed:
            alloc.updated_at = now
            self.manager.store.save_allocations([alloc])
        return moved
