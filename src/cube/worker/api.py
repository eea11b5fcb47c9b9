"""The worker's HTTP API, versioned under ``/v1``.

::

    POST   /v1/tasks              run a task (201; 200 if the same ID and spec exist); with
                                  ``alloc``, as one task of a job allocation (the manager
                                  sends each of its tasks so, all to the same worker)
    GET    /v1/tasks              every task this node knows
    GET    /v1/changes            a blocking query (?since=INDEX&wait=SECONDS): the tasks that
                                  changed after INDEX, with their histories, once one does
    GET    /v1/tasks/{id}         one task (404 if unknown)
    DELETE /v1/tasks/{id}         stop it: container stopped and removed (?reason=: why)
    GET    /v1/tasks/{id}/events  its history
    GET    /v1/tasks/{id}/logs    its container's output (?tail=N&follow=true&since=UNIXTIME)
    WS     /v1/tasks/{id}/exec    run a command in its container (see cube.worker.exec_api)
    GET    /v1/stats              capacity, allocation and machine metrics
    GET    /v1/health             liveness; "degraded", naming the loops, while one crashes
    GET    /metrics               Prometheus' text format (see cube.metrics)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from cube.api.auth import BearerAuth, open_health
from cube.api.body import RESUBMITTED, TASK_REQUEST_BODY, publish_schemas, read_task_request
from cube.api.common import Health, stream_text
from cube.api.errors import ERROR_RESPONSES, install_error_handlers
from cube.auth import Authenticator, Role
from cube.metrics import METRICS_PATH, install_metrics, metrics_rule
from cube.protocol import MAX_WAIT, NODE_TIMEOUT_HEADER, NodeReport, TaskChanges
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskRequest
from cube.worker.agent import Worker
from cube.worker.authority import announced_timeout
from cube.worker.exec_api import install_exec_route

#: Who may read a worker's ``GET /metrics``: its manager, the metrics token (and in
#: ``cube dev`` the cluster token), if the authenticator knows them.
METRICS_READERS = frozenset({Role.MANAGER, Role.METRICS, Role.USER})
#: Calls that are not the manager's: they say nothing of whether it is still there.
NOT_THE_MANAGER = frozenset({"/v1/health", METRICS_PATH})


def create_app(
    worker: Worker, *, authenticator: Authenticator | None = None, metrics_open: bool = False
) -> FastAPI:
    """The worker's API; with an ``authenticator`` every route but health needs the
    manager's credentials (the worker's own token), except ``GET /metrics`` (see
    :data:`METRICS_READERS`; open with ``metrics_open``)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        try:
            yield
        finally:
            await worker.close()

    app = FastAPI(
        title="Cube worker",
        version="1",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    install_error_handlers(app)
    publish_schemas(app, TaskRequest)

    # Added before the authentication below, so inside it: with an authenticator only
    # the manager's calls get here.
    app.add_middleware(HeardFromManager, worker=worker)

    if authenticator is not None:
        rule = metrics_rule(
            open_health(frozenset({Role.MANAGER})),
            readers=None if metrics_open else METRICS_READERS,
        )
        app.add_middleware(BearerAuth, authenticator=authenticator, rule=rule)
    install_metrics(app, lambda: worker.telemetry)

    @app.post("/v1/tasks", status_code=201, responses=RESUBMITTED, openapi_extra=TASK_REQUEST_BODY)
    async def run_task(request: Request, response: Response) -> Task:
        task, created = worker.submit(await read_task_request(request))
        if not created:
            response.status_code = 200
        return task

    @app.get("/v1/tasks")
    async def list_tasks() -> list[Task]:
        return worker.list_tasks()

    @app.get("/v1/changes", response_model=TaskChanges)
    async def changes(
        since: Annotated[str | None, Query(max_length=64)] = None,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
    ) -> Response:
        # Serialised here, once: not copied, then validated and serialised again by FastAPI.
        body = await worker.changes_json(since, wait=wait)
        return Response(body, media_type="application/json")

    @app.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str) -> Task:
        return worker.get(task_id)

    @app.delete("/v1/tasks/{task_id}")
    async def stop_task(
        task_id: str, reason: Annotated[str | None, Query(min_length=1, max_length=500)] = None
    ) -> Task:
        """``reason``: why (recorded as the reason of the task's end)."""
        return await worker.stop(task_id, reason=reason)

    @app.get("/v1/tasks/{task_id}/events")
    async def task_events(task_id: str) -> list[TaskEvent]:
        return worker.events(task_id)

    @app.get("/v1/tasks/{task_id}/logs", response_class=StreamingResponse)
    async def task_logs(
        task_id: str,
        tail: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
        follow: bool = False,
        since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    ) -> StreamingResponse:
        return await stream_text(worker.logs(task_id, tail=tail, follow=follow, since=since))

    install_exec_route(app, worker)

    @app.get("/v1/stats")
    async def stats() -> NodeReport:
        return worker.report()

    @app.get("/v1/health")
    async def health() -> Health:
        return Health(role="worker", name=worker.name).with_loops(worker.loops, time.monotonic())

    return app


class HeardFromManager:
    """ASGI middleware: tells the worker the manager called, and the node timeout it told
    (see Worker.heard). Counted when a call arrives: a blocking query is held.

    Plain ASGI rather than ``@app.middleware("http")``, whose BaseHTTPMiddleware runs each
    request in a task group of its own: 20 % of a simulated fleet's CPU (py-spy)."""

    def __init__(self, app: ASGIApp, *, worker: Worker) -> None:
        self.app = app
        self.worker = worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in NOT_THE_MANAGER:
            told = Headers(scope=scope).get(NODE_TIMEOUT_HEADER)  # a scrape is not a call
            self.worker.heard(node_timeout=announced_timeout(told))
        await self.app(scope, receive, send)
