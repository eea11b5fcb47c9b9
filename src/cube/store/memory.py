"""The in-memory store: plain dicts behind one lock, gone when the process exits.

Used by tests, simulations and ``--store memory``. Everything goes in and comes
out as a deep copy, so a caller that mutates a task it got (or saved) cannot
change what the store holds behind its back, just as with the SQLite store.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

from cube.errors import Conflict, NotFound
from cube.job.deployment import Deployment
from cube.job.model import Allocation, Job, JobVersion
from cube.node import Node
from cube.store.base import found
from cube.task.model import Task, TaskEvent
from cube.task.state import State


class MemoryStore:
    """A :class:`~cube.store.base.Store` kept in dicts; safe to share between threads."""

    #: Calls hold a lock for microseconds, and never wait on I/O.
    blocks = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        # Dicts keep insertion order, and replacing a key keeps its place: that is "oldest first".
        self._tasks: dict[str, Task] = {}
        self._events: dict[str, list[TaskEvent]] = {}
        self._nodes: dict[str, Node] = {}
        self._jobs: dict[str, Job] = {}
        self._versions: dict[str, dict[int, JobVersion]] = {}
        self._allocs: dict[str, Allocation] = {}
        self._deployments: dict[str, Deployment] = {}

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Nothing to gather: every write is already as cheap as a dict update."""
        yield

    # --- tasks -----------------------------------------------------------------------------
    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        task = task.model_copy(deep=True)
        new_events = [event.model_copy(deep=True) for event in events]
        with self._lock:
            self._check_open()
            self._tasks[task.id] = task
            self._events.setdefault(task.id, []).extend(new_events)

    def get_task(self, task_id: str) -> Task:
        task = self.find_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    def find_task(self, task_id: str) -> Task | None:
        with self._lock:
            self._check_open()
            task = self._tasks.get(task_id)
            return None if task is None else task.model_copy(deep=True)

    def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]:
        wanted = None if states is None else frozenset(states)
        with self._lock:
            self._check_open()
            return [
                task.model_copy(deep=True)
                for task in self._tasks.values()
                if (node is None or task.node == node) and (wanted is None or task.state in wanted)
            ]

    def delete_task(self, task_id: str) -> None:
        with self._lock:
            self._check_open()
            if self._tasks.pop(task_id, None) is None:
                raise NotFound(f"task {task_id} not found")
            self._events.pop(task_id, None)

    def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None:
        new_events = [event.model_copy(deep=True) for event in events]
        with self._lock:
            self._check_open()
            if task_id not in self._tasks:
                raise NotFound(f"task {task_id} not found")
            self._events.setdefault(task_id, []).extend(new_events)

    def task_events(self, task_id: str) -> list[TaskEvent]:
        with self._lock:
            self._check_open()
            if task_id not in self._tasks:
                raise NotFound(f"task {task_id} not found")
            return [event.model_copy(deep=True) for event in self._events.get(task_id, [])]

    # --- nodes -----------------------------------------------------------------------------
    def save_node(self, node: Node) -> None:
        node = node.model_copy(deep=True)
        with self._lock:
            self._check_open()
            self._nodes[node.name] = node

    def get_node(self, name: str) -> Node:
        with self._lock:
            self._check_open()
            node = self._nodes.get(name)
            if node is None:
                raise NotFound(f"node {name} not found")
            return node.model_copy(deep=True)

    def list_nodes(self) -> list[Node]:
        with self._lock:
            self._check_open()
            return [self._nodes[name].model_copy(deep=True) for name in sorted(self._nodes)]

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._check_open()
            if self._nodes.pop(name, None) is None:
                raise NotFound(f"node {name} not found")

    # --- jobs ------------------------------------------------------------------------------
    def save_job(self, job: Job, versions: Sequence[JobVersion] = ()) -> None:
        job = job.model_copy(deep=True)
        new_versions = [version.model_copy(deep=True) for version in versions]
        with self._lock:
            self._check_open()
            kept = self._versions.get(job.id, {})
            for version in new_versions:  # check them all before changing anything
                old = kept.get(version.number)
                if old is not None and old.spec_hash != version.spec_hash:
                    raise Conflict(f"job {job.id} version {version.number} has another spec")
            self._jobs[job.id] = job
            kept = self._versions.setdefault(job.id, {})
            for version in new_versions:
                kept.setdefault(version.number, version)

    def get_job(self, job_id: str) -> Job:
        return found(self.find_job(job_id), f"job {job_id}")

    def find_job(self, job_id: str) -> Job | None:
        with self._lock:
            self._check_open()
            job = self._jobs.get(job_id)
            return None if job is None else job.model_copy(deep=True)

    def list_jobs(self) -> list[Job]:
        with self._lock:
            self._check_open()
            return [job.model_copy(deep=True) for job in self._jobs.values()]

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self._check_open()
            if self._jobs.pop(job_id, None) is None:
                raise NotFound(f"job {job_id} not found")
            self._versions.pop(job_id, None)
            self._allocs = {k: a for k, a in self._allocs.items() if a.job != job_id}
            self._deployments = {k: d for k, d in self._deployments.items() if d.job != job_id}

    def job_versions(self, job_id: str) -> list[JobVersion]:
        with self._lock:
            self._check_open()
            if job_id not in self._jobs:
                raise NotFound(f"job {job_id} not found")
            kept = self._versions.get(job_id, {})
            return [kept[n].model_copy(deep=True) for n in sorted(kept)]

    def get_job_version(self, job_id: str, number: int) -> JobVersion:
        with self._lock:
            self._check_open()
            version = self._versions.get(job_id, {}).get(number)
            if version is None:
                raise NotFound(f"job {job_id} has no version {number}")
            return version.model_copy(deep=True)

    # --- allocations -----------------------------------------------------------------------
    def save_allocations(self, allocations: Sequence[Allocation]) -> None:
        copies = [alloc.model_copy(deep=True) for alloc in allocations]
        with self._lock:
            self._check_open()
            for alloc in copies:
                if alloc.job not in self._jobs:
                    raise NotFound(f"job {alloc.job} not found")
            for alloc in copies:
                self._allocs[alloc.id] = alloc

    def get_allocation(self, alloc_id: str) -> Allocation:
        return found(self.find_allocation(alloc_id), f"allocation {alloc_id}")

    def find_allocation(self, alloc_id: str) -> Allocation | None:
        with self._lock:
            self._check_open()
            alloc = self._allocs.get(alloc_id)
            return None if alloc is None else alloc.model_copy(deep=True)

    def list_allocations(
        self, *, job: str | None = None, node: str | None = None
    ) -> list[Allocation]:
        with self._lock:
            self._check_open()
            return [
                alloc.model_copy(deep=True)
                for alloc in self._allocs.values()
                if (job is None or alloc.job == job) and (node is None or alloc.node == node)
            ]

    # --- deployments -----------------------------------------------------------------------
    def save_deployment(self, deployment: Deployment) -> None:
        copy = deployment.model_copy(deep=True)
        with self._lock:
            self._check_open()
            if copy.job not in self._jobs:
                raise NotFound(f"job {copy.job} not found")
            self._deployments[copy.id] = copy

    def find_deployment(self, deployment_id: str) -> Deployment | None:
        with self._lock:
            self._check_open()
            found_ = self._deployments.get(deployment_id)
            return None if found_ is None else found_.model_copy(deep=True)

    def list_deployments(self, *, job: str | None = None) -> list[Deployment]:
        with self._lock:
            self._check_open()
            return [
                d.model_copy(deep=True)
                for d in self._deployments.values()
                if job is None or d.job == job
            ]

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop everything; later calls raise RuntimeError, as they do on a closed SqliteStore."""
        with self._lock:
            self._closed = True
            self._tasks.clear()
            self._events.clear()
            self._nodes.clear()
            self._jobs.clear()
            self._versions.clear()
            self._allocs.clear()
            self._deployments.clear()

    def _check_open(self) -> None:
        """Called with the lock held."""
        if self._closed:
            raise RuntimeError("the store is closed")
