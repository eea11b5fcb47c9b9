"""The store as an event loop uses it: every call awaited, none blocking the loop.

Why: the manager is one event loop. Every millisecond a store call blocks it, no
request is answered, no node is polled, no task is placed. The stores that ship answer
in microseconds from memory, but not always: SQLite commits to a disk (an fsync at
each checkpoint) and waits up to ``busy_timeout`` (10 s) for another process's write
lock; and a PostgreSQL store, which highly available managers need, answers every call
over the network. So the interface the loop uses is :class:`AsyncStore`: the same
contract as :class:`~cube.store.base.Store` (the same methods, arguments, answers and
errors, checked by the same contract suite), each method awaitable.

How each store serves it:

* :class:`OffLoopStore` adapts a synchronous :class:`Store`. One that blocks
  (``blocks = True``: :class:`~cube.store.sqlite.SqliteStore`) runs every call on one
  thread of its own, and the loop goes on meanwhile. One thread, not a pool: calls run
  in the order they were made (a task's save before its next one), SQLite has one
  writer at a time anyway, and the thread keeps one connection open. The writes that
  queue while the thread is busy are committed together, in one transaction (a group
  commit, as databases do for their log), and each caller's await ends once its own
  write is committed. A store that does not block
  (:class:`~cube.store.memory.MemoryStore`) is called directly: a hop to a thread would
  cost more than the call.
* A PostgreSQL store would implement :class:`AsyncStore` itself, on an async driver's
  connection pool (asyncpg, or psycopg's ``AsyncConnectionPool``): each method a query
  awaited on the loop, each of today's atomic calls one transaction (a task with its
  events, a job with its versions, allocations all or none), its errors mapped to
  :class:`~cube.errors.StoreUnavailable` as :mod:`cube.store.failures` does SQLite's.
  The order of a record's writes does not rest on the store: the manager makes one
  change of a record at a time (below), so a pool may run different records' writes
  at once. Reads need no snapshot of the manager's: the manager's records are loaded
  once and written through, and every cache the manager keeps is derived from them
  (see :mod:`cube.manager.core`), so another manager that takes over builds the same
  state from the store alone.

Where the manager stands. Every change of its records is awaited here, *saved, then
shown*: the change is made on a draft, under the record's guard (:mod:`cube.manager.guards`:
one change of a record at a time, each starting from the last one's result, so an old
state never overwrites a newer one), saved through this interface, and shown only once
the store has it. For tasks and nodes
(:meth:`cube.manager.registry.TaskRegistry.change`,
:meth:`cube.manager.nodes.NodeRegistry.change`) that covers submissions, placements (a
dispatch pass decides all its placements at once, then saves them together; a task being
saved holds its resources in its node's view), reconciled reports, stops, moves off a
lost or drained node, joins, drains and a node going down. For the job service's own
records (jobs, versions, allocations, deployments: :mod:`cube.manager.job_drafts`) the
draft is one change of one job, under the job's guard: a submit, a scale, a stop or
purge, a deployment moved by hand, or the job's share of one slice of a pass (the
slice's drafts are queued together, so they commit as one transaction, and the loop
answers the nodes while it commits; the tasks a placement starts are held on their
nodes meanwhile, and sent once it is shown).

A change the store refuses (a full disk) is never shown: an API request answers 503; a
background one (a pass, a node's report, a deadline) is logged by the loop that made it,
which goes on or is restarted (:mod:`cube.background`), and the next pass or report
makes the change again from the records, which are still what the store holds. A job
whose change failed is read back from the store before its next change, so that a write
whose answer was lost (committed, its caller cancelled or told an error) is shown then,
not made a second time (a placement saved but not shown is not placed twice).

What is left: one change is still shown before it is saved,
:meth:`~cube.manager.registry.TaskRegistry.save`, which takes a change made to a task's
record in place (the job service marks a task that has ended as not to run again, once
the change of its allocation that stopped it is saved; tests play a node that way),
saves it in turn, and undoes it if refused; it does not take the record's guard before
it is made (a guarded change saved meanwhile may replace it; the record and the store
then agree, without it). The manager also reads its records synchronously once, when it
is made, before its loop serves anything.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

from cube.job.deployment import Deployment
from cube.job.model import Allocation, Job, JobVersion
from cube.node import Node
from cube.store.base import Store
from cube.task.model import Task, TaskEvent
from cube.task.state import State

P = ParamSpec("P")
R = TypeVar("R")

#: The most writes committed in one transaction (see OffLoopStore._write): a group holds
#: SQLite's write lock while it runs, so a write queued behind it (an API request's) waits
#: for it; 256 task saves take about 25 ms.
MAX_GROUP = 256

#: A write waiting for its group's commit, and the future its caller awaits.
_Queued = tuple[Callable[[], object], "asyncio.Future[None]"]


class AsyncStore(Protocol):
    """:class:`~cube.store.base.Store`'s contract, awaited (see the module docstring)."""

    # --- tasks -----------------------------------------------------------------------------
    async def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None: ...
    async def get_task(self, task_id: str) -> Task: ...
    async def find_task(self, task_id: str) -> Task | None: ...
    async def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]: ...
    async def delete_task(self, task_id: str) -> None: ...
    async def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None: ...
    async def task_events(self, task_id: str) -> list[TaskEvent]: ...

    # --- nodes -----------------------------------------------------------------------------
    async def save_node(self, node: Node) -> None: ...
    async def get_node(self, name: str) -> Node: ...
    async def list_nodes(self) -> list[Node]: ...
    async def delete_node(self, name: str) -> None: ...

    # --- jobs and allocations --------------------------------------------------------------
    async def save_job(self, job: Job, versions: Sequence[JobVersion] = ()) -> None: ...
    async def get_job(self, job_id: str) -> Job: ...
    async def find_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(self) -> list[Job]: ...
    async def delete_job(self, job_id: str) -> None: ...
    async def job_versions(self, job_id: str) -> list[JobVersion]: ...
    async def get_job_version(self, job_id: str, number: int) -> JobVersion: ...
    async def save_allocations(self, allocations: Sequence[Allocation]) -> None: ...
    async def get_allocation(self, alloc_id: str) -> Allocation: ...
    async def find_allocation(self, alloc_id: str) -> Allocation | None: ...
    async def list_allocations(
        self, *, job: str | None = None, node: str | None = None
    ) -> list[Allocation]: ...

    # --- deployments -----------------------------------------------------------------------
    async def save_deployment(self, deployment: Deployment) -> None: ...
    async def find_deployment(self, deployment_id: str) -> Deployment | None: ...
    async def list_deployments(self, *, job: str | None = None) -> list[Deployment]: ...

    # --- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Release what serves the calls; the store itself too if this owns it."""


