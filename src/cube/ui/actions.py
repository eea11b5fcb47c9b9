"""The dashboard's actions: POST forms (CSRF-checked by :mod:`cube.ui.guard`) that call
the manager, then send the browser back to the page they were on (303, Post/Redirect/Get).

An action the manager refuses (a task of a job's allocation, an unknown node) raises its
Cube error, which :mod:`cube.ui.app` shows as a page with the manager's message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from cube.errors import FieldError, InvalidSpec
from cube.job.spec import MAX_COUNT
from cube.ui.guard import form_fields

if TYPE_CHECKING:
    from cube.manager import Manager


def back(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', '')}{path}", status_code=303)


def action_routes(manager: Manager) -> APIRouter:
    router = APIRouter()
    jobs = manager.jobs

    @router.post("/tasks/{task_id}/stop")
    async def stop_task(request: Request, task_id: str) -> RedirectResponse:
        task = manager.resolve(task_id)
        jobs.check_user_stop(task)
        await manager.stop(task.id)
        return back(request, f"/tasks/{task.id}")

    @router.post("/nodes/{name}/{change}")
    async def drain(
        request: Request, name: str, change: Literal["drain", "undrain"]
    ) -> RedirectResponse:
        await (manager.drain if change == "drain" else manager.undrain)(name)
        return back(request, f"/nodes/{name}")

    @router.post("/jobs/{job_id}/stop")
    async def stop_job(request: Request, job_id: str) -> RedirectResponse:
        await jobs.stop(job_id)
        return back(request, f"/jobs/{job_id}")

    @router.post("/jobs/{job_id}/scale")
    async def scale_job(request: Request, job_id: str) -> RedirectResponse:
        form = form_fields(await request.body())
        await jobs.scale(job_id, form.get("group", ""), parse_count(form.get("count", "")))
        return back(request, f"/jobs/{job_id}")

    return router


def parse_count(text: str) -> int:
    """A form's ``count``: a whole number from 0 to MAX_COUNT, or an error naming the field."""
    try:
        count = int(text.strip())
    except ValueError:
        raise InvalidSpec([FieldError("count", f"not a whole number: {text!r}")]) from None
    if not 0 <= count <= MAX_COUNT:
        raise InvalidSpec([FieldError("count", f"must be from 0 to {MAX_COUNT}")])
    return count
