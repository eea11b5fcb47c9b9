"""Phase 1 of placement: which nodes *can* take the task (Nomad's feasibility checkers).

A checker answers one question about one node and returns ``None`` when the node
passes, or a short human reason when it does not ("needs 2.0 CPU, 1.5 free").
The reason is shown to users asking why a task is pending, so it names numbers.

Resource fit is decided from ``node.capacity - node.allocated`` (the *requested*
resources of the tasks already placed), never from a measured load: two tasks
placed in the same second must not both take the last free gigabyte.

Checkers are built per task spec (:func:`checkers_for`), so the per-node work in
the hot loop is a few float comparisons on plain attributes. A checker that
cannot fail for a spec (no constraints, no host ports, no disk) is left out.

**The fused test.** Asking each checker in turn reads the same node attributes
again and again, and an attribute read on a pydantic model is the most expensive
step of the hot loop (``BaseModel`` defines ``__getattr__``, which turns off
CPython's fast attribute paths). So for the built-in checkers :func:`fused_misfit`
answers the same question, "which checker does this node fail first?", from the
node's :class:`~cube.scheduler.facts.NodeFacts` (its fields read once per node
version, see :mod:`cube.scheduler.facts`), and :func:`filter_nodes` asks a checker
itself only to explain a rejection, for the first few a Decision keeps. A spec's
checkers and its fused test must agree: change both together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

from cube.node import Node, NodeState
from cube.scheduler.facts import FactsCache, NodeFacts
from cube.task.spec import TaskSpec, privileges
from cube.units import format_size

#: CPU is a float: 0.1 * 3 must fit in 0.3 (same tolerance as ``Resources.fits_in``).
CPU_EPSILON = 1e-9

CheckFn = Callable[[Node], str | None]
#: The index (in a checker list) of the first checker a node fails, or -1 if it passes all.
MisfitFn = Callable[[NodeFacts], int]

# Checker names. They are the keys of the per-reason counts in a Decision, so they
# are part of the output format: keep them stable.
STATE = "state"
CONSTRAINTS = "constraints"
PORTS = "ports"
CPU = "cpu"
MEMORY = "memory"
DISK = "disk"
PRIVILEGES = "privileges"


class Checker(NamedTuple):
    """One feasibility question, named so that rejections can be counted per reason.

    A NamedTuple rather than a frozen dataclass: a handful are built per placement.
    """

    name: str
    check: CheckFn


def format_cpu(cores: float) -> str:
    """CPU cores for humans: ``2 -> '2.0'``, ``1.25 -> '1.25'``, ``0.1+0.2 -> '0.3'``."""
    return repr(round(cores, 3) + 0.0)  # + 0.0: an int stays a float, -0.0 becomes 0.0


def host_ports(spec: TaskSpec) -> frozenset[int]:
    """The fixed host ports a spec publishes (0/None means "any free port": no conflict)."""
    return frozenset(p.host for p in spec.ports if p.host)


def state_checker() -> Checker:
    """Only READY nodes take tasks: DOWN ones miss heartbeats, DRAINING ones are leaving."""
    ready = NodeState.READY

    def check(node: Node) -> str | None:
        state = node.state
        return None if state == ready else f"node is {state.value}"

    return Checker(STATE, check)


def constraint_checker(constraints: Mapping[str, str]) -> Checker:
    """Every ``key: value`` of ``spec.constraints`` must equal the node's label."""
    wanted = tuple(constraints.items())

    def check(node: Node) -> str | None:
        labels = node.labels
        for key, value in wanted:
            have = labels.get(key)
            if have != value:
                if have is None:
                    return f"needs label {key}={value}, node has no {key!r} label"
                return f"needs label {key}={value}, node has {key}={have}"
        return None

    return Checker(CONSTRAINTS, check)


def privilege_checker(wanted: Iterable[str]) -> Checker:
    """A task asking for privileges (privileged, host network, host mounts) needs a node
    whose operator allowed them (``cube worker --allow ...``): safe by default."""
    need = sorted(wanted)

    def check(node: Node) -> str | None:
        missing = [p for p in need if p not in node.allows]
        return f"does not allow {', '.join(missing)}" if missing else None

    return Checker(PRIVILEGES, check)


def port_checker(ports: Iterable[int]) -> Checker:
    """The task's fixed host ports must be neither published by the node's tasks
    (``node.used_ports``) nor taken on its machine by anything else (``node.ports_in_use``,
    as the worker last reported), TCP and UDP alike."""
    wanted = frozenset(ports)

    def check(node: Node) -> str | None:
        taken = taken_ports(wanted, node)
        return in_use(taken) if taken else None

    return Checker(PORTS, check)


def taken_ports(wanted: frozenset[int], node: Node) -> frozenset[int]:
    """Which of the ``wanted`` host ports are in use on ``node``, by its tasks or otherwise."""
    return wanted.intersection(node.used_ports) | wanted.intersection(node.ports_in_use)


