"""The scheduler, phase by phase (feasibility, scoring, pick), then each algorithm whole.

Pure logic: nodes are plain models, placements are recorded with ``allocate``.
The property tests at the end check the two promises that matter most: no node
is ever given more than its capacity, and a task stays pending only when no
node had room.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cube.errors import InvalidSpec
from cube.node import MachineStats, Node, NodeState, Resources
from cube.scheduler import (
    ALGORITHMS,
    LIEB,
    MAX_FILTERED,
    MAX_SCORES,
    BinPack,
    Decision,
    Epvm,
    NodeFacts,
    RoundRobin,
    Scheduler,
    Spread,
    Window,
    allocate,
    checkers_for,
    failure_reason,
    filter_nodes,
    make_scheduler,
    normalise,
    pick,
    ranked,
    release,
)
from cube.scheduler.feasibility import (
    constraint_checker,
    cpu_checker,
    disk_checker,
    format_cpu,
    memory_checker,
    port_checker,
    state_checker,
)
from cube.task.spec import TaskSpec

GiB = 1024**3
MiB = 1024**2


def node(
    name: str,
    *,
    cpu: float = 4.0,
    memory: int = 4 * GiB,
    disk: int = 10 * GiB,
    used_cpu: float = 0.0,
    used_memory: int = 0,
    used_disk: int = 0,
    state: NodeState = NodeState.READY,
    labels: dict[str, str] | None = None,
    ports: set[int] | None = None,
    in_use: set[int] | None = None,
    stats: MachineStats | None = None,
) -> Node:
    return Node(
        name=name,
        address=f"http://{name}:5556",
        state=state,
        capacity=Resources(cpu=cpu, memory=memory, disk=disk),
        allocated=Resources(cpu=used_cpu, memory=used_memory, disk=used_disk),
        labels=labels or {},
        used_ports=ports or set(),
        ports_in_use=in_use or set(),
        stats=stats,
    )


def task(
    cpu: float = 0.5,
    memory: int = 256 * MiB,
    disk: int = 0,
    *,
    ports: Sequence[str] = (),
    constraints: dict[str, str] | None = None,
    name: str = "web",
) -> TaskSpec:
    return TaskSpec(
        name=name,
        image="cube-busybox",
        resources={"cpu": cpu, "memory": memory, "disk": disk},
        ports=list(ports),
        constraints=constraints or {},
    )


def place_all(
    scheduler: Scheduler, specs: Sequence[TaskSpec], nodes: list[Node]
) -> list[str | None]:
    """Place tasks one by one, recording each placement like the manager would."""
    chosen: list[str | None] = []
    for spec in specs:
        decision = scheduler.place(spec, nodes)
        chosen.append(decision.node)
        if decision.node is not None:
            i = next(i for i, n in enumerate(nodes) if n.name == decision.node)
            nodes[i] = allocate(nodes[i], spec)
    return chosen


# --- phase 1: feasibility -------------------------------------------------------------------


class TestCheckers:
    def test_state(self) -> None:
        check = state_checker().check
        assert check(node("a")) is None
        assert check(node("a", state=NodeState.DOWN)) == "node is down"
        assert check(node("a", state=NodeState.DRAINING)) == "node is draining"

    def test_cpu_uses_allocated_not_measured(self) -> None:
        check = cpu_checker(2.0).check
        busy = MachineStats(cpu_percent=100.0)
        assert check(node("a", cpu=4, used_cpu=2, stats=busy)) is None
        assert check(node("a", cpu=4, used_cpu=2.5)) == "needs 2.0 CPU, 1.5 free"

    def test_cpu_tolerates_float_sums(self) -> None:
        assert cpu_checker(0.1).check(node("a", cpu=0.3, used_cpu=0.1 + 0.1)) is None

    def test_memory_and_disk(self) -> None:
        n = node("a", memory=2 * GiB, used_memory=GiB + 512 * MiB, disk=GiB, used_disk=GiB)
        assert memory_checker(GiB).check(n) == "needs 1GiB memory, 512MiB free"
        assert memory_checker(512 * MiB).check(n) is None
        assert disk_checker(1).check(n) == "needs 1B disk, 0B free"

    def test_ports(self) -> None:
        check = port_checker({8080, 9090}).check
        assert check(node("a", ports={22, 80})) is None
        assert check(node("a", ports={8080})) == "host port 8080 is in use"
        assert check(node("a", ports={9090, 8080})) == "host ports 8080, 9090 are in use"

    def test_ports_in_use_on_the_machine(self) -> None:
        """A port some other process holds (the worker reports it) is as taken as a task's."""
        check = port_checker({8080, 9090}).check
        assert check(node("a", in_use={22, 5432})) is None
        assert check(node("a", in_use={8080})) == "host port 8080 is in use"
        assert check(node("a", ports={9090}, in_use={8080})) == "host ports 8080, 9090 are in use"

    def test_constraints_all_must_match(self) -> None:
        check = constraint_checker({"zone": "eu", "disk": "ssd"}).check
        assert check(node("a", labels={"zone": "eu", "disk": "ssd", "x": "y"})) is None
        assert check(node("a", labels={"zone": "us", "disk": "ssd"})) == (
            "needs label zone=eu, node has zone=us"
        )
        assert check(node("a", labels={"zone": "eu"})) == (
            "needs label disk=ssd, node has no 'disk' label"
        )

    def test_checkers_for_only_what_can_fail(self) -> None:
        assert [c.name for c in checkers_for(task())] == ["state", "cpu", "memory"]
        full = task(disk=GiB, ports=["8080:80", "9000"], constraints={"zone": "eu"})
        assert [c.name for c in checkers_for(full)] == [
            "state",
            "constraints",
            "ports",
            "cpu",
            "memory",
            "disk",
        ]

    def test_dynamic_host_ports_never_conflict(self) -> None:
        # "9000" publishes on any free port, "0:80" too: neither can collide.
        assert [c.name for c in checkers_for(task(ports=["9000", "0:80"]))] == [
            "state",
            "cpu",
            "memory",
        ]

    def test_format_cpu(self) -> None:
        assert [format_cpu(x) for x in (2, 1.5, 0.1 + 0.2, 0.125, 0)] == [
            "2.0",
            "1.5",
            "0.3",
            "0.125",
            "0.0",
        ]


