"""One contract, two stores: every test here runs against MemoryStore and SqliteStore.

The SQLite-only tests at the end cover what only a file can do: survive a reopen,
and be shared by separate processes.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from cube.errors import NotFound
from cube.node import Node, NodeState, Resources
from cube.store import MemoryStore, SqliteStore, Store, open_store
from cube.store.sqlite import SCHEMA_VERSION
from cube.task.model import Task, TaskEvent
from cube.task.state import State
from tests.support.records import make_task
from tests.support.store_kinds import KINDS, opened


def make_node(name: str) -> Node:
    return Node(
        name=name,
        address=f"http://{name}:5556",
        capacity=Resources(cpu=2.0, memory=1 << 30, disk=10 << 30),
        labels={"zone": "a"},
        used_ports={8080},
    )


def placed(task: Task, node: str) -> TaskEvent:
    """Place ``task`` on ``node`` the way the scheduler does, returning the event."""
    task.node = node
    return task.transition(State.SCHEDULED, "placed")


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store, and each through AsyncStore (see tests/store_kinds)."""
    with opened(request.param, tmp_path) as store:
        yield store


# --- tasks ---------------------------------------------------------------------------------


def test_open_store_picks_the_implementation(tmp_path: Path) -> None:
    memory = open_store("memory", tmp_path / "m")
    sqlite = open_store("sqlite", tmp_path / "s")
    try:
        assert isinstance(memory, MemoryStore)
        assert isinstance(sqlite, SqliteStore)
        assert (tmp_path / "s" / "cube.db").is_file()
    finally:
        memory.close()
        sqlite.close()


def test_saved_task_comes_back_equal(store: Store) -> None:
    task = make_task()
    store.save_task(task)

    assert store.get_task(task.id) == task
    assert store.find_task(task.id) == task


def test_unknown_task_is_not_found(store: Store) -> None:
    assert store.find_task("nope") is None
    with pytest.raises(NotFound):
        store.get_task("nope")
    with pytest.raises(NotFound):
        store.delete_task("nope")
    with pytest.raises(NotFound):
        store.task_events("nope")
    with pytest.raises(NotFound):
        store.add_events("nope", [TaskEvent(state=State.PENDING, reason="note")])


def test_list_tasks_oldest_first(store: Store) -> None:
    tasks = [make_task(f"t{i}") for i in range(5)]
    for task in tasks:
        store.save_task(task)

    assert [t.id for t in store.list_tasks()] == [t.id for t in tasks]


def test_replacing_a_task_keeps_its_place(store: Store) -> None:
    first, second, third = make_task("a"), make_task("b"), make_task("c")
    for task in (first, second, third):
        store.save_task(task)

    event = placed(first, "n1")
    store.save_task(first, [event])

    listed = store.list_tasks()
    assert [t.id for t in listed] == [first.id, second.id, third.id]
    assert listed[0].state is State.SCHEDULED
    assert listed[0].node == "n1"


def test_list_tasks_filters_by_node_and_states(store: Store) -> None:
    pending = make_task("pending")
    on_n1 = make_task("on-n1")
    running_n1 = make_task("running-n1")
    on_n2 = make_task("on-n2")
    placed(on_n1, "n1")
    placed(running_n1, "n1")
    running_n1.transition(State.RUNNING, "started")
    placed(on_n2, "n2")
    for task in (pending, on_n1, running_n1, on_n2):
        store.save_task(task)

    def ids(tasks: list[Task]) -> list[str]:
        return [t.id for t in tasks]

    assert ids(store.list_tasks(node="n1")) == [on_n1.id, running_n1.id]
    assert ids(store.list_tasks(states={State.PENDING})) == [pending.id]
    assert ids(store.list_tasks(states=[State.SCHEDULED, State.RUNNING])) == [
        on_n1.id,
        running_n1.id,
        on_n2.id,
    ]
    assert ids(store.list_tasks(node="n1", states={State.RUNNING})) == [running_n1.id]
    assert ids(store.list_tasks(node="n3")) == []
    assert store.list_tasks(states=()) == []  # no state wanted: nothing matches


def test_save_task_with_events_appends_them_in_order(store: Store) -> None:
    task = make_task()
    store.save_task(task)
    scheduled = placed(task, "n1")
    running = task.transition(State.RUNNING, "started")
    store.save_task(task, [scheduled, running])

    assert store.get_task(task.id).state is State.RUNNING
    assert store.task_events(task.id) == [scheduled, running]

    failed = task.transition(State.FAILED, "exited", exit_code=2)
    store.save_task(task, [failed])

    history = store.task_events(task.id)
    assert [(e.previous, e.state) for e in history] == [
        (State.PENDING, State.SCHEDULED),
        (State.SCHEDULED, State.RUNNING),
        (State.RUNNING, State.FAILED),
    ]
    assert history[-1].exit_code == 2
    assert history[-1].node == "n1"


