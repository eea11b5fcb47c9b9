"""``WS /v1/exec/{target}``: ``cube exec``, relayed to the worker that runs the task.

``target`` is a task (ID, unique ID prefix, or name, as everywhere) or an allocation (ID,
unique prefix, or ``job.group[index]``) with ``?task=NAME`` when it has several tasks.
The manager finds the task, checks that it runs, opens the worker's
``/v1/tasks/{id}/exec`` with the node's token and only then accepts: a refusal, the
manager's or the worker's, is the HTTP answer to the client's handshake. Then it relays
messages both ways until the worker closes (after the exit code). See
:mod:`cube.api.exec_wire` for the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from cube.api.client import error_from_response
from cube.api.exec_wire import error_message
from cube.api.ws import ExecRequest, deny
from cube.errors import Conflict, CubeError, FieldError, InvalidSpec, NotFound, Unavailable
from cube.job.model import Allocation
from cube.log import get_logger
from cube.node import NodeState
from cube.task.model import Task, short_task_id
from cube.task.state import State

if TYPE_CHECKING:
    from cube.manager.core import Manager

log = get_logger("cube.manager.exec")

#: Seconds to wait for the worker's handshake.
OPEN_TIMEOUT = 10.0


def install_exec_route(app: FastAPI, manager: Manager) -> None:
    @app.websocket("/v1/exec/{target}")
    async def exec_in(websocket: WebSocket, target: str) -> None:
        try:
            request = ExecRequest.of(websocket)
            task = running_task(manager, target, websocket.query_params.get("task"))
            upstream = await open_worker(manager, task, request)
        except CubeError as exc:
            await deny(websocket, exc)
            return
        # Who ran what where, for the operator: the program only (its arguments may hold secrets).
        log.info("exec", task=task.id, node=task.node, command=request.command[0], tty=request.tty)
        async with upstream:
            await websocket.accept()
            await relay(websocket, upstream)


def running_task(manager: Manager, target: str, task_name: str | None) -> Task:
    """The task ``target`` names (see the module docstring), which must be running."""
    task = _task(manager, target, task_name)
    if task.state is not State.RUNNING:
        why = f": {task.reason}" if task.reason else ""
        raise Conflict(
            f"task {task.name} ({short_task_id(task.id)}) is not running"
            f" ({task.state.title}{why}); a command can only run in a running task"
        )
    return task


def _task(manager: Manager, target: str, task_name: str | None) -> Task:
    if task_name is None:
        with contextlib.suppress(NotFound):
            return manager.resolve(target)
    alloc = _alloc(manager, target, task_name)
    names = sorted(alloc.tasks)
    if task_name is None:
        if len(names) != 1:
            why = f"allocation {alloc.name} has tasks {', '.join(names)}: choose one with --task"
            raise InvalidSpec([FieldError("task", why)])
        task_name = names[0]
    if task_name not in alloc.tasks:
        raise NotFound(f"allocation {alloc.name} has no task {task_name} ({', '.join(names)})")
    return manager.get(alloc.tasks[task_name].id)


def _alloc(manager: Manager, target: str, task_name: str | None) -> Allocation:
    named = [a for a in manager.jobs.allocs.values() if a.name == target]
    if named:  # the live one; else the newest
        live = [a for a in named if not a.is_terminal and a.replaced_by is None]
        return max(live or named, key=lambda a: a.created_at)
    try:
        return manager.jobs.allocation(target)
    except NotFound:
        what = "allocation" if task_name is not None else "task or allocation"
        raise NotFound(
            f"{what} {target} not found (give a task's ID, name or ID prefix, or an"
            " allocation's ID, ID prefix or job.group[index])"
        ) from None


async def open_worker(manager: Manager, task: Task, request: ExecRequest) -> ClientConnection:
    """The worker's exec WebSocket for ``task``, opened; its refusal as the CubeError."""
    node = manager.nodes.get(task.node or "")
    if node is None or node.state is NodeState.DOWN:
        raise Unavailable(f"node {task.node} of task {short_task_id(task.id)} does not answer")
    base = httpx.URL(node.address)
    scheme = "wss" if base.scheme == "https" else "ws"
    url = f"{scheme}://{base.netloc.decode()}/v1/tasks/{task.id}/exec?{urlencode(request.query())}"
    tls = manager.workers.tls
    try:
        return await connect(
            url,
            additional_headers=manager.workers.headers(node.address),
            ssl=(tls if isinstance(tls, ssl.SSLContext) else None) if scheme == "wss" else None,
            proxy=None,
            open_timeout=OPEN_TIMEOUT,
            max_size=None,
            compression=None,
        )
    except InvalidStatus as exc:
        answer = exc.response
        response = httpx.Response(
            answer.status_code, content=bytes(answer.body or b""), request=httpx.Request("GET", url)
        )
        raise error_from_response(response) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise Unavailable(f"cannot reach node {node.name} at {node.address}: {exc}") from None


async def relay(websocket: WebSocket, upstream: ClientConnection) -> None:
    """Messages both ways until the worker ends the exec or the client goes away."""
    down = asyncio.create_task(_down(websocket, upstream))
    up = asyncio.create_task(_up(websocket, upstream))
    try:
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (down, up):
            t.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close()


async def _down(websocket: WebSocket, upstream: ClientConnection) -> None:
    try:
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)
    except ConnectionClosed as exc:
        await websocket.send_text(error_message(f"lost the task's node: {exc}"))


async def _up(websocket: WebSocket, upstream: ClientConnection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        await upstream.send(data if data is not None else message.get("text") or "")
