"""How often the manager calls on its nodes.

A node that does not answer must not slow the collection of the others; and the
intervals stretch as the fleet grows, so that the calls per second stay bounded. Here the
rules (cube.manager.pacing) as table tests with the clock passed in; a manager keeping
that pace live in this process is tests/component/test_manager_collection.py's.
"""

from __future__ import annotations

import pytest

from cube.manager.pacing import (
    IDLE_ANSWERS_PER_SECOND,
    MISSED_POLLS,
    POLLS_PER_SECOND,
    RESYNCS_PER_SECOND,
    Pace,
    PollClock,
    call_timeout_for,
    node_timeout_for,
    pace,
    planned_nodes,
)
from cube.protocol import MAX_WAIT

# --- stretching the intervals as the fleet grows (cube.manager.pacing) -------------------------
DEFAULTS = {"collect_interval": 1.0, "node_timeout": 10.0, "watch_wait": 10.0, "resync": 30.0}


def test_small_fleets_keep_the_configured_intervals() -> None:
    for nodes in (0, 1, 10, 100):
        assert pace(nodes, **DEFAULTS) == Pace(
            collect=1.0, watch_wait=10.0, resync=30.0, node_timeout=10.0
        )


def test_a_thousand_nodes_stretch_the_intervals_like_nomads_heartbeats() -> None:
    assert pace(1000, **DEFAULTS) == Pace(
        collect=10.0, watch_wait=50.0, resync=50.0, node_timeout=28.0
    )


def test_the_call_rates_stay_bounded_and_the_timeout_outlasts_missed_polls() -> None:
    for nodes in range(1, 20_001, 97):
        p = pace(nodes, **DEFAULTS)
        within = 1 + 1e-9  # float rounding
        assert nodes / p.collect <= POLLS_PER_SECOND * within
        assert nodes / p.watch_wait <= IDLE_ANSWERS_PER_SECOND * within or p.watch_wait == MAX_WAIT
        assert nodes / p.resync <= RESYNCS_PER_SECOND * within
        assert p.node_timeout >= DEFAULTS["node_timeout"]
        assert p.node_timeout >= MISSED_POLLS * p.collect


# --- the pace kept: the node timeout follows collection as it really goes ----------------------
@pytest.mark.parametrize(
    ("period", "timeout"),
    [
        (1.0, 10.0),  # the interval set: the timeout set
        (0.5, 10.0),  # faster than set (a pass of few nodes): never shorter
        (10.0, 28.0),  # as pace() stretches it for 1,000 nodes
        (60.0, 128.0),  # a starved manager that comes back every minute
    ],
)
def test_the_node_timeout_outlasts_missed_polls_at_the_period(
    period: float, timeout: float
) -> None:
    assert node_timeout_for(period, collect_interval=1.0, node_timeout=10.0) == timeout


def clock(
    *, last: tuple[float, int] | None = None, started_at: float | None = None, reached: int = 0
) -> PollClock:
    polls = PollClock(last=last)
    if started_at is not None:
        polls.pass_started(started_at, 1000)
        for _ in range(reached):
            polls.node_reached()
    return polls


@pytest.mark.parametrize(
    ("polls", "now", "nodes", "period"),
    [
        # No pass yet, or passes that kept the interval: the interval.
        (clock(), 100.0, 1000, 10.0),
        (clock(last=(9.9, 1000)), 100.0, 1000, 10.0),
        # The last pass took 40 s for 1,000 nodes: 40 s, and 80 s once the fleet has doubled
        # (the join storm: a node that joins now is reached at that pace).
        (clock(last=(40.0, 1000)), 100.0, 1000, 40.0),
        (clock(last=(40.0, 500)), 100.0, 1000, 80.0),
        # A pass under way for 30 s: its last node has waited that long at least...
        (clock(last=(10.0, 1000), started_at=70.0, reached=5), 100.0, 1000, 30.0),
        # ...and at the pace it goes (250 nodes in 30 s), the 1,000 take 120 s.
        (clock(last=(10.0, 1000), started_at=70.0, reached=250), 100.0, 1000, 120.0),
        # Too few nodes reached to judge its pace by (a slot waited for, a late timer).
        (clock(started_at=99.0, reached=2), 100.0, 1000, 10.0),
    ],
)
def test_the_period_is_the_slowest_of_the_interval_and_the_passes_measured(
    polls: PollClock, now: float, nodes: int, period: float
) -> None:
    assert polls.period(now, nodes=nodes, interval=10.0) == pytest.approx(period)


def test_a_pass_that_ends_is_the_measure_of_the_next() -> None:
    polls = PollClock()
    polls.pass_started(0.0, 100)
    for _ in range(100):
        polls.node_reached()
    polls.pass_ended(25.0)
    assert polls.last == (25.0, 100)
    assert polls.period(30.0, nodes=100, interval=1.0) == 25.0  # no pass under way


# --- a fleet still joining: the timeout told covers the fleet it will be ------------------------
@pytest.mark.parametrize(
    ("nodes", "joined_at", "now", "within", "planned"),
    [
        (1000, [], 100.0, 30.0, 1000),  # no joins: the fleet as it is
        (1000, [10.0, 20.0], 100.0, 30.0, 1000),  # joins older than a period: no longer growing
        (1000, [80.0, 90.0, 100.0], 100.0, 30.0, 1003),  # three in the last period: three more
        (2065, [100.0 - i / 10 for i in range(500)], 100.0, 300.0, 2565),  # the 5,000-node storm
        (10, [101.0], 100.0, 30.0, 10),  # a join after `now` (another clock): not counted
    ],
)
def test_the_fleet_paced_for_counts_the_joins_of_the_last_period_again(
    nodes: int, joined_at: list[float], now: float, within: float, planned: int
) -> None:
    assert planned_nodes(nodes, joined_at, now=now, within=within) == planned


@pytest.mark.parametrize(
    ("period", "pace_interval", "timeout"),
    [
        (1.0, 1.0, 2.0),  # a small cluster at its pace: the timeout set
        (10.0, 10.0, 2.0),  # 1,000 nodes, collection keeping the stretched pace: unchanged
        (5.0, 10.0, 2.0),  # faster than the pace: never shorter
        (50.0, 10.0, 10.0),  # five times slower than its pace: five times the timeout
        (300.0, 20.0, 30.0),  # the 5,000-node join (2,065 joined, 5 min a pass): 15 times
        (10_000.0, 1.0, 60.0),  # stretched MAX_CALL_STRETCH times at most
    ],
)
def test_a_joins_check_waits_longer_as_collection_falls_behind_its_pace(
    period: float, pace_interval: float, timeout: float
) -> None:
    assert call_timeout_for(
        period, pace_interval=pace_interval, call_timeout=2.0, node_timeout=600.0
    ) == pytest.approx(timeout)


def test_a_joins_check_never_waits_past_the_node_timeout() -> None:
    assert call_timeout_for(100.0, pace_interval=1.0, call_timeout=2.0, node_timeout=30.0) == 30.0
    # ...nor less than the timeout set, whatever the node timeout.
    assert call_timeout_for(100.0, pace_interval=1.0, call_timeout=2.0, node_timeout=1.0) == 2.0