class TestFilterNodes:
    def test_first_failing_checker_names_the_reason(self) -> None:
        nodes = [
            node("a", state=NodeState.DRAINING, cpu=0.1),  # draining wins over short of CPU
            node("b", cpu=0.1),
            node("c"),
        ]
        found = filter_nodes(nodes, checkers_for(task(cpu=1)))
        assert [n.name for n in found.candidates] == ["c"]
        assert [(r.node.name, r.checker) for r in found.rejected] == [
            ("a", "state"),
            ("b", "cpu"),
        ]
        assert found.examined == 3
        assert found.counts() == {"state": 1, "cpu": 1}

    def test_limit_stops_after_enough_candidates(self) -> None:
        nodes = [node(f"n{i}") for i in range(10)]
        found = filter_nodes(nodes, checkers_for(task()), limit=3, start=8)
        assert [n.name for n in found.candidates] == ["n8", "n9", "n0"]  # wraps around
        assert found.examined == 3
        assert (found.first, found.last) == (8, 0)

    def test_limit_looks_past_infeasible_nodes(self) -> None:
        nodes = [node(f"n{i}", state=NodeState.DOWN) for i in range(9)] + [node("n9")]
        found = filter_nodes(nodes, checkers_for(task()), limit=2)
        assert [n.name for n in found.candidates] == ["n9"]
        assert found.examined == 10

    def test_no_nodes(self) -> None:
        found = filter_nodes([], checkers_for(task()))
        assert (found.candidates, found.rejected, found.examined) == ([], [], 0)


# --- phase 2: scoring -----------------------------------------------------------------------


class TestNormalise:
    def test_higher_is_better(self) -> None:
        assert normalise([2.0, 4.0, 3.0], lower_is_better=False) == [0.0, 1.0, 0.5]

    def test_lower_is_better_flips(self) -> None:
        assert normalise([2.0, 4.0, 3.0], lower_is_better=True) == [1.0, 0.0, 0.5]

    def test_all_equal_or_single_is_best(self) -> None:
        assert normalise([5.0, 5.0], lower_is_better=True) == [1.0, 1.0]
        assert normalise([-3.0], lower_is_better=False) == [1.0]
        assert normalise([], lower_is_better=False) == []


