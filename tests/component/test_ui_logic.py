"""The dashboard's decisions without a browser: sessions and their expiry (with a clock
passed in), the guard in front of every request, and what the pages compute.

The guard runs here in process, in front of a manager that has no node (MemoryStore, no
loop started): pure logic. The browser tests (tests/e2e/test_ui.py) cover the rest for real.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cube.auth import Authenticator, Role
from cube.errors import InvalidSpec
from cube.job.model import Allocation, AllocDesired, AllocStatus, Job, JobStatus
from cube.job.parse import parse_job
from cube.job.spec import MAX_COUNT
from cube.manager.api import create_app
from cube.manager.core import Manager
from cube.node import MachineStats, Node, NodeState, Resources
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskRequest, TaskSpec
from cube.task.state import State
from cube.ui import create_dashboard, pages
from cube.ui.actions import parse_count
from cube.ui.guard import COOKIE, form_fields, is_open, route_path
from cube.ui.login import safe_next
from cube.ui.sessions import Sessions
from cube.ui.views import (
    Count,
    job_groups,
    live_tasks,
    node_bars,
    node_strips,
    nodes_by_state,
    recent_events,
    tasks_by_state,
)

TOKEN = "the-cluster-token-for-these-tests"
GiB = 1024**3
MiB = 1024**2


# --- sessions -------------------------------------------------------------------------------
def test_a_session_lasts_its_lifetime_and_is_forgotten_after() -> None:
    assert Sessions().lifetime == 12 * 3600
    sessions = Sessions(lifetime=60.0)
    session_id, session = sessions.create(now=1000.0)
    assert sessions.get(session_id, now=1059.9) == session
    assert sessions.get(session_id, now=1060.0) is None
    assert len(sessions) == 0
    assert sessions.get(session_id, now=1000.0) is None  # gone for good, not only expired


def test_sessions_end_at_logout_and_the_oldest_go_past_the_limit() -> None:
    sessions = Sessions(limit=2)
    first, _ = sessions.create(now=0.0)
    second, _ = sessions.create(now=1.0)
    third, _ = sessions.create(now=2.0)
    assert sessions.get(first, now=3.0) is None
    assert sessions.get(second, now=3.0) is not None
    sessions.end(second)
    assert sessions.get(second, now=3.0) is None
    assert sessions.get(third, now=3.0) is not None
    assert sessions.get("", now=3.0) is None


def test_a_csrf_token_matches_only_itself() -> None:
    _, session = Sessions().create(now=0.0)
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches("")
    assert not session.csrf_matches(session.csrf[:-1])


# --- the guard, in process --------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager() -> Manager:
    return Manager(store=MemoryStore(), scheduler=make_scheduler())


@pytest.fixture
async def client(clock: Clock, manager: Manager) -> Iterator[httpx.AsyncClient]:
    app = create_dashboard(
        manager, Authenticator({Role.USER: [TOKEN]}), sessions=Sessions(lifetime=60), clock=clock
    )
    transport = httpx.ASGITransport(app=app, root_path="/ui")
    async with httpx.AsyncClient(transport=transport, base_url="http://cube.test/ui") as c:
        yield c  # type: ignore[misc]


async def login(client: httpx.AsyncClient) -> None:
    answer = await client.post("/login", data={"token": TOKEN, "next": "/ui/nodes"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/nodes"


async def test_an_expired_session_leads_back_to_the_login(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    await login(client)
    assert (await client.get("/nodes")).status_code == 200
    assert (await client.get("/partials/nodes")).status_code == 200
    clock.now += 60
    page = await client.get("/nodes")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=/ui/nodes"
    assert (await client.get("/partials/nodes")).status_code == 401


async def test_the_login_sets_a_strict_http_only_cookie_and_no_token_in_the_page(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post("/login", data={"token": TOKEN})
    cookie = answer.headers["set-cookie"].lower()
    assert "max-age=60" in cookie  # as long as the session (12 hours by default)
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/ui/" in cookie
    assert "secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    page = await client.get("/")
    assert TOKEN not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Everything the page loads or links to is the dashboard's own: no CDN, no other site.
    refs = re.findall(r'(?:src|href|action)="([^"]*)"', page.text)
    assert "/ui/static/cube.js" in refs
    assert all(r.startswith(("/ui/", "#")) for r in refs), refs
    assert page.headers["cache-control"] == "no-store"


async def test_a_wrong_or_missing_token_is_refused_with_the_form_again(
    client: httpx.AsyncClient,
) -> None:
    for token, why in (("", "Enter the cluster token."), ("nope", "That is not the cluster")):
        answer = await client.post("/login", data={"token": token})
        assert answer.status_code == 401
        assert why in answer.text
        assert COOKIE not in answer.headers.get("set-cookie", "")


async def test_actions_need_the_csrf_token_of_the_session(client: httpx.AsyncClient) -> None:
    await login(client)
    page = (await client.get("/")).text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    assert (await client.post("/logout")).status_code == 403
    assert (await client.post("/logout", data={"csrf": "x" * len(csrf)})).status_code == 403
    cross = await client.post("/logout", data={"csrf": csrf}, headers={"Origin": "http://evil"})
    assert cross.status_code == 403
    assert (await client.get("/")).status_code == 200  # still logged in
    assert (await client.post("/logout", data={"csrf": csrf})).status_code == 303
    assert (await client.get("/")).status_code == 303


async def test_bad_input_is_a_page_that_names_the_field(client: httpx.AsyncClient) -> None:
    await login(client)
    csrf = (await client.get("/")).text.split('name="csrf" value="')[1].split('"')[0]
    answer = await client.post("/jobs/nope/scale", data={"csrf": csrf, "count": "2"})
    assert answer.status_code == 404
    assert "job nope not found" in answer.text
    missing = await client.get("/tasks/nope")
    assert missing.status_code == 404
    assert "<h1>Not found</h1>" in missing.text
    partial = await client.get("/partials/tasks/nope")
    assert (partial.status_code, partial.headers["content-type"][:10]) == (404, "text/plain")


def test_after_login_only_dashboard_paths() -> None:
    assert safe_next("/ui", "/ui/tasks/abc") == "/ui/tasks/abc"
    for wanted in ("//evil.example/", "https://evil.example/", "/uix", "/ui/\\evil", "/ui//x", ""):
        assert safe_next("/ui", wanted) == "/ui/", wanted


def test_only_the_login_and_static_files_are_open() -> None:
    assert is_open("/login")
    assert is_open("/static/cube.js")
    for path in ("/", "/loginx", "/login/", "/static", "/partials/tasks", "/tasks/x/stop"):
        assert not is_open(path), path


def test_forms_and_paths() -> None:
    assert form_fields(b"a=1&a=2&b=&c=x%20y") == {"a": "1", "b": "", "c": "x y"}
    assert route_path({"path": "/ui/tasks", "root_path": "/ui"}) == "/tasks"
    assert route_path({"path": "/tasks"}) == "/tasks"


def test_a_count_is_a_whole_number_in_range_or_an_error_naming_it() -> None:
    assert parse_count(" 3 ") == 3
    for text in ("abc", "-1", str(MAX_COUNT + 1), "1.5"):
        with pytest.raises(InvalidSpec) as caught:
            parse_count(text)
        assert caught.value.errors[0].field == "count"


# --- what the pages compute -----------------------------------------------------------------
def task(name: str, state: State, memory: int = 64 * 1024**2, minutes: int = 0) -> Task:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    spec = TaskSpec(name=name, image="x", resources={"memory": memory})
    return Task(spec=spec, state=state, updated_at=at)


def test_counts_come_in_state_order_without_the_empty_ones() -> None:
    tasks = [task("a", State.RUNNING), task("b", State.PENDING), task("c", State.RUNNING)]
    assert tasks_by_state(tasks) == [Count("pending", 1), Count("running", 2)]
    nodes = [Node(name="n", address="http://x", state=NodeState.DOWN)]
    assert nodes_by_state(nodes) == [Count("down", 1)]


def test_bars_are_fractions_of_capacity_clamped_and_used_only_when_measured() -> None:
    node = Node(
        name="n",
        address="http://x",
        capacity=Resources(cpu=2, memory=4 * GiB, disk=0),
        allocated=Resources(cpu=3, memory=GiB, disk=0),
    )
    cpu, memory, disk = node_bars(node)
    assert (cpu.allocated_percent, memory.allocated_percent, disk.allocated_percent) == (
        100.0,
        25.0,
        0.0,
    )
    assert cpu.used_percent is None
    assert cpu.text == "3 cores allocated of 2 cores"
    node.stats = MachineStats(
        cpu_percent=25, cpu_count=2, memory_total=8 * GiB, memory_available=6 * GiB
    )
    cpu, memory, _ = node_bars(node)
    assert cpu.used_percent == 25.0  # half a core of two
    assert memory.used_percent == 50.0
    assert memory.text == "1GiB allocated of 4GiB; 2GiB used on the machine"


def test_the_topology_strip_gives_each_live_task_its_share_of_memory() -> None:
    node = Node(name="n", address="http://x", capacity=Resources(memory=1024 * MiB))
    tasks = [
        task("half", State.RUNNING, memory=512 * MiB),
        task("tiny", State.SCHEDULED, memory=6 * MiB),
        task("gone", State.COMPLETED, memory=512 * MiB),
        task("quarter", State.RUNNING, memory=256 * MiB),
    ]
    memory, cpu = node_strips(node, live_tasks(tasks))
    slots = memory.slots
    assert (memory.label, cpu.label) == ("Memory", "CPU")
    assert sorted((s.task.name, s.width) for s in slots) == [
        ("half", 50.0),
        ("quarter", 25.0),
        ("tiny", 1.0),  # 0.6%, shown as 1% to be seen
    ]
    assert [s.x for s in slots] == [0.0, slots[0].width, slots[0].width + slots[1].width]
    full = [task("a", State.RUNNING, memory=1024 * MiB), task("b", State.RUNNING, memory=MiB * 6)]
    assert [s.width for s in node_strips(node, live_tasks(full))[0].slots] in ([100.0], [1.0, 99.0])


def test_groups_show_the_wanted_count_what_is_queued_and_the_allocations_holding_a_slot() -> None:
    tasks = [{"name": "t", "image": "x"}]
    spec = parse_job(
        {
            "job": "j",
            "groups": [{"name": "a", "count": 3, "tasks": tasks}, {"name": "b", "tasks": tasks}],
        }
    )
    allocs = [
        Allocation(job="j", group="a", index=i, version=1, group_hash="h", status=s)
        for i, s in enumerate((AllocStatus.RUNNING, AllocStatus.PENDING))
    ]
    stopping = Allocation(job="j", group="a", index=0, version=1, group_hash="h")
    stopping.desired = AllocDesired.STOP  # replaced, on its way out: holds no slot
    rows = job_groups(Job(id="j"), spec, [*allocs, stopping])
    assert [(r.name, r.desired, r.queued) for r in rows] == [("a", "3", 1), ("b", "1", 1)]
    assert rows[0].statuses == [Count("pending", 1), Count("running", 1)]
    assert rows[1].statuses == []
    assert [r.line for r in rows] == ["a: 1 pending, 1 running, 1 queued of 3", "b: 1 queued of 1"]


def test_a_stopped_job_wants_0_and_counts_what_the_stop_ended_as_the_cli_does() -> None:
    tasks = [{"name": "t", "image": "x"}]
    spec = parse_job({"job": "j", "groups": [{"name": "web", "count": 3, "tasks": tasks}]})
    ended = [Allocation(job="j", group="web", index=i, version=2, group_hash="h") for i in range(3)]
    older = Allocation(job="j", group="web", index=0, version=1, group_hash="h")
    for a in [*ended, older]:
        a.desired, a.status = AllocDesired.STOP, AllocStatus.COMPLETE
    older.replaced_by = ended[0].id  # an older version's: not counted
    job = Job(id="j", version=2, stopped=True, status=JobStatus.DEAD)
    [row] = job_groups(job, spec, [*ended, older])
    assert (row.desired, row.queued, row.statuses) == (
        "0 (stopped; count 3)",
        0,
        [Count("complete", 3)],
    )
    assert row.line == "web: 3 complete; desired 0 (stopped; count 3)"
    system = parse_job({"job": "j", "type": "system", "groups": [{"name": "g", "tasks": tasks}]})
    [row] = job_groups(job, system, [])
    assert (row.desired, row.queued, row.line) == (
        "0 (stopped)",
        None,
        "g: none; desired 0 (stopped)",
    )
    [row] = job_groups(Job(id="j"), system, [])
    assert (row.desired, row.queued, row.line) == ("one per node", None, "g: none")


async def test_the_task_list_shows_the_newest_tasks_and_how_many_there_are(
    client: httpx.AsyncClient, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "TASKS_SHOWN", 3)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for minutes in (4, 0, 3, 1, 2):  # submitted out of order: the page orders by creation
        created, _ = await manager.submit(
            TaskRequest.model_validate({"name": f"t{minutes}", "image": "x"})
        )
        manager.tasks[created.id].created_at = start + timedelta(minutes=minutes)
    await login(client)
    page = (await client.get("/partials/tasks")).text
    assert "The newest 3 of 5 tasks." in page
    assert re.findall(r">(t\d)</a>", page) == ["t4", "t3", "t2"]
    overview = (await client.get("/partials/")).text
    assert 'Tasks</a> <span class="muted">(5)</span>' in overview  # every task counted


async def test_recent_events_are_the_newest_of_the_tasks_that_changed_last() -> None:
    tasks = [task(f"t{i}", State.RUNNING, minutes=i) for i in range(5)]
    history = {
        t.id: [TaskEvent(state=State.RUNNING, time=t.updated_at, reason=t.name)] for t in tasks
    }

    async def events(task_id: str) -> list[TaskEvent]:
        return history[task_id]

    found = await recent_events(tasks, events, tasks_looked_at=3, limit=2)
    assert [r.event.reason for r in found] == ["t4", "t3"]


async def test_every_page_renders_jobs_of_each_type_and_work_no_node_can_take(
    client: httpx.AsyncClient, manager: Manager
) -> None:
    """Templates against states the browser tests do not reach: no node at all, so every
    task and allocation waits; system and batch jobs."""
    tasks = [{"name": "t", "image": "x"}]
    for kind in ("service", "batch", "system"):
        await manager.jobs.submit(
            parse_job(
                {
                    "job": kind,
                    "type": kind,
                    "groups": [
                        {"name": "g", "tasks": tasks, **({} if kind == "system" else {"count": 2})}
                    ],
                }
            )
        )
    await manager.jobs.reconcile_all(datetime.now(UTC))
    task, _ = await manager.submit(TaskRequest.model_validate({"name": "lone", "image": "x"}))
    allocs = manager.jobs.allocations()
    await login(client)
    paths = ["/", "/tasks", f"/tasks/{task.id}", "/nodes", "/jobs", "/topology"]
    paths += [f"/jobs/{kind}" for kind in ("service", "batch", "system")]
    paths += [f"/allocations/{a.id}" for a in allocs]
    for path in paths:
        for prefix in ("", "/partials"):
            page = await client.get(prefix + path)
            assert page.status_code == 200, (path, page.text)
    assert "No node has joined yet" in (await client.get("/nodes")).text
    assert "one per node" in (await client.get("/jobs/system")).text
    # Blocked with no node at all: the job list says why, and how many wait for one.
    listed = (await client.get("/jobs")).text
    assert "blocked: g: 2 of 2 not placed: " in listed, listed
    assert "g: 2 queued of 2" in listed  # no allocation made: a blocked placement
    page = (await client.get("/jobs/service")).text
    assert "Placement failure" in page
    assert "Group g: 2 of 2 not placed" in page
    waiting = (await client.get(f"/tasks/{task.id}")).text  # the dispatcher has not run
    assert "No placement decision recorded yet." in waiting


async def test_a_node_page_lists_its_tasks_from_the_index_newest_first(
    client: httpx.AsyncClient, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node page reads the registry's index by node (the tasks in the order they came
    to the node), not every task of the cluster, and still shows the newest first."""
    for name in ("n1", "n2"):
        await manager.node_registry.create(Node(name=name, address=f"http://{name}"))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Placed on n1 in another order than created; others on n2 and nowhere.
    for minutes, node in ((2, "n1"), (0, "n1"), (5, "n2"), (3, "n1"), (1, "n1"), (4, None)):
        spec = TaskSpec(name=f"t{minutes}", image="x")
        created = start + timedelta(minutes=minutes)
        await manager.registry.create(Task(spec=spec, node=node, created_at=created), [])
    assert [t.name for t in manager.registry.tasks_on("n1")] == ["t2", "t0", "t3", "t1"]

    def scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the node page scanned every task")

    monkeypatch.setattr(manager.registry, "select", scan)
    await login(client)
    for path in ("/nodes/n1", "/partials/nodes/n1"):
        page = (await client.get(path)).text
        assert re.findall(r">(t\d)</a>", page) == ["t3", "t2", "t1", "t0"], path
    assert re.findall(r">(t\d)</a>", (await client.get("/nodes/n2")).text) == ["t5"]


async def test_the_manager_s_address_in_a_browser_leads_to_the_dashboard(manager: Manager) -> None:
    """``http://127.0.0.1:5555/`` answered 401 with a JSON body; the API's routes still
    need the token."""
    app = create_app(manager, authenticator=Authenticator({Role.USER: [TOKEN]}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cube.test") as c:
        root = await c.get("/")
        assert (root.status_code, root.headers["location"]) == (303, "/ui/")
        assert (await c.get("/v1/tasks")).status_code == 401
        assert (await c.post("/")).status_code == 401
