"""A job's merged log stream, on the manager: every allocation's output as one stream.

Why on the manager, not in the CLI: the manager already knows, from moment to moment,
which allocations the job has, where each task runs and which nodes answer. A CLI that
merged the streams itself would have to poll the API for all of that, and every script
that wants a job's logs would have to do the same again; here ``curl`` gets the merged
stream (``GET /v1/jobs/{id}/logs``) and ``cube logs --job`` only prints it.

One worker log stream per task container (:class:`cube.job.logs.LogSource`). With
``follow``, a look every :data:`POLL` seconds at the job's allocations attaches the
containers placed since (replacements, scale-up, new versions, restarts). A stream that
breaks because its node stopped answering, or whose node the manager declares Down,
makes the node *quiet*: one record says so and the other streams go on. Every
:data:`RETRY` seconds a quiet node that the manager sees Ready again is asked whether it
answers; when it does, one record says it is back and its streams resume from the moment
their last output arrived (``since``: lines written meanwhile are shown then; the
worker's clock is taken to agree with the manager's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cube.background import cancel_all
from cube.errors import CubeError, Unavailable
from cube.job.logs import LineSplitter, LogRecord, LogSource, log_sources
from cube.job.model import JobStatus
from cube.node import NodeState

if TYPE_CHECKING:
    from cube.manager.core import Manager

#: Seconds between two looks at the job's allocations and nodes while following.
POLL = 0.5
#: Seconds between two attempts to reach a quiet node again.
RETRY = 2.0
#: A job in one of these places nothing new: once its streams end, so does the follow.
_OVER = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.DEAD})


@dataclass(frozen=True)
class _Ended:
    source: LogSource


@dataclass(frozen=True)
class _Broken:
    source: LogSource
    why: str


_Item = LogRecord | _Ended | _Broken


class JobLogs:
    """One client's merged stream of job ``job_id`` (see the module docstring)."""

    def __init__(
        self,
        manager: Manager,
        job_id: str,
        *,
        group: str | None = None,
        task: str | None = None,
        since: float | None = None,
        follow: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.job_id = manager.jobs.job(job_id).id  # NotFound now, before any output
        self.group, self.task, self.since, self.follow = group, task, since, follow
        self.clock = clock
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._streams: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._sources: dict[tuple[str, str], LogSource] = {}
        #: Source key -> the source and when its last output arrived (where it resumes).
        self._paused: dict[tuple[str, str], tuple[LogSource, float | None]] = {}
        self._last: dict[tuple[str, str], float] = {}
        #: Quiet node -> when (monotonic) to try it again.
        self._quiet: dict[str, float] = {}

    async def records(self) -> AsyncIterator[LogRecord]:
        try:
            for note in self._attach():
                yield note
            next_look = time.monotonic() + POLL
            while self._streams or self.follow:
                if self.follow and time.monotonic() >= next_look:
                    next_look = time.monotonic() + POLL
                    async for note in self._look():
                        yield note
                    if self._over():
                        return
                try:  # no timer per line while lines are waiting
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    try:  # (not wait_for: see cube.background.wait_event)
                        async with asyncio.timeout(POLL):
                            item = await self._queue.get()
                    except TimeoutError:
                        continue
                if (record := self._handle(item)) is not None:
                    yield record
        finally:
            await cancel_all(list(self._streams.values()))

    # --- deciding what to stream --------------------------------------------------------------
    def _over(self) -> bool:
        job = self.manager.jobs.jobs.get(self.job_id)
        return not self._streams and (job is None or job.status in _OVER)

    def _attach(self) -> list[LogRecord]:
        """Start a stream for each new container of the job; a record for each node
        found Down (with a stream running there, or a new container)."""
        notes: list[LogRecord] = []
        allocs = self.manager.jobs.allocations(job=self.job_id)
        for source in log_sources(allocs, self.manager.tasks, group=self.group, task=self.task):
            if source.key in self._seen:
                continue
            self._seen.add(source.key)
            if self._node_down(source.node):
                self._paused[source.key] = (source, self.since)
                notes += self._went_quiet(source.node, "the manager has not heard from it")
            else:
                self._start(source, self.since)
        for key, stream in list(self._streams.items()):
            streamed = self._sources[key]
            if self._node_down(streamed.node):
                stream.cancel()
                del self._streams[key]
                self._paused[key] = (streamed, self._last.get(key, self.since))
                notes += self._went_quiet(streamed.node, "the manager has not heard from it")
        return notes

    async def _look(self) -> AsyncIterator[LogRecord]:
        for note in self._attach():
            yield note
        now = time.monotonic()
        for node, retry_at in list(self._quiet.items()):
            if now < retry_at or self._node_down(node):
                continue
            self._quiet[node] = now + RETRY
            if await self._answers(node):
                del self._quiet[node]
                yield LogRecord(kind="back", node=node, text="it answers again")
                for key, (source, since) in list(self._paused.items()):
                    if source.node == node:
                        del self._paused[key]
                        self._start(source, since)

    def _node_down(self, name: str) -> bool:
        node = self.manager.nodes.get(name)
        return node is None or node.state is NodeState.DOWN

    async def _answers(self, name: str) -> bool:
        node = self.manager.nodes.get(name)
        paused = [s for s, _ in self._paused.values() if s.node == name]
        if node is None or not paused:
            return node is not None
        try:
            await self.manager.workers.events(node.address, paused[0].task_id)
        except Unavailable:
            return False
        except CubeError:
            pass  # it answers, if only to say that it forgot the task
        return True

    def _went_quiet(self, node: str, why: str) -> list[LogRecord]:
        if node in self._quiet:
            return []
        self._quiet[node] = time.monotonic() + RETRY
        return [LogRecord(kind="quiet", node=node, text=why)]

    # --- streaming ----------------------------------------------------------------------------
    def _start(self, source: LogSource, since: float | None) -> None:
        self._sources[source.key] = source
        self._streams[source.key] = asyncio.create_task(self._stream(source, since))

    async def _stream(self, source: LogSource, since: float | None) -> None:
        splitter = LineSplitter()
        node = self.manager.nodes.get(source.node)
        try:
            if node is None:
                raise Unavailable(f"node {source.node} is not known")
            chunks = self.manager.workers.logs(
                node.address, source.task_id, tail=None, follow=self.follow, since=since
            )
            async for chunk in chunks:
                self._last[source.key] = self.clock()
                for line in splitter.feed(chunk):
                    await self._queue.put(source.line(line))
        except Unavailable as exc:
            for line in splitter.flush():
                await self._queue.put(source.line(line))
            await self._queue.put(_Broken(source, exc.message))
            return
        except CubeError:
            pass  # its container is gone, or never was: nothing to show
        for line in splitter.flush():
            await self._queue.put(source.line(line))
        await self._queue.put(_Ended(source))

    def _handle(self, item: _Item) -> LogRecord | None:
        if isinstance(item, LogRecord):
            return item
        self._streams.pop(item.source.key, None)
        if isinstance(item, _Ended):
            return None
        since = self._last.get(item.source.key, self.since)
        self._paused[item.source.key] = (item.source, since)
        notes = self._went_quiet(item.source.node, item.why)
        return notes[0] if notes else None
