"""The worker's change feed, behind the manager's blocking queries (pure logic, no I/O)."""

from __future__ import annotations

import asyncio
import time

from cube.worker.changes import ChangeFeed


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
