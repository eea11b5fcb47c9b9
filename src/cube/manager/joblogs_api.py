"""``GET /v1/jobs/{id}/logs``: a job's merged log stream (see :mod:`cube.manager.joblogs`).

::

    GET /v1/jobs/{id}/logs?follow=true&group=web&task=api&since=5m
        one JSON object per line (application/x-ndjson), a cube.job.logs.LogRecord each
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse

import cube.manager.jobs_api  # noqa: F401  (registers the {job_id:jobid} path convertor)
from cube.errors import FieldError, InvalidSpec
from cube.job.spec import JobSpec
from cube.manager.joblogs import JobLogs
from cube.manager.lookup import no_such_group
from cube.units import parse_duration

if TYPE_CHECKING:
    from cube.manager.core import Manager

NDJSON = "application/x-ndjson"


def check_filters(spec: JobSpec, group: str | None, task: str | None) -> None:
    """A group or task name the job's current version does not have is a typo, not an
    empty stream: 422 naming the field."""
    groups = [g for g in spec.groups if group is None or g.name == group]
    if not groups:
        raise no_such_group(spec, group or "")
    names = {t.name for g in groups for t in g.tasks}
    if task is not None and task not in names:
        where = f"group {group}" if group else f"job {spec.job}"
        known = ", ".join(sorted(names))
        raise InvalidSpec([FieldError("task", f"{where} has no task {task!r} ({known})")])


def since_time(since: str | None, now: float) -> float | None:
    """``5m`` -> the Unix time five minutes before ``now``."""
    if since is None:
        return None
    try:
        return max(0.0, now - parse_duration(since))  # "100000h": since the beginning
    except ValueError as exc:
        raise InvalidSpec([FieldError("since", str(exc))]) from None


def install_job_log_routes(app: FastAPI, manager: Manager) -> None:
    @app.get("/v1/jobs/{job_id:jobid}/logs", response_class=StreamingResponse)
    async def job_logs(
        job_id: str,
        follow: bool = False,
        group: Annotated[str | None, Query(max_length=63)] = None,
        task: Annotated[str | None, Query(max_length=63)] = None,
        since: Annotated[str | None, Query(max_length=32, examples=["5m"])] = None,
    ) -> StreamingResponse:
        """Every allocation's output, merged, one record per line, each naming its
        allocation, task and node; with ``follow``, allocations placed later join in, and
        a node that stops answering is announced (``quiet``) while the others go on."""
        job = manager.jobs.job(job_id)
        check_filters(manager.jobs.current_version(job).spec, group, task)
        stream = JobLogs(
            manager,
            job.id,
            group=group,
            task=task,
            since=since_time(since, time.time()),
            follow=follow,
        )

        async def body() -> AsyncIterator[bytes]:
            async for record in stream.records():
                yield record.model_dump_json().encode() + b"\n"

        return StreamingResponse(body(), media_type=NDJSON)
