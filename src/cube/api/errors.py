"""The one place where Cube's errors become HTTP answers.

Every error body has the same shape::

    {"error": "invalid_spec", "message": "resources.memory: invalid size 'lots'",
     "fields": [{"field": "resources.memory", "message": "invalid size 'lots'"}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from cube import errors
from cube.errors import FieldError
from cube.log import get_logger

log = get_logger("cube.api")

#: Cube error -> (HTTP status, error code). Looked up along the class's MRO.
STATUS: dict[type[errors.CubeError], tuple[int, str]] = {
    errors.PayloadTooLarge: (413, "too_large"),
    errors.InvalidSpec: (422, "invalid_spec"),
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    errors.IllegalTransition: (409, "illegal_transition"),
    errors.RuntimeUnavailable: (503, "runtime_unavailable"),
    errors.StoreFull: (503, "store_full"),
    errors.StoreUnavailable: (503, "store_unavailable"),
    errors.Unavailable: (503, "unavailable"),
    errors.ContainerError: (502, "container_error"),
    errors.CubeError: (400, "error"),
}


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: str
    message: str
    fields: list[FieldProblem] = []


def status_for(exc: errors.CubeError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS and issubclass(cls, errors.CubeError):
            return STATUS[cls]
    return 400, "error"


def error_response(
    status: int, code: str, message: str, fields: Sequence[FieldError] = ()
) -> JSONResponse:
    body = ErrorBody(
        error=code,
        message=message,
        fields=[FieldProblem(field=f.field, message=f.message) for f in fields],
    )
    return JSONResponse(body.model_dump(), status_code=status)


def cube_error_response(exc: errors.CubeError) -> JSONResponse:
    """The answer for ``exc``: to a request, or to a WebSocket handshake it refuses."""
    status, code = status_for(exc)
    fields = exc.errors if isinstance(exc, errors.InvalidSpec) else []
    return error_response(status, code, exc.message, fields)


#: Responses to declare on every route, so the OpenAPI schema tells the truth: every
#: status of :data:`STATUS`, and the 401/403 of :mod:`cube.api.auth`. Not 500: that is a bug.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 502, 503)
}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route has for the request's path: a 405's ``Allow`` (RFC 9110).

    Starlette names only the methods of the first route whose path matched, so
    ``PUT /v1/tasks/ID`` would answer ``Allow: GET`` though ``DELETE`` works too.
    """
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.CubeError)
    async def cube_error(_: Request, exc: errors.CubeError) -> JSONResponse:
        return cube_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            text = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            fields.append(FieldError(".".join(loc) or "body", text))
        message = "; ".join(str(f) for f in fields)
        return error_response(422, "invalid_request", message, fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # The client closed the connection before its body had all come (a manager that
        # gave up on a send, a Ctrl-C): no bug, and nobody left to answer.
        log.info("client went away before its request's body came", path=request.url.path)
        return error_response(400, "client_disconnected", "the request's body did not come")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", path=request.url.path, error=repr(exc), exc=exc)
        return error_response(500, "internal", "internal error; see the server's log")