def in_use(ports: Iterable[int]) -> str:
    """``"host port 8080 is in use"``, ``"host ports 8080, 9090 are in use"``."""
    listed = sorted(ports)
    if len(listed) == 1:
        return f"host port {listed[0]} is in use"
    return f"host ports {_ports(listed)} are in use"


# Formatting numbers is most of the cost of explaining a rejection, so the resource
# checkers format what they need on their first rejection, not when they are built:
# most placements explain no rejection of a given checker.
def cpu_checker(cpu: float) -> Checker:
    need = ""

    def check(node: Node) -> str | None:
        nonlocal need
        free = node.capacity.cpu - node.allocated.cpu
        if cpu <= free + CPU_EPSILON:
            return None
        need = need or f"needs {format_cpu(cpu)} CPU"
        return f"{need}, {format_cpu(free)} free"

    return Checker(CPU, check)


def memory_checker(memory: int) -> Checker:
    need = ""

    def check(node: Node) -> str | None:
        nonlocal need
        free = node.capacity.memory - node.allocated.memory
        if memory <= free:
            return None
        need = need or f"needs {format_size(memory)} memory"
        return f"{need}, {format_size(free)} free"

    return Checker(MEMORY, check)


def disk_checker(disk: int) -> Checker:
    need = ""

    def check(node: Node) -> str | None:
        nonlocal need
        free = node.capacity.disk - node.allocated.disk
        if disk <= free:
            return None
        need = need or f"needs {format_size(disk)} disk"
        return f"{need}, {format_size(free)} free"

    return Checker(DISK, check)


def checkers_for(spec: TaskSpec) -> tuple[Checker, ...]:
    """The checkers that can reject a node for this spec, cheapest and coarsest first.

    The order decides which reason a node gets when several apply: a draining node
    is reported as draining, not as short of memory. A zero disk request always
    fits, so the disk checker is only added when the task asks for disk.
    """
    out = [state_checker()]
    if spec.constraints:
        out.append(constraint_checker(spec.constraints))
    if wanted := privileges(spec):
        out.append(privilege_checker(p.value for p in wanted))
    ports = host_ports(spec)
    if ports:
        out.append(port_checker(ports))
    out.append(cpu_checker(spec.resources.cpu))
    out.append(memory_checker(spec.resources.memory))
    if spec.resources.disk:
        out.append(disk_checker(spec.resources.disk))
    return tuple(out)


#: What :func:`checkers_for` reads from a spec: resources, labels, host ports, privileges.
Shape = tuple[float, int, int, tuple[tuple[str, str], ...], tuple[int, ...], tuple[str, ...]]


def shape_of(spec: TaskSpec) -> Shape:
    """Everything a spec's checkers depend on, as a hashable value.

    Two specs of one shape get the same checkers and are feasible on the same
    nodes, so a scheduler can build the checkers once per shape and remember where
    the last task of that shape found room. Keep it in step with :func:`checkers_for`.
    """
    r = spec.resources
    return (
        r.cpu,
        r.memory,
        r.disk,
        tuple(sorted(spec.constraints.items())),
        tuple(sorted(host_ports(spec))),
        tuple(sorted(p.value for p in privileges(spec))),
    )


#: The checkers :func:`fused_misfit` knows, in the order :func:`checkers_for` lists them.
_FUSED_ORDER = (STATE, CONSTRAINTS, PRIVILEGES, PORTS, CPU, MEMORY, DISK)


def fused_misfit(spec: TaskSpec, checkers: Sequence[Checker]) -> MisfitFn | None:
    """``checkers_for(spec)`` as one function: the index of the first checker a node fails.

    Same answers as asking ``checkers`` in order (see the module docstring for why it
    exists). ``None`` when ``checkers`` is not a list this function knows (a custom
    checker, another order): :func:`filter_nodes` then asks the checkers one by one.
    """
    names = [c.name for c in checkers]
    if names != [n for n in _FUSED_ORDER if n in names]:
        return None
    at = {name: i for i, name in enumerate(names)}
    if STATE not in at or CPU not in at or MEMORY not in at:
        return None
    i_state, i_cpu, i_memory = at[STATE], at[CPU], at[MEMORY]
    labels_wanted = tuple(spec.constraints.items()) if CONSTRAINTS in at else ()
    i_labels = at.get(CONSTRAINTS, -1)
    allows_wanted = tuple(sorted(p.value for p in privileges(spec))) if PRIVILEGES in at else ()
    i_allows = at.get(PRIVILEGES, -1)
    ports = host_ports(spec) if PORTS in at else frozenset()
    i_ports = at.get(PORTS, -1)
    r = spec.resources
    cpu, memory = r.cpu, r.memory
    disk = r.disk if DISK in at else 0
    i_disk = at.get(DISK, -1)

    def misfit(node: NodeFacts) -> int:
        if not node.ready:
            return i_state
        if labels_wanted:
            labels = node.labels
            for key, value in labels_wanted:
                if labels.get(key) != value:
                    return i_labels
        if allows_wanted:
            allows = node.allows
            for privilege in allows_wanted:
                if privilege not in allows:
                    return i_allows
        if ports and not ports.isdisjoint(node.used_ports):
            return i_ports
        if cpu > node.free_cpu + CPU_EPSILON:
            return i_cpu
        if memory > node.free_memory:
            return i_memory
        if disk and disk > node.free_disk:
            return i_disk
        return -1

    return misfit


