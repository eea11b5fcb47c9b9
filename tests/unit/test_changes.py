"""The worker's change feed, behind the manager's blocking queries (pure logic, no I/O)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from cube.node import Resources
from cube.protocol import TaskChanges
from cube.runtime.fake import FakeRuntime
from cube.store.memory import MemoryStore
from cube.task.spec import TaskRequest
from cube.worker.agent import Worker
from cube.worker.changes import ChangeFeed
from cube.worker.fleet import Fleet, fleet_slice


async def test_a_query_at_the_latest_index_waits_for_the_next_change() -> None:
    feed = ChangeFeed()
    feed.changed("a")
    index = feed.index
    query = asyncio.create_task(feed.since(index, wait=30.0))
    await asyncio.sleep(0.05)
    assert not query.done()
    feed.changed("b")
    assert await asyncio.wait_for(query, 1.0) == ["b"]


async def test_a_query_that_sees_nothing_new_ends_after_its_wait() -> None:
    feed = ChangeFeed()
    started = time.monotonic()
    assert await feed.since(feed.index, wait=0.1) == []
    assert time.monotonic() - started >= 0.1


def test_an_index_from_another_epoch_asks_for_everything() -> None:
    async def ask() -> list[str] | None:
        return await ChangeFeed().since(ChangeFeed().index, wait=0.0)

    assert asyncio.run(ask()) is None


async def test_closing_answers_waiting_queries_at_once_and_later_ones_without_waiting() -> None:
    feed = ChangeFeed()
    waiting = asyncio.create_task(feed.since(feed.index, wait=30.0))
    await asyncio.sleep(0.05)
    feed.close()
    assert await asyncio.wait_for(waiting, 1.0) == []
    started = time.monotonic()
    assert await feed.since(feed.index, wait=30.0) == []
    assert time.monotonic() - started < 1.0


# --- coalescing: a query woken by a change waits a short window for the rest of the burst ------


class Window:
    """A stand-in for asyncio.sleep that counts the windows waited and runs ``during`` in
    each, as changes that arrive while the query waits."""

    def __init__(self, during: Callable[[], None] = lambda: None) -> None:
        self.waited: list[float] = []
        self.during = during

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)
        self.during()


async def test_a_burst_of_changes_is_answered_in_one_reply() -> None:
    def rest_of_the_burst() -> None:
        feed.changed("b")
        feed.changed("a")  # the same task again: listed once
        feed.changed("c")

    window = Window(rest_of_the_burst)
    feed = ChangeFeed(window=0.5, sleep=window)
    query = asyncio.create_task(feed.since(feed.index, wait=60.0))
    await asyncio.sleep(0)  # the query is waiting
    feed.changed("a")
    assert sorted(await asyncio.wait_for(query, 5.0) or []) == ["a", "b", "c"]
    assert (window.waited, feed.woken) == ([0.5], 1)


async def test_a_lone_change_is_answered_after_the_window_not_the_wait() -> None:
    window = Window()
    feed = ChangeFeed(window=0.5, sleep=window)
    query = asyncio.create_task(feed.since(feed.index, wait=60.0))
    await asyncio.sleep(0)
    feed.changed("a")
    assert await asyncio.wait_for(query, 5.0) == ["a"]
    assert window.waited == [0.5]  # the window, once; never the query's 60 s


async def test_changes_already_there_are_answered_without_a_window() -> None:
    window = Window()
    feed = ChangeFeed(window=0.5, sleep=window)
    index = feed.index
    feed.changed("a")
    assert await feed.since(index, wait=60.0) == ["a"]
    assert (window.waited, feed.woken) == ([], 0)


async def test_without_a_window_a_change_is_answered_at_once() -> None:
    window = Window()
    feed = ChangeFeed(sleep=window)  # a real worker's default
    query = asyncio.create_task(feed.since(feed.index, wait=60.0))
    await asyncio.sleep(0)
    feed.changed("a")
    assert await asyncio.wait_for(query, 5.0) == ["a"]
    assert window.waited == []


# --- a worker's answer, serialised once (GET /v1/changes) --------------------------------------


async def test_a_workers_answer_is_serialised_from_its_own_records_without_copies() -> None:
    runtime = FakeRuntime()
    worker = Worker(name="w1", runtime=runtime, store=MemoryStore(), capacity=Resources(cpu=4))
    await worker.start()
    try:
        task, _ = worker.submit(TaskRequest.model_validate({"name": "t", "image": "busybox"}))
        first = await worker.changes(None, wait=0)
        assert TaskChanges.model_validate_json(await worker.changes_json(None, wait=0)) == first
        # The model answer is a copy: the runner's own record does not change with it.
        first.tasks[0].reason = "edited by the caller"
        assert worker.get(task.id).reason != "edited by the caller"
    finally:
        await worker.close()
        await runtime.close()


@pytest.mark.parametrize(
    ("count", "processes", "slices"),
    [
        (10, 1, [(1, 10)]),
        (10, 2, [(1, 5), (6, 5)]),
        (5000, 3, [(1, 1667), (1668, 1667), (3335, 1666)]),
        (3, 4, [(1, 1), (2, 1), (3, 1), (4, 0)]),
    ],
)
def test_a_fleets_processes_take_consecutive_slices_of_its_names(
    count: int, processes: int, slices: list[tuple[int, int]]
) -> None:
    assert [fleet_slice(count, i, processes) for i in range(processes)] == slices


async def test_a_fleet_told_to_stop_answers_its_workers_waiting_queries() -> None:
    fleet = Fleet(count=2, capacity=Resources(cpu=1), token="t")
    waiting = [
        asyncio.create_task(w.feed.since(w.feed.index, wait=60.0)) for w in fleet.workers.values()
    ]
    await asyncio.sleep(0)
    assert not any(query.done() for query in waiting)
    fleet.stopping()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5.0) == [[], []]
