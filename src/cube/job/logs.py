"""A job's merged log stream: the records it carries, and the pure parts of following it.

``GET /v1/jobs/{id}/logs`` answers with one JSON object per line (NDJSON), each a
:class:`LogRecord`: a line of one task's output, prefixed by where it comes from
(allocation, task, node), or a note that a node went quiet or came back. The manager
(:mod:`cube.manager.joblogs`) does the I/O; what to stream and how output becomes lines
is decided here, without a clock or a network.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from cube.job.model import Allocation
from cube.task.model import Task

#: The longest line a record carries; longer output is cut into several records, so one
#: task that never writes a newline cannot hold the manager's memory.
MAX_LINE = 16 * 1024

RecordKind = Literal["line", "quiet", "back"]


class LogRecord(BaseModel):
    """One record of a job's log stream.

    ``line``: ``text`` is one line of a task's output (without its newline; decoded as
    UTF-8, undecodable bytes replaced), from allocation ``alloc`` (``name`` is
    ``job.group[index]``) on ``node``. ``quiet``: ``node`` stopped answering (``text``
    says why); the others keep streaming. ``back``: ``node`` answers again, and the
    output its allocations wrote meanwhile follows.
    """

    kind: RecordKind
    node: str
    text: str = ""
    alloc: str = ""
    name: str = ""
    group: str = ""
    index: int = 0
    task: str = ""


@dataclass(frozen=True)
class LogSource:
    """One container of one task of the job: what one worker log stream reads."""

    alloc: str
    name: str
    group: str
    index: int
    task: str  # the task's name within its group
    task_id: str
    node: str
    container: str

    @property
    def key(self) -> tuple[str, str]:
        """A task's restart is a new container, so a new source."""
        return (self.task_id, self.container)

    def line(self, text: str) -> LogRecord:
        return LogRecord(
            kind="line",
            node=self.node,
            text=text,
            alloc=self.alloc,
            name=self.name,
            group=self.group,
            index=self.index,
            task=self.task,
        )


def log_sources(
    allocs: Iterable[Allocation],
    tasks: Mapping[str, Task],
    *,
    group: str | None = None,
    task: str | None = None,
) -> list[LogSource]:
    """Every container of the allocations' tasks that a node holds (or held): those of
    ``group`` and task name ``task`` only, if given; by allocation index, then task name."""
    found: list[LogSource] = []
    for alloc in allocs:
        if group is not None and alloc.group != group:
            continue
        for name, record in alloc.tasks.items():
            known = tasks.get(record.id)
            if (task is not None and name != task) or known is None:
                continue
            if known.node is None or not known.container_id:
                continue
            found.append(
                LogSource(
                    alloc=alloc.id,
                    name=alloc.name,
                    group=alloc.group,
                    index=alloc.index,
                    task=name,
                    task_id=known.id,
                    node=known.node,
                    container=known.container_id,
                )
            )
    return sorted(found, key=lambda s: (s.group, s.index, s.task, s.alloc))


class LineSplitter:
    """Chunks of output in, whole lines out: a line split across two chunks is one line,
    and a line longer than ``limit`` characters is several.

    Decodes incrementally, so a character split across chunks is one character too.
    """

    def __init__(self, *, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> list[str]:
        *lines, self._pending = (self._pending + self._decoder.decode(chunk)).split("\n")
        whole = [piece for line in lines for piece in self._cut(line.removesuffix("\r"))]
        if len(self._pending) >= self._limit:
            *full, self._pending = self._cut(self._pending)
            whole += full
        return whole

    def flush(self) -> list[str]:
        """What is left once the output ended: a last line without a newline."""
        rest, self._pending = self._pending + self._decoder.decode(b"", final=True), ""
        return list(self._cut(rest)) if rest else []

    def _cut(self, line: str) -> Iterator[str]:
        yield line[: self._limit]
        for start in range(self._limit, len(line), self._limit):
            yield line[start : start + self._limit]
