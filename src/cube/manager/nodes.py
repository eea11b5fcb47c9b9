"""The manager's nodes: their records, saved first, and the views the scheduler reads.

:class:`NodeRegistry` owns every node record and the cache of node views (a node with
the allocation of the tasks placed there); it decides the intervals in force, which
grow with the fleet (:mod:`cube.manager.pacing`). It asks the task registry which tasks
a node holds, and publishes a node going Down through the callback it is given (the job
service replaces what was there).

A node's change is saved, then shown, as a task's is (see :mod:`cube.manager.registry`):
:meth:`NodeRegistry.change` edits a draft under the node's guard, saves it through the
store's ordered path and only then copies it into the record. What a node reports of
itself at every poll (its metrics, when it was last heard) is not worth a write: a
change of only that is shown at once, and a new manager learns it at the next poll.

While a task's placement is being saved, the task holds its resources in its node's
view (:meth:`NodeRegistry.hold`): otherwise a placement made meanwhile (the job
service's, the next dispatch pass) would see them free and take the same last GiB.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from cube.log import get_logger
from cube.manager.guards import Guards
from cube.manager.lookup import not_found
from cube.manager.pacing import (
    Pace,
    PollClock,
    call_timeout_for,
    node_timeout_for,
    pace,
    planned_nodes,
)
from cube.manager.registry import TaskRegistry
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState
from cube.scheduler import allocate_all
from cube.store.aio import AsyncStore
from cube.task.model import Task
from cube.task.spec import TaskSpec
from cube.task.state import State

log = get_logger("cube.manager")

#: States in which a task holds resources on its node.
PLACED = frozenset({State.SCHEDULED, State.RUNNING})
#: How long a node holds a blocking query for its tasks when nothing changes. An idle
#: node answers at this rate, so a short wait costs the manager a request per node and
#: second: at 1,000 nodes, 1 s made the manager CPU-bound (bench/manager.py). A stopping
#: worker answers its queries at once (ChangeFeed.close); a node cut off holds one until
#: its timeout, while collection, which judges liveness, lists its tasks meanwhile.
WATCH_WAIT = 10.0
#: Every so often a watch asks for every task again, not only the changed ones.
WATCH_RESYNC = 30.0

#: A change of a node: edits the draft it is given (assigning fields, never changing a
#: field's value in place: the draft is a shallow copy) and returns whether the change
#: must be saved; False: only what the node reports of itself changed, shown at once.
NodeEdit = Callable[[Node], bool]


class NodeRegistry:
    """Every node of the cluster, by name, and its view with its allocation."""

    def __init__(
        self,
        nodes: list[Node],
        store: AsyncStore,
        tasks: TaskRegistry,
        workers: WorkerClient,
        *,
        collect_interval: float,
        node_timeout: float,
        went_down: Callable[[], None],
    ) -> None:
        self.store = store
        self.registry = tasks
        self.workers = workers
        self.collect_interval = collect_interval
        self.node_timeout = node_timeout
        self._went_down = went_down
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        for node in self.nodes.values():
            if node.token:
                self.workers.credentials[node.address] = node.token
        #: Node name -> its view with its allocation, until it changes (see view).
        self._views: dict[str, Node] = {}
        #: How fast collection really goes round the fleet (told by the collector).
        self.polls = PollClock()
        #: When the nodes of the last collection period joined (time.monotonic()).
        self._joined_at: deque[float] = deque()
        #: Node name -> the tasks whose placement there is being saved (see hold).
        self._holds: dict[str, dict[str, TaskSpec]] = {}
        #: One change of a node at a time (see cube.manager.guards).
        self.guards = Guards()

    @property
    def pace(self) -> Pace:
        """The intervals in force: the configured ones, stretched for a large fleet."""
        return pace(
            len(self.nodes),
            collect_interval=self.collect_interval,
            node_timeout=self.node_timeout,
            watch_wait=WATCH_WAIT,
            resync=WATCH_RESYNC,
        )

    def node_timeout_in_force(self) -> float:
        """Seconds of silence after which a node is down, now: the pace's timeout, or
        more while collection goes round the fleet slower than the pace says, or while
        the fleet is still joining (see :mod:`cube.manager.pacing`). It is also what
        every call tells the workers from now on (their disconnect window), so that the
        two deadlines stay one."""
        return self._node_timeout(self._period())

    def call_timeout_in_force(self) -> float:
        """Seconds a join's check of the worker may wait for its answer: the calls'
        timeout, stretched as collection falls behind its pace (pacing.call_timeout_for)."""
        period = self._period()
        return call_timeout_for(
            period,
            pace_interval=self.pace.collect,
            call_timeout=self.workers.timeout,
            node_timeout=self._node_timeout(period),
        )

    def _node_timeout(self, period: float) -> float:
        timeout = node_timeout_for(
            period, collect_interval=self.collect_interval, node_timeout=self.node_timeout
        )
        self.workers.node_timeout = timeout
        return timeout

    def _period(self) -> float:
        """Seconds until collection comes back to a node, for the fleet it will be."""
        now, nodes, interval = time.monotonic(), len(self.nodes), self.pace.collect
        period = self.polls.period(now, nodes=nodes, interval=interval)
        while self._joined_at and now - self._joined_at[0] > period:
            self._joined_at.popleft()  # keeps the record bounded; planned_nodes stays pure
        planned = planned_nodes(nodes, self._joined_at, now=now, within=period)
        return self.polls.period(now, nodes=planned, interval=interval)

    def remember(self, address: str, token: str | None) -> None:
        if token:
            self.workers.credentials[address] = token
        else:
            self.workers.credentials.pop(address, None)

    def get_node(self, name: str) -> Node:
        self.node(name)  # NotFound
        return self.view(name)

    def node(self, name: str) -> Node:
        if (node := self.nodes.get(name)) is None:
            raise not_found("node", name, self.nodes)
        return node

    def list_nodes(self) -> list[Node]:
        return [self.view(name) for name in sorted(self.nodes)]

    def view(self, name: str) -> Node:
        """The node as the scheduler and the API see it: its record, with the allocation of
        the tasks placed there by the manager's own records rather than the node's last
        report, so that two placements in one pass cannot share the last GiB.

        Kept until the node or one of its tasks changes (:meth:`node_changed`): every
        dispatch pass and ``GET /v1/nodes`` asks for every node, and rebuilding 1,000
        of them each time was a third of a 1,000-node manager's CPU during a burst.
        Views are never modified, only replaced (:func:`allocate` returns a copy).
        """
        view = self._views.get(name)
        if view is None:
            specs = [t.spec for t in self.registry.tasks_on(name) if t.state in PLACED]
            specs.extend(self._holds.get(name, {}).values())
            view = self._views[name] = allocate_all(self.nodes[name], specs)
        return view

    def node_changed(self, name: str | None) -> None:
        """The node's record or one of its tasks changed: its view must be built again."""
        if name is not None:
            self._views.pop(name, None)

    def hold(self, name: str, task: Task) -> None:
        """Count ``task`` on node ``name`` while its placement there is being saved."""
        self._holds.setdefault(name, {})[task.id] = task.spec
        self.node_changed(name)

    def release(self, name: str, task_id: str) -> None:
        """The placement was saved (the task counts as placed now) or refused."""
        held = self._holds.get(name, {})
        if held.pop(task_id, None) is not None:
            self.node_changed(name)
        if not held:
            self._holds.pop(name, None)

    async def create(self, node: Node) -> tuple[Node, bool]:
        """A node joining: saved, then known. Returns the record and whether it is new
        (another join of the name may have been saved while this one waited)."""
        async with self.guards.hold(node.name):
            if (known := self.nodes.get(node.name)) is not None:
                return known, False
            await self.store.save_node(node)
            self.nodes[node.name] = node
            self._joined_at.append(time.monotonic())
            self.node_changed(node.name)
            return node, True

    async def change(self, node: Node, edit: NodeEdit) -> bool:
        """Change ``node`` by ``edit``: saved first, then shown (see the module docstring).

        Returns whether the change was saved. Raises StoreUnavailable if the store
        refused it: the record is as it was."""
        async with self.guards.hold(node.name):
            draft = node.model_copy()
            saved = edit(draft)
            if saved:
                await self.store.save_node(draft)
            self.node_changed(node.name)
            for field in Node.model_fields:
                setattr(node, field, getattr(draft, field))
            return saved

    async def mark_down(self, node: Node, reason: str) -> None:
        def down(draft: Node) -> bool:
            if draft.state is NodeState.DOWN:
                return False  # marked down meanwhile
            draft.state, draft.reason = NodeState.DOWN, reason
            return True

        if await self.change(node, down):
            self._went_down()
            log.warning("node down", node=node.name, reason=reason)