def test_add_events_appends_without_rewriting_the_task(store: Store) -> None:
    task = make_task()
    event = placed(task, "n1")
    store.save_task(task, [event])
    note = TaskEvent(state=State.SCHEDULED, reason="pulling image", node="n1")

    store.add_events(task.id, [note])
    store.add_events(task.id, [])  # appending nothing is fine

    assert store.task_events(task.id) == [event, note]
    assert store.get_task(task.id) == task


def test_delete_task_removes_it_and_its_events(store: Store) -> None:
    doomed, kept = make_task("doomed"), make_task("kept")
    store.save_task(doomed, [placed(doomed, "n1")])
    kept_event = placed(kept, "n1")
    store.save_task(kept, [kept_event])

    store.delete_task(doomed.id)

    assert store.find_task(doomed.id) is None
    assert [t.id for t in store.list_tasks()] == [kept.id]
    with pytest.raises(NotFound):
        store.task_events(doomed.id)
    assert store.task_events(kept.id) == [kept_event]
    # Saved again under the same ID, the task starts with an empty history.
    store.save_task(doomed)
    assert store.task_events(doomed.id) == []


# --- batches -------------------------------------------------------------------------------
# A batch is a block of the synchronous interface (the job pass's writes, on the thread that
# makes them); AsyncStore has no block to hold across awaits, so these run on each store.


@pytest.fixture(params=[k for k in KINDS if "-" not in k])
def sync_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with opened(request.param, tmp_path) as store:
        yield store


def test_a_batch_keeps_every_write_and_reads_inside_it_see_them(sync_store: Store) -> None:
    store = sync_store
    first, second = make_task("first"), make_task("second")
    event = placed(first, "n1")
    with store.batch():
        store.save_task(first, [event])
        assert store.get_task(first.id) == first
        with store.batch():  # nested: one transaction still
            store.save_task(second)
        store.save_node(make_node("n1"))
    assert [t.id for t in store.list_tasks()] == [first.id, second.id]
    assert store.task_events(first.id) == [event]
    assert [n.name for n in store.list_nodes()] == ["n1"]


def test_a_write_that_fails_in_a_batch_is_undone_alone(sync_store: Store) -> None:
    store = sync_store
    before, after = make_task("before"), make_task("after")
    with store.batch():
        store.save_task(before)
        with pytest.raises(NotFound):
            store.add_events("no-such-task", [TaskEvent(state=State.RUNNING, reason="x")])
        store.save_task(after)
    assert [t.id for t in store.list_tasks()] == [before.id, after.id]


def test_a_batch_that_raises_keeps_what_it_wrote_as_single_writes_would(sync_store: Store) -> None:
    store = sync_store
    task = make_task()

    def buggy() -> None:
        with store.batch():
            store.save_task(task)
            raise RuntimeError("a bug in the caller")

    with pytest.raises(RuntimeError):
        buggy()
    assert store.get_task(task.id) == task


# --- nodes ---------------------------------------------------------------------------------


def test_nodes_crud(store: Store) -> None:
    assert store.list_nodes() == []
    beta, alpha = make_node("beta"), make_node("alpha")
    store.save_node(beta)
    store.save_node(alpha)

    assert store.get_node("alpha") == alpha
    assert [n.name for n in store.list_nodes()] == ["alpha", "beta"]  # by name, not insertion

    beta.state = NodeState.DRAINING
    beta.allocated = Resources(cpu=0.5, memory=64 << 20)
    store.save_node(beta)
    assert store.get_node("beta") == beta
    assert len(store.list_nodes()) == 2

    store.delete_node("alpha")
    assert [n.name for n in store.list_nodes()] == ["beta"]
    with pytest.raises(NotFound):
        store.get_node("alpha")
    with pytest.raises(NotFound):
        store.delete_node("alpha")


# --- copies --------------------------------------------------------------------------------


def test_returned_and_saved_objects_are_independent_copies(store: Store) -> None:
    task = make_task()
    event = placed(task, "n1")
    store.save_task(task, [event])
    node = make_node("n1")
    store.save_node(node)

    # Mutating what was saved...
    task.transition(State.RUNNING, "started")
    event.reason = "changed"
    node.labels["zone"] = "b"
    node.used_ports.add(9090)
    # ...and what was returned...
    got = store.get_task(task.id)
    got.node = "elsewhere"
    store.list_tasks()[0].restarts = 7
    store.task_events(task.id)[0].reason = "changed too"
    got_node = store.get_node("n1")
    got_node.labels["zone"] = "c"
    store.list_nodes()[0].used_ports.clear()

    # ...changes nothing in the store.
    stored = store.get_task(task.id)
    assert (stored.state, stored.node, stored.restarts) == (State.SCHEDULED, "n1", 0)
    assert store.task_events(task.id)[0].reason == "placed"
    stored_node = store.get_node("n1")
    assert stored_node.labels == {"zone": "a"}
    assert stored_node.used_ports == {8080}


# --- concurrency ---------------------------------------------------------------------------

THREADS = 8
SAVES_PER_THREAD = 50


