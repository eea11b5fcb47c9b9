"""A manager on a store that makes it wait, or refuses its writes: how its writes are
shown to be saved, then shown (tests/component/test_manager_writes.py,
tests/component/test_job_writes.py).

* ``on_sqlite`` (fixture, tests/component/conftest.py): a real SQLite store, whose write lock
  another process may hold (:func:`write_lock_held`): the store's writes wait for it.
* ``refused`` (fixture): :class:`Refusing`, a memory store called on a thread of its own,
  as SQLite is (so every write is awaited off the loop), whose writes are refused while
  ``full`` (a full disk: the file-system cases themselves are tests/e2e/test_store_faults.py's),
  or made and then answered with an error while ``lose_answers`` (a commit whose answer
  never reached the manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cube.errors import StoreFull, StoreUnavailable
from cube.job.deployment import Deployment
from cube.job.model import Allocation, Job, JobVersion
from cube.manager.core import Manager
from cube.node import Node
from cube.scheduler import make_scheduler
from cube.store.base import Store
from cube.store.memory import MemoryStore
from cube.store.sqlite import SqliteStore
from cube.task.model import Task, TaskEvent
from tests.support.fake_nodes import FakeWorkers, node


class Refusing(MemoryStore):
    """See the module docstring."""

    blocks = True

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.lose_answers = False

    def _refuse(self) -> None:
        if self.full:
            raise StoreFull("cannot save: disk full at /test/cube.db")

    def _answer(self) -> None:
        if self.lose_answers:
            raise StoreUnavailable("the store did not answer (saved all the same)")

    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        self._refuse()
        super().save_task(task, events)

    def save_node(self, node: Node) -> None:
        self._refuse()
        super().save_node(node)

    def save_job(self, job: Job, versions: Sequence[JobVersion] = ()) -> None:
        self._refuse()
        super().save_job(job, versions)
        self._answer()

    def delete_job(self, job_id: str) -> None:
        self._refuse()
        super().delete_job(job_id)
        self._answer()

    def save_allocations(self, allocations: Sequence[Allocation]) -> None:
        self._refuse()
        super().save_allocations(allocations)
        self._answer()

    def save_deployment(self, deployment: Deployment) -> None:
        self._refuse()
        super().save_deployment(deployment)
        self._answer()


@contextmanager
def write_lock_held(db: Path) -> Iterator[None]:
    """Another process holds SQLite's write lock: the store's writes wait for it."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("COMMIT")
    finally:
        other.close()


async def turns(count: int = 200) -> None:
    """Let the loop run ``count`` times (what a blocked loop could not do)."""
    for _ in range(count):
        await asyncio.sleep(0)


def manager_with_node(store: Store) -> tuple[Manager, FakeWorkers]:
    store.save_node(node("n1"))
    workers = FakeWorkers()
    return Manager(store=store, scheduler=make_scheduler(), workers=workers), workers


@dataclass
class OnSqlite:
    """A manager with node ``n1`` on a SQLite store at ``path``, and its fake nodes."""

    store: SqliteStore
    manager: Manager
    workers: FakeWorkers
    path: Path

    def lock_held(self) -> contextlib.AbstractContextManager[None]:
        return write_lock_held(self.path)


def sqlite_manager(path: Path) -> OnSqlite:
    store = SqliteStore(path)
    manager, workers = manager_with_node(store)
    return OnSqlite(store, manager, workers, path)


@dataclass
class Refused:
    """A manager with node ``n1`` on a :class:`Refusing` store, and its fake nodes."""

    store: Refusing
    manager: Manager
    workers: FakeWorkers


def refused_manager() -> Refused:
    store = Refusing()
    manager, workers = manager_with_node(store)
    return Refused(store, manager, workers)
