"""Bearer-token checks in front of every route, as one ASGI middleware.

Kept out of the route handlers so that no route can forget it: the rules say which
roles may call which method and path, and anything not listed needs ``default``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cube.api.errors import error_response
from cube.auth import Authenticator, Role

#: Which roles a request needs: None means open (health), else any one of the roles.
Rule = Callable[[str, str], frozenset[Role] | None]


class BearerAuth:
    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, rule: Rule) -> None:
        self.app = app
        self.authenticator = authenticator
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # A WebSocket handshake is a GET; a refusal is its HTTP answer (the ASGI denial
        # response extension, which Starlette's responses use by themselves).
        needed = self.rule(scope.get("method", "GET"), scope["path"])
        if needed is not None:
            refusal = self._check(HTTPConnection(scope), needed)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, request: HTTPConnection, needed: frozenset[Role]) -> JSONResponse | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
        roles = self.authenticator.roles_of(token.strip())
        if not roles:
            return _unauthorized("invalid token")
        if not roles & needed:
            names = " or ".join(sorted(r.value for r in needed))
            held = ", ".join(sorted(r.value for r in roles))
            return error_response(403, "forbidden", f"this needs a {names} token, not a {held} one")
        return None


def _unauthorized(message: str) -> JSONResponse:
    response = error_response(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def open_health(needed: frozenset[Role]) -> Rule:
    """Every route needs one of ``needed``, except ``GET /v1/health``."""

    def rule(method: str, path: str) -> frozenset[Role] | None:
        if path == "/v1/health" and method in ("GET", "HEAD"):
            return None
        return needed

    return rule
