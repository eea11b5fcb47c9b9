"""The explainable result of a placement, and the one-line answer to "why is it pending?".

A :class:`Decision` is a pydantic model so that it can be stored with the task
and printed by the CLI as JSON. It is built once per placement, from plain
values: nothing here runs per node on the success path.

What it keeps, and why not everything: in a 5,000-node cluster, a reason per
node and a score per candidate would make every task record large and every
placement slow. So a Decision keeps

* ``filtered_counts``: how many examined nodes each checker rejected (complete);
* ``filtered``: node -> reason for the first :data:`MAX_FILTERED` rejections;
* ``scores``: raw and normalised scores of the :data:`MAX_SCORES` best candidates;
* ``reason``: one line a human can act on, built from *all* rejections.

In a small cluster (up to 8 rejected and 10 feasible nodes) that is every node.
Eight examples: a reason is formatted text, a few microseconds each, which was a
tenth of a placement's cost at 32; the counts say the rest.
The failure path examines and explains every node; at 5,000 nodes it costs a
few tens of milliseconds, so a caller retrying pending tasks should back off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cube.node import Node
from cube.scheduler.feasibility import (
    CONSTRAINTS,
    CPU,
    DISK,
    MEMORY,
    PORTS,
    PRIVILEGES,
    STATE,
    Feasibility,
    Rejection,
    format_cpu,
    host_ports,
    in_use,
    taken_ports,
)
from cube.task.spec import TaskSpec, privileges
from cube.units import format_size

MAX_SCORES = 10
MAX_FILTERED = 8


class NodeScore(BaseModel):
    """A candidate's score: ``raw`` in the algorithm's own unit, ``score`` normalised 0..1."""

    model_config = ConfigDict(frozen=True)

    raw: float
    score: float = Field(description="0..1, higher is better; 1.0 is the best candidate")


class Decision(BaseModel):
    """Where a task goes (or why it goes nowhere), with the evidence."""

    model_config = ConfigDict(frozen=True)

    node: str | None = Field(description="the chosen node, None when nothing fits")
    algorithm: str
    reason: str = Field(description="one line: why this node, or why no node")
    scores: dict[str, NodeScore] = Field(
        default_factory=dict, description=f"the {MAX_SCORES} best candidates, best first"
    )
    filtered: dict[str, str] = Field(
        default_factory=dict,
        description=f"node -> why it was filtered out, first {MAX_FILTERED} in examination order",
    )
    filtered_counts: dict[str, int] = Field(
        default_factory=dict, description="examined nodes rejected per checker, most first"
    )
    candidates: int = Field(default=0, description="feasible nodes found")
    examined: int = Field(default=0, description="nodes looked at")
    total: int = Field(default=0, description="nodes in the cluster")
    limit: int | None = Field(
        default=None, description="stop after this many feasible nodes (None: look at all)"
    )

    @property
    def placed(self) -> bool:
        return self.node is not None


def success_reason(node: str, algorithm: str, found: Feasibility, total: int) -> str:
    """``"w2: best bin-pack score of 3 feasible nodes (5 of 5 examined)"``."""
    n = len(found.candidates)
    return (
        f"{node}: best {algorithm} score of {n} feasible node{'s' if n != 1 else ''} "
        f"({found.examined} of {total} examined)"
    )


def failure_reason(spec: TaskSpec, rejected: Sequence[Rejection], total: int) -> str:
    """Why no node fits, in one line, built from every rejection.

    When one reason rejected every node the line says so with the best alternative
    ("no node has 2.0 free CPU; largest free: 1.5 on w2"); otherwise it lists the
    reasons, most common first ("no node fits: 3 without 2.0 free CPU (largest
    free: 1.5 on w2); 1 draining").
    """
    if total == 0:
        return "no nodes in the cluster"
    groups: dict[str, list[Node]] = {}
    for r in rejected:
        groups.setdefault(r.checker, []).append(r.node)
    if not groups:  # cannot happen after a full scan; kept so the function is total
        return "no node fits"
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    if len(ordered) == 1:
        checker, nodes = ordered[0]
        return _ALL.get(checker, _other(checker))(spec, nodes)
    parts = [_SOME.get(checker, _other(checker))(spec, nodes) for checker, nodes in ordered]
    return "no node fits: " + "; ".join(parts)


def _largest(nodes: Sequence[Node], free: Callable[[Node], float]) -> Node:
    """The node with the most of a resource free; ties go to the smallest name."""
    return min(nodes, key=lambda n: (-free(n), n.name))


def _free_cpu(n: Node) -> float:
    return n.capacity.cpu - n.allocated.cpu


def _free_memory(n: Node) -> float:
    return n.capacity.memory - n.allocated.memory


def _free_disk(n: Node) -> float:
    return n.capacity.disk - n.allocated.disk


def _cpu_hint(nodes: Sequence[Node]) -> str:
    best = _largest(nodes, _free_cpu)
    return f"largest free: {format_cpu(_free_cpu(best))} on {best.name}"


def _memory_hint(nodes: Sequence[Node]) -> str:
    best = _largest(nodes, _free_memory)
    return f"largest free: {format_size(int(_free_memory(best)))} on {best.name}"


def _disk_hint(nodes: Sequence[Node]) -> str:
    best = _largest(nodes, _free_disk)
    return f"largest free: {format_size(int(_free_disk(best)))} on {best.name}"


def _states(nodes: Sequence[Node]) -> str:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.state.value] = counts.get(n.state.value, 0) + 1
    return ", ".join(f"{c} {s}" for s, c in sorted(counts.items()))


def _labels(spec: TaskSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(spec.constraints.items()))


def _privileges(spec: TaskSpec) -> str:
    return ", ".join(sorted(p.value for p in privileges(spec)))


def _ports_taken(spec: TaskSpec, nodes: Sequence[Node]) -> str:
    """One node: which port, where ("host port 8080 is in use on w1"); several: which ports."""
    if len(nodes) == 1:
        return f"{in_use(taken_ports(host_ports(spec), nodes[0]))} on {nodes[0].name}"
    return f"no node has {_port_list(spec)} free"


def _port_list(spec: TaskSpec) -> str:
    ports = sorted(host_ports(spec))
    if len(ports) == 1:
        return f"host port {ports[0]}"
    return f"all of host ports {', '.join(map(str, ports))}"


Explain = Callable[[TaskSpec, Sequence[Node]], str]


def _other(checker: str) -> Explain:
    """Wording for a checker this module does not know (a custom one)."""
    return lambda spec, nodes: f"{len(nodes)} rejected by {checker}"


# One reason rejected every node: a sentence about the cluster.
_ALL: dict[str, Explain] = {
    STATE: lambda spec, nodes: f"no node is ready ({_states(nodes)})",
    CONSTRAINTS: lambda spec, nodes: f"no node has labels {_labels(spec)}",
    PORTS: _ports_taken,
    PRIVILEGES: lambda spec, nodes: (
        f"no node allows {_privileges(spec)} (start a worker with --allow)"
    ),
    CPU: lambda spec, nodes: (
        f"no node has {format_cpu(spec.resources.cpu)} free CPU; {_cpu_hint(nodes)}"
    ),
    MEMORY: lambda spec, nodes: (
        f"no node has {format_size(spec.resources.memory)} free memory; {_memory_hint(nodes)}"
    ),
    DISK: lambda spec, nodes: (
        f"no node has {format_size(spec.resources.disk)} free disk; {_disk_hint(nodes)}"
    ),
}

# Several reasons: a count and a phrase for each.
_SOME: dict[str, Explain] = {
    STATE: lambda spec, nodes: _states(nodes),
    CONSTRAINTS: lambda spec, nodes: f"{len(nodes)} without labels {_labels(spec)}",
    PORTS: lambda spec, nodes: f"{len(nodes)} without {_port_list(spec)} free",
    PRIVILEGES: lambda spec, nodes: f"{len(nodes)} not allowing {_privileges(spec)}",
    CPU: lambda spec, nodes: (
        f"{len(nodes)} without {format_cpu(spec.resources.cpu)} free CPU ({_cpu_hint(nodes)})"
    ),
    MEMORY: lambda spec, nodes: (
        f"{len(nodes)} without {format_size(spec.resources.memory)} free memory "
        f"({_memory_hint(nodes)})"
    ),
    DISK: lambda spec, nodes: (
        f"{len(nodes)} without {format_size(spec.resources.disk)} free disk ({_disk_hint(nodes)})"
    ),
}
