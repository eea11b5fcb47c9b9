"""The worker's four background loops, started by :meth:`cube.worker.agent.Worker.start`:

* exits: Docker ``die`` events, so a crash is noticed at once;
* poll: a container listing every ``poll_interval`` seconds, the level-triggered
  safety net for anything an event stream can miss (an engine restart, say);
* metrics: a machine sample every ``stats_interval`` seconds;
* disconnect: stops every task once the manager has been silent for
  ``stop_after_disconnect`` seconds (see :mod:`cube.worker.authority`).

Apart from :mod:`cube.worker.agent` because they are what the worker does on its own
clock, not what its API asks of it: each only wakes runners, samples or asks for stops
through the worker, and owns no state but the worker's ``_cut_off`` flag it shares with
:meth:`Worker.heard <cube.worker.agent.Worker.heard>`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from cube.errors import RuntimeUnavailable
from cube.log import get_logger
from cube.runtime.base import worker_selector
from cube.task.model import DesiredState
from cube.task.state import State
from cube.worker.authority import should_stop_tasks
from cube.worker.runner import TaskRunner, needs_runner

if TYPE_CHECKING:
    from cube.worker.agent import Worker

log = get_logger("cube.worker")


def notify_container(runners: dict[str, TaskRunner], container_id: str) -> None:
    woken = [r for r in runners.values() if r.task.container_id == container_id]
    if not woken:
        # Perhaps a container whose start is not recorded yet: wake the runners starting
        # one, so that they ask the engine instead of trusting the answer to the start.
        woken = [r for r in runners.values() if r.task.container_id is None]
    for runner in woken:
        runner.notify()


async def exits_loop(worker: Worker) -> None:
    while True:
        try:
            async for container_id in worker.runtime.exits(worker_selector(worker.name)):
                notify_container(worker.runners, container_id)
        except RuntimeUnavailable as exc:
            log.warning("event stream lost, reconnecting", node=worker.name, error=exc.message)
        # The stream only ends when the engine closes it: it stopped (or restarted).
        worker.engine.lost()
        worker.telemetry.event_stream_reconnected()
        await asyncio.sleep(worker.poll_interval)


async def poll_loop(worker: Worker) -> None:
    while True:
        await asyncio.sleep(worker.poll_interval)
        try:
            running = {
                c.id for c in await worker.runtime.list(worker_selector(worker.name)) if c.running
            }
        except RuntimeUnavailable:
            worker.engine.lost()
            continue  # the runners retry on their own; the exits loop logs the outage
        worker.engine.back()
        await worker.allocs.retry_releases()
        for runner in list(worker.runners.values()):
            if runner.task.state is State.RUNNING and runner.task.container_id not in running:
                runner.notify()


async def disconnect_loop(worker: Worker) -> None:
    """Stop every task once the manager has been silent too long (see Worker.heard())."""
    while True:
        await asyncio.sleep(min(worker.poll_interval, worker.stop_after_disconnect or 1.0))
        after, now = worker.stop_after_disconnect, time.monotonic()
        if worker._cut_off or not should_stop_tasks(worker.last_heard, now, after):
            continue
        worker._cut_off = True
        silent = now - worker.last_heard
        reason = (
            f"stopped: no call from the manager for {silent:.0f}s "
            f"(--stop-after-disconnect {after:g}s)"
        )
        stopping = [
            t.id for t in worker.list_tasks() if t.desired is DesiredState.RUN and needs_runner(t)
        ]
        log.warning(reason, node=worker.name, tasks=len(stopping))
        for task_id in stopping:
            worker._request_stop(task_id, reason)


async def metrics_loop(worker: Worker) -> None:
    while True:
        await asyncio.sleep(worker.stats_interval)
        worker._sample()
