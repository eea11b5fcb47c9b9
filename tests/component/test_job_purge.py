"""A purged job's tasks go once they stopped, as after ``nomad job stop -purge`` and GC.

In-process (tests/support/fake_nodes.py): the tasks of a purged job's
allocations leave the manager's records, its task list and its store once they have
stopped; one whose node was lost stays until the node is back and has stopped it.
"""

from __future__ import annotations

import pytest

from cube.job.model import JobStatus
from cube.job.spec import JobSpec
from cube.store.memory import MemoryStore
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskSpec
from cube.task.state import State
from tests.support.fake_nodes import (
    NOW,
    FakeWorkers,
    job_spec,
    make_manager,
    node,
    run_all,
    settle,
    submitted,
)


async def test_a_purged_jobs_tasks_are_forgotten_once_stopped() -> None:
    store, _, manager = await submitted(job_spec(count=2), "n1", "n2")
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    ids = [t.id for a in manager.jobs.allocations() for t in a.tasks.values()]
    assert len(ids) == 4

    await manager.jobs.stop("shop", purge=True)
    # Still stopping: listed, so that a node that reports them is answered.
    assert all(manager.tasks[i].state is State.RUNNING for i in ids)
    await settle(manager)  # the nodes stopped them
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)  # the tasks forgotten: deleted from the store, then the records

    assert [i for i in ids if i in manager.tasks] == []
    assert manager.tasks_json() == b"[]"
    assert store.list_tasks() == []
    await manager.close()


async def test_a_purged_task_whose_node_was_lost_stays_until_its_node_stopped_it() -> None:
    _, _, manager = await submitted(job_spec(count=1), "n1")
    for task in manager.tasks.values():
        manager._save(task, task.transition(State.RUNNING, "started"))
        task.container_id = "c0ffee"
    await manager.jobs.reconcile_all(NOW)
    await manager._mark_down(manager.nodes["n1"], "lost")
    await manager._move_tasks_off(manager.nodes["n1"], "node n1 lost")
    await manager.jobs.stop("shop", purge=True)
    await manager.jobs.reconcile_all(NOW)
    assert len(manager.tasks) == 2  # ended by the manager, but n1 may still run them

    for task in list(manager.tasks.values()):  # n1 came back and stopped its copies
        task.container_id = None
        manager._save(task)
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert manager.tasks == {}
    await manager.close()


async def test_a_purged_blocked_job_leaves_nothing_waiting_and_comes_back_unblocked() -> None:
    manager = make_manager(MemoryStore(), FakeWorkers())  # no node: blocked
    await manager.jobs.submit(job_spec(count=2))
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.job("shop").status_reason.startswith("blocked: ")
    await manager.jobs.stop("shop", purge=True)
    assert list(manager.jobs.applier.blocks.jobs()) == []

    await manager.jobs.submit(job_spec(count=2))  # the same name again: a new job, tried at once
    assert manager.jobs.job("shop").status is JobStatus.PENDING
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.allocations() == []
    assert manager.jobs.failures("shop")["web"].reason == "no node in datacenter dc1"
    await manager.close()


class RemovingWorkers(FakeWorkers):
    """Nodes that remove the container of a task asked to stop, ended or not."""

    async def stop(
        self, address: str, task_id: str, *, wait: float, reason: str | None = None
    ) -> Task:
        self.stopped.append(task_id)
        return Task(id=task_id, spec=TaskSpec(name="x", image="x"), state=State.COMPLETED)

    async def events(self, address: str, task_id: str) -> list[TaskEvent]:
        return []


@pytest.mark.parametrize("workers_kind", [RemovingWorkers, FakeWorkers])
async def test_a_purged_batch_job_s_ended_tasks_have_their_containers_removed_and_go(
    workers_kind: type[FakeWorkers],
) -> None:
    """A complete batch job's tasks ended before the purge, each leaving its exited
    container on its node: `cube status` listed them for ever after the purge, and their
    containers stayed. The nodes are asked to remove them; then the tasks are forgotten.
    A node that no longer knows a task (FakeWorkers answers "not found") has no container
    of it: asked once, not again on every pass."""
    store, workers = MemoryStore(), workers_kind()
    store.save_node(node("n1"))
    manager = make_manager(store, workers)
    batch = job_spec(count=2).model_dump(mode="json", exclude_defaults=True)
    await manager.jobs.submit(JobSpec.model_validate({**batch, "type": "batch"}))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    ids = list(manager.tasks)
    assert len(ids) == 4
    for task in manager.tasks.values():  # ran to completion; the exited containers stay
        task.container_id = "c0ffee"
        manager._save(task, task.transition(State.RUNNING, "started"))
        manager._save(task, task.transition(State.COMPLETED, "exited with code 0", exit_code=0))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert manager.jobs.job("shop").status is JobStatus.COMPLETE

    await manager.jobs.stop("shop", purge=True)
    await settle(manager)  # the nodes removed the containers
    for _ in range(3):
        await manager.jobs.reconcile_all(NOW)
        await settle(manager)

    assert sorted(workers.stopped) == sorted(ids)
    assert [i for i in ids if i in manager.tasks] == []
    assert store.list_tasks() == []
    await manager.close()
