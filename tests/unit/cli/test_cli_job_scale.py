"""``cube job scale`` against a fake manager: it follows the job as ``cube job run`` does.

The manager's answers (tests/support/fake_manager.FakeManager) change from one look to the
next, as a real manager's would while the job service places or stops allocations.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from cube.cli import job_follow
from cube.cli.main import cli
from cube.job.blocked import PlacementFailure
from cube.job.model import AllocDesired, AllocStatus
from tests.support.fake_manager import (
    FakeManager,
    alloc,
    answers,
    assert_one_error_line,
    detail,
)


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
def scale(fake: FakeManager) -> Callable[..., Result]:
    """Run ``cube job scale shop web ARGS...`` against the fake manager."""

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["job", "scale", "shop", "web", *args], obj=fake.transport)

    return invoke


def test_scale_up_follows_until_the_group_runs_at_its_count(
    fake: FakeManager, scale: Callable[..., Result]
) -> None:
    running = [alloc(i, AllocStatus.RUNNING) for i in range(3)]
    answers(
        fake,
        [
            detail(3, running[:1]),
            detail(3, [*running[:1], alloc(1, AllocStatus.PENDING), alloc(2, AllocStatus.PENDING)]),
            detail(3, running),
        ],
    )
    result = scale("3")
    assert result.exit_code == 0, result.output
    assert fake.body()["count"] == 3
    looks = [r for r in fake.requests if r.method == "GET"]
    assert len(looks) == 3  # it followed the job until it was there
    assert "web at 3" in result.stderr
    assert result.stdout.splitlines()[0] == "job shop: web: 3 placed, 3 running of 3"


def test_scale_down_waits_for_the_extra_allocations_to_stop(
    fake: FakeManager, scale: Callable[..., Result]
) -> None:
    keep = alloc(0, AllocStatus.RUNNING)
    stopping = alloc(1, AllocStatus.RUNNING, desired=AllocDesired.STOP)
    stopped = alloc(1, AllocStatus.COMPLETE, desired=AllocDesired.STOP)
    answers(fake, [detail(1, [keep, stopping]), detail(1, [keep, stopped])])
    result = scale("1")
    assert result.exit_code == 0, result.output
    assert len([r for r in fake.requests if r.method == "GET"]) == 2


def test_a_scale_that_cannot_be_placed_exits_1_naming_the_filter(
    fake: FakeManager, scale: Callable[..., Result]
) -> None:
    why = "no node has 2.0 free CPU; largest free: 0.5 on n1"
    failure = PlacementFailure(count=1, reason=why, filtered={"cpu": 1})
    answers(fake, [detail(2, [alloc(0, AllocStatus.RUNNING)], failures={"web": failure})])
    result = scale("2")
    assert result.exit_code == 1, result.output
    assert_one_error_line(result, "shop.web: 1 of 2 not placed", why, "(filtered: cpu 1 node)")


def test_scale_detach_returns_once_asked(fake: FakeManager, scale: Callable[..., Result]) -> None:
    answers(fake, [detail(5, [])])
    result = scale("5", "--detach")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "shop"
    assert [r.method for r in fake.requests] == ["POST"]


@pytest.mark.parametrize("count", ["-1", "-20"])
def test_a_negative_count_is_one_line_exit_2_naming_the_count(
    fake: FakeManager, scale: Callable[..., Result], count: str
) -> None:
    result = scale(count)
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, "count", ">= 0", count)
    assert "Usage" not in result.output
    assert fake.requests == []  # nothing asked of the manager


def test_the_progress_line_counts_running_canaries_and_the_older_allocations_beside_them() -> None:
    """Waiting for promotion, version 2 has only its canary running and version 1 still
    runs both slots: not "0 placed, 0 running of 2" alone, which reads as nothing runs."""
    allocs = [
        alloc(0, AllocStatus.RUNNING, id="old0", version=1),
        alloc(1, AllocStatus.RUNNING, id="old1", version=1),
        alloc(0, AllocStatus.RUNNING, id="canary", canary=True),
    ]
    line = job_follow.judge(detail(2, allocs)).groups_line()
    assert line == (
        "web: 0 placed, 0 running of 2, 1 canary running; 2 of an earlier version running"
    )
    assert job_follow.judge(detail(2, allocs[2:])).groups_line() == (
        "web: 0 placed, 0 running of 2, 1 canary running"
    )
