"""Which task a user means by an ID, a name or a prefix (pure: Manager.resolve's rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cube.errors import Conflict, NotFound
from cube.manager.lookup import find_task
from cube.task.model import Task
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
