"""``cube top``'s frame, drawn from records alone: bars, nodes, jobs (the live command is
tests/e2e/test_top.py's)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from cube.cli.top import EMPTY, FULL, bar, frame
from cube.job.model import Job, JobStatus
from cube.node import Node, NodeState, Resources
from cube.task.model import Task
from cube.task.spec import AllocRef, TaskSpec
from cube.task.state import State

NOW = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)


def test_a_bar_is_full_only_when_nothing_is_left() -> None:
    assert bar(0, 4, width=8) == EMPTY * 8
    assert bar(2, 4, width=8) == FULL * 4 + EMPTY * 4
    assert bar(3.99, 4, width=8) == FULL * 7 + EMPTY
    assert bar(4, 4, width=8) == FULL * 8
    assert bar(6, 4, width=8) == FULL * 8  # overcommitted
    assert bar(1, 0, width=8) == EMPTY * 8  # a node that offers none


def rendered(group: Any) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(group)
    return console.export_text()


def test_a_frame_keeps_the_last_nodes_and_says_the_manager_does_not_answer() -> None:
    node = Node(
        name="w1",
        address="http://w1",
        state=NodeState.READY,
        capacity=Resources(cpu=4, memory=1024**3),
        allocated=Resources(cpu=2, memory=512 * 1024**2),
        tasks=3,
    )
    text = rendered(frame([node], [], source="http://m", now=NOW, error="connection refused"))
    assert "http://m  12:00:05  nodes: 1 ready · tasks: none" in text
    assert "manager not answering, retrying: connection refused" in text
    assert f"{FULL * 5}{EMPTY * 5} 2.0/4.0" in text
    assert "512MiB/1GiB" in text
    assert "No task that has not ended." in text


def alloc_task(alloc: str, name: str, state: State, *, job: str = "shop") -> Task:
    ref = AllocRef(id=alloc, job=job, group="web", index=int(alloc[-1]), size=2)
    return Task(id=f"{alloc}-{name}", spec=TaskSpec(name=name, image="b"), alloc=ref, state=state)


def test_a_frame_shows_the_jobs_not_stopped_with_their_allocations_running() -> None:
    tasks = [
        alloc_task("a0", "api", State.RUNNING),
        alloc_task("a0", "proxy", State.RUNNING),  # a0 runs: both its tasks do
        alloc_task("a1", "api", State.RUNNING),
        alloc_task("a1", "proxy", State.SCHEDULED),  # a1 is starting
        alloc_task("a2", "api", State.COMPLETED),  # ended: not counted at all
    ]
    jobs = [
        Job(id="shop", status=JobStatus.RUNNING, status_reason="1 allocation running"),
        Job(id="old", stopped=True, status=JobStatus.DEAD, status_reason="stopped"),
        Job(id="big", status=JobStatus.PENDING, status_reason="blocked: web: 2 of 2 not placed"),
    ]
    text = rendered(frame([], tasks, jobs=jobs, source="http://m", now=NOW))
    assert "jobs: 1 pending, 1 running · tasks:" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["shop"][:3] == ["shop", "Running", "1/2"]
    assert rows["big"][:4] == ["big", "Pending", "0/0", "blocked:"]
    assert "old" not in rows  # stopped: as the tasks that ended, left out


def test_a_frame_without_jobs_has_no_jobs_section() -> None:
    text = rendered(frame([], [], source="http://m", now=NOW))
    assert "JOB" not in text
    assert "jobs:" not in text