def _misfit(checkers: Sequence[Checker]) -> MisfitFn:
    """Any checker list as a :data:`MisfitFn`, asking each checker in turn."""
    checks = [c.check for c in checkers]

    def misfit(facts: NodeFacts) -> int:
        for i, check in enumerate(checks):
            if check(facts.node) is not None:
                return i
        return -1

    return misfit


class Rejection(NamedTuple):
    """A node that failed a checker, with the checker's name and reason.

    ``reason`` is empty for rejections past the ones :func:`filter_nodes` was asked
    to ``explain``. A NamedTuple: the hot loop makes one per rejected node.
    """

    node: Node
    checker: str
    reason: str


# Rejection(...) runs a Python-level __new__; this makes the same tuple from C.
_new_rejection: Callable[[tuple[Node, str, str]], Rejection] = partial(tuple.__new__, Rejection)
_checker = itemgetter(1)  # Rejection.checker, read in C


@dataclass(slots=True)
class Feasibility:
    """The result of phase 1: feasible candidates and every rejection, in examination order."""

    candidates: list[NodeFacts] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    examined: int = 0  # nodes looked at; less than len(nodes) when the limit was reached
    first: int | None = None  # index (in ``nodes``) of the first feasible node examined
    last: int | None = None  # index of the last node examined

    def counts(self) -> dict[str, int]:
        """Rejections per checker name, most common first (ties: first rejected first)."""
        # Counter counts in C; most_common() is a stable sort, so ties keep first-seen order.
        return dict(Counter(map(_checker, self.rejected)).most_common())


def first_failure(checkers: Sequence[Checker], node: Node) -> tuple[str, str] | None:
    """``(checker name, reason)`` of the first checker the node fails, or ``None`` if it fits."""
    for checker in checkers:
        reason = checker.check(node)
        if reason is not None:
            return checker.name, reason
    return None


def filter_nodes(
    nodes: Sequence[Node],
    checkers: Sequence[Checker],
    *,
    limit: int | None = None,
    start: int = 0,
    explain: int | None = None,
    misfit: MisfitFn | None = None,
    cache: FactsCache | None = None,
    skip: Collection[str] = (),
) -> Feasibility:
    """Run the checkers over ``nodes`` from index ``start``, wrapping around.

    Stops once ``limit`` feasible candidates are found (Nomad's LimitIterator), so
    a placement in a large cluster looks at a bounded number of nodes. ``None``
    examines every node. Either way a task is found infeasible only after every
    node was examined.

    Every rejection is recorded with its checker's name; only the first ``explain``
    (``None``: all) get a reason, which is all a Decision keeps. ``misfit`` is the
    checkers' fused test (:func:`fused_misfit`); without it each checker is asked.
    ``cache`` keeps the nodes' facts for the next call (a Scheduler passes its own).
    ``skip``: names of nodes passed over, neither candidates nor rejected (the job
    service's anti-affinity: nodes that run the job already are tried last).
    """
    result = Feasibility()
    n = len(nodes)
    if n == 0:
        return result
    start %= n
    want = n if limit is None else max(1, limit)
    explain = n if explain is None else explain
    test = misfit or _misfit(checkers)
    names = [c.name for c in checkers]
    checks = [c.check for c in checkers]
    known = (cache or FactsCache()).table(nodes)
    candidates = result.candidates
    rejected = result.rejected
    index = start
    for index in chain(range(start, n), range(start)):
        node = nodes[index]
        facts = known[index]
        if facts is None or facts.node is not node:  # a new node, or a new version of one
            facts = known[index] = NodeFacts.of(node)
        if skip and facts.name in skip:
            continue
        i = test(facts)
        if i < 0:
            if not candidates:
                result.first = index
            candidates.append(facts)
            if len(candidates) >= want:
                break
        else:
            reason = (checks[i](node) or "") if len(rejected) < explain else ""
            rejected.append(_new_rejection((node, names[i], reason)))
    result.examined = (index - start) % n + 1
    result.last = index
    return result


def _ports(ports: Iterable[int]) -> str:
    return ", ".join(str(p) for p in sorted(ports))
