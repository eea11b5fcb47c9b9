"""Pieces every Cube API shares: the health answer and streamed text responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Self

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from cube.background import Supervisor


class LoopHealth(BaseModel):
    """A background loop that crashed (and was started again) since the agent started."""

    restarts: int
    last_error: str
    #: Whether it crashed recently (see cube.background.TROUBLE_WINDOW).
    failing: bool


class Health(BaseModel):
    #: "ok", or "degraded" while one of the agent's loops keeps crashing (see ``loops``).
    status: str = "ok"
    role: str
    name: str
    #: Only the loops that crashed at least once, by name.
    loops: dict[str, LoopHealth] = {}

    def with_loops(self, supervisor: Supervisor, now: float) -> Self:
        """This answer with the trouble of ``supervisor``'s loops as of ``now`` (monotonic)."""
        self.loops = {
            name: LoopHealth(restarts=t.restarts, last_error=t.last_error, failing=t.failing(now))
            for name, t in sorted(supervisor.trouble.items())
        }
        if supervisor.degraded(now):
            self.status = "degraded"
        return self


class ManagerHealth(Health):
    """The manager's answer also gives the intervals in force, which stretch as the fleet
    grows (see cube.manager.pacing)."""

    nodes: int
    #: Seconds between two metric polls of a node: node data should be no older than twice.
    collect_interval: float
    #: Seconds of silence after which a node is Down and its tasks move.
    node_timeout: float


async def stream_text(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    """Stream ``chunks`` as text, but read the first one before answering.

    Errors that happen before any output (an unknown task, say) then become a proper
    4xx answer instead of a 200 that breaks off.
    """
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")
