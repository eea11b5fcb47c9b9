"""Which nodes are in the cluster and alive: joins, drains, deadlines and watches.

:class:`Membership` owns the evidence that a node lives (when its blocking query last
answered, the timer that looks at its deadline) and the watch of each node: a blocking
query for the node's tasks that the node answers as soon as one changes, so a started
or crashed container is known at once rather than at the next collection (if a node
cannot be watched, collection lists its tasks). It records what a node reports of
itself in the node registry, and a node silent past its deadline is Down and its tasks
move (through the dispatcher). What a watch reports is reconciled by collection,
through the ``reconcile`` callback it is given.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from cube.background import Supervisor, spawn
from cube.errors import CubeError, FieldError, InvalidSpec
from cube.log import get_logger
from cube.manager.dispatch import Dispatcher
from cube.manager.identity import check_claim, new_secret
from cube.manager.nodes import NodeRegistry
from cube.manager.registry import TaskRegistry
from cube.manager.stops import Stops
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState
from cube.protocol import JoinAnswer, NodeReport, TaskChanges
from cube.task.model import DesiredState, Task, TaskEvent

log = get_logger("cube.manager")

#: Reconciles a node's reported tasks: (node, tasks, complete, histories).
#: Reconcile a node's report (tasks, complete, histories; None: ask the node for them).
Reconcile = Callable[[Node, list[Task], bool, dict[str, list[TaskEvent]] | None], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime.fromtimestamp(0, UTC)


class Membership:
    """Nodes joining, leaving and draining; their deadlines and watches."""

    def __init__(
        self,
        registry: TaskRegistry,
        nodes: NodeRegistry,
        dispatcher: Dispatcher,
        stops: Stops,
        workers: WorkerClient,
        *,
        loops: Supervisor,
        reconcile: Reconcile,
        drained: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.nodes = nodes
        self.dispatcher = dispatcher
        self.stops = stops
        self.workers = workers
        self.loops = loops
        self._reconcile = reconcile
        self._drained = drained
        #: Node name -> its watch; the names of nodes whose watch currently works.
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._watched: set[str] = set()
        #: Node name -> when its blocking query last answered (see check_deadline).
        self._heard: dict[str, datetime] = {}
        #: Node name -> the timer that looks again at its deadline (see check_deadline).
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        #: The deadlines being looked at (a timer's callback cannot await them).
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        started = _now()
        for node in self.nodes.nodes.values():
            # A restarted manager gives every known node a fresh deadline before calling it Down.
            node.last_seen = started
            self.nodes.node_changed(node.name)
        self.nodes.node_timeout_in_force()  # told from the first call on

    def watch_all(self) -> None:
        """Start the watch of every known node (a joining node's starts as it joins)."""
        for node in self.nodes.nodes.values():
            self._watch(node)

    def close(self) -> list[asyncio.Task[None]]:
        """Cancel the deadline timers; returns the watch loops, for the manager to cancel."""
        for timer in self._deadlines.values():
            timer.cancel()
        return [*self._watches.values(), *self._pending]

    def watched(self, name: str) -> bool:
        """Whether ``name``'s tasks arrive through its watch (collection need not list them)."""
        return name in self._watched

    def unwatched(self, name: str) -> None:
        """A call to ``name`` failed: its watch may hang; collection lists its tasks."""
        self._watched.discard(name)

    async def register(
        self,
        name: str,
        address: str,
        token: str | None,
        *,
        secret: str | None = None,
        running: Sequence[str] = (),
    ) -> JoinAnswer:
        """Add (or update) a node, after checking that the name is the caller's to take
        (see :mod:`cube.manager.identity`) and that its API answers at ``address`` to
        ``token``: a worker can only join with a credential it really accepts.

        The answer carries a new node secret if one was issued, and the tasks placed on
        the node: a returning worker runs only those (see Worker.joined). ``running``: the
        tasks whose containers the worker found running; those moved off it and not yet
        placed elsewhere are taken back rather than started anew."""
        check_claim(self.nodes.nodes.get(name), address=address, secret=secret)
        previous = self.workers.credentials.get(address)
        self.nodes.remember(address, token)
        try:
            report = await self.workers.stats(address, wait=self.nodes.call_timeout_in_force())
        except CubeError as exc:
            self.nodes.remember(address, previous)
            # The caller's input: an address nobody answers at is a 422 naming it.
            why = f"no worker answers here: {exc.message}"
            raise InvalidSpec([FieldError("address", why)]) from None
        if report.name != name:
            raise InvalidSpec(
                [FieldError("name", f"the worker at {address} is named {report.name!r}")]
            )
        # Checked again: another join under this name may have been accepted meanwhile.
        issue = check_claim(self.nodes.nodes.get(name), address=address, secret=secret)
        issued, digest = new_secret() if issue else (None, None)
        # And once more in the name's turn to change (see join): a join saved meanwhile.
        claim = functools.partial(check_claim, address=address, secret=secret)
        node = await self.join(address, report, token=token, secret_hash=digest, claim=claim)
        taken = set()
        for task_id in running:
            task = self.registry.tasks.get(task_id)
            if task is not None and self.stops.may_take_back(task, node):
                await self.dispatcher.take_back(task, node)
                taken.add(task_id)
        if taken:
            await self._merge_taken_back(node, taken)
        assigned = [t.id for t in self.registry.tasks_on(name) if t.desired is DesiredState.RUN]
        return JoinAnswer(
            node=self.nodes.view(name),
            secret=issued,
            tasks=assigned,
            node_timeout=self.nodes.node_timeout_in_force(),
        )

    async def _merge_taken_back(self, node: Node, taken: set[str]) -> None:
        """Merge the node's copies of the tasks just taken back: the join names them only,
        and until the next report they would be Running without their container and
        ports. A node that does not answer now is merged with its next report."""
        try:
            copies = [c for c in await self.workers.tasks(node.address) if c.id in taken]
            await self._reconcile(node, copies, False, None)
        except CubeError as exc:
            log.warning("merging tasks taken back failed", node=node.name, error=exc.message)

    async def drain(self, name: str) -> Node:
        """Take no new tasks on ``name`` and move its tasks to other nodes."""
        node = self.nodes.node(name)

        def drained(draft: Node) -> bool:
            draft.drain = True
            if draft.state is NodeState.READY:
                draft.state = NodeState.DRAINING
            draft.reason = "drained by operator"
            return True

        await self.nodes.change(node, drained)
        self._drained()
        for task_id in await self.dispatcher.move_tasks_off(node, f"node {name} draining"):
            # The node answers: stop its copies now. Its blocking query reports only tasks
            # that change, and these do not until they are stopped.
            self.stops.stop_copy(node, task_id)
        log.info("node draining", node=name)
        return self.nodes.get_node(name)

    async def undrain(self, name: str) -> Node:
        """Let ``name`` take tasks again."""
        node = self.nodes.node(name)

        def undrained(draft: Node) -> bool:
            draft.drain = False
            if draft.state is NodeState.DRAINING:
                draft.state = NodeState.READY
            draft.reason = ""
            return True

        await self.nodes.change(node, undrained)
        self.dispatcher.capacity_changed()
        log.info("node undrained", node=name)
        return self.nodes.get_node(name)

    async def join_loop(self, address: str, token: str | None, interval: float) -> None:
        """Add a statically configured worker, retrying until it answers.

        The first try that fails is no warning: `cube dev` starts its manager and its
        worker together, so the manager's first call often comes before the worker
        listens, and every first start of Cube showed a warning for it."""
        self.nodes.remember(address, token)
        tries = 0
        while True:
            try:
                await self.join(address, await self.workers.stats(address), token=token)
                return
            except CubeError as exc:
                tries += 1
                say = log.info if tries == 1 else log.warning
                say("worker not answering yet", address=address, error=exc.message, tries=tries)
            await asyncio.sleep(max(1.0, interval))

    async def join(
        self,
        address: str,
        report: NodeReport,
        *,
        token: str | None = None,
        secret_hash: str | None = None,
        claim: Callable[[Node], object] | None = None,
    ) -> Node:
        """Record what a node reported (a join, or a collection pass with token None);
        ``secret_hash``: the digest of a node secret just issued to it; ``claim``: raises
        if the name is not the caller's to take, looked at when the node's record is
        changed (another join of the name may have been saved while this one waited).
        Saved before it is shown: a node whose join the store refused is not joined."""
        record = functools.partial(
            _record_report, address, report, token=token, secret_hash=secret_hash
        )
        node = self.nodes.nodes.get(report.name)
        if node is None:
            joining = _joining(Node(name=report.name, address=address), record)
            node, is_new = await self.nodes.create(joining)
            if is_new:
                log.info("node joined", node=node.name, address=address)
                self._watch(node)
                self.nodes.node_timeout_in_force()  # it grows with the fleet
                self.dispatcher.capacity_changed()
                return node

        def edit(draft: Node) -> bool:
            if claim is not None:
                claim(draft)
            return record(draft)

        was_down = node.state is NodeState.DOWN
        if await self.nodes.change(node, edit):
            if was_down and node.state is not NodeState.DOWN:
                log.info("node is back", node=node.name)
            self.dispatcher.capacity_changed()
        return node

    async def call_failed(self, node: Node, error: str) -> None:
        """A call to ``node`` (a poll, a task sent) did not come back: its watch may hang
        too, so collection lists its tasks until the watch answers (a task it lacks is
        sent again, one it has is merged); and its deadline judges whether it is lost.

        A call that failed is not a lost node: on a starved machine answers come late,
        and a node is Down only once it has been silent for the node timeout, as a Nomad
        client is only once its heartbeat TTL has passed (nomad/heartbeat.go)."""
        self.unwatched(node.name)
        await self.check_deadline(node, error)

    async def check_deadline(self, node: Node, error: str) -> None:
        """A node that did not answer: past the deadline it is Down and its tasks move.

        Silent since it last answered a poll or its blocking query: a poll that timed out
        on a busy node whose query still answers is no reason to move its tasks. The
        deadline is the node timeout in force (see NodeRegistry.node_timeout_in_force):
        a manager that comes back to each node only every minute cannot hold a node's
        silence of half a minute against it."""
        heard = max(node.last_seen or node.registered_at, self._heard.get(node.name, _EPOCH))
        silent = (_now() - heard).total_seconds()
        timeout = self.nodes.node_timeout_in_force()
        if silent < timeout:
            # Look again when the deadline passes, not a poll later: the node is Down at
            # its deadline, as a Nomad client whose heartbeat TTL expires.
            if node.name not in self._deadlines:
                self._deadlines[node.name] = asyncio.get_running_loop().call_later(
                    timeout - silent, self._deadline_passed, node.name, error
                )
            return
        if node.state is not NodeState.DOWN:
            await self.nodes.mark_down(node, f"no answer for {silent:.0f}s: {error}")
        await self.dispatcher.move_tasks_off(node, f"node {node.name} lost")

    def _deadline_passed(self, name: str, error: str) -> None:
        del self._deadlines[name]
        if (node := self.nodes.nodes.get(name)) is not None:
            # Answered meanwhile: a new deadline, or none. A refusal of the store is logged
            # (spawn), and the next failed poll looks at the deadline again.
            spawn(self.check_deadline(node, error), f"deadline of {name}", keep=self._pending)

    def _watch(self, node: Node) -> None:
        if node.name not in self._watches:
            self._watches[node.name] = self.loops.start(
                f"watch {node.name}", functools.partial(self._watch_loop, node.name)
            )

    async def _watch_loop(self, name: str) -> None:
        """Reconcile ``name``'s tasks as they change: a blocking query, like Nomad's."""
        since: str | None = None
        resync = 0.0
        interval = self.nodes.collect_interval
        changes: TaskChanges | None = None
        while True:
            node = self.nodes.nodes[name]
            pace = self.nodes.pace
            if time.monotonic() >= resync:  # now and then every task, not only the changes
                since, resync = None, time.monotonic() + pace.resync
            # The last answer, reconciled, is not kept while the next one is awaited: a
            # copy of the node's tasks and their histories, held for the whole wait, was a
            # second copy of the cluster's tasks (bench/heap_report.py, docs/benchmarks.md).
            changes = None
            try:
                changes = await self.workers.watch(node.address, since=since, wait=pace.watch_wait)
            except CubeError:  # collection lists its tasks meanwhile, and judges its liveness
                self._watched.discard(name)
                since = None
                await asyncio.sleep(max(1.0, interval))
                continue
            if changes is None:  # a worker without blocking queries: collection it is
                self._watched.discard(name)
                return
            if node.state is NodeState.DOWN:
                # Collection brings it back first (taking back what it still runs), then
                # the next complete list is reconciled.
                self._watched.discard(name)
                since = None
                await asyncio.sleep(interval)
                continue
            self._watched.add(name)
            self._heard[name] = _now()
            try:
                await self._reconcile(node, changes.tasks, changes.complete, changes.events)
            except CubeError as exc:  # a history the node did not give: all again, next time
                log.warning("reconciling failed", node=name, error=exc.message)
                since = None
                await asyncio.sleep(interval)
                continue
            since = changes.index


def _joining(node: Node, record: Callable[[Node], bool]) -> Node:
    """A new node with what it reported recorded."""
    record(node)
    return node


def _record_report(
    address: str,
    report: NodeReport,
    node: Node,
    *,
    token: str | None,
    secret_hash: str | None,
) -> bool:
    """Write what a node reported into ``node`` (a draft); return whether it must be
    saved (a change of more than its metrics and when it was last heard)."""
    changed = (node.address, node.capacity, node.labels, node.allows) != (
        address,
        report.capacity,
        report.labels,
        report.allows,
    )
    # A port freed or taken on the machine: pending tasks that want it look again.
    in_use = set(report.ports_in_use)
    changed = changed or in_use != node.ports_in_use
    if token is not None and token != node.token:
        node.token, changed = token, True
    if secret_hash is not None:
        node.secret_hash, changed = secret_hash, True
    node.address = address
    node.capacity = report.capacity
    node.labels = dict(report.labels)
    node.allows = list(report.allows)
    node.ports_in_use = in_use
    node.stats = report.stats
    node.last_seen = _now()
    if node.state is NodeState.DOWN:
        node.state = NodeState.DRAINING if node.drain else NodeState.READY
        node.reason, changed = "", True
    return changed
