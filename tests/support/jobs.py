"""Jobs on a real cluster: job files, the CLI against a manager, waiting for allocations,
convergence of a job's tasks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.agents import AgentProcess
from tests.support.cli import run_cube
from tests.support.engine import IMAGE
from tests.support.invariants import assert_converges, job_expectations
from tests.support.manager_http import (
    get_json,
)
from tests.support.waiting import wait_for


def cube(
    manager: AgentProcess, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``cube`` CLI against ``manager``."""
    return run_cube(*args, "--manager", manager.url, timeout=timeout)


def job_file(
    tmp_path: Path, name: str, *, count: int | None = 3, env: str = "one", **extra: Any
) -> Path:
    """A service job of one group of two sleepers (a group of tasks, not a single one)."""
    group: dict[str, Any] = {
        "name": "web",
        "tasks": [
            {
                "name": task,
                "image": IMAGE,
                "command": ["sleep", "600"],
                "env": {"VERSION": env},
                "stop_timeout": "1s",
                "resources": {"cpu": 0.05, "memory": "16MiB"},
            }
            for task in ("api", "side")
        ],
    }
    if count is not None:
        group["count"] = count
    group.update(extra.pop("group", {}))
    spec = {"job": name, "groups": [group], **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def holders(url: str, job: str) -> list[dict[str, Any]]:
    detail = get_json(url, f"/jobs/{job}")
    return [a for a in detail["allocations"] if a["desired"] == "run" and a["replaced_by"] is None]


def running_holders(url: str, job: str, count: int) -> list[dict[str, Any]]:
    allocs = holders(url, job)
    ok = len(allocs) == count and all(a["status"] == "running" for a in allocs)
    return allocs if ok else []


def wait_allocs(url: str, job: str, count: int, *, timeout: float = 60) -> list[dict[str, Any]]:
    return list(
        wait_for(
            lambda: running_holders(url, job, count),
            timeout=timeout,
            what=f"{count} running allocations of {job}",
        )
    )


def task_ids(allocs: list[dict[str, Any]]) -> list[str]:
    return [t["id"] for a in allocs for t in a["tasks"].values()]


def assert_job_converges(manager: AgentProcess, job: str, workers: list[AgentProcess]) -> None:
    expected = wait_for(
        lambda: _expectations(manager.url, job), timeout=30, what=f"job {job} to settle"
    )
    assert_converges(manager.url, [w.name for w in workers], expected)


def _expectations(url: str, job: str) -> dict[str, str] | None:
    try:
        return job_expectations(url, job)
    except AssertionError:
        return None