def test_concurrent_writers_lose_nothing(store: Store) -> None:
    shared = make_task("shared")
    store.save_task(shared)
    start = threading.Barrier(THREADS)

    def writer(worker: int) -> list[str]:
        start.wait(timeout=30)
        ids = []
        for i in range(SAVES_PER_THREAD):
            task = make_task(f"w{worker}-{i}")
            store.save_task(task)
            store.save_task(task, [placed(task, f"n{worker}")])
            note = TaskEvent(state=State.PENDING, reason=f"w{worker}-{i}")
            store.add_events(shared.id, [note])
            ids.append(task.id)
        return ids

    with ThreadPoolExecutor(THREADS) as pool:
        written = [f.result() for f in [pool.submit(writer, w) for w in range(THREADS)]]

    listed = store.list_tasks(states={State.SCHEDULED})
    assert len(listed) == THREADS * SAVES_PER_THREAD
    assert {t.id for t in listed} == {i for ids in written for i in ids}
    for worker, ids in enumerate(written):
        # Each thread's tasks keep the order that thread saved them in.
        assert [t.id for t in store.list_tasks(node=f"n{worker}")] == ids
    assert all(len(store.task_events(t.id)) == 1 for t in listed)
    assert len(store.task_events(shared.id)) == THREADS * SAVES_PER_THREAD


def test_closed_store_refuses_use(store: Store) -> None:
    store.save_task(make_task())
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.list_tasks()
    store.close()  # closing twice is harmless


# --- SQLite only ---------------------------------------------------------------------------


def test_sqlite_creates_parent_dirs_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cube.db"
    SqliteStore(path).close()

    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"tasks", "events", "nodes"} <= tables


def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cube.db"
    store = SqliteStore(path)
    pending = make_task("pending")
    running = make_task("running")
    failed = make_task("failed")
    history = [placed(running, "n1"), running.transition(State.RUNNING, "started")]
    failed_history = [placed(failed, "n2"), failed.transition(State.FAILED, "start failed")]
    store.save_task(pending)
    store.save_task(running, history)
    store.save_task(failed, failed_history)
    node = make_node("n1")
    store.save_node(node)
    store.close()

    reopened = SqliteStore(path)
    try:
        assert reopened.list_tasks() == [pending, running, failed]
        assert [t.state for t in reopened.list_tasks()] == [
            State.PENDING,
            State.RUNNING,
            State.FAILED,
        ]
        assert reopened.task_events(running.id) == history
        assert reopened.task_events(failed.id) == failed_history
        assert reopened.task_events(pending.id) == []
        assert reopened.list_nodes() == [node]
        # New tasks still go after the old ones.
        late = make_task("late")
        reopened.save_task(late)
        assert reopened.list_tasks()[-1].id == late.id
    finally:
        reopened.close()


PROCESSES = 3
SAVES_PER_PROCESS = 40


def _process_writer(path: str, worker: int, start: threading.Barrier) -> None:
    """Runs in a spawned process: open the (maybe new) file at the same time as the others."""
    start.wait(timeout=60)
    store = SqliteStore(path)
    try:
        for i in range(SAVES_PER_PROCESS):
            task = make_task(f"p{worker}-{i}")
            store.save_task(task)
            store.save_task(task, [placed(task, f"n{worker}")])
            store.add_events(task.id, [TaskEvent(state=State.SCHEDULED, reason="pulling")])
    finally:
        store.close()


def test_sqlite_is_shared_by_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "cube.db"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    processes = [
        ctx.Process(target=_process_writer, args=(str(path), worker, start))
        for worker in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=90)
    finally:
        for process in processes:
            if process.is_alive():  # hung: don't leave it behind
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * PROCESSES

    store = SqliteStore(path)
    try:
        tasks = store.list_tasks(states={State.SCHEDULED})
        assert len(tasks) == PROCESSES * SAVES_PER_PROCESS
        for worker in range(PROCESSES):
            names = [t.name for t in store.list_tasks(node=f"n{worker}")]
            assert names == [f"p{worker}-{i}" for i in range(SAVES_PER_PROCESS)]
        assert all(len(store.task_events(t.id)) == 2 for t in tasks)
    finally:
        store.close()


def test_sqlite_closes_connections_of_exited_threads(tmp_path: Path) -> None:
    """Thread pools retire threads; their connections must not pile up until close()."""
    store = SqliteStore(tmp_path / "cube.db")
    try:
        for _ in range(20):
            thread = threading.Thread(target=store.list_tasks)
            thread.start()
            thread.join()
        # White-box: the main thread's connection and the last thread's, which the next
        # thread to connect will close; the 19 before it are closed already.
        assert len(store._conns) == 2
    finally:
        store.close()
    assert store._conns == []


def test_sqlite_commits_a_batch_as_one_transaction(tmp_path: Path) -> None:
    with (
        closing(SqliteStore(tmp_path / "s.db")) as store,
        closing(SqliteStore(tmp_path / "s.db")) as other,
    ):
        tasks = [make_task(f"t{i}") for i in range(3)]
        with store.batch():
            for task in tasks:
                store.save_task(task)
            # Another connection sees none of them until the batch commits.
            assert other.list_tasks() == []
        assert [t.id for t in other.list_tasks()] == [t.id for t in tasks]
