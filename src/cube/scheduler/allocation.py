"""The caller's bookkeeping after a placement, as pure functions.

The scheduler never changes a node: it reads ``allocated`` and ``used_ports`` and
returns a Decision. Whoever commits the placement (the manager, a simulation, a
test) records it, and must do so before the next placement, or two tasks could
both be given the last free gigabyte::

    decision = scheduler.place(spec, nodes)
    if decision.node is not None:
        i = names.index(decision.node)
        nodes[i] = allocate(nodes[i], spec)     # and store.save_node(nodes[i])

:func:`release` is the inverse, for a task that stopped or moved away.
"""

from __future__ import annotations

from collections.abc import Iterable

from cube.node import Node, Resources
from cube.scheduler.feasibility import host_ports
from cube.task.spec import TaskSpec


def request(spec: TaskSpec) -> Resources:
    """What a task reserves on its node, as a node :class:`~cube.node.Resources`."""
    r = spec.resources
    return Resources(cpu=r.cpu, memory=r.memory, disk=r.disk)


def allocate(node: Node, spec: TaskSpec) -> Node:
    """A copy of ``node`` with the task's resources, host ports and count added."""
    have, r = node.allocated, spec.resources
    return node.model_copy(
        update={
            # One Resources built, not two (request + sum): this runs once per placement.
            "allocated": Resources(
                cpu=have.cpu + r.cpu, memory=have.memory + r.memory, disk=have.disk + r.disk
            ),
            "used_ports": node.used_ports | host_ports(spec),
            "tasks": node.tasks + 1,
        }
    )


def allocate_all(node: Node, specs: Iterable[TaskSpec]) -> Node:
    """A copy of ``node`` whose allocation is exactly ``specs`` (its own is ignored).

    The same node as :func:`allocate` applied to ``node`` with nothing allocated, once per
    spec in order, built with one copy instead of one per task: the manager rebuilds
    every node's allocation from its records before each dispatch pass.
    """
    cpu, memory, disk, count = 0.0, 0, 0, 0
    ports: set[int] = set()
    for spec in specs:
        r = spec.resources
        cpu += r.cpu
        memory += r.memory
        disk += r.disk
        count += 1
        if spec.ports:
            ports |= host_ports(spec)
    return node.model_copy(
        update={
            "allocated": Resources(cpu=cpu, memory=memory, disk=disk),
            "used_ports": ports,
            "tasks": count,
        }
    )


def release(node: Node, spec: TaskSpec) -> Node:
    """A copy of ``node`` without the task: the inverse of :func:`allocate`.

    Amounts are floored at zero, so releasing a task twice (a replayed event)
    cannot make a node look bigger than it is.
    """
    left = node.allocated - request(spec)
    return node.model_copy(
        update={
            "allocated": Resources(
                cpu=max(0.0, left.cpu), memory=max(0, left.memory), disk=max(0, left.disk)
            ),
            "used_ports": node.used_ports - host_ports(spec),
            "tasks": max(0, node.tasks - 1),
        }
    )