def facts(*nodes: Node) -> list[NodeFacts]:
    """What scorers read: each node's fields, read once (see cube.scheduler.facts)."""
    return [NodeFacts.of(n) for n in nodes]


def best_of(scorer: BinPack | Epvm | Spread | RoundRobin, spec: TaskSpec, nodes: list[Node]) -> str:
    raw = scorer.score(spec, facts(*nodes))
    norm = normalise(raw, lower_is_better=scorer.lower_is_better)
    i = pick([n.name for n in nodes], norm)
    assert i is not None
    return nodes[i].name


class TestEpvm:
    def test_formula(self) -> None:
        n = node("a", cpu=4, memory=4 * GiB, used_cpu=1, used_memory=2 * GiB)
        [cost] = Epvm().score(task(cpu=1, memory=GiB), facts(n))
        expected = (LIEB**0.5 - LIEB**0.25) + (LIEB**0.75 - LIEB**0.5)
        assert cost == pytest.approx(expected)

    def test_prefers_node_less_loaded_on_both_cpu_and_memory(self) -> None:
        nodes = [
            node("busy", used_cpu=3, used_memory=3 * GiB),
            node("idle", used_cpu=1, used_memory=1 * GiB),
            node("cpu-idle", used_cpu=1, used_memory=3 * GiB),
        ]
        assert best_of(Epvm(), task(), nodes) == "idle"

    def test_prefers_balanced_node_over_one_hot_resource(self) -> None:
        # Same total load; the convex cost makes a hot CPU dearer than two warm resources.
        nodes = [node("hot", used_cpu=3.2), node("warm", used_cpu=1.6, used_memory=int(1.6 * GiB))]
        assert best_of(Epvm(), task(), nodes) == "warm"

    def test_prefers_bigger_node_at_equal_load(self) -> None:
        nodes = [node("small", cpu=2, memory=2 * GiB), node("big", cpu=16, memory=16 * GiB)]
        assert best_of(Epvm(), task(), nodes) == "big"

    def test_measured_cpu_breaks_ties_but_allocation_dominates(self) -> None:
        hot, cold = MachineStats(cpu_percent=100.0), MachineStats(cpu_percent=0.0)
        equal = [node("a", used_cpu=1, stats=hot), node("b", used_cpu=1, stats=cold)]
        assert best_of(Epvm(), task(), equal) == "b"
        apart = [node("a", used_cpu=0.4, stats=hot), node("b", used_cpu=2.4, stats=cold)]
        assert best_of(Epvm(), task(), apart) == "a"
        assert best_of(Epvm(measured_weight=0.0), task(), equal) == "a"  # tie -> name

    def test_rejects_bad_parameters(self) -> None:
        with pytest.raises(ValueError, match="measured_weight"):
            Epvm(measured_weight=1.5)
        with pytest.raises(ValueError, match="base"):
            Epvm(base=1.0)


class TestBinPackAndSpread:
    def test_bin_pack_prefers_fullest_after_placement(self) -> None:
        nodes = [node("empty"), node("half", used_cpu=2, used_memory=2 * GiB)]
        assert best_of(BinPack(), task(), nodes) == "half"

    def test_bin_pack_range(self) -> None:
        exact = node("a", cpu=1, memory=GiB)
        [full] = BinPack().score(task(cpu=1, memory=GiB), facts(exact))
        assert full == pytest.approx(18.0)
        [empty] = BinPack().score(
            task(cpu=0.001, memory=6 * MiB), facts(node("b", memory=64 * GiB))
        )
        assert 0.0 <= empty < 0.05

    def test_spread_prefers_least_allocated(self) -> None:
        nodes = [node("empty"), node("half", used_cpu=2, used_memory=2 * GiB)]
        assert best_of(Spread(), task(), nodes) == "empty"

    def test_spread_mirrors_bin_pack(self) -> None:
        nodes = [node("a", used_cpu=1), node("b", used_memory=3 * GiB)]
        packed = BinPack().score(task(), facts(*nodes))
        spread = Spread().score(task(), facts(*nodes))
        assert [p + s for p, s in zip(packed, spread, strict=True)] == pytest.approx([18, 18])

    def test_round_robin_scores_every_candidate_alike(self) -> None:
        assert RoundRobin().score(task(), facts(node("a"), node("b"))) == [0.0, 0.0]


