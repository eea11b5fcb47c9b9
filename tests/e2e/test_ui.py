"""The web dashboard (``/ui``), in a real browser against a real ``cube dev`` with real
containers: headless Chromium from Debian, driven by Selenium (see tests/support/browser.py).

``CUBE_UI_SCREENSHOTS=DIR`` makes :func:`test_every_page_renders` save a screenshot of
every page there (``scripts/ui-screenshots.sh`` refreshes docs/img/ui/ that way).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from cube.api.tls import client_verify
from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.browser import PHONE, Dashboard, chromium
from tests.support.cli import ok, run_cube
from tests.support.engine import (
    IMAGE,
    containers_of,
    remove_containers,
    remove_networks,
    unique_name,
)
from tests.support.ports import free_port_pair
from tests.support.secure_agents import Agents, make_certificates
from tests.support.waiting import wait_for

#: A browser and a cluster on a busy 2-core machine: more time than the default 120 s.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

SECRET = "hunter2-never-in-html"


def start_dev(where: Path) -> AgentProcess:
    """A real ``cube dev`` (manager and worker in one process) on two free ports."""
    port = free_port_pair()
    name = unique_name("ui")
    agent = AgentProcess(
        args=[
            "dev",
            "--port",
            str(port),
            "--name",
            name,
            "--data-dir",
            str(where / name),
            "--collect-interval",
            "0.2",
        ],
        port=port,
        log_path=where / f"{name}.log",
        name=name,
    )
    agent.start()
    return agent


def stop_dev(agent: AgentProcess) -> None:
    agent.kill()
    remove_containers(f"cube.worker={agent.name}")
    remove_networks(f"cube.worker={agent.name}")


@pytest.fixture(scope="module")
def dev(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = start_dev(tmp_path_factory.mktemp("ui"))
    try:
        yield agent
    finally:
        stop_dev(agent)


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    with chromium() as d:
        yield d


@pytest.fixture
def ui(driver: WebDriver, dev: AgentProcess) -> Iterator[Dashboard]:
    """The dashboard of ``dev``, logged out at the start of each test."""
    driver.delete_all_cookies()
    yield Dashboard(driver, dev.url)
    driver.delete_all_cookies()


# --- helpers --------------------------------------------------------------------------------
def cube(dev: AgentProcess, *args: str) -> str:
    """Run the CLI against ``dev`` (with the test session's token); its stdout."""
    return ok(run_cube(*args, env={"CUBE_ADDR": dev.url}, timeout=90))


def ticker(name: str, **extra: Any) -> dict[str, Any]:
    """A task that prints a numbered line every 0.2 s, with a secret in its environment."""
    return {
        "name": name,
        "image": IMAGE,
        "command": ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'],
        "env": {"PLAIN": "shown", "PASSWORD": {"secret": True, "value": SECRET}},
        "stop_timeout": "1s",
        **extra,
    }


def submit(dev: AgentProcess, spec: dict[str, Any]) -> str:
    response = api.post(f"{dev.url}/v1/tasks", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def task_state(dev: AgentProcess, task_id: str) -> str:
    return str(api.get(f"{dev.url}/v1/tasks/{task_id}").json()["state"])


def running(task_id: str) -> list[str]:
    return containers_of(f"cube.task-id={task_id}", running_only=True)


#: What each page must have for a screen reader: one h1, a label for every field, a name
#: for every button and every picture, a language.
A11Y_PROBLEMS = """
const problems = [];
if (document.querySelectorAll("h1").length !== 1) problems.push("not one h1");
if (!document.documentElement.lang) problems.push("no lang");
for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea"))
  if (el.labels.length === 0 && !el.getAttribute("aria-label"))
    problems.push("unlabelled " + el.name);
for (const el of document.querySelectorAll("button, a"))
  if (!el.textContent.trim() && !el.getAttribute("aria-label"))
    problems.push("nameless " + el.outerHTML);
for (const el of document.querySelectorAll("svg"))
  if (el.getAttribute("role") !== "img" || !el.getAttribute("aria-label")) problems.push("svg");
return problems;
"""


def assert_accessible(driver: WebDriver) -> None:
    problems = driver.execute_script(A11Y_PROBLEMS)
    assert problems == [], f"{driver.current_url}: {problems}"


def session_cookie(driver: WebDriver) -> dict[str, Any]:
    cookie = driver.get_cookie("cube_session")
    assert cookie is not None, "no session cookie"
    return dict(cookie)


# --- login ----------------------------------------------------------------------------------
def test_every_page_needs_a_session_and_the_cluster_token_opens_one(
    ui: Dashboard, dev: AgentProcess
) -> None:
    ui.open("/tasks")
    assert "/ui/login?next=/ui/tasks" in ui.driver.current_url
    # Partials and actions answer 401 instead (to scripts and forms without a session).
    assert httpx.get(f"{ui.base}/partials/tasks").status_code == 401
    assert httpx.post(f"{ui.base}/nodes/x/drain", data={"csrf": "x"}).status_code == 401
    assert httpx.get(f"{ui.base}/v1").status_code == 303  # not found either: log in first

    ui.submit_token("not-the-token-at-all")
    ui.wait_text("#login-error", "That is not the cluster token.")
    assert ui.driver.get_cookie("cube_session") is None

    ui.submit_token(api.TOKEN)
    wait_for(lambda: ui.driver.current_url.endswith("/ui/tasks"), what="the tasks page")
    cookie = session_cookie(ui.driver)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP here; see the TLS test for Secure
    assert api.TOKEN not in ui.driver.page_source
    assert ui.driver.find_element(By.CSS_SELECTOR, "h1").text == "Tasks"


def test_an_invalid_cookie_or_one_logged_out_leads_back_to_the_login(ui: Dashboard) -> None:
    # A session that ends under an open page: its script goes to the login, and back after.
    ui.login(path="/nodes")
    ui.driver.delete_cookie("cube_session")
    wait_for(lambda: "/ui/login?next=%2Fui%2Fnodes" in ui.driver.current_url, what="the login")
    ui.submit_token(api.TOKEN)
    wait_for(lambda: ui.driver.current_url.endswith("/ui/nodes"), what="the nodes page again")

    old = session_cookie(ui.driver)
    ui.click(".logout button")
    wait_for(lambda: "/ui/login" in ui.driver.current_url, what="the login page")
    assert ui.driver.get_cookie("cube_session") is None

    for value in (old["value"], "forged-" + old["value"][7:]):
        ui.driver.add_cookie({"name": "cube_session", "value": value, "path": "/ui/"})
        ui.open("/nodes")
        assert "/ui/login?next=/ui/nodes" in ui.driver.current_url
        response = httpx.get(f"{ui.base}/partials/nodes", cookies={"cube_session": value})
        assert response.status_code == 401


def test_over_https_the_session_cookie_is_secure(tmp_path: Path) -> None:
    """Same port, same TLS as the API: the dashboard's cookie never travels in clear."""
    ca, cert, key = make_certificates(tmp_path)
    started = Agents(tmp_path)
    try:
        tls = ("--tls-cert", str(cert), "--tls-key", str(key))
        manager = started.manager(*tls, scheme="https", ca=ca)
        answer = httpx.post(
            f"{manager.url}/ui/login", data={"token": api.TOKEN}, verify=client_verify(ca)
        )
        assert answer.status_code == 303
        flags = [f.strip().lower() for f in answer.headers["set-cookie"].split(";")]
        assert {"secure", "httponly", "samesite=strict"} <= set(flags)
    finally:
        started.close()


# --- tasks ----------------------------------------------------------------------------------
def test_a_task_run_from_the_cli_appears_live_and_is_stopped_from_its_page(
    ui: Dashboard, dev: AgentProcess, tmp_path: Path
) -> None:
    ui.login(path="/tasks")
    ui.mark()
    spec = tmp_path / "ticker.yaml"
    spec.write_text(json.dumps(ticker("live-ticker")))
    task_id = cube(dev, "run", str(spec)).strip().splitlines()[-1]

    row = f"tr[data-task='{task_id}']"
    ui.wait_text(row, "live-ticker")
    ui.wait_text(row, "Running")
    assert ui.marked(), "the page was reloaded: the row must come without one"

    ui.click(f"{row} a")
    ui.wait_text("#task-state", "Running")
    [container] = wait_for(lambda: running(task_id), what="its container")
    # The log tail follows the task's output: a later line replaces an earlier one.
    first = ui.wait_text("#logs", "tick ")
    last_tick = int(first.strip().splitlines()[-1].split()[1])
    ui.wait_text("#logs", f"tick {last_tick + 5}")
    page = ui.driver.page_source
    assert SECRET not in page
    assert api.TOKEN not in page
    ui.wait_text(".facts", "PLAIN=shown")
    ui.wait_text(".facts", "PASSWORD=<secret>")

    ui.click("#stop-task")
    ui.wait_text("#task-state", "Completed")
    assert running(task_id) == []
    assert container not in containers_of(f"cube.task-id={task_id}", running_only=True)
    assert task_state(dev, task_id) == "completed"


def test_a_pending_task_shows_why_and_which_nodes_were_rejected(
    ui: Dashboard, dev: AgentProcess
) -> None:
    task_id = submit(dev, {**ticker("too-big"), "resources": {"memory": "900GiB"}})
    ui.login(path=f"/tasks/{task_id}")
    ui.wait_text("#task-state", "Pending")
    ui.wait_text("#task-reason", "no node has 900GiB free memory")
    rejected = ui.wait_text("#h-placement + p + p + .scroll table", dev.name)
    assert "needs 900GiB memory" in rejected
    ui.open("/")
    ui.wait_text("#h-pending + .reasons", "too-big")
    assert api.delete(f"{dev.url}/v1/tasks/{task_id}").status_code == 200


def test_a_forged_post_stops_nothing(ui: Dashboard, dev: AgentProcess) -> None:
    task_id = submit(dev, ticker("kept"))
    wait_for(lambda: running(task_id), what="the task's container")
    ui.login(path=f"/tasks/{task_id}")
    cookies = {"cube_session": session_cookie(ui.driver)["value"]}
    csrf = ui.driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    stop = f"{ui.base}/tasks/{task_id}/stop"

    # With the session cookie, but no or a wrong CSRF token, or from another origin: 403.
    assert httpx.post(stop, cookies=cookies).status_code == 403
    assert httpx.post(stop, cookies=cookies, data={"csrf": "guess"}).status_code == 403
    evil = {"Origin": "http://evil.example"}
    assert httpx.post(stop, cookies=cookies, data={"csrf": csrf}, headers=evil).status_code == 403
    # A page of another origin posting a form in the browser that holds the session.
    attack = (
        f"data:text/html,<form method=post action='{stop}'><input name=csrf value=x></form>"
        "<script>document.forms[0].submit()</script>"
    )
    ui.driver.get(attack)
    wait_for(lambda: ui.driver.current_url.startswith(stop), what="the forged form's answer")
    assert "Refused" in ui.driver.page_source or "log in again" in ui.driver.page_source

    assert running(task_id), "a refused form stopped the container"
    assert task_state(dev, task_id) == "running"
    assert api.delete(f"{dev.url}/v1/tasks/{task_id}").status_code == 200


def test_markup_in_a_spec_or_in_output_stays_text(ui: Dashboard, dev: AgentProcess) -> None:
    """Autoescaping: what a task's spec or output says is shown, never run or rendered."""
    markup = '<img id=injected src=x onerror="document.title=1">'
    spec = {
        "name": "markup",
        "image": IMAGE,
        "command": ["sh", "-c", f"echo '{markup}'; sleep 600"],
        "env": {"NOTE": "<b id=bold>bold</b>"},
        "stop_timeout": "1s",
    }
    task_id = submit(dev, spec)
    ui.login(path=f"/tasks/{task_id}")
    ui.wait_text("#logs", markup)
    ui.wait_text(".facts", "NOTE=<b id=bold>bold</b>")
    assert ui.driver.find_elements(By.CSS_SELECTOR, "#injected, #bold") == []
    assert ui.driver.title != "1"
    assert api.delete(f"{dev.url}/v1/tasks/{task_id}").status_code == 200


# --- nodes ----------------------------------------------------------------------------------
def test_a_node_is_drained_and_undrained_from_its_page(ui: Dashboard, dev: AgentProcess) -> None:
    node = f"{dev.url}/v1/nodes/{dev.name}"
    ui.login(path=f"/nodes/{dev.name}")
    ui.wait_text("#node-state", "Ready")
    assert [b.text for b in ui.driver.find_elements(By.CSS_SELECTOR, ".bar-label")] == [
        "CPU",
        "Memory",
        "Disk",
    ]
    ui.click("#drain-node")
    ui.wait_text("#node-state", "Draining")
    assert api.get(node).json()["drain"] is True
    ui.click("#undrain-node")
    ui.wait_text("#node-state", "Ready")
    assert api.get(node).json()["drain"] is False


# --- jobs -----------------------------------------------------------------------------------
def test_a_job_is_scaled_and_stopped_from_its_page(ui: Dashboard, dev: AgentProcess) -> None:
    job = {
        "job": "uijob",
        "groups": [{"name": "web", "count": 2, "tasks": [ticker("web")]}],
    }
    assert api.post(f"{dev.url}/v1/jobs", json=job).status_code == 201
    ui.login(path="/jobs/uijob")
    ui.wait_text("#h-groups + .scroll", "Running 2")
    field = ui.driver.find_element(By.ID, "count-web")
    field.clear()
    field.send_keys("1", Keys.ENTER)
    ui.wait_text("#h-groups + .scroll", "Running 1")
    assert api.get(f"{dev.url}/v1/jobs/uijob").json()["job"]["version"] == 2
    ui.wait_text("#h-versions + .scroll", "web (1)")

    # A task of an allocation is stopped with its job: its page says so, the manager too.
    [web, *_] = api.get(f"{dev.url}/v1/allocations", params={"job": "uijob"}).json()
    alloc_task = next(iter(web["tasks"].values()))["id"]
    ui.open(f"/tasks/{alloc_task}")
    assert "stop or scale job uijob instead" in ui.wait_text("#alloc-hint", "uijob")
    assert not ui.driver.find_elements(By.ID, "stop-task")
    csrf = ui.driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    refused = httpx.post(
        f"{ui.base}/tasks/{alloc_task}/stop",
        data={"csrf": csrf},
        cookies={"cube_session": session_cookie(ui.driver)["value"]},
    )
    assert refused.status_code == 409
    assert "cube job stop uijob" in refused.text

    ui.open("/jobs/uijob")
    ui.click("#stop-job")
    ui.wait_text("#job-status", "(stopped)")
    allocs = api.get(f"{dev.url}/v1/allocations", params={"job": "uijob"}).json()
    tasks = [t["id"] for a in allocs for t in a["tasks"].values()]
    wait_for(lambda: not any(running(t) for t in tasks), what="the job's containers to stop")
    # As `cube job status uijob` says it: wants none, the count a run starts again, and
    # what the stop ended (the scaled-down copy, stopped before, is not counted).
    groups = ui.wait_text("#h-groups + .scroll", "Complete 1")
    assert "web 0 (stopped; count 1) 0" in groups, groups

    ui.open("/jobs/uijob/scale")  # a visit to an action's address: said plainly
    assert "This address is an action: use its button on the page." in ui.text("main")
    ui.open("/jobs/nosuchjob")
    assert ui.text("h1") == "Not found"
    assert "job nosuchjob not found" in ui.text("main")


# --- the whole dashboard ----------------------------------------------------------------------
def test_every_page_renders(ui: Dashboard, dev: AgentProcess, start_worker: Any) -> None:
    """Every page with something on it, on a laptop screen (and screenshots if asked);
    the topology shows every node with its own tasks."""
    small = start_worker("--manager", dev.url, "--cpu", "1", "--memory", "1GiB")
    wait_for(
        lambda: api.get(f"{dev.url}/v1/nodes/{small.name}").status_code == 200,
        what="the second node to join",
    )
    tasks = [ticker("api", resources={"memory": "128MiB"}), ticker("proxy")]
    job = {"job": "shop", "groups": [{"name": "web", "count": 4, "tasks": tasks}]}
    assert api.post(f"{dev.url}/v1/jobs", json=job).status_code in (200, 201)
    task_id = submit(dev, ticker("solo"))
    pending = submit(dev, {**ticker("too-big"), "resources": {"memory": "900GiB"}})
    wait_for(lambda: task_state(dev, task_id) == "running", what="the task to run")

    def running_allocs() -> list[dict[str, Any]]:
        listed = api.get(f"{dev.url}/v1/allocations", params={"job": "shop"}).json()
        return [a for a in listed if a["status"] == "running"]

    allocs = wait_for(lambda: len(found := running_allocs()) == 4 and found, what="4 allocs")
    ui.open("/login")
    assert_accessible(ui.driver)
    ui.screenshot("login")
    ui.login()
    pages = {
        "overview": ("/", "Overview"),
        "tasks": ("/tasks", "Tasks"),
        "task": (f"/tasks/{task_id}", "Task solo"),
        "task-pending": (f"/tasks/{pending}", "Task too-big"),
        "nodes": ("/nodes", "Nodes"),
        "node": (f"/nodes/{dev.name}", f"Node {dev.name}"),
        "jobs": ("/jobs", "Jobs"),
        "job": ("/jobs/shop", "Job shop"),
        "allocation": (f"/allocations/{allocs[0]['id']}", "Allocation shop.web"),
        "topology": ("/topology", "Topology"),
    }
    for name, (path, heading) in pages.items():
        ui.open(path)
        ui.wait_text("h1", heading)
        if name == "task":
            ui.wait_text("#logs", "tick")
        assert ui.driver.find_element(By.ID, "connection").is_displayed() is False
        assert_accessible(ui.driver)
        ui.screenshot(name)
    for node in (dev.name, small.name):
        placed = [a for a in allocs if a["node"] == node]
        card = ui.wait_text(f"section[data-node='{node}']", node)
        assert all(f"shop.web[{a['index']}]" in card for a in placed), (node, card)
        # A memory and a CPU strip, each with a block per task that holds resources there.
        listed = api.get(f"{dev.url}/v1/tasks", params={"node": node}).json()
        on_node = sum(t["state"] not in ("completed", "failed") for t in listed)
        strips = ui.driver.find_elements(By.CSS_SELECTOR, f"section[data-node='{node}'] svg")
        assert [s.get_attribute("aria-label").split(":")[0] for s in strips] == ["Memory", "CPU"]
        for svg in strips:
            assert len(svg.find_elements(By.CSS_SELECTOR, "rect.slot")) == on_node
    ui.driver.set_window_size(*PHONE)
    try:
        for name, path in (("phone-overview", "/"), ("phone-task", f"/tasks/{task_id}")):
            ui.open(path)
            ui.wait_text("h1", "")
            width = ui.driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert width[0] <= width[1], f"{path} scrolls sideways on a phone: {width}"
            ui.screenshot(name)
    finally:
        ui.driver.set_window_size(1280, 900)
    for spec in (task_id, pending):
        api.delete(f"{dev.url}/v1/tasks/{spec}")
    api.delete(f"{dev.url}/v1/jobs/shop")


def test_the_keyboard_reaches_the_skip_link_the_menu_and_the_actions(
    ui: Dashboard, dev: AgentProcess
) -> None:
    ui.login(path=f"/nodes/{dev.name}")
    body = ui.driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    reached = []
    for _ in range(12):
        active = ui.driver.switch_to.active_element
        reached.append(active.text or active.get_attribute("id") or active.tag_name)
        active.send_keys(Keys.TAB)
    assert reached[0] == "Skip to content"
    for wanted in ("Overview", "Jobs", "Tasks", "Nodes", "Topology", "Log out"):
        assert wanted in reached, reached
    assert any("Drain" in r for r in reached), reached


def test_a_new_cluster_shows_empty_states_and_a_lost_manager_plainly(
    driver: WebDriver, docker_engine: None, tmp_path: Path
) -> None:
    agent = start_dev(tmp_path)
    try:
        ui = Dashboard(driver, agent.url)
        driver.delete_all_cookies()
        ui.login(path="/jobs")
        ui.wait_text(".empty", "No jobs yet")
        ui.open("/tasks")
        ui.wait_text(".empty", "No tasks yet")
        ui.open("/")
        ui.wait_text("#h-tasks + .empty", "No tasks yet: run one with cube run.")
        ui.mark()
        agent.kill()
        ui.wait_text("#connection", "Lost the connection to the manager")
        assert ui.marked()
    finally:
        stop_dev(agent)
        driver.delete_all_cookies()