class OffLoopStore:
    """An :class:`AsyncStore` over a synchronous :class:`Store` (see the module docstring).

    ``owns``: :meth:`aclose` closes ``store`` too (else its opener does).
    """

    def __init__(self, store: Store, *, owns: bool = False) -> None:
        self.store = store
        self._owns = owns
        #: The store's own thread, for a store that blocks; None: called on the loop.
        self._thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="cube-store")
            if store.blocks
            else None
        )
        self._closed = False
        #: The group of writes not yet begun on the thread, that a write joins (None: the
        #: next write starts a group). Guarded by ``_lock``: the thread takes it.
        self._group: list[_Queued] | None = None
        self._lock = threading.Lock()

    @property
    def blocks(self) -> bool:
        """Whether calls run on the store's own thread."""
        return self._thread is not None

    async def _call(self, method: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """A read (or the store's close): on the thread, after every call made before."""
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._thread is None:
            return method(*args, **kwargs)
        with self._lock:
            self._group = None  # a write made after this call runs after it
        call = functools.partial(method, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def _write(self, method: Callable[P, None], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """A write: on the thread, in turn, committed with the writes queued next to it.

        Writes made while the thread is busy (a dispatch pass's placements, the reports
        of many nodes) wait together, and the thread commits them in one transaction
        (:meth:`Store.batch`: one commit, not one per record, which cost a quarter of
        the job service's CPU when it placed 2,000 allocations). Each write is still its
        own: one that fails is undone alone and its caller gets the error; a commit the
        store refuses reaches every caller of the group, none of whose writes is kept.
        A caller's await ends once its write is committed, never before.
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._thread is None:
            method(*args, **kwargs)
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            group = self._group
            if group is None or len(group) >= MAX_GROUP:
                group = self._group = []
                loop.run_in_executor(self._thread, self._commit, group, loop)
            group.append((functools.partial(method, *args, **kwargs), done))
        await done

    def _commit(self, group: list[_Queued], loop: asyncio.AbstractEventLoop) -> None:
        """On the thread: run a group of writes in one transaction, then answer each."""
        with self._lock:
            if self._group is group:
                self._group = None  # begun: later writes make the next group
        errors: list[BaseException | None] = []
        try:
            with self.store.batch():
                for write, _ in group:
                    try:
                        write()
                        errors.append(None)
                    except Exception as exc:  # undone alone (a savepoint): its caller's
                        errors.append(exc)
        except Exception as exc:  # the commit, or the transaction's start: nothing kept
            errors = [error or exc for error in errors]
            errors += [exc] * (len(group) - len(errors))
        for (_, done), error in zip(group, errors, strict=True):
            loop.call_soon_threadsafe(_answer, done, error)

    # --- tasks -----------------------------------------------------------------------------
    async def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        await self._write(self.store.save_task, task, events)

    async def get_task(self, task_id: str) -> Task:
        return await self._call(self.store.get_task, task_id)

    async def find_task(self, task_id: str) -> Task | None:
        return await self._call(self.store.find_task, task_id)

    async def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]:
        return await self._call(self.store.list_tasks, node=node, states=states)

    async def delete_task(self, task_id: str) -> None:
        await self._write(self.store.delete_task, task_id)

    async def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None:
        await self._write(self.store.add_events, task_id, events)

    async def task_events(self, task_id: str) -> list[TaskEvent]:
        return await self._call(self.store.task_events, task_id)

    # --- nodes -----------------------------------------------------------------------------
    async def save_node(self, node: Node) -> None:
        await self._write(self.store.save_node, node)

    async def get_node(self, name: str) -> Node:
        return await self._call(self.store.get_node, name)

    async def list_nodes(self) -> list[Node]:
        return await self._call(self.store.list_nodes)

    async def delete_node(self, name: str) -> None:
        await self._write(self.store.delete_node, name)

    # --- jobs and allocations --------------------------------------------------------------
    async def save_job(self, job: Job, versions: Sequence[JobVersion] = ()) -> None:
        await self._write(self.store.save_job, job, versions)

    async def get_job(self, job_id: str) -> Job:
        return await self._call(self.store.get_job, job_id)

    async def find_job(self, job_id: str) -> Job | None:
        return await self._call(self.store.find_job, job_id)

    async def list_jobs(self) -> list[Job]:
        return await self._call(self.store.list_jobs)

    async def delete_job(self, job_id: str) -> None:
        await self._write(self.store.delete_job, job_id)

    async def job_versions(self, job_id: str) -> list[JobVersion]:
        return await self._call(self.store.job_versions, job_id)

    async def get_job_version(self, job_id: str, number: int) -> JobVersion:
        return await self._call(self.store.get_job_version, job_id, number)

    async def save_allocations(self, allocations: Sequence[Allocation]) -> None:
        await self._write(self.store.save_allocations, allocations)

    async def get_allocation(self, alloc_id: str) -> Allocation:
        return await self._call(self.store.get_allocation, alloc_id)

    async def find_allocation(self, alloc_id: str) -> Allocation | None:
        return await self._call(self.store.find_allocation, alloc_id)

    async def list_allocations(
        self, *, job: str | None = None, node: str | None = None
    ) -> list[Allocation]:
        return await self._call(self.store.list_allocations, job=job, node=node)

    # --- deployments -----------------------------------------------------------------------
    async def save_deployment(self, deployment: Deployment) -> None:
        await self._write(self.store.save_deployment, deployment)

    async def find_deployment(self, deployment_id: str) -> Deployment | None:
        return await self._call(self.store.find_deployment, deployment_id)

    async def list_deployments(self, *, job: str | None = None) -> list[Deployment]:
        return await self._call(self.store.list_deployments, job=job)

    # --- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Wait for the calls in flight, stop the thread; close the store if owned."""
        if self._closed:
            return
        if self._owns:
            await self._call(self.store.close)
        self._closed = True
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)


def _answer(done: asyncio.Future[None], error: BaseException | None) -> None:
    """Tell a write's caller how it went (unless it stopped waiting)."""
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
