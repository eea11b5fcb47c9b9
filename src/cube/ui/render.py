"""Jinja2 for the dashboard: autoescaped templates from the package, rendered per request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from cube.task.model import short_task_id
from cube.ui import views
from cube.ui.guard import route_path, session_of
from cube.units import format_size

#: Autoescaping is on for every template, whatever its name: a task's name, command,
#: reason or log line is text, never markup.
ENV = Environment(
    loader=PackageLoader("cube.ui", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["short"] = short_task_id
ENV.filters["size"] = format_size
ENV.filters["cores"] = views.cores


def is_partial(request: Request) -> bool:
    """Partial views (``/ui/partials/...``) are a page's live part alone, for its script."""
    return route_path(request.scope).startswith("/partials/")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` (``tasks``) as a page, or its partial (``partials/tasks.html``) when
    the request is for one."""
    root = request.scope.get("root_path", "")
    now = datetime.now(UTC)
    session = session_of(request)
    name = f"partials/{template}.html" if is_partial(request) else f"{template}.html"
    html = ENV.get_template(name).render(
        root=root,
        path=route_path(request.scope),
        partial=f"{root}/partials{route_path(request.scope)}",
        now=now,
        ago=lambda when: views.ago(when, now),
        csrf=session.csrf if session else "",
        logged_in=session is not None,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)
