"""Every request to the dashboard passes here first, so no page or action can forget it.

* Without a live session a page redirects to the login form (303); a partial view, an
  action or anything else not a page gets 401 (the page's script then goes to the form).
* Every POST is checked against cross-site use: its form must carry the session's CSRF
  token (the login form, which has no session yet, is exempt from that one check), and an
  ``Origin`` header, when the browser sends one, must be this server. With the session
  cookie's ``SameSite=Strict`` that is two locks on the same door.
* Every answer carries a strict Content-Security-Policy (scripts and styles from
  ``/ui/static`` only: a value that slipped past autoescaping still could not run) and is
  never cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs, quote, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cube.ui.sessions import Session, Sessions

COOKIE = "cube_session"
#: A form bigger than this is no form of the dashboard's.
MAX_FORM = 64 * 1024


def is_open(path: str) -> bool:
    """The login form and the stylesheet and script: all a browser needs before a session."""
    return path == "/login" or path.startswith("/static/")


HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def route_path(scope: Scope) -> str:
    """The path inside the dashboard (``/tasks``), whatever it is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def form_fields(body: bytes) -> dict[str, str]:
    """A urlencoded form as a dict (the first value of each field)."""
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def session_of(request: Request) -> Session | None:
    session: Session | None = request.scope.get("state", {}).get("session")
    return session


class DashboardGuard:
    def __init__(
        self, app: ASGIApp, *, sessions: Sessions, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        request = Request(scope)
        path = route_path(scope)
        session = self.sessions.get(request.cookies.get(COOKIE, ""), self.clock())
        scope.setdefault("state", {})["session"] = session
        refusal: Response | None = None
        if session is None and not is_open(path):
            refusal = _login_needed(scope, path)
        elif scope["method"] == "POST":
            body, refusal = await _read_form(receive)
            if refusal is None:
                refusal = _cross_site(request, session, form_fields(body), path)
            receive = _replay(body, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _login_needed(scope: Scope, path: str) -> Response:
    root = scope.get("root_path", "")
    if scope["method"] in ("GET", "HEAD") and not path.startswith("/partials/"):
        return RedirectResponse(f"{root}/login?next={quote(root + path)}", status_code=303)
    return PlainTextResponse("Your session has ended: log in again.", status_code=401)


def _cross_site(
    request: Request, session: Session | None, form: dict[str, str], path: str
) -> Response | None:
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return _forbidden("this form was sent from another site")
    if path == "/login":
        return None
    if session is None or not session.csrf_matches(form.get("csrf", "")):
        return _forbidden("the form's CSRF token is missing or wrong: reload the page")
    return None


def _forbidden(why: str) -> Response:
    return PlainTextResponse(f"Refused: {why}.", status_code=403)


async def _read_form(receive: Receive) -> tuple[bytes, Response | None]:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_FORM:
            return b"", PlainTextResponse("Refused: the form is too large.", status_code=413)
    return body, None


def _replay(body: bytes, then: Receive) -> Receive:
    """The body read by the guard, once; then the client's own messages (its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in HEADERS.items():
                headers.setdefault(name, value)
            headers.setdefault("cache-control", "no-store")
        await send(message)

    return wrapped
