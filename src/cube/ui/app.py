"""The dashboard as one ASGI app, mounted by the manager's API under ``/ui``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from cube.api.errors import status_for
from cube.auth import Authenticator
from cube.errors import CubeError
from cube.ui.actions import action_routes
from cube.ui.guard import DashboardGuard
from cube.ui.login import login_routes
from cube.ui.pages import page_routes
from cube.ui.render import is_partial, render
from cube.ui.sessions import Sessions

if TYPE_CHECKING:
    from cube.manager import Manager

#: Where the manager mounts the dashboard.
PREFIX = "/ui"


def create_dashboard(
    manager: Manager,
    authenticator: Authenticator,
    *,
    sessions: Sessions | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Pages, partial views, actions and static files, behind :class:`DashboardGuard`."""
    sessions = Sessions() if sessions is None else sessions  # (an empty one is falsy)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("cube.ui", "static")]), name="static")
    app.include_router(login_routes(authenticator, sessions, clock))
    app.include_router(page_routes(manager))
    app.include_router(action_routes(manager))
    _install_error_pages(app)
    app.add_middleware(DashboardGuard, sessions=sessions, clock=clock)
    return app


#: What an HTTP error means to someone browsing.
PLAIN = {
    404: "No such page.",
    405: "This address is an action: use its button on the page.",
}


def _install_error_pages(app: FastAPI) -> None:
    """Errors as pages that say what happened (a partial view gets the message alone,
    which its page's script shows in place of the live part)."""

    def answer(request: Request, status: int, message: str) -> Response:
        if is_partial(request):
            return PlainTextResponse(message, status_code=status)
        return render(request, "error", status_code=status, status=status, message=message)

    async def cube_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CubeError)
        return answer(request, status_for(exc)[0], exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = PLAIN.get(exc.status_code, str(exc.detail))
        return answer(request, exc.status_code, message)

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
        return answer(request, 422, fields or "invalid request")

    app.add_exception_handler(CubeError, cube_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, bad_request)
