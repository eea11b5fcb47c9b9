"""Jobs, versions and allocations, cube.job.model: idempotent submit and the status table."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cube.errors import IllegalTransition
from cube.job.model import (
    ALLOC_TERMINAL,
    ALLOC_TRANSITIONS,
    Allocation,
    AllocStatus,
    JobVersion,
    can_alloc_transition,
    group_hash,
    next_version,
    spec_hash,
)
from cube.job.parse import parse_job
from cube.job.spec import JobSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(count: int = 3, image: str = "cube-busybox", memory: Any = "64MiB") -> JobSpec:
    return parse_job(
        {
            "job": "shop",
            "groups": [
                {
                    "name": "web",
                    "count": count,
                    "tasks": [{"name": "api", "image": image, "resources": {"memory": memory}}],
                }
            ],
        }
    )


def make_alloc(status: AllocStatus = AllocStatus.PENDING) -> Allocation:
    return Allocation(job="shop", group="web", index=2, version=1, group_hash="h", status=status)


# --- versions ------------------------------------------------------------------------------


def test_the_first_submit_is_version_1() -> None:
    v = next_version(None, spec(), now=T0)
    assert v is not None
    assert (v.job, v.number, v.submitted_at, v.spec_hash) == ("shop", 1, T0, spec_hash(spec()))


def test_the_same_spec_again_makes_no_version() -> None:
    v1 = JobVersion.of(spec(), 1, now=T0)
    assert next_version(v1, spec(), now=T0 + timedelta(hours=1)) is None
    # The same spec written differently is the same spec: units are parsed first.
    assert next_version(v1, spec(memory=64 * 1024**2), now=T0) is None


def test_a_changed_spec_makes_the_next_version() -> None:
    v1 = JobVersion.of(spec(), 1, now=T0)
    v2 = next_version(v1, spec(count=5), now=T0 + timedelta(seconds=1))
    assert v2 is not None
    assert (v2.number, v2.spec.groups[0].count) == (2, 5)
    assert v2.spec_hash != v1.spec_hash


def test_only_what_containers_run_changes_the_group_hash() -> None:
    base = spec()
    web = base.groups[0]
    scaled = spec(count=7)
    assert group_hash(base, web) == group_hash(scaled, scaled.groups[0])
    other = spec(image="cube-busybox:2")
    assert group_hash(base, web) != group_hash(other, other.groups[0])


# --- the allocation status table -----------------------------------------------------------

ALL_PAIRS = list(itertools.product(AllocStatus, AllocStatus))


def test_table_covers_every_status() -> None:
    assert set(ALLOC_TRANSITIONS) == set(AllocStatus)
    assert {AllocStatus.COMPLETE, AllocStatus.FAILED, AllocStatus.LOST} == ALLOC_TERMINAL
    # A terminal allocation never runs again: it is replaced by a new one.
    assert all(AllocStatus.RUNNING not in ALLOC_TRANSITIONS[s] for s in ALLOC_TERMINAL)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_transition_follows_the_table(current: AllocStatus, target: AllocStatus) -> None:
    alloc = make_alloc(current)
    now = T0 + timedelta(seconds=5)
    if can_alloc_transition(current, target):
        event = alloc.transition(target, "because", now=now)
        assert (event.previous, event.status, event.reason, event.time) == (
            current,
            target,
            "because",
            now,
        )
        assert (alloc.status, alloc.status_reason, alloc.events) == (target, "because", [event])
        assert (alloc.finished_at == now) is (target in ALLOC_TERMINAL)
    else:
        before = alloc.model_dump()
        with pytest.raises(IllegalTransition) as excinfo:
            alloc.transition(target, "because", now=now)
        assert str(excinfo.value) == (
            f"illegal allocation transition {current.title} -> {target.title}"
        )
        assert alloc.model_dump() == before  # nothing changed


def test_a_lost_allocation_keeps_the_time_it_was_lost() -> None:
    """Its node came back and stopped it: the reschedule clock started when it was lost."""
    alloc = make_alloc(AllocStatus.RUNNING)
    alloc.transition(AllocStatus.LOST, "node down", now=T0)
    alloc.transition(AllocStatus.COMPLETE, "stopped by its node", now=T0 + timedelta(minutes=5))
    assert alloc.finished_at == T0
    assert [e.status for e in alloc.events] == [AllocStatus.LOST, AllocStatus.COMPLETE]


def test_an_allocation_is_named_like_nomad_s() -> None:
    assert make_alloc().name == "shop.web[2]"
