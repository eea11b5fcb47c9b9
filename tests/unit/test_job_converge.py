"""The reconciler in a loop: plans applied by an ideal applier converge (pure, no Docker).

``Cluster`` here is the smallest applier that follows a plan to the letter, and nodes
that do what they are told one step later (start, stop, and for batch: finish). Run
together with :func:`cube.job.reconcile.reconcile` from any starting point, they must
reach a plan that changes nothing, with the job where its spec says; and a changed
spec must be rolled out one allocation at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cube.job.eligibility import ineligibility
from cube.job.holders import is_holder
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobStatus,
    JobVersion,
    group_hash,
)
from cube.job.plan import Plan
from cube.job.reconcile import reconcile
from cube.job.spec import JobType
from cube.node import NodeState
from tests.support.job_records import T0, N, some_allocations, spec, two_versions, version

#: Each round moves the clock past the longest default reschedule delay (5 minutes).
ROUND = timedelta(minutes=6)
MAX_ROUNDS = 40


@dataclass
class Cluster:
    """An applier that does what the plan says, and nodes that follow one round later."""

    version: JobVersion
    nodes: list[N]
    allocs: dict[str, Allocation] = field(default_factory=dict)
    now: datetime = T0

    def plan(self) -> Plan:
        job = Job(id="shop", version=self.version.number)
        return reconcile(job, self.version, list(self.allocs.values()), self.nodes, self.now)

    def apply(self, plan: Plan) -> None:
        for stop in plan.stop:
            old = self.allocs[stop.alloc]
            old.desired = AllocDesired.STOP
            if stop.lost and not old.is_terminal:
                old.transition(AllocStatus.LOST, stop.reason, now=self.now)
        for place in plan.place:
            self._start(place.group, place.index, place.node, place.avoid, place.replaces)
            self._last.reschedule_events = list(place.reschedule_events)
        for update in plan.update:
            old = self.allocs[update.alloc]
            old.desired = AllocDesired.STOP
            self._start(update.group, update.index, update.node, None, update.alloc)
            self._last.reschedule_events = list(old.reschedule_events)
        for moved in plan.in_place:
            self.allocs[moved.alloc].version = self.version.number

    def _start(
        self, group: str, index: int, node: str | None, avoid: str | None, replaces: str | None
    ) -> None:
        spec = self.version.spec
        g = spec.group(group)
        if node is None:  # the scheduler's part, reduced to: an eligible node, avoid if possible
            fits = [n.name for n in self.nodes if ineligibility(n, spec, g) is None]
            node = next((n for n in fits if n != avoid), fits[0] if fits else None)
        new = Allocation(
            job="shop",
            group=group,
            index=index,
            version=self.version.number,
            group_hash=group_hash(spec, g),
            node=node,
            replaces=replaces,
            created_at=self.now,
        )
        self.allocs[new.id] = new
        self._last = new
        if replaces is not None:
            self.allocs[replaces].replaced_by = new.id

    def step_nodes(self, *, batch: bool) -> None:
        """Every live node moves each allocation it has one step: start, stop, finish."""
        alive = {n.name for n in self.nodes if n.state is not NodeState.DOWN}
        for a in self.allocs.values():
            if a.is_terminal or a.node not in alive:
                continue
            if a.desired is AllocDesired.STOP:
                a.transition(AllocStatus.COMPLETE, "stopped", now=self.now)
            elif a.status is AllocStatus.PENDING:
                a.transition(AllocStatus.RUNNING, "started", now=self.now)
            elif batch:
                a.transition(AllocStatus.COMPLETE, "exited 0", now=self.now)

    def run(self, *, on_round: Any = None) -> Plan:
        """Plan, apply, let the nodes act, advance the clock: until nothing is left to do."""
        batch = self.version.spec.type is JobType.BATCH
        for _ in range(MAX_ROUNDS):
            plan = self.plan()
            due = any(w.due is not None for w in plan.wait)
            if plan.changes_nothing and not due and self.settled(batch=batch):
                return plan
            self.apply(plan)
            if on_round is not None:
                on_round(self)  # applied, before the nodes act
            self.step_nodes(batch=batch)
            self.now += ROUND
        raise AssertionError(f"no convergence in {MAX_ROUNDS} rounds: {self.plan().describe()}")

    def settled(self, *, batch: bool) -> bool:
        """Whether the nodes have nothing left to do (what step_nodes would change)."""
        alive = {n.name for n in self.nodes if n.state is not NodeState.DOWN}
        return not any(
            a.node in alive
            and (
                a.desired is AllocDesired.STOP
                or a.status is AllocStatus.PENDING
                or (batch and a.status is AllocStatus.RUNNING)
            )
            for a in self.allocs.values()
            if not a.is_terminal
        )

    def live_holders(self) -> list[Allocation]:
        return [a for a in self.allocs.values() if is_holder(a) and not a.is_terminal]


# --- properties ----------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    versions = draw(two_versions())
    nodes = [
        N(
            f"n{i}",
            state=draw(st.sampled_from([NodeState.READY, NodeState.READY, NodeState.DOWN])),
            drain=draw(st.booleans()),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    allocs = some_allocations(draw, versions, ["n0", "n1", "n2", "n3", "gone"])
    return Cluster(versions[1], nodes, {a.id: a for a in allocs})


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_any_start_converges_to_the_spec(cluster: Cluster) -> None:
    final = cluster.run()
    spec = cluster.version.spec
    group = spec.groups[0]
    eligible = {n.name for n in cluster.nodes if ineligibility(n, spec, group) is None}
    live = cluster.live_holders()
    # Whatever runs is the current version, on a node that may run it.
    assert all(a.group_hash == group_hash(spec, group) for a in live)
    assert all(a.node in eligible for a in live if a.node is not None)
    if spec.type is JobType.SYSTEM:
        assert sorted(a.node or "" for a in live) == sorted(eligible)
    elif spec.type is JobType.SERVICE and eligible:
        assert sorted(a.index for a in live) == list(range(group.wanted))
        assert all(a.status is AllocStatus.RUNNING for a in live)
    elif spec.type is JobType.BATCH and eligible:
        assert final.status in (JobStatus.COMPLETE, JobStatus.FAILED), final.status_reason


def test_a_new_version_rolls_out_one_allocation_at_a_time() -> None:
    old = version(spec(count=5))
    new = version(spec(count=5, tasks=[{"name": "api", "image": "img:2"}]), 2)
    cluster = Cluster(old, [N("n1"), N("n2")])
    cluster.run()
    assert len(cluster.live_holders()) == 5

    current = group_hash(new.spec, new.spec.groups[0])
    seen: list[int] = []

    def in_flight(c: Cluster) -> None:
        """Allocations between versions: old ones stopping, new ones not running yet."""
        seen.append(
            sum(
                1
                for a in c.allocs.values()
                if not a.is_terminal
                and (
                    (a.desired is AllocDesired.STOP and a.group_hash != current)
                    or (a.status is AllocStatus.PENDING and a.group_hash == current)
                )
            )
        )

    cluster.version = new
    final = cluster.run(on_round=in_flight)

    # Five rounds, one per allocation: each time one old allocation stopping and its
    # replacement starting, never more.
    assert seen == [2, 2, 2, 2, 2]
    live = cluster.live_holders()
    assert sorted(a.index for a in live) == [0, 1, 2, 3, 4]
    assert {a.group_hash for a in live} == {current}
    assert final.status is JobStatus.RUNNING
