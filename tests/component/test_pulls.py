"""SharedPulls: one pull per image, however many tasks wait for it (pure asyncio, no engine)."""

from __future__ import annotations

import asyncio

import pytest

from cube.errors import ContainerError
from cube.runtime.base import ProgressCallback
from cube.runtime.pulls import SharedPulls


class FakeRegistry:
    """A pull function that counts its calls and finishes only when the test says so."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.release: dict[str, asyncio.Future[None]] = {}

    async def pull(self, image: str, on_progress: ProgressCallback) -> None:
        self.calls.append(image)
        self.release[image] = asyncio.get_running_loop().create_future()
        on_progress(f"pulling {image}")
        try:
            await self.release[image]
        except asyncio.CancelledError:
            self.cancelled.append(image)
            raise
        on_progress(f"pulled {image}")

    def finish(self, image: str, error: Exception | None = None) -> None:
        if error is None:
            self.release[image].set_result(None)
        else:
            self.release[image].set_exception(error)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def waiters(
    pulls: SharedPulls, image: str, count: int
) -> tuple[list[asyncio.Task[None]], list[list[str]]]:
    heard: list[list[str]] = [[] for _ in range(count)]
    tasks = [asyncio.ensure_future(pulls(image, heard[i].append)) for i in range(count)]
    return tasks, heard


async def pulled_afresh(pulls: SharedPulls, registry: FakeRegistry, image: str) -> None:
    """The next caller for ``image`` starts a new pull (nothing left over from the last)."""
    before = len(registry.calls)
    (task,), _ = waiters(pulls, image, 1)
    await settle()
    assert registry.calls[before:] == [image]
    registry.finish(image)
    await task


async def test_many_waiters_share_one_pull_and_all_hear_its_progress() -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    tasks, heard = waiters(pulls, "app:1", 50)
    await settle()
    assert registry.calls == ["app:1"]
    assert len(pulls) == 1

    registry.finish("app:1")
    await asyncio.gather(*tasks)
    assert all(h == ["pulling app:1", "pulled app:1"] for h in heard)
    assert len(pulls) == 0


async def test_different_images_are_pulled_side_by_side() -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    first, _ = waiters(pulls, "a:1", 2)
    second, _ = waiters(pulls, "b:1", 2)
    await settle()
    assert sorted(registry.calls) == ["a:1", "b:1"]
    registry.finish("b:1")
    await asyncio.gather(*second)
    assert not any(t.done() for t in first)
    registry.finish("a:1")
    await asyncio.gather(*first)


async def test_a_cancelled_waiter_leaves_the_pull_to_the_others() -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    tasks, heard = waiters(pulls, "app:1", 3)
    await settle()
    tasks[0].cancel()
    await settle()
    assert tasks[0].cancelled()
    assert registry.cancelled == []

    registry.finish("app:1")
    await asyncio.gather(*tasks[1:])
    assert heard[0] == ["pulling app:1"]  # a waiter that left hears no more
    assert heard[1] == ["pulling app:1", "pulled app:1"]


async def test_the_pull_is_cancelled_when_its_last_waiter_leaves() -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    tasks, _ = waiters(pulls, "app:1", 2)
    await settle()
    for task in tasks:
        task.cancel()
    await settle()
    assert registry.cancelled == ["app:1"]
    assert len(pulls) == 0

    # Someone needs it again: a new pull, not the cancelled one's outcome.
    await pulled_afresh(pulls, registry, "app:1")


async def test_a_caller_arriving_as_an_abandoned_pull_winds_down_gets_a_fresh_pull() -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    (lone,), _ = waiters(pulls, "app:1", 1)
    await settle()
    lone.cancel()
    # Before the cancelled pull has run its cleanup:
    await pulled_afresh(pulls, registry, "app:1")


async def test_a_failed_pull_fails_every_waiter_and_is_not_remembered() -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    tasks, _ = waiters(pulls, "app:1", 3)
    await settle()
    registry.finish("app:1", ContainerError("pull app:1: manifest unknown"))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [str(r) for r in results] == ["pull app:1: manifest unknown"] * 3

    await pulled_afresh(pulls, registry, "app:1")


@pytest.mark.parametrize("with_progress", [True, False])
async def test_progress_is_optional(with_progress: bool) -> None:
    registry = FakeRegistry()
    pulls = SharedPulls(registry.pull)
    heard: list[str] = []
    task = asyncio.ensure_future(pulls("app:1", heard.append if with_progress else None))
    await settle()
    registry.finish("app:1")
    await task
    assert heard == (["pulling app:1", "pulled app:1"] if with_progress else [])
