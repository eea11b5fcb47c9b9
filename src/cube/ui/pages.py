"""The dashboard's pages, each also served as its live part alone under ``/partials``.

A page's script asks for ``/ui/partials<page path>`` every two seconds and swaps the
answer in (see static/cube.js): the same handler and context, the partial template.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cube.errors import CubeError
from cube.job.blocked import blocked_groups
from cube.node import NodeState
from cube.task.model import Task
from cube.task.state import State
from cube.ui import views
from cube.ui.render import render

if TYPE_CHECKING:
    from cube.manager import Manager

#: Tasks the task list shows at most, newest first: a page of 10,000 rows, fetched every
#: two seconds, would be of use to nobody.
TASKS_SHOWN = 500
#: Lines of a task's output the log tail shows, and how long it waits for them.
LOG_LINES = 200
LOG_WAIT = 3.0
#: Bytes of output kept at most (a line can be long).
LOG_BYTES = 256 * 1024


def page_routes(manager: Manager) -> APIRouter:
    router = APIRouter(default_response_class=HTMLResponse)
    jobs = manager.jobs

    # The pages read the manager's task records in place (``manager.tasks``), without
    # the deep copy of every task that ``list_tasks`` makes, and copy only the few they
    # show: a page refreshed every two seconds costs what it shows, not the cluster's
    # size. Each read of the records is done before the handler's first ``await``.

    @router.get("/")
    @router.get("/partials/")
    async def overview(request: Request) -> HTMLResponse:
        records = manager.tasks.values()
        by_state = views.tasks_by_state(records)
        pending = _copies(islice((t for t in records if t.state is State.PENDING), 10))
        # (recent_events picks its tasks before it awaits; the page shows their ID and name.)
        events = await views.recent_events(records, manager.events)
        return render(
            request,
            "overview",
            nodes=views.nodes_by_state(manager.list_nodes()),
            tasks=by_state,
            task_total=sum(c.count for c in by_state),
            allocs=views.allocs_by_status(jobs.allocations()),
            jobs=views.jobs_by_status(jobs.jobs.values()),
            pending=pending,
            events=events,
        )

    @router.get("/tasks")
    @router.get("/partials/tasks")
    async def tasks(request: Request) -> HTMLResponse:
        shown = _copies(views.newest(manager.tasks.values(), TASKS_SHOWN))
        return render(request, "tasks", tasks=shown, total=len(manager.tasks))

    @router.get("/tasks/{task_id}")
    @router.get("/partials/tasks/{task_id}")
    async def task(request: Request, task_id: str) -> HTMLResponse:
        found = manager.get(task_id)
        return render(
            request,
            "task",
            task=found,
            spec=found.spec.model_dump(mode="json"),  # secret env values come out hidden
            events=list(reversed(await manager.events(found.id))),
            decision=views.placement(found.placement),
        )

    @router.get("/partials/tasks/{task_id}/logs")
    async def task_logs(request: Request, task_id: str) -> HTMLResponse:
        text, problem = await _log_tail(manager, task_id)
        return render(request, "logs", text=text, problem=problem)

    @router.get("/nodes")
    @router.get("/partials/nodes")
    async def nodes(request: Request) -> HTMLResponse:
        listed = sorted(manager.list_nodes(), key=lambda n: n.name)
        return render(request, "nodes", nodes=[(n, views.node_bars(n)) for n in listed])

    @router.get("/nodes/{name}")
    @router.get("/partials/nodes/{name}")
    async def node(request: Request, name: str) -> HTMLResponse:
        found = manager.get_node(name)
        # The index by node, not a scan of every task; it holds them in the order they came
        # to the node, and the page shows the newest first (the ID settles a tie).
        on_it = sorted(manager.tasks_on(name), key=lambda t: (t.created_at, t.id), reverse=True)
        return render(
            request,
            "node",
            node=found,
            bars=views.node_bars(found),
            tasks=on_it,
            allocs=jobs.allocations(node=name),
            draining=found.drain or found.state is NodeState.DRAINING,
        )

    @router.get("/jobs")
    @router.get("/partials/jobs")
    async def job_list(request: Request) -> HTMLResponse:
        rows = []
        for job_id in sorted(jobs.jobs):
            job = jobs.jobs[job_id]
            spec = jobs.current_version(job).spec
            rows.append((job, spec, views.job_groups(job, spec, jobs.allocations(job=job.id))))
        return render(request, "jobs", jobs=rows)

    @router.get("/jobs/{job_id}")
    @router.get("/partials/jobs/{job_id}")
    async def job(request: Request, job_id: str) -> HTMLResponse:
        found = jobs.job(job_id)
        spec = jobs.current_version(found).spec
        allocs = jobs.allocations(job=found.id)
        return render(
            request,
            "job",
            job=found,
            spec=spec,
            groups=views.job_groups(found, spec, allocs),
            blocked=blocked_groups(spec, allocs, jobs.failures(found.id)),
            allocs=sorted(allocs, key=lambda a: (a.group, a.index, a.created_at)),
            versions=list(reversed(jobs.job_versions(found.id))),
        )

    @router.get("/allocations/{alloc_id}")
    @router.get("/partials/allocations/{alloc_id}")
    async def allocation(request: Request, alloc_id: str) -> HTMLResponse:
        found = jobs.allocation(alloc_id)
        return render(request, "allocation", alloc=found, decision=views.placement(found.placement))

    @router.get("/topology")
    @router.get("/partials/topology")
    async def topology(request: Request) -> HTMLResponse:
        by_node: dict[str, list[Task]] = {}
        waiting = []
        for t in manager.tasks.values():  # the live ones are shown: copied below
            if t.state is State.PENDING:
                waiting.append(t)
            if t.node is not None and not t.is_terminal:
                by_node.setdefault(t.node, []).append(t)
        rows = []
        for n in sorted(manager.list_nodes(), key=lambda n: n.name):
            live = _copies(views.live_tasks(by_node.get(n.name, [])))
            rows.append((n, views.node_strips(n, live), live))
        waiting = _copies(waiting)
        return render(request, "topology", rows=rows, waiting=waiting)

    return router


def _copies(tasks: Iterable[Task]) -> list[Task]:
    """Copies of the tasks a page shows, as ``Manager.list_tasks`` gives them."""
    return [t.model_copy(deep=True) for t in tasks]


async def _log_tail(manager: Manager, task_id: str) -> tuple[str, str]:
    """The last lines of the task's output, and why there are none when there are none."""
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in manager.logs(task_id, tail=LOG_LINES, follow=False):
            chunks.append(chunk)
            size += len(chunk)
            if size > LOG_BYTES:
                return

    try:
        async with asyncio.timeout(LOG_WAIT):  # (not wait_for: see cube.background.wait_event)
            await read()
    except TimeoutError:
        pass  # show what came
    except CubeError as exc:
        return "", exc.message
    text = b"".join(chunks)[-LOG_BYTES:].decode("utf-8", "replace")
    return text, "" if text else "No output yet."
