"""Logging in to the dashboard with the cluster token, and out again.

The token is checked like an API bearer token (:class:`cube.auth.Authenticator`, in
constant time) and then forgotten: the browser gets a session cookie instead, HttpOnly
(no script reads it), SameSite=Strict (no other site's page sends it) and Secure when the
manager serves HTTPS.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cube.auth import Authenticator, Role
from cube.ui.guard import COOKIE, form_fields, session_of
from cube.ui.render import render
from cube.ui.sessions import Sessions


def safe_next(root: str, wanted: str) -> str:
    """Where to go after login: a dashboard path, never another site (``//evil``)."""
    inside = wanted.startswith(f"{root}/") and not wanted.startswith("//")
    if inside and "\\" not in wanted and "//" not in wanted:
        return wanted
    return f"{root}/"


def login_routes(
    authenticator: Authenticator, sessions: Sessions, clock: Callable[[], float]
) -> APIRouter:
    router = APIRouter()

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "") -> Response:
        root = request.scope.get("root_path", "")
        if session_of(request) is not None:
            return RedirectResponse(safe_next(root, next), status_code=303)
        return render(request, "login", next=safe_next(root, next), error="")

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        form = form_fields(await request.body())
        target = safe_next(root, form.get("next", ""))
        token = form.get("token", "").strip()
        if not token or Role.USER not in authenticator.roles_of(token):
            why = "Enter the cluster token." if not token else "That is not the cluster token."
            return render(request, "login", status_code=401, next=target, error=why)
        session_id, _ = sessions.create(clock())
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(sessions.lifetime),
            path=f"{root}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        sessions.end(request.cookies.get(COOKIE, ""))
        response = RedirectResponse(f"{root}/login", status_code=303)
        response.delete_cookie(COOKIE, path=f"{root}/", httponly=True, samesite="strict")
        return response

    return router
