"""A node lost and back: the manager takes back the copies it still runs, correctly, and
only from the worker that owns the node's name.

Pure manager logic: an in-process manager and a fake node (a WorkerClient whose answers
the test sets), driven through collection passes.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from cube.errors import Conflict, Unavailable
from cube.manager.allocs import ended_for_good
from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import MachineStats, Node, NodeState, Resources
from cube.protocol import NodeReport
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import DesiredState, Health, Task, TaskEvent
from cube.task.spec import AllocRef, TaskRequest
from cube.task.state import State

CAPACITY = Resources(cpu=4, memory=1024**3)


class FakeNode(WorkerClient):
    """One node: runs what it is sent, reports what the test says, can go silent."""

    def __init__(self) -> None:
        super().__init__()
        self.silent = False
        #: Sends time out before the node has the task (a starved machine).
        self.late = False
        self.sent: list[str] = []
        self.copies: dict[str, Task] = {}
        self.history: dict[str, list[TaskEvent]] = {}
        self.stops: list[str] = []
        self.release_stops = asyncio.Event()

    def _check(self) -> None:
        if self.silent:
            raise Unavailable("node n1 did not answer")

    async def stats(self, address: str, *, wait: float | None = None) -> NodeReport:
        self._check()
        return NodeReport(name="n1", capacity=CAPACITY, allocated=Resources(), stats=MachineStats())

    async def tasks(self, address: str) -> list[Task]:
        self._check()
        return [copy.model_copy(deep=True) for copy in self.copies.values()]

    async def watch(self, address: str, *, since: str | None, wait: float) -> None:
        return None  # no blocking queries: collection lists the tasks

    async def run(self, address: str, request: TaskRequest) -> Task:
        self._check()
        self.sent.append(request.id or "")
        if self.late:
            raise Unavailable("cannot reach http://n1: ReadTimeout")
        copy = Task(id=request.id or "", spec=request.spec(), node="n1")
        self.copies[copy.id] = copy
        self.history[copy.id] = [copy.transition(State.SCHEDULED, "accepted")]
        return copy

    def start(self, task_id: str) -> None:
        copy = self.copies[task_id]
        self.history[task_id].append(copy.transition(State.RUNNING, "container abc started"))

    async def events(self, address: str, task_id: str) -> list[TaskEvent]:
        self._check()
        return list(self.history[task_id])

    async def stop(
        self, address: str, task_id: str, *, wait: float, reason: str | None = None
    ) -> Task:
        self.stops.append(task_id)
        await self.release_stops.wait()
        copy = self.copies[task_id]
        self.history[task_id].append(copy.transition(State.COMPLETED, "stopped by user"))
        return copy


async def collect(manager: Manager) -> None:
    """One collection pass, and its polls finished."""
    await manager.collect()
    await asyncio.gather(*(t for t in manager._background if t.get_name().startswith("poll ")))


async def lose(manager: Manager, node: FakeNode) -> None:
    node.silent = True
    record = manager.nodes["n1"]
    assert record.last_seen is not None
    record.last_seen -= timedelta(seconds=manager.pace.node_timeout + 1)
    await collect(manager)
    assert record.state is NodeState.DOWN


async def one_task_on(node: FakeNode) -> tuple[Manager, str]:
    """A manager whose one node is ``node``, and a task it placed there."""
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=CAPACITY))
    manager = Manager(store=store, scheduler=make_scheduler(), workers=node)
    task, _ = await manager.submit(TaskRequest(name="web", image="busybox"))
    await manager.dispatch()
    return manager, task.id


async def test_a_returning_node_that_still_runs_a_task_gets_it_back_as_running() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    node.copies[task_id].health = Health.HEALTHY
    await collect(manager)
    assert manager.get(task_id).state is State.RUNNING  # every node event merged
    assert manager.get(task_id).health is Health.HEALTHY

    await lose(manager, node)
    pending = manager.get(task_id)
    assert pending.state is State.PENDING  # nowhere else to go
    assert pending.health is Health.UNKNOWN  # its check ran in the copy on the lost node

    node.silent = False
    await collect(manager)
    task = manager.get(task_id)
    assert (task.state, task.node) == (State.RUNNING, "n1")
    last = (await manager.events(task_id))[-1]
    assert (last.state, last.reason) == (State.RUNNING, "node n1 is back and still runs it")
    assert node.stops == []
    await manager.close()


async def test_a_copy_being_stopped_is_not_taken_back() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    await collect(manager)
    await lose(manager, node)

    # Back before its copy ran: the copy is stopped (the task is Pending, placed nowhere)...
    node.silent = False
    await collect(manager)
    assert node.stops == [task_id]
    # ...and running by the next pass, while the stop is still on its way: not taken back,
    # or the stop would end a task that should run.
    node.start(task_id)
    await collect(manager)
    assert manager.get(task_id).state is State.PENDING
    node.release_stops.set()
    await manager.close()


async def test_a_returning_node_gets_back_at_its_join_the_tasks_it_still_runs() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    await collect(manager)
    await lose(manager, node)  # nowhere else to go: Pending
    node.silent = False

    node.copies[task_id].container_id = "c0ffee"  # what the node runs it in
    answer = await manager.register("n1", "http://n1", None, running=[task_id, "unknown"])

    assert answer.tasks == [task_id]  # so the worker keeps its container
    task = manager.get(task_id)
    assert (task.state, task.node) == (State.RUNNING, "n1")
    # Running with its container at once, not only at the node's next report.
    assert task.container_id == "c0ffee"
    assert "node n1 is back and still runs it" in [e.reason for e in await manager.events(task_id)]
    await manager.close()


async def stopped_by_its_node(manager: Manager, node: FakeNode, task_id: str) -> str:
    """The node stops the task without being asked (its manager was silent too long), and
    the manager collects; the reason the node gave."""
    copy = node.copies[task_id]
    copy.desired = DesiredState.STOP
    reason = "stopped: no call from the manager for 10s (--stop-after-disconnect 10s)"
    node.history[task_id].append(copy.transition(State.COMPLETED, reason))
    await collect(manager)
    return reason


async def test_a_task_its_node_stopped_on_its_own_is_placed_again_not_completed() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    await collect(manager)
    assert manager.get(task_id).state is State.RUNNING

    reason = await stopped_by_its_node(manager, node, task_id)

    task = manager.get(task_id)
    assert (task.state, task.node) == (State.PENDING, None), task
    assert f"node n1 stopped it ({reason})" in (await manager.events(task_id))[-1].reason
    await manager.close()


async def test_an_allocation_task_its_node_stopped_on_its_own_ends_for_its_allocation() -> None:
    """Not Pending: the dispatcher never places an allocation's task on its own, so it
    would wait there for good. It ends, and the job service replaces its allocation."""
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    manager.tasks[task_id].alloc = AllocRef(id="a1", job="shop", group="web", index=0, size=1)
    node.start(task_id)
    await collect(manager)

    await stopped_by_its_node(manager, node, task_id)

    task = manager.get(task_id)
    assert (task.state, task.desired, task.node) == (State.FAILED, DesiredState.STOP, "n1")
    assert ended_for_good(task)  # what makes the job service replace the allocation
    assert "its allocation is replaced" in (await manager.events(task_id))[-1].reason
    await manager.close()


async def test_the_copy_a_node_gave_up_reported_late_does_not_end_its_new_placement() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    await collect(manager)
    given_up = node.copies[task_id]
    given_up.desired = DesiredState.STOP
    node.history[task_id].append(given_up.transition(State.COMPLETED, "stopped: no call"))
    old_history = list(node.history[task_id])
    await collect(manager)
    await manager.dispatch()  # placed on n1 again: the node has a fresh copy
    assert manager.get(task_id).state is State.SCHEDULED

    # A report read before that send, handled after it: the old, stopped copy.
    node.copies[task_id], node.history[task_id] = given_up, old_history
    await collect(manager)
    task = manager.get(task_id)
    assert (task.state, task.node) == (State.SCHEDULED, "n1"), await manager.events(task_id)
    await manager.close()


async def test_a_running_copy_its_node_is_stopping_is_not_taken_back() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    await collect(manager)
    await lose(manager, node)

    # Back, still running the copy, but stopping it: the task is no longer its own.
    node.copies[task_id].desired = DesiredState.STOP
    node.silent = False
    await collect(manager)
    task = manager.get(task_id)
    assert (task.state, task.node) == (State.PENDING, None), task
    await manager.close()


# --- a send that times out: a slow answer is not a lost node -------------------------------------
@pytest.mark.parametrize("in_alloc", [False, True])
async def test_a_send_that_times_out_leaves_the_node_ready_and_is_sent_again(
    in_alloc: bool,
) -> None:
    node = FakeNode()
    node.late = True
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=CAPACITY))
    manager = Manager(store=store, scheduler=make_scheduler(), workers=node)
    if in_alloc:  # an allocation's task: not ended, so its allocation is not replaced
        ref = AllocRef(id="a1", job="shop", group="web", index=0, size=1)
        task = Task(spec=TaskRequest(name="web", image="busybox").spec(), alloc=ref)
        manager.dispatcher.start_alloc_task(task, manager.nodes["n1"], "placed on n1")
        await asyncio.gather(*manager._background)  # saved, then sent
    else:
        task, _ = await manager.submit(TaskRequest(name="web", image="busybox"))
        await manager.dispatch()
    assert node.sent == [task.id]

    # Not Down (its deadline is far), and the task still placed there: it may have it.
    assert manager.nodes["n1"].state is NodeState.READY
    placed = manager.get(task.id)
    assert (placed.state, placed.node, placed.desired) == (
        State.SCHEDULED,
        "n1",
        DesiredState.RUN,
    )
    # The next poll lists the node's tasks (the send may have hung its watch too): it
    # lacks the task, which is sent again.
    node.late = False
    await collect(manager)
    assert node.sent == [task.id, task.id]
    assert task.id in node.copies
    node.start(task.id)
    await collect(manager)
    assert manager.get(task.id).state is State.RUNNING
    await manager.close()


async def test_a_task_placed_again_where_it_was_given_up_is_sent_again_after_no_answer() -> None:
    """The node still reports the copy it gave up, so the task is not missing from its
    list: the send that got no answer is made again all the same."""
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    await collect(manager)
    await stopped_by_its_node(manager, node, task_id)  # Pending again
    node.late = True
    await manager.dispatch()  # placed on n1 again; the send times out
    assert manager.get(task_id).state is State.SCHEDULED

    node.late = False
    await collect(manager)  # the copy it gave up, reported: sent again
    assert node.sent.count(task_id) == 3
    assert node.copies[task_id].desired is DesiredState.RUN
    node.start(task_id)
    await collect(manager)
    assert manager.get(task_id).state is State.RUNNING
    await manager.close()


async def test_a_node_whose_sends_time_out_is_down_at_its_deadline() -> None:
    node = FakeNode()
    node.late = True
    manager, task_id = await one_task_on(node)
    await collect(manager)  # it answers polls; the task, sent again, times out again
    assert node.sent == [task_id, task_id]
    assert manager.nodes["n1"].state is NodeState.READY
    await lose(manager, node)  # silent past its deadline: Down, and its task moved
    assert manager.get(task_id).node is None
    await manager.close()


# --- a node joining again: its name is bound to the worker that first took it ---------------------
async def test_a_name_is_bound_to_the_secret_issued_at_the_first_join() -> None:
    node = FakeNode()
    manager = Manager(store=MemoryStore(), scheduler=make_scheduler(), workers=node)

    first = await manager.register("n1", "http://n1:1", "t" * 16)
    assert first.secret is not None
    assert first.tasks == []
    assert first.node_timeout == node.node_timeout == manager.pace.node_timeout  # told to all
    assert manager.nodes["n1"].secret_hash not in (None, first.secret)  # only a digest kept
    task, _ = await manager.submit(TaskRequest(name="web", image="busybox"))
    await manager.dispatch()
    before = manager.nodes["n1"].model_copy()

    # Anyone else with the join token, at another address: refused, the node unchanged.
    for secret in (None, "x" * 43):
        with pytest.raises(Conflict, match="node name 'n1' is taken by another worker"):
            await manager.register("n1", "http://impostor:1", "i" * 16, secret=secret)
        assert manager.nodes["n1"] == before
        assert manager.workers.credentials.get("http://impostor:1") is None

    # The same worker, moved: accepted, told its tasks, no new secret.
    moved = await manager.register("n1", "http://n1:2", "t" * 16, secret=first.secret)
    assert (moved.node.address, moved.secret, moved.tasks) == ("http://n1:2", None, [task.id])
    await manager.close()


async def test_a_node_known_before_secrets_can_claim_its_name_from_its_own_address_only() -> None:
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=CAPACITY))
    manager = Manager(store=store, scheduler=make_scheduler(), workers=FakeNode())

    with pytest.raises(Conflict, match="can only join again from that address"):
        await manager.register("n1", "http://elsewhere", None)
    answer = await manager.register("n1", "http://n1", None)
    assert answer.secret is not None
    await manager.close()


async def test_a_static_worker_not_listening_yet_is_no_warning_at_the_first_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`cube dev` starts its manager and worker together: the manager's first call may
    come before the worker listens, and every first start showed a warning for it."""
    node = FakeNode()
    node.silent = True
    tries = 0
    stats = node.stats

    async def counted(address: str) -> NodeReport:
        nonlocal tries
        tries += 1
        if tries == 3:
            node.silent = False  # the worker listens at last
        return await stats(address)

    node.stats = counted  # type: ignore[method-assign]
    manager = Manager(store=MemoryStore(), scheduler=make_scheduler(), workers=node)
    with caplog.at_level(logging.INFO, logger="cube"):
        await manager.membership.join_loop("http://n1", None, interval=0.05)
    said = [r.levelno for r in caplog.records if "worker not answering yet" in r.getMessage()]
    assert said == [logging.INFO, logging.WARNING]
    assert "n1" in manager.nodes
    await manager.close()