# --- phase 3: pick --------------------------------------------------------------------------


class TestPick:
    def test_highest_score(self) -> None:
        assert pick(["a", "b", "c"], [0.2, 0.9, 0.5]) == 1

    def test_ties_go_to_the_smallest_name(self) -> None:
        assert pick(["c", "a", "b"], [1.0, 1.0, 0.5]) == 1

    def test_empty(self) -> None:
        assert pick([], []) is None

    def test_ranked_best_first(self) -> None:
        assert ranked(["c", "a", "b", "d"], [0.5, 1.0, 1.0, 0.0], 3) == [1, 2, 0]

    @given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.sampled_from([0.0, 0.5, 1.0]))))
    def test_pick_is_the_max_by_score_then_name(self, items: list[tuple[str, float]]) -> None:
        names = [n for n, _ in items]
        scores = [s for _, s in items]
        i = pick(names, scores)
        if not items:
            assert i is None
            return
        assert i is not None
        top = max(scores)
        assert (names[i], scores[i]) == (min(n for n, s in items if s == top), top)


# --- the algorithms, whole ------------------------------------------------------------------


class TestMakeScheduler:
    def test_algorithms(self) -> None:
        assert ALGORITHMS == ("round-robin", "epvm", "bin-pack", "spread")
        for name in ALGORITHMS:
            assert make_scheduler(name).algorithm == name
        assert make_scheduler("bin-pack").window is Window.STICKY
        assert make_scheduler("round-robin").candidate_limit == 1
        assert make_scheduler(" EPVM ").algorithm == "epvm"

    def test_unknown_name_is_an_invalid_spec_naming_the_field(self) -> None:
        with pytest.raises(InvalidSpec) as info:
            make_scheduler("fastest")
        [error] = info.value.errors
        assert error.field == "scheduler"
        assert "'fastest'" in error.message
        assert "round-robin, epvm, bin-pack, spread" in error.message

    def test_bad_limit(self) -> None:
        with pytest.raises(ValueError, match="candidate_limit"):
            Scheduler(Epvm(), candidate_limit=0)


