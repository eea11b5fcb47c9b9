"""A manager built from the store alone shows what the manager that wrote it showed.

Every cache the manager keeps (each task's JSON in task lists, each node's view with
its allocation, the index of tasks by node, jobs, versions and allocations) is derived
from the records, and the records are written through to the store: so a restarted
manager, and later another manager taking over, starts from the same state. Pure
logic: memory store, nodes that accept everything.
"""

from __future__ import annotations

from cube.task.spec import TaskRequest
from tests.support.fake_nodes import FakeWorkers, job_spec, make_manager, run_all, settle, submitted


async def test_a_manager_built_from_the_store_shows_the_same_tasks_nodes_and_jobs() -> None:
    store, _, first = await submitted(job_spec(count=3), "n1", "n2")
    run_all(first)
    lone, _ = await first.submit(TaskRequest(name="lone", image="busybox", resources={"cpu": 1}))
    await first.dispatch()
    await settle(first)
    await first.drain("n2")  # its tasks move: the first manager's caches change again
    await first.dispatch()
    await settle(first)
    shown = (first.tasks_json(), first.list_nodes(), first.jobs.allocations())

    second = make_manager(store, FakeWorkers())

    assert second.get(lone.id).node == "n1"
    assert (second.tasks_json(), second.list_nodes(), second.jobs.allocations()) == shown
    assert second.list_nodes()[0].allocated.cpu > 0  # views with their allocation, rebuilt
    for name in ("n1", "n2"):
        assert {t.id for t in second.registry.tasks_on(name)} == {
            t.id for t in first.registry.tasks_on(name)
        }
    assert second.jobs.jobs == first.jobs.jobs
    assert second.jobs.versions == first.jobs.versions
    await first.close()
    await second.close()
