"""``GET /metrics`` and the timing of every API request, shared by the manager and workers.

Who may read ``/metrics`` is a rule wrapped around the agent's own (see
:mod:`cube.api.auth`): the roles given, or anyone with ``--metrics-open``. Everything else
stays as the agent's rule says, so the read-only metrics token opens ``/metrics`` and
nothing more (a 403 elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from fastapi import FastAPI, Response
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cube.api.auth import Rule
from cube.auth import Role

# No ``_created`` series beside every counter and histogram (prometheus-client's default):
# they double what each scrape carries and no Cube query needs them. Process-wide, as the
# library's setting is; Cube's processes are its own.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

METRICS_PATH = "/metrics"
#: The ``route`` label of a request no route matched (refused before routing, or a 404):
#: its path is the client's choice, and would make a new series of each.
UNROUTED = "unrouted"
#: Methods with a label of their own; any other is "other": requests are timed before
#: authentication, and a client must not create a series per word it sends.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The classic text format, which generate_latest writes: prometheus-client 0.22+ calls it
#: version 1.0.0 (UTF-8 names allowed), a type the Prometheus 2 of Debian 12 does not know.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Telemetry(Protocol):
    """What an agent's telemetry offers the API: its registry and its request histogram."""

    registry: CollectorRegistry
    requests: Histogram


def metrics_rule(rule: Rule, *, readers: frozenset[Role] | None) -> Rule:
    """``rule``, except that ``GET /metrics`` needs one of ``readers`` (None: open)."""

    def wrapped(method: str, path: str) -> frozenset[Role] | None:
        if path == METRICS_PATH and method in ("GET", "HEAD"):
            return readers
        return rule(method, path)

    return wrapped


def request_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "cube_http_request_duration_seconds",
        "Time to answer an API request, until its response ends, by route template "
        "(/v1/tasks/{task_id}), method and status code.",
        ["route", "method", "status"],
        registry=registry,
    )


class RequestTimer:
    """ASGI middleware: observes each HTTP request's duration in ``histogram``.

    Labelled by the route's template, which the router records in the request's scope,
    never by the path itself (a task ID per series would grow without end). The template
    is written as a client would read it, without the converter a route may name
    (``/v1/jobs/{job_id}``, not ``/v1/jobs/{job_id:jobid}``).
    """

    def __init__(self, app: ASGIApp, *, telemetry: Callable[[], Telemetry]) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: BaseRoute | None = scope.get("route")
            template = getattr(route, "path_format", None) or UNROUTED
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.telemetry().requests.labels(template, method, str(status)).observe(
                time.perf_counter() - started
            )


def install_metrics(app: FastAPI, telemetry: Callable[[], Telemetry]) -> None:
    """Serve the registry of ``telemetry()`` at ``GET /metrics`` and time every request of
    ``app`` in its ``requests``. Call it after adding the authentication middleware: the
    timer then sees refused requests too.

    ``telemetry`` is asked at each request, not once: a simulated fleet serves many
    workers with one app (see :mod:`cube.worker.fleet`)."""
    app.add_middleware(RequestTimer, telemetry=telemetry)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus' text format (version 0.0.4)."""
        body = generate_latest(telemetry().registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE})
