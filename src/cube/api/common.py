"""Pieces every Cube API shares: the health answer and streamed text responses."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class Health(BaseModel):
    status: str = "ok"
    role: str
    name: str


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