class TestAlgorithms:
    def test_round_robin_rotates_three_and_three(self) -> None:
        nodes = [node("w1"), node("w2")]
        chosen = place_all(make_scheduler("round-robin"), [task()] * 6, nodes)
        assert chosen == ["w1", "w2", "w1", "w2", "w1", "w2"]

    def test_round_robin_skips_infeasible_nodes(self) -> None:
        nodes = [node("w1"), node("w2", state=NodeState.DOWN), node("w3")]
        chosen = place_all(make_scheduler("round-robin"), [task()] * 4, nodes)
        assert chosen == ["w1", "w3", "w1", "w3"]

    def test_round_robin_cursor_survives_membership_changes(self) -> None:
        scheduler = make_scheduler("round-robin")
        assert scheduler.place(task(), [node("w1"), node("w2"), node("w3")]).node == "w1"
        # w2 left and w0 joined: the next after w1 by name is w3.
        assert scheduler.place(task(), [node("w0"), node("w1"), node("w3")]).node == "w3"
        assert scheduler.place(task(), [node("w0"), node("w1"), node("w3")]).node == "w0"
        scheduler.reset()
        assert scheduler.place(task(), [node("w0"), node("w1")]).node == "w0"

    def test_epvm_prefers_node_less_loaded_on_both(self) -> None:
        nodes = [
            node("w1", used_cpu=2, used_memory=1 * GiB),
            node("w2", used_cpu=1, used_memory=1 * GiB),
            node("w3", used_cpu=1, used_memory=2 * GiB),
        ]
        decision = make_scheduler("epvm").place(task(), nodes)
        assert decision.node == "w2"
        assert next(iter(decision.scores)) == "w2"
        assert decision.scores["w2"].score == 1.0

    def test_epvm_balances_identical_nodes(self) -> None:
        nodes = [node("w1"), node("w2"), node("w3")]
        chosen = place_all(make_scheduler("epvm"), [task()] * 6, nodes)
        assert Counter(chosen) == {"w1": 2, "w2": 2, "w3": 2}

    def test_bin_pack_fills_a_node_before_using_the_next(self) -> None:
        nodes = [node("w1", cpu=1, memory=GiB), node("w2", cpu=1, memory=GiB)]
        chosen = place_all(make_scheduler("bin-pack"), [task(cpu=0.25)] * 6, nodes)
        assert chosen == ["w1", "w1", "w1", "w1", "w2", "w2"]

    def test_bin_pack_prefers_the_fuller_node(self) -> None:
        nodes = [node("w1"), node("w2", used_cpu=3, used_memory=3 * GiB)]
        assert make_scheduler("bin-pack").place(task(), nodes).node == "w2"

    def test_spread_alternates(self) -> None:
        nodes = [node("w1"), node("w2")]
        chosen = place_all(make_scheduler("spread"), [task()] * 4, nodes)
        assert chosen == ["w1", "w2", "w1", "w2"]

    def test_spread_prefers_the_emptier_node(self) -> None:
        nodes = [node("w1", used_cpu=3, used_memory=3 * GiB), node("w2")]
        assert make_scheduler("spread").place(task(), nodes).node == "w2"

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_draining_and_down_nodes_are_never_chosen(self, algorithm: str) -> None:
        nodes = [
            node("w1", state=NodeState.DRAINING),
            node("w2", state=NodeState.DOWN),
            node("w3", used_cpu=3.5),
        ]
        chosen = place_all(make_scheduler(algorithm), [task()] * 2, nodes)
        assert chosen == ["w3", None]

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_constraints_and_ports(self, algorithm: str) -> None:
        nodes = [
            node("w1", labels={"zone": "us"}),
            node("w2", labels={"zone": "eu"}, ports={8080}),
            node("w3", labels={"zone": "eu"}),
        ]
        spec = task(ports=["8080:80"], constraints={"zone": "eu"})
        chosen = place_all(make_scheduler(algorithm), [spec, spec], nodes)
        assert chosen == ["w3", None]  # the first took w3's port 8080
        assert 8080 in nodes[2].used_ports

    @pytest.mark.parametrize("algorithm", ["epvm", "bin-pack", "spread"])
    def test_choice_does_not_depend_on_input_order_when_exhaustive(self, algorithm: str) -> None:
        nodes = [node(f"w{i}", used_cpu=i % 3, used_memory=(i % 2) * GiB) for i in range(6)]
        expected = make_scheduler(algorithm).place(task(), nodes).node
        shuffled = nodes[3:] + nodes[:3]
        assert make_scheduler(algorithm).place(task(), shuffled).node == expected


class TestCandidateLimit:
    def test_window_is_bounded_and_rotates(self) -> None:
        nodes = [node(f"w{i:03d}") for i in range(100)]
        scheduler = make_scheduler("spread", candidate_limit=5)
        first = scheduler.place(task(), nodes)
        second = scheduler.place(task(), nodes)
        assert (first.examined, first.candidates, first.limit) == (5, 5, 5)
        assert first.node == "w000"
        assert second.node == "w005"  # the next window starts after the last node examined
        assert set(first.scores).isdisjoint(second.scores)

    def test_bin_pack_window_sticks_to_the_node_being_filled(self) -> None:
        nodes = [node(f"w{i:03d}", cpu=1, memory=GiB) for i in range(100)]
        chosen = place_all(
            make_scheduler("bin-pack", candidate_limit=5), [task(cpu=0.5)] * 6, nodes
        )
        assert chosen == ["w000", "w000", "w001", "w001", "w002", "w002"]

    def test_no_limit_examines_every_node(self) -> None:
        nodes = [node(f"w{i:03d}") for i in range(100)]
        decision = make_scheduler("epvm", candidate_limit=None).place(task(), nodes)
        assert (decision.examined, decision.candidates, decision.limit) == (100, 100, None)
        assert len(decision.scores) == MAX_SCORES

    def test_unplaceable_only_after_examining_every_node(self) -> None:
        nodes = [node(f"w{i:03d}", cpu=1) for i in range(100)]
        decision = make_scheduler("epvm", candidate_limit=5).place(task(cpu=2), nodes)
        assert decision.node is None
        assert decision.examined == 100


# --- explanations ---------------------------------------------------------------------------


