"""How often the manager calls on each node, as the fleet grows (pure arithmetic).

Each routine call to a node (a metrics poll, an idle blocking query coming back, a full
resync) costs the manager about a millisecond of CPU. At one second per node a
1,000-node cluster is a thousand calls a second: more than one Python process can make
while it also serves the API and places tasks (bench/manager.py measured node data
minutes old). So, like Nomad, whose servers stretch the heartbeat TTL so that they
handle at most ``max_heartbeats_per_second`` (50) heartbeats, the manager stretches the
interval between calls of each kind once the fleet is large enough to exceed a rate,
and stretches the time after which a silent node is declared down by as much.

Small clusters are unaffected: with the defaults, nothing changes below 100 nodes.

**The pace kept, not only the pace set.** A node's deadline (the manager's, and the
worker's, which it is told with every call) must outlast the time the manager really
takes to come back to it. On a starved machine collection falls behind the interval
(bench/jobs.py, 1,000 simulated nodes while the job service placed 10,000 allocations:
passes of 30-60 s against an interval of 10 s and a timeout of 28 s), so workers stopped
their tasks for want of a call, and the manager called nodes it had not asked for half a
minute Down at their first slow answer: work that undid work. So the timeout in force
grows with the collection period measured (:class:`PollClock`) as it does with the
interval set (:func:`node_timeout_for`), as a Nomad server's heartbeat TTL grows with
the heartbeats it must handle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cube.protocol import MAX_WAIT

#: Metrics polls per second, whatever the fleet's size (Nomad: 50 heartbeats/s).
POLLS_PER_SECOND = 100.0
#: Blocking queries that come back empty per second: an idle node answers once a wait.
#: Lower than the polls: an idle answer carries nothing but "no change" (Nomad's blocking
#: queries wait five minutes by default). Up to the worker's cap on a wait (a minute).
IDLE_ANSWERS_PER_SECOND = 20.0
#: Full task lists per second (a watch's periodic resync, the safety net for a lost change).
RESYNCS_PER_SECOND = 20.0
#: Missed polls, at the stretched interval, before a node counts as down: the same margin
#: as the configured timeout gives at the configured interval would make it minutes.
MISSED_POLLS = 2


def stretched(base: float, nodes: int, per_second: float) -> float:
    """``base`` seconds between calls to each of ``nodes``, or longer, so that the calls
    to the whole fleet stay under ``per_second``."""
    return max(base, nodes / per_second)


@dataclass(frozen=True)
class Pace:
    """The intervals in force for a fleet of a given size."""

    #: Seconds between two metrics polls of a node.
    collect: float
    #: Seconds a node's blocking query waits for a change before answering empty.
    watch_wait: float
    #: Seconds between two full task lists from a watched node.
    resync: float
    #: Seconds of silence after which a node is down and its tasks move.
    node_timeout: float


def pace(
    nodes: int,
    *,
    collect_interval: float,
    node_timeout: float,
    watch_wait: float,
    resync: float,
) -> Pace:
    """The configured intervals, stretched for ``nodes`` nodes (see the module docstring).

    The node timeout grows with the collection interval: a node polled every 10 s instead
    of every second must not be declared down after 10 s of silence. It grows by
    :data:`MISSED_POLLS` stretched intervals, so a 1,000-node cluster with the defaults
    (1 s, 10 s) polls every 10 s and declares a node down after 28 s (Nomad, at 50/s:
    20 s TTL + 10 s grace); its idle watches answer every 50 s, and resync every 50 s.
    """
    collect = stretched(collect_interval, nodes, POLLS_PER_SECOND)
    return Pace(
        collect=collect,
        watch_wait=min(stretched(watch_wait, nodes, IDLE_ANSWERS_PER_SECOND), MAX_WAIT),
        resync=stretched(resync, nodes, RESYNCS_PER_SECOND),
        node_timeout=node_timeout_for(
            collect, collect_interval=collect_interval, node_timeout=node_timeout
        ),
    )


def node_timeout_for(period: float, *, collect_interval: float, node_timeout: float) -> float:
    """Seconds of silence before a node polled every ``period`` seconds is down: the
    configured timeout, and :data:`MISSED_POLLS` times what the period adds to the
    configured interval."""
    return node_timeout + MISSED_POLLS * max(0.0, period - collect_interval)


def planned_nodes(nodes: int, joined_at: Iterable[float], *, now: float, within: float) -> int:
    """The fleet to pace for: ``nodes``, and as many again as joined in the last ``within``
    seconds (the period collection takes to come back to a node).

    A worker is told its timeout at one call and judged by it until the next; in a join
    storm the fleet grows between the two, and collection's period with it, so the next
    call came later than the period measured at the first (5,000 simulated nodes joining:
    50 workers stopped for "no call" after silences 2-5 % past the timeout they were told).
    The joins of the last period are the best guess of the next period's: counting them
    makes the timeout told during a join cover the fleet it will be. A fleet that no longer
    grows is paced for its size."""
    return nodes + sum(1 for t in joined_at if 0 <= now - t <= within)


#: How much longer than its configured timeout a call to a node may take, at most, as
#: collection falls behind its pace (see call_timeout_for).
MAX_CALL_STRETCH = 30.0


def call_timeout_for(
    period: float, *, pace_interval: float, call_timeout: float, node_timeout: float
) -> float:
    """Seconds a call that checks a node (a join's ``GET /v1/stats``) may wait for its
    answer: the configured timeout, times how much slower than the pace set
    (``pace_interval``) collection really goes round the fleet (``period``), up to
    :data:`MAX_CALL_STRETCH` times and never past the node timeout in force.

    The ratio says how loaded the nodes' answers are: a fleet whose polls come back five
    times slower than planned answers a join's check five times slower too. With a fixed
    2 s, 417 of 5,000 simulated workers' joins were refused (ReadTimeout) and retried, adding
    to the load that made them late. A cluster that keeps its pace keeps the timeout set."""
    stretch = min(MAX_CALL_STRETCH, max(1.0, period / pace_interval))
    return max(call_timeout, min(call_timeout * stretch, node_timeout))


#: Nodes a pass must have reached before its own pace counts (see PollClock.period): the
#: first few polls say little (a slot to wait for, a timer that fired late).
PASS_SAMPLE = 16


@dataclass
class PollClock:
    """How fast collection really goes round the fleet. The collector tells it when a
    pass starts, reaches each node and ends; the clock (seconds, monotonic) is passed in.
    """

    #: The last complete pass: the seconds it took to reach every node, and how many.
    last: tuple[float, int] | None = None
    #: The pass under way: when it started, and how many nodes it has reached.
    started_at: float | None = None
    reached: int = 0
    #: The nodes the pass under way goes round.
    nodes: int = field(default=0)

    def pass_started(self, now: float, nodes: int) -> None:
        self.started_at, self.reached, self.nodes = now, 0, nodes

    def node_reached(self) -> None:
        self.reached += 1

    def pass_ended(self, now: float) -> None:
        if self.started_at is not None:
            self.last = (now - self.started_at, self.nodes)
        self.started_at = None

    def period(self, now: float, *, nodes: int, interval: float) -> float:
        """Seconds until collection comes back to a node of a fleet of ``nodes``, as it
        goes: the interval set, or more if the last pass or the one under way, at the
        time each took per node, would take longer; and never less than the pass under
        way has taken so far (its last node has waited that long already)."""
        period = interval
        if self.last is not None:
            seconds, covered = self.last
            period = max(period, seconds * nodes / max(1, covered))
        if self.started_at is not None:
            elapsed = now - self.started_at
            period = max(period, elapsed)
            if self.reached >= PASS_SAMPLE:
                period = max(period, elapsed * nodes / self.reached)
        return period
