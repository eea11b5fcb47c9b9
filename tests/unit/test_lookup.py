"""Which task a user means by an ID, a name or a prefix (pure: Manager.resolve's rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cube.errors import Conflict, NotFound
from cube.job.model import Allocation
from cube.job.parse import parse_job
from cube.manager.core import Manager
from cube.manager.lookup import find_alloc, find_task, not_found
from cube.node import Node
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task, short_task_id
from cube.task.spec import TaskSpec
from cube.task.state import State

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tasks(*pairs: tuple[str, str]) -> dict[str, Task]:
    made = [
        Task(id=tid, spec=TaskSpec(name=name, image="x"), created_at=T0 + timedelta(seconds=i))
        for i, (tid, name) in enumerate(pairs)
    ]
    return {t.id: t for t in made}


def test_a_unique_prefix_of_any_length_finds_the_task() -> None:
    known = tasks(("f00d", "web"), ("beef", "db"))
    assert find_task(known, "f").id == "f00d"
    assert find_task(known, "be").id == "beef"
    assert find_task(known, "beef").id == "beef"


def test_a_unique_name_finds_the_task() -> None:
    known = tasks(("f00d", "web"), ("beef", "db"))
    assert find_task(known, "db").id == "beef"


def test_an_exact_id_wins_over_a_name_and_a_name_over_a_prefix() -> None:
    known = tasks(("ab", "cd"), ("cdef", "ab"))
    assert find_task(known, "ab").id == "ab"
    assert find_task(known, "cd").id == "ab", "the name cd, not the prefix of cdef"


def test_an_ambiguous_name_or_prefix_lists_the_candidates() -> None:
    known = tasks(("aaaa11112222333344", "web"), ("aaab", "web"), ("cccc", "db"))
    known["aaab"].state = State.RUNNING
    with pytest.raises(
        Conflict,
        match=r"2 tasks are named 'web': aaaa11112222 \(pending\), "
        r"aaab \(running\); give an ID",
    ):
        find_task(known, "web")
    with pytest.raises(Conflict, match=r"prefix 'aa' matches 2 tasks: aaaa11112222 .*aaab"):
        find_task(known, "aa")


def test_a_name_shared_with_finished_tasks_means_the_one_still_live() -> None:
    known = tasks(("a1", "web"), ("b2", "web"), ("c3", "web"))
    known["a1"].state = State.COMPLETED
    known["b2"].state = State.FAILED
    known["c3"].state = State.RUNNING
    assert find_task(known, "web").id == "c3"
    known["c3"].state = State.COMPLETED
    with pytest.raises(Conflict, match="3 tasks are named 'web'"):
        find_task(known, "web")


def test_nothing_fits() -> None:
    with pytest.raises(NotFound, match="no task has that ID, name or ID prefix"):
        find_task(tasks(("f00d", "web")), "x")
    with pytest.raises(NotFound):
        find_task(tasks(("f00d", "web")), "")


ALLOC = "2224dd37d6174f3780cb86687c1db949"


def test_the_tasks_of_one_allocation_are_told_apart_by_their_short_ids() -> None:
    """``cube status`` showed ``2224dd37d617`` for both tasks of an allocation, and a
    refusal listed ``2224dd37d617 (running), 2224dd37d617 (running)``: nothing to pick."""
    assert short_task_id(f"{ALLOC}-proxy") == "2224dd37d617-proxy"
    assert short_task_id("f00dbeef00dbeef00d") == "f00dbeef00db"
    assert short_task_id("my-task") == "my-task", "a short head is kept whole"
    known = tasks((f"{ALLOC}-api", "api"), (f"{ALLOC}-proxy", "proxy"), ("beef", "api"))
    with pytest.raises(Conflict, match=r"2224dd37d617-api \(pending\), 2224dd37d617-proxy"):
        find_task(known, "2224")


def test_a_short_id_shown_for_an_allocation_task_finds_it() -> None:
    known = tasks((f"{ALLOC}-api", "api"), (f"{ALLOC}-proxy", "proxy"), ("2224beef-api", "x"))
    assert find_task(known, "2224dd37d617-proxy").id == f"{ALLOC}-proxy"
    assert find_task(known, "2224d-api").id == f"{ALLOC}-api"
    with pytest.raises(Conflict, match="prefix '2224-api' matches 2 tasks"):
        find_task(known, "2224-api")
    with pytest.raises(NotFound):
        find_task(known, "2224dd37d617-db")


def test_an_allocation_is_found_by_a_unique_prefix_of_any_length() -> None:
    """``cube alloc status 86`` said "not found" for the one allocation starting with 86
    (4 characters were the least), and a prefix fitting two said "not found" too."""
    made = [
        Allocation(id=aid, job="shop", group="web", index=i, version=1, group_hash="h")
        for i, aid in enumerate(("86911173c24b4046", "8f00", "5d2d"))
    ]
    allocs = {a.id: a for a in made}
    assert find_alloc(allocs, "86").id == "86911173c24b4046"
    assert find_alloc(allocs, "5").id == "5d2d"
    assert find_alloc(allocs, "8f00").id == "8f00"
    with pytest.raises(Conflict, match=r"prefix '8' matches 2 allocations: 86911173c24b "):
        find_alloc(allocs, "8")
    for ref in ("", "7"):
        with pytest.raises(NotFound, match=f"allocation {ref} not found"):
            find_alloc(allocs, ref)


def test_a_name_nothing_has_is_told_the_close_one_if_any() -> None:
    """``cube job status shpo`` said only "job shpo not found"."""
    assert not_found("job", "shpo", ["shop", "web"]).message == (
        "job shpo not found; did you mean 'shop'?"
    )
    assert not_found("job", "nope", ["shop", "web"]).message == "job nope not found"
    assert not_found("node", "w3", []).message == "node w3 not found"


async def test_jobs_and_nodes_not_found_name_the_close_one() -> None:
    manager = Manager(store=MemoryStore(), scheduler=make_scheduler())
    await manager.node_registry.create(Node(name="worker-1", address="http://w1"))
    task = {"name": "t", "image": "x"}
    await manager.jobs.submit(
        parse_job({"job": "shop", "groups": [{"name": "g", "tasks": [task]}]})
    )
    with pytest.raises(NotFound, match=r"^job shpo not found; did you mean 'shop'\?$"):
        manager.jobs.job("shpo")
    with pytest.raises(NotFound, match=r"^node worker1 not found; did you mean 'worker-1'\?$"):
        manager.get_node("worker1")
    await manager.close()
