"""The CLI's fake manager: an ``httpx.MockTransport`` handed to the CLI as its context
object, so CLI tests need no server; with the records it answers with."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from click.testing import Result

from cube.job.blocked import PlacementFailure
from cube.job.deployment import Deployment, DeploymentStatus
from cube.job.model import Allocation, AllocStatus, Job, JobStatus
from cube.job.parse import parse_job
from cube.job.wire import JobDetail
from cube.node import Node, Resources
from cube.task.model import Task
from cube.task.spec import (
    PortMapping,
    TaskSpec,
)

TASK_ID = "0123456789abcdef0123456789abcdef"


def make_task(**fields: Any) -> Task:
    spec = fields.pop("spec", None) or TaskSpec(
        name="web", image="cube-busybox:latest", ports=[PortMapping(container=80, host=8080)]
    )
    return Task(id=TASK_ID, spec=spec, **fields)


def make_node(name: str = "w1", **fields: Any) -> Node:
    return Node(
        name=name,
        address="http://127.0.0.1:5556",
        capacity=Resources(cpu=4, memory=8 * 1024 * MiB, disk=0),
        allocated=Resources(cpu=0.5, memory=64 * MiB),
        **fields,
    )


class FakeManager:
    """Answers like the manager API: ``routes`` maps "METHOD /path" to a response maker."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, Callable[[httpx.Request], httpx.Response]] = {}

    def on(self, route: str, status: int = 200, body: Any = None) -> None:
        self.routes[route] = lambda _: httpx.Response(status, json=_jsonable(body))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get(f"{request.method} {request.url.path}")
        if route is None:
            return httpx.Response(404, json={"error": "not_found", "message": "no such route"})
        return route(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def body(self, index: int = 0) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.requests[index].content)
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def assert_one_error_line(result: Result, *needles: str) -> str:
    """The command failed with one readable ``Error:`` line naming ``needles``."""
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0]
    return errors[0]


def detail(
    count: int,
    allocs: list[Allocation],
    *,
    version: int = 2,
    failures: dict[str, PlacementFailure] | None = None,
) -> JobDetail:
    spec = parse_job(
        {
            "job": "shop",
            "groups": [{"name": "web", "count": count, "tasks": [{"name": "a", "image": "b"}]}],
        }
    )
    job = Job(id="shop", version=version, status=JobStatus.RUNNING)
    return JobDetail(job=job, spec=spec, allocations=allocs, placement_failures=failures or {})


def alloc(index: int, status: AllocStatus, **fields: object) -> Allocation:
    base: dict[str, object] = {
        "id": f"a{index}",
        "job": "shop",
        "group": "web",
        "index": index,
        "version": 2,
        "group_hash": "h",
        "node": "n1",
        "status": status,
    }
    return Allocation.model_validate({**base, **fields})


def answers(fake: FakeManager, details: list[JobDetail]) -> None:
    """The scale call answers the job; each look at the job gets the next detail (the
    last one from then on). The new version's deployment runs until the last look, which
    finds it successful (unless a detail says otherwise)."""
    for n, d in enumerate(details):
        if d.deployment is None:
            done = n == len(details) - 1
            status = DeploymentStatus.SUCCESSFUL if done else DeploymentStatus.RUNNING
            d.deployment = Deployment(job="shop", version=d.job.version, status=status)
    fake.on("POST /v1/jobs/shop/scale", body=details[-1].job)
    looks: Iterator[JobDetail] = iter(details)
    last = details[-1]

    def look(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_jsonable(next(looks, last)))

    fake.routes["GET /v1/jobs/shop"] = look


MiB = 1024**2
