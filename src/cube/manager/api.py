"""The manager's HTTP API, versioned under ``/v1``: the one users (and the CLI) talk to.

::

    POST   /v1/tasks              submit a task (201, Pending; placed at once if a node fits)
    GET    /v1/tasks              tasks (?state=running&node=w1)
    GET    /v1/tasks/{id}         one task; a unique ID prefix works too
    DELETE /v1/tasks/{id}         stop it, whatever its state
    GET    /v1/tasks/{id}/events  its history, merged from the manager and its nodes
    GET    /v1/tasks/{id}/logs    its container's output, proxied from its node
    GET    /v1/nodes              every node, with capacity, allocation and metrics
    GET    /v1/nodes/{name}       one node
    POST   /v1/nodes              a worker registers itself
    POST   /v1/nodes/{name}/drain   move its tasks away, place nothing new there
    POST   /v1/nodes/{name}/undrain
    GET    /v1/health             liveness
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cube.api.body import TASK_REQUEST_BODY, publish_schemas, read_task_request
from cube.api.common import Health, stream_text
from cube.api.errors import ERROR_RESPONSES, install_error_handlers
from cube.manager.core import Manager
from cube.node import Node
from cube.task.model import Task, TaskEvent
from cube.task.spec import NAME_PATTERN, TaskRequest
from cube.task.state import State


class NodeRegistration(BaseModel):
    """What a worker says when it joins: its name and where its API answers."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    address: str = Field(min_length=1, max_length=255, pattern=r"^https?://[^\s/]+(:\d+)?/?$")


def create_app(manager: Manager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title="Cube manager", version="1", lifespan=lifespan, responses=ERROR_RESPONSES)
    install_error_handlers(app)
    publish_schemas(app, TaskRequest)

    @app.post("/v1/tasks", status_code=201, openapi_extra=TASK_REQUEST_BODY)
    async def submit_task(request: Request, response: Response) -> Task:
        task, created = manager.submit(await read_task_request(request))
        if not created:
            response.status_code = 200
        return task

    @app.get("/v1/tasks")
    async def list_tasks(state: State | None = None, node: str | None = None) -> list[Task]:
        return manager.list_tasks(state=state, node=node)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str) -> Task:
        return manager.get(task_id)

    @app.delete("/v1/tasks/{task_id}")
    async def stop_task(task_id: str) -> Task:
        return await manager.stop(task_id)

    @app.get("/v1/tasks/{task_id}/events")
    async def task_events(task_id: str) -> list[TaskEvent]:
        return manager.events(task_id)

    @app.get("/v1/tasks/{task_id}/logs", response_class=StreamingResponse)
    async def task_logs(
        task_id: str,
        tail: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
        follow: bool = False,
    ) -> StreamingResponse:
        return await stream_text(manager.logs(task_id, tail=tail, follow=follow))

    @app.get("/v1/nodes")
    async def list_nodes() -> list[Node]:
        return manager.list_nodes()

    @app.get("/v1/nodes/{name}")
    async def get_node(name: str) -> Node:
        return manager.get_node(name)

    @app.post("/v1/nodes/{name}/drain")
    async def drain_node(name: str) -> Node:
        return manager.drain(name)

    @app.post("/v1/nodes/{name}/undrain")
    async def undrain_node(name: str) -> Node:
        return manager.undrain(name)

    @app.post("/v1/nodes")
    async def register_node(registration: NodeRegistration) -> Node:
        return await manager.register(registration.name, registration.address.rstrip("/"))

    @app.get("/v1/health")
    async def health() -> Health:
        return Health(role="manager", name="manager")

    return app