class TestDecision:
    def test_success_explains_itself(self) -> None:
        nodes = [node("w1", state=NodeState.DOWN), node("w2"), node("w3", used_cpu=1)]
        decision = make_scheduler("spread").place(task(), nodes)
        assert decision.placed
        assert decision.reason == "w2: best spread score of 2 feasible nodes (3 of 3 examined)"
        assert list(decision.scores) == ["w2", "w3"]
        assert decision.scores["w2"].score == 1.0
        assert decision.scores["w3"].score == 0.0
        assert decision.scores["w2"].raw > decision.scores["w3"].raw
        assert decision.filtered == {"w1": "node is down"}
        assert decision.filtered_counts == {"state": 1}
        assert (decision.candidates, decision.examined, decision.total) == (2, 3, 3)

    def test_round_trips_as_json(self) -> None:
        nodes = [node("w1", state=NodeState.DRAINING), node("w2")]
        decision = make_scheduler("epvm").place(task(), nodes)
        data = json.loads(decision.model_dump_json())
        assert data["node"] == "w2"
        assert data["scores"]["w2"] == {"raw": decision.scores["w2"].raw, "score": 1.0}
        assert Decision.model_validate_json(decision.model_dump_json()) == decision

    def test_large_failures_keep_counts_and_examples(self) -> None:
        nodes = [node(f"w{i:03d}", cpu=1) for i in range(100)]
        decision = make_scheduler("epvm").place(task(cpu=2), nodes)
        assert len(decision.filtered) == MAX_FILTERED
        assert decision.filtered_counts == {"cpu": 100}
        assert decision.reason == "no node has 2.0 free CPU; largest free: 1.0 on w000"


class TestFailureReason:
    def reason(self, spec: TaskSpec, nodes: list[Node]) -> str:
        decision = make_scheduler("epvm").place(spec, nodes)
        assert decision.node is None
        return decision.reason

    def test_no_nodes(self) -> None:
        assert self.reason(task(), []) == "no nodes in the cluster"

    def test_cpu(self) -> None:
        nodes = [node("w1", cpu=2, used_cpu=1), node("w2", cpu=2, used_cpu=0.5)]
        assert self.reason(task(cpu=2), nodes) == (
            "no node has 2.0 free CPU; largest free: 1.5 on w2"
        )

    def test_memory(self) -> None:
        nodes = [node("w1", memory=GiB), node("w2", memory=GiB, used_memory=512 * MiB)]
        assert self.reason(task(memory=2 * GiB), nodes) == (
            "no node has 2GiB free memory; largest free: 1GiB on w1"
        )

    def test_disk(self) -> None:
        nodes = [node("w1", disk=GiB)]
        assert self.reason(task(disk=2 * GiB), nodes) == (
            "no node has 2GiB free disk; largest free: 1GiB on w1"
        )

    def test_not_ready(self) -> None:
        nodes = [
            node("w1", state=NodeState.DOWN),
            node("w2", state=NodeState.DRAINING),
            node("w3", state=NodeState.DOWN),
        ]
        assert self.reason(task(), nodes) == "no node is ready (2 down, 1 draining)"

    def test_constraints(self) -> None:
        nodes = [node("w1", labels={"zone": "us"})]
        spec = task(constraints={"zone": "eu", "disk": "ssd"})
        assert self.reason(spec, nodes) == "no node has labels disk=ssd, zone=eu"

    def test_ports(self) -> None:
        nodes = [node("w1", ports={8080}), node("w2", in_use={8080})]
        assert self.reason(task(ports=["8080:80"]), nodes) == "no node has host port 8080 free"
        assert self.reason(task(ports=["8080:80", "9090:90"]), nodes) == (
            "no node has all of host ports 8080, 9090 free"
        )

    def test_ports_on_a_single_node_name_the_port_and_the_node(self) -> None:
        nodes = [node("w1", in_use={8080, 22})]
        assert self.reason(task(ports=["8080:80", "9090:90"]), nodes) == (
            "host port 8080 is in use on w1"
        )

    def test_mixed_reasons_most_common_first(self) -> None:
        nodes = [
            node("w1", cpu=1),
            node("w2", state=NodeState.DRAINING),
            node("w3", cpu=1.5),
            node("w4", memory=GiB),
        ]
        assert self.reason(task(cpu=2, memory=2 * GiB), nodes) == (
            "no node fits: 2 without 2.0 free CPU (largest free: 1.5 on w3); 1 draining; "
            "1 without 2GiB free memory (largest free: 1GiB on w4)"
        )

    def test_unknown_checker_still_reads(self) -> None:
        from cube.scheduler import Rejection

        n = node("w1")
        assert failure_reason(task(), [Rejection(n, "gpu", "no GPU")], 1) == "1 rejected by gpu"


