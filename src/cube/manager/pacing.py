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
"""

from __future__ import annotations

from dataclasses import dataclass

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
        node_timeout=node_timeout + MISSED_POLLS * (collect - collect_interval),
    )
