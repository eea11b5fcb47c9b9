"""The store seam: where tasks, their events, nodes, jobs and allocations are kept.

Two implementations ship side by side: :class:`~cube.store.memory.MemoryStore`
(tests, simulations, ``--store memory``) and :class:`~cube.store.sqlite.SqliteStore`
(the default; survives restarts). One contract test suite runs against both.

The interface is synchronous: both stores answer in microseconds on a local disk,
and a synchronous API keeps transactions obvious. Every method is safe to call from
several threads at once. An event loop uses a store through
:class:`cube.store.aio.AsyncStore`, which runs a store that ``blocks`` off the loop
(and which a PostgreSQL store would implement itself: see :mod:`cube.store.aio`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from cube.errors import NotFound
from cube.job.deployment import Deployment
from cube.job.model import Allocation, Job, JobVersion
from cube.node import Node
from cube.task.model import Task, TaskEvent
from cube.task.state import State


class Store(Protocol):
    #: Whether a call may keep its thread waiting (disk, locks, network): an event loop
    #: then runs it on a thread of its own (see :mod:`cube.store.aio`).
    blocks: bool

    # --- tasks -----------------------------------------------------------------------------
    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        """Insert or replace ``task`` and append ``events`` to its history, atomically."""

    def get_task(self, task_id: str) -> Task:
        """The task with this ID; raises :class:`cube.errors.NotFound`."""

    def find_task(self, task_id: str) -> Task | None:
        """The task with this ID, or None."""

    def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]:
        """Tasks, oldest first, optionally only those on ``node`` and/or in ``states``."""

    def delete_task(self, task_id: str) -> None:
        """Forget a task and its events; raises NotFound if unknown."""

    def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None:
        """Append to a task's history without rewriting the task; raises NotFound if unknown."""

    def task_events(self, task_id: str) -> list[TaskEvent]:
        """A task's history, oldest first; raises NotFound if unknown."""

    # --- nodes -----------------------------------------------------------------------------
    def save_node(self, node: Node) -> None:
        """Insert or replace a node, by name."""

    def get_node(self, name: str) -> Node:
        """The node with this name; raises NotFound."""

    def list_nodes(self) -> list[Node]:
        """Every node, by name."""

    def delete_node(self, name: str) -> None:
        """Forget a node; raises NotFound if unknown."""

    # --- jobs ------------------------------------------------------------------------------
    def save_job(self, job: Job, versions: Sequence[JobVersion] = ()) -> None:
        """Insert or replace ``job`` and add ``versions`` of it, atomically.

        A submit saves the job pointing at its new version together with that version,
        so that no crash leaves a job whose current version is missing. Versions are
        immutable: saving a number again with the same spec changes nothing, with
        another spec raises :class:`cube.errors.Conflict` (and nothing is saved).
        """

    def get_job(self, job_id: str) -> Job:
        """The job with this ID; raises NotFound."""

    def find_job(self, job_id: str) -> Job | None:
        """The job with this ID, or None."""

    def list_jobs(self) -> list[Job]:
        """Every job, oldest first (replacing a job keeps its place)."""

    def delete_job(self, job_id: str) -> None:
        """Purge a job with its versions, allocations and deployments; NotFound if unknown."""

    def job_versions(self, job_id: str) -> list[JobVersion]:
        """A job's versions, oldest (1) first; raises NotFound if the job is unknown."""

    def get_job_version(self, job_id: str, number: int) -> JobVersion:
        """One version of a job; raises NotFound."""

    # --- allocations -----------------------------------------------------------------------
    def save_allocations(self, allocations: Sequence[Allocation]) -> None:
        """Insert or replace allocations, all or none.

        One call per change that touches several (a replacement and the allocation it
        replaces), so that a crash cannot leave both holding one slot. Raises NotFound,
        saving nothing, if an allocation's job is unknown.
        """

    def get_allocation(self, alloc_id: str) -> Allocation:
        """The allocation with this ID; raises NotFound."""

    def find_allocation(self, alloc_id: str) -> Allocation | None:
        """The allocation with this ID, or None."""

    def list_allocations(
        self, *, job: str | None = None, node: str | None = None
    ) -> list[Allocation]:
        """Allocations, oldest first, optionally only those of ``job`` and/or on ``node``."""

    # --- transactions ----------------------------------------------------------------------
    def batch(self) -> AbstractContextManager[None]:
        """One transaction for the writes of this thread inside the block.

        The writes are committed together when the block ends (one commit instead of one
        per record: the job service places hundreds of allocations per pass), also when
        the block raises (as writes one by one would have been), or not at all: a commit
        the store refuses raises :class:`~cube.errors.StoreUnavailable` at the end of the
        block, and none of the block's writes is kept. A write that fails
        inside the block is undone alone (the others stay), as outside one. Reads inside
        the block see its writes. Blocks nest: the outermost commits.
        """

    # --- deployments -----------------------------------------------------------------------
    def save_deployment(self, deployment: Deployment) -> None:
        """Insert or replace a deployment, by ID; raises NotFound if its job is unknown."""

    def find_deployment(self, deployment_id: str) -> Deployment | None:
        """The deployment with this ID, or None."""

    def list_deployments(self, *, job: str | None = None) -> list[Deployment]:
        """Deployments, oldest first, optionally only those of ``job``."""

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release files and connections. The store is unusable afterwards."""


_T = TypeVar("_T")


def found(value: _T | None, what: str) -> _T:
    """``value``, or :class:`~cube.errors.NotFound` naming ``what`` ("job shop") if None."""
    if value is None:
        raise NotFound(f"{what} not found")
    return value
