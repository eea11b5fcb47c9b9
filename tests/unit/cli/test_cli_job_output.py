"""``-o json`` on the commands that change a job (run, scale, stop, the deployment moves),
against a fake manager: stdout holds one JSON document a script can read, and nothing else
(progress goes to stderr); a job that cannot get where it should still exits 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from cube.cli.main import cli
from cube.job.blocked import PlacementFailure
from cube.job.deployment import Deployment, DeploymentStatus
from cube.job.model import AllocStatus, Job, JobStatus
from cube.job.wire import JobPlan
from tests.support.fake_manager import (
    FakeManager,
    _jsonable,
    alloc,
    answers,
    detail,
)

SHOP = """\
job: shop
groups:
  - name: web
    count: 2
    tasks: [{name: a, image: b}]
"""


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
def cube(fake: FakeManager) -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), obj=fake.transport)

    return invoke


@pytest.fixture
def shop_file(tmp_path: Path) -> str:
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP)
    return str(path)


def document(result: Result) -> Any:
    """stdout as one JSON document (it fails if anything else is printed there)."""
    return json.loads(result.stdout)


def test_job_run_json_prints_the_job_where_it_ended(
    fake: FakeManager, cube: Callable[..., Result], shop_file: str
) -> None:
    running = [alloc(i, AllocStatus.RUNNING) for i in range(2)]
    answers(fake, [detail(2, running[:1]), detail(2, running)])
    fake.on("POST /v1/jobs", status=201, body=Job(id="shop", version=2))
    result = cube("job", "run", shop_file, "-o", "json")
    assert result.exit_code == 0, result.output
    got = document(result)
    assert got["job"]["id"] == "shop"
    assert [a["status"] for a in got["allocations"]] == ["running", "running"]
    assert "job shop: version 2" in result.stderr  # progress stays on stderr


def test_job_run_json_that_cannot_get_there_prints_the_job_and_exits_1(
    fake: FakeManager, cube: Callable[..., Result], shop_file: str
) -> None:
    why = "no node has labels disk=ssd"
    failure = PlacementFailure(count=2, reason=why, filtered={"constraints": 3})
    answers(fake, [detail(2, [], failures={"web": failure})])
    fake.on("POST /v1/jobs", status=201, body=Job(id="shop", version=2))
    result = cube("job", "run", shop_file, "-o", "json")
    assert result.exit_code == 1
    got = document(result)
    assert got["allocations"] == []  # nothing was placed, so nothing is recorded
    assert got["placement_failures"]["web"] == {
        "count": 2,
        "reason": why,
        "filtered": {"constraints": 3},
        "examined": 0,
        "total": 0,
    }
    assert f"shop.web: 2 of 2 not placed: {why} (filtered: constraints 3 nodes)" in result.stderr
    assert "job shop stays, blocked: it is placed when a node can take it" in result.stderr


def test_job_run_detach_json_prints_the_submitted_job(
    fake: FakeManager, cube: Callable[..., Result], shop_file: str
) -> None:
    fake.on("POST /v1/jobs", status=201, body=Job(id="shop", version=3))
    result = cube("job", "run", shop_file, "--detach", "-o", "json")
    assert result.exit_code == 0, result.output
    assert document(result)["version"] == 3


def test_job_scale_json_prints_the_job_at_its_new_count(
    fake: FakeManager, cube: Callable[..., Result]
) -> None:
    running = [alloc(i, AllocStatus.RUNNING) for i in range(3)]
    answers(fake, [detail(3, running[:2]), detail(3, running)])
    result = cube("job", "scale", "shop", "web", "3", "-o", "json")
    assert result.exit_code == 0, result.output
    assert len(document(result)["allocations"]) == 3


def test_job_stop_json_prints_the_stopped_job(
    fake: FakeManager, cube: Callable[..., Result]
) -> None:
    fake.on("DELETE /v1/jobs/shop", body=Job(id="shop", stopped=True, status=JobStatus.DEAD))
    result = cube("job", "stop", "shop", "-o", "json")
    assert result.exit_code == 0, result.output
    assert document(result)["stopped"] is True


@pytest.mark.parametrize("move", ["promote", "pause", "resume", "fail"])
def test_deployment_moves_json_print_the_deployment(
    fake: FakeManager, cube: Callable[..., Result], move: str
) -> None:
    d = Deployment(job="shop", version=2, status=DeploymentStatus.PAUSED)
    fake.on(f"POST /v1/jobs/shop/{move}", body=d)
    result = cube("job", move, "shop", "-o", "json")
    assert result.exit_code == 0, result.output
    assert document(result)["status"] == "paused"


def test_job_revert_json_prints_the_job(fake: FakeManager, cube: Callable[..., Result]) -> None:
    fake.on("POST /v1/jobs/shop/revert", body=Job(id="shop", version=4))
    result = cube("job", "revert", "shop", "--detach", "-o", "json")
    assert result.exit_code == 0, result.output
    assert document(result)["version"] == 4


def test_a_stopped_job_shows_desired_0_with_its_count_and_what_the_stop_ended(
    fake: FakeManager, cube: Callable[..., Result]
) -> None:
    stopped = detail(3, [alloc(i, AllocStatus.COMPLETE, desired="stop") for i in range(3)])
    stopped.job.stopped, stopped.job.status, stopped.job.status_reason = (
        True,
        JobStatus.DEAD,
        "stopped",
    )
    replaced = alloc(9, AllocStatus.COMPLETE, desired="stop", version=1, replaced_by="a0")
    stopped.allocations.append(replaced)  # an older version's: not counted
    fake.on("GET /v1/jobs/shop", body=stopped)
    result = cube("job", "status", "shop")
    assert result.exit_code == 0, result.output
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("web "))
    # GROUP DESIRED QUEUED PENDING RUNNING COMPLETE FAILED LOST
    assert row == ["web", "0", "(stopped;", "count", "3)", "0", "0", "0", "3", "0", "0"]
    assert "Dead: stopped" in result.stdout


def test_a_running_job_shows_its_count_as_desired_and_what_is_not_created_as_queued(
    fake: FakeManager, cube: Callable[..., Result]
) -> None:
    running = detail(3, [alloc(0, AllocStatus.RUNNING), alloc(1, AllocStatus.PENDING)])
    fake.on("GET /v1/jobs/shop", body=running)
    result = cube("job", "status", "shop")
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("web "))
    assert row == ["web", "3", "1", "1", "1", "0", "0", "0"]  # one not created yet: queued


def test_a_blocked_job_shows_its_placement_failure_and_queues_what_has_no_allocation(
    fake: FakeManager, cube: Callable[..., Result]
) -> None:
    why = "no node has 8.0 free CPU; largest free: 2.0 on n1"
    failure = PlacementFailure(count=2, reason=why, filtered={"cpu": 3})
    blocked = detail(3, [alloc(0, AllocStatus.RUNNING)], failures={"web": failure})
    fake.on("GET /v1/jobs/shop", body=blocked)
    result = cube("job", "status", "shop")
    assert result.exit_code == 0, result.output
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("web "))
    assert row[:4] == ["web", "3", "2", "0"]  # GROUP DESIRED QUEUED PENDING
    lines = result.stdout.splitlines()
    at = lines.index("Placement Failure")
    assert lines[at + 1 : at + 4] == [
        'Group "web" (2 of 3 not placed):',
        f"  {why}",
        '  * Filter "cpu": 3 nodes',
    ]


def test_plan_shows_the_placement_failure_and_exits_1(
    fake: FakeManager, cube: Callable[..., Result], shop_file: str
) -> None:
    failure = PlacementFailure(count=2, reason="no node has labels zone=mars")
    fake.on(
        "POST /v1/jobs/plan",
        body=JobPlan(
            job="shop",
            version=1,
            status="pending",
            status_reason="blocked: web: 2 of 2 not placed: no node has labels zone=mars",
            entries=[],
            unplaceable=2,
            placement_failures={"web": failure.model_copy(update={"filtered": {"constraints": 1}})},
        ),
    )
    result = cube("job", "plan", shop_file)
    assert result.exit_code == 1, result.output
    assert 'Group "web" (2 not placed):' in result.stdout
    assert '* Filter "constraints": 1 node' in result.stdout


def test_ctrl_c_while_a_job_is_followed_says_the_job_goes_on_and_exits_130(
    fake: FakeManager, cube: Callable[..., Result], shop_file: str
) -> None:
    fake.on("POST /v1/jobs", status=201, body=Job(id="shop", version=2))
    looks = 0

    def look(_: httpx.Request) -> httpx.Response:
        nonlocal looks
        looks += 1
        if looks == 2:
            raise KeyboardInterrupt  # Ctrl-C while the job is followed
        starting = detail(2, [alloc(0, AllocStatus.PENDING)])
        starting.deployment = Deployment(job="shop", version=2, status=DeploymentStatus.RUNNING)
        return httpx.Response(200, json=_jsonable(starting))

    fake.routes["GET /v1/jobs/shop"] = look
    result = cube("job", "run", shop_file)
    assert result.exit_code == 130, result.output
    assert "Aborted" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "job shop: no longer followed (Ctrl-C); the job goes on: `cube job status shop`"
        " shows it, `cube job stop shop` stops it"
    )