# --- bookkeeping ----------------------------------------------------------------------------


class TestAllocation:
    def test_allocate_adds_the_request_and_does_not_mutate(self) -> None:
        before = node("w1", used_cpu=1, ports={22})
        after = allocate(before, task(cpu=0.5, memory=GiB, disk=MiB, ports=["8080:80", "9000"]))
        assert after.allocated == Resources(cpu=1.5, memory=GiB, disk=MiB)
        assert after.used_ports == {22, 8080}
        assert after.tasks == 1
        assert before.allocated == Resources(cpu=1)
        assert before.used_ports == {22}

    def test_release_is_the_inverse_and_floors_at_zero(self) -> None:
        spec = task(cpu=0.5, memory=GiB, ports=["8080:80"])
        start = node("w1", ports={22})
        assert release(allocate(start, spec), spec).model_dump() == start.model_dump()
        twice = release(release(allocate(start, spec), spec), spec)
        assert twice.allocated == Resources()
        assert twice.tasks == 0


# --- properties -----------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(min_value=0, max_value=8))
    out = []
    for i in range(count):
        cpu = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
        memory = draw(st.sampled_from([128, 512, 1024, 4096])) * MiB
        disk = draw(st.sampled_from([0, 256, 1024])) * MiB
        out.append(
            node(
                f"w{i}",
                cpu=cpu,
                memory=memory,
                disk=disk,
                used_cpu=draw(st.sampled_from([0.0, 0.25, 0.5])) * cpu,
                used_memory=memory // draw(st.sampled_from([1_000_000, 4, 2])),
                state=draw(st.sampled_from([NodeState.READY] * 4 + [NodeState.DRAINING])),
                labels={"zone": draw(st.sampled_from(["eu", "us"]))},
                ports=draw(st.sets(st.sampled_from([80, 443, 8080]), max_size=2)),
                in_use=draw(st.sets(st.sampled_from([22, 443, 8080]), max_size=2)),
            )
        )
    return out


specs = st.builds(
    task,
    cpu=st.sampled_from([0.1, 0.25, 0.5, 1.0, 3.0]),
    memory=st.sampled_from([16, 64, 256, 1024]).map(lambda m: m * MiB),
    disk=st.sampled_from([0, 0, 128 * MiB]),
    ports=st.sampled_from([(), (), ("8080:80",), ("443:443", "9000")]),
    constraints=st.sampled_from([None, None, {"zone": "eu"}]),
)


def fits(spec: TaskSpec, n: Node) -> bool:
    """An oracle written apart from the checkers: could ``n`` take ``spec``?"""
    r = spec.resources
    want = Resources(cpu=r.cpu, memory=r.memory, disk=r.disk)
    ports = {p.host for p in spec.ports if p.host}
    return (
        n.state == NodeState.READY
        and (n.allocated + want).fits_in(n.capacity)
        and not (ports & n.used_ports)
        and not (ports & n.ports_in_use)
        and all(n.labels.get(k) == v for k, v in spec.constraints.items())
    )


@pytest.mark.parametrize("limit", [None, 1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(nodes=clusters(), tasks=st.lists(specs, max_size=25))
def test_placements_never_overcommit_and_pend_only_when_full(
    algorithm: str, limit: int | None, nodes: list[Node], tasks: list[TaskSpec]
) -> None:
    scheduler = make_scheduler(algorithm, candidate_limit=limit)
    for spec in tasks:
        decision = scheduler.place(spec, nodes)
        if decision.node is None:
            assert not any(fits(spec, n) for n in nodes), decision.reason
            assert decision.examined == len(nodes)
            assert sum(decision.filtered_counts.values()) == len(nodes)
            continue
        i = next(i for i, n in enumerate(nodes) if n.name == decision.node)
        assert fits(spec, nodes[i])
        assert decision.scores[decision.node].score == 1.0
        nodes[i] = allocate(nodes[i], spec)
        for n in nodes:
            assert n.allocated.fits_in(n.capacity), n
