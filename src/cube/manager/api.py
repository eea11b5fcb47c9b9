"""The manager's HTTP API, versioned under ``/v1``: the one users (and the CLI) talk to.

::

    POST   /v1/tasks              submit a task (201, Pending; placed at once if a node fits)
    GET    /v1/tasks              tasks (?state=running&node=w1), without placement details
    GET    /v1/tasks/{id}         one task; {id} may be a unique ID prefix or name (lookup.py)
    DELETE /v1/tasks/{id}         stop it, whatever its state
    GET    /v1/tasks/{id}/events  its history, merged from the manager and its nodes
    GET    /v1/tasks/{id}/logs    its container's output, proxied from its node
    WS     /v1/exec/{task|alloc}  run a command in a running task (cube.manager.exec_api)
    GET    /v1/nodes              every node, with capacity, allocation and metrics
    GET    /v1/nodes/{name}       one node
    POST   /v1/nodes              a worker joins (409 if the name is another worker's)
    POST   /v1/nodes/{name}/drain   move its tasks away, place nothing new there
    POST   /v1/nodes/{name}/undrain
    GET    /v1/health             liveness, the intervals in force; "degraded" while a loop crashes
    GET    /metrics               Prometheus' text format (see cube.metrics)

Jobs and allocations: see :mod:`cube.manager.jobs_api`; a job's merged log stream:
:mod:`cube.manager.joblogs_api`. The web dashboard, under ``/ui`` with its own login:
see :mod:`cube.ui`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from cube.api.auth import BearerAuth
from cube.api.body import RESUBMITTED, TASK_REQUEST_BODY, publish_schemas, read_task_request
from cube.api.common import ManagerHealth, stream_text
from cube.api.errors import ERROR_RESPONSES, install_error_handlers
from cube.auth import Authenticator, Role
from cube.errors import FieldError, InvalidSpec
from cube.job.spec import JobSpec
from cube.manager.core import Manager
from cube.manager.exec_api import install_exec_route
from cube.manager.joblogs_api import install_job_log_routes
from cube.manager.jobs_api import install_job_routes
from cube.metrics import install_metrics, metrics_rule
from cube.node import Node
from cube.protocol import JoinAnswer, NodeRegistration
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskRequest
from cube.task.state import State
from cube.ui import PREFIX as UI_PREFIX
from cube.ui import create_dashboard

JSON = "application/json"

#: Node answers never include the node's token or the digest of its secret.
NO_TOKEN: set[str] = {"token", "secret_hash"}


def manager_rule(method: str, path: str) -> frozenset[Role] | None:
    """Health is open; a worker's join token may only register; everything else is users'.
    The dashboard (``/ui``) checks its own session cookie: see :mod:`cube.ui.guard`."""
    if path == "/v1/health" and method in ("GET", "HEAD"):
        return None
    if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
        return None
    if path == "/" and method in ("GET", "HEAD"):  # leads a browser to the dashboard
        return None
    if path == "/v1/nodes" and method == "POST":
        return frozenset({Role.JOIN, Role.USER})
    return frozenset({Role.USER})


#: Who may read the manager's ``GET /metrics``: users, and the read-only metrics token.
METRICS_READERS = frozenset({Role.USER, Role.METRICS})


def create_app(
    manager: Manager, *, authenticator: Authenticator | None = None, metrics_open: bool = False
) -> FastAPI:
    """The manager's API; with an ``authenticator`` every route but health needs a token
    (and ``GET /metrics`` too, unless ``metrics_open``)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title="Cube manager", version="1", lifespan=lifespan, responses=ERROR_RESPONSES)
    install_error_handlers(app)
    publish_schemas(app, TaskRequest, JobSpec)
    if authenticator is not None:
        readers = None if metrics_open else METRICS_READERS
        rule = metrics_rule(manager_rule, readers=readers)
        app.add_middleware(BearerAuth, authenticator=authenticator, rule=rule)
    install_metrics(app, lambda: manager.telemetry)

    @app.post("/v1/tasks", status_code=201, responses=RESUBMITTED, openapi_extra=TASK_REQUEST_BODY)
    async def submit_task(request: Request, response: Response) -> Task:
        submitted = await read_task_request(request)
        if submitted.alloc is not None:
            why = "set by the manager on the tasks of a job's allocation; submit a job instead"
            raise InvalidSpec([FieldError("alloc", why)])
        task, created = await manager.submit(submitted)
        if not created:
            response.status_code = 200
        return task

    @app.get("/v1/tasks", response_model=list[Task])
    async def list_tasks(state: State | None = None, node: str | None = None) -> Response:
        """Every task (or those in ``state`` / on ``node``), without ``placement``: the
        scheduler's explanation is in ``GET /v1/tasks/{id}``."""
        # Serialised by the manager from its records: see Manager.tasks_json.
        return Response(manager.tasks_json(state=state, node=node), media_type=JSON)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str) -> Task:
        return manager.get(task_id)

    @app.delete("/v1/tasks/{task_id}")
    async def stop_task(task_id: str) -> Task:
        task = manager.resolve(task_id)
        manager.jobs.check_user_stop(task)
        return await manager.stop(task.id)

    @app.get("/v1/tasks/{task_id}/events")
    async def task_events(task_id: str) -> list[TaskEvent]:
        return await manager.events(task_id)

    @app.get("/v1/tasks/{task_id}/logs", response_class=StreamingResponse)
    async def task_logs(
        task_id: str,
        tail: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
        follow: bool = False,
    ) -> StreamingResponse:
        return await stream_text(manager.logs(task_id, tail=tail, follow=follow))

    @app.get("/v1/nodes", response_model_exclude={"__all__": NO_TOKEN})
    async def list_nodes() -> list[Node]:
        return manager.list_nodes()

    @app.get("/v1/nodes/{name}", response_model_exclude=NO_TOKEN)
    async def get_node(name: str) -> Node:
        return manager.get_node(name)

    @app.post("/v1/nodes/{name}/drain", response_model_exclude=NO_TOKEN)
    async def drain_node(name: str) -> Node:
        return await manager.drain(name)

    @app.post("/v1/nodes/{name}/undrain", response_model_exclude=NO_TOKEN)
    async def undrain_node(name: str) -> Node:
        return await manager.undrain(name)

    @app.post("/v1/nodes", response_model_exclude={"node": NO_TOKEN})
    async def register_node(registration: NodeRegistration) -> JoinAnswer:
        """A worker joins (or joins again): 409 if the name is another worker's."""
        address = registration.address.rstrip("/")
        return await manager.register(
            registration.name,
            address,
            registration.token,
            secret=registration.secret,
            running=registration.running,
        )

    install_job_routes(app, manager.jobs)
    install_job_log_routes(app, manager)
    install_exec_route(app, manager)
    if authenticator is not None:  # the dashboard's login needs the cluster token to check
        app.mount(UI_PREFIX, create_dashboard(manager, authenticator))

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            """The manager's address opened in a browser: the dashboard (it was a 401)."""
            return RedirectResponse(f"{UI_PREFIX}/", status_code=303)

    @app.get("/v1/health")
    async def health() -> ManagerHealth:
        pace = manager.pace
        health = ManagerHealth(
            role="manager",
            name="manager",
            nodes=len(manager.nodes),
            collect_interval=pace.collect,
            node_timeout=manager.node_timeout_in_force(),
        )
        return health.with_loops(manager.loops, time.monotonic())

    return app
