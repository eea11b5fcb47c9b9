"""``WS /v1/tasks/{id}/exec``: run a command in a task's container (``cube exec``), its
streams carried over the WebSocket as :mod:`cube.api.exec_wire` describes."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from cube.api.exec_wire import (
    control,
    error_message,
    exit_message,
    output_frame,
    size_of,
)
from cube.api.ws import ExecRequest, deny
from cube.errors import Conflict, CubeError
from cube.log import get_logger
from cube.runtime.exec import ExecSession
from cube.task.model import short_task_id
from cube.task.state import State
from cube.worker.agent import Worker

log = get_logger("cube.worker.exec")


def install_exec_route(app: FastAPI, worker: Worker) -> None:
    @app.websocket("/v1/tasks/{task_id}/exec")
    async def exec_in_task(websocket: WebSocket, task_id: str) -> None:
        try:
            request = ExecRequest.of(websocket)
            task = worker.get(task_id)
            if task.state is not State.RUNNING or not task.container_id:
                raise Conflict(
                    f"task {short_task_id(task.id)} is not running ({task.state.title}):"
                    " a command can only run in a running task"
                )
            session = await worker.runtime.exec(
                task.container_id, request.command, stdin=request.stdin, tty=request.tty
            )
        except CubeError as exc:
            await deny(websocket, exc)
            return
        # The program only: its arguments may hold secrets.
        log.info("exec", task=task.id, command=request.command[0], tty=request.tty)
        await websocket.accept()
        try:
            await serve(websocket, session, stdin=request.stdin)
        finally:
            await session.close()


async def serve(websocket: WebSocket, session: ExecSession, *, stdin: bool) -> None:
    """Carry the session's streams until the command ends (then its exit code) or the
    client goes away."""
    output = asyncio.create_task(_output(websocket, session))
    incoming = asyncio.create_task(_input(websocket, session, stdin=stdin))
    try:
        await asyncio.wait({output, incoming}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        incoming.cancel()
        if not output.done():
            output.cancel()
        await asyncio.gather(output, incoming, return_exceptions=True)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # already closed by the client
        await websocket.close()


async def _output(websocket: WebSocket, session: ExecSession) -> None:
    try:
        async for stream, data in session.output():
            await websocket.send_bytes(output_frame(stream, data))
        code = await session.wait()
    except CubeError as exc:
        await websocket.send_text(error_message(exc.message))
        return
    except OSError as exc:  # the engine's connection broke
        await websocket.send_text(error_message(f"the Docker engine went away: {exc}"))
        return
    await websocket.send_text(exit_message(code))


async def _input(websocket: WebSocket, session: ExecSession, *, stdin: bool) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            if message.get("bytes") is not None:
                if stdin:
                    await session.write(message["bytes"])
                continue
            command = control(message.get("text") or "")
            if command.get("type") == "eof" and stdin:
                await session.close_stdin()
            elif command.get("type") == "resize" and (size := size_of(command)) is not None:
                await session.resize(*size)
        except (OSError, CubeError):
            pass  # the command is ending: what it no longer reads is lost, as in a shell
