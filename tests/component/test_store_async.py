"""The store as the manager's event loop uses it (cube.store.aio): what the contract suite,
which also runs through it (tests/support/store_kinds.py), cannot show — where calls run, and that
the loop goes on while one waits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from cube.errors import NotFound, StoreFull
from cube.node import Node
from cube.store import MemoryStore, OffLoopStore, SqliteStore
from cube.task.model import Task, TaskEvent
from cube.task.state import State
from tests.support.records import make_task


class Recording(MemoryStore):
    """A memory store that says it blocks, and notes the thread of each call."""

    blocks = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def list_nodes(self) -> list[Node]:
        self.threads.append(threading.current_thread().name)
        return super().list_nodes()


async def test_a_store_that_blocks_runs_every_call_on_one_thread_of_its_own() -> None:
    store = Recording()
    aio = OffLoopStore(store)
    await asyncio.gather(*(aio.list_nodes() for _ in range(20)))
    await aio.aclose()

    assert len(set(store.threads)) == 1
    assert store.threads[0].startswith("cube-store")
    assert store.threads[0] != threading.current_thread().name


async def test_a_store_that_does_not_block_is_called_on_the_loop() -> None:
    store = MemoryStore()
    aio = OffLoopStore(store)
    task = make_task()
    await aio.save_task(task)  # no thread: done before the call returns
    assert not aio.blocks
    assert store.get_task(task.id) == task
    await aio.aclose()


async def test_the_loop_goes_on_while_sqlite_waits_for_another_process_lock(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "cube.db")
    aio = OffLoopStore(store, owns=True)
    other = sqlite3.connect(tmp_path / "cube.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        task = make_task()
        save = asyncio.create_task(aio.save_task(task))
        ticks = 0
        while ticks < 100:  # the loop runs while the save waits for the lock
            await asyncio.sleep(0)
            ticks += 1
        assert not save.done()  # it cannot have committed: the lock is still held
        other.execute("COMMIT")
        await save
        assert await aio.get_task(task.id) == task
    finally:
        other.close()
        await aio.aclose()


async def test_calls_run_in_the_order_they_were_made(tmp_path: Path) -> None:
    aio = OffLoopStore(SqliteStore(tmp_path / "cube.db"), owns=True)
    task = make_task()
    await aio.save_task(task)
    notes = [TaskEvent(state=State.PENDING, reason=f"note {i}") for i in range(50)]
    await asyncio.gather(*(aio.add_events(task.id, [note]) for note in notes))

    assert [e.reason for e in await aio.task_events(task.id)] == [n.reason for n in notes]
    await aio.aclose()


async def test_errors_come_through_as_the_store_raises_them(tmp_path: Path) -> None:
    aio = OffLoopStore(SqliteStore(tmp_path / "cube.db"), owns=True)
    with pytest.raises(NotFound, match="task nope not found"):
        await aio.get_task("nope")
    await aio.aclose()


async def test_closing_the_adapter_leaves_a_store_it_does_not_own_open(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cube.db")
    aio = OffLoopStore(store)
    task = make_task()
    await aio.save_task(task)
    await aio.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await aio.list_tasks()
    assert store.get_task(task.id) == task  # the opener closes it
    store.close()


class Grouping(MemoryStore):
    """A memory store on a thread of its own that notes its transactions, can be held
    busy (``hold``), refuses one task and, when ``refuse_commit``, every commit."""

    blocks = True

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.refuse_commit = False

    def list_nodes(self) -> list[Node]:
        self.hold.wait(10)  # the thread is busy with an earlier call
        return super().list_nodes()

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.batches.append([])
        yield
        if self.refuse_commit:
            raise StoreFull("cannot save: disk full at /test/cube.db")

    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        if task.spec.name == "refused":
            raise StoreFull("cannot save: disk full at /test/cube.db")
        self.batches[-1].append(task.spec.name)
        super().save_task(task, events)


async def test_writes_queued_together_are_committed_together_each_refused_alone() -> None:
    store = Grouping()
    aio = OffLoopStore(store)
    busy = asyncio.ensure_future(aio.list_nodes())  # the thread is busy meanwhile
    names = ["a", "b", "refused", "c"]
    saves = [asyncio.ensure_future(aio.save_task(make_task(n))) for n in names]
    await asyncio.sleep(0)
    store.hold.set()
    await busy
    results = await asyncio.gather(*saves, return_exceptions=True)

    assert store.batches == [["a", "b", "c"]]  # one transaction, in the order made
    assert [isinstance(r, StoreFull) for r in results] == [False, False, True, False]
    assert {t.name for t in store.list_tasks()} == {"a", "b", "c"}
    await aio.aclose()


async def test_a_refused_commit_reaches_every_write_of_its_group() -> None:
    store = Grouping()
    store.refuse_commit = True
    aio = OffLoopStore(store)
    busy = asyncio.ensure_future(aio.list_nodes())
    saves = [asyncio.ensure_future(aio.save_task(make_task())) for _ in range(3)]
    await asyncio.sleep(0)
    store.hold.set()
    await busy
    results = await asyncio.gather(*saves, return_exceptions=True)

    assert len(store.batches) == 1
    assert all(isinstance(r, StoreFull) for r in results)  # none may show its write
    await aio.aclose()
