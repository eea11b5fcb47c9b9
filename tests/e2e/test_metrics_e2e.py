"""``GET /metrics`` of real agents: who may read it, what it says about real containers,
and a real Prometheus server (Debian's ``prometheus``) scraping a ``cube dev``."""

from __future__ import annotations

import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.cli import cube, ok
from tests.support.engine import IMAGE
from tests.support.paths import README
from tests.support.ports import free_port
from tests.support.scrape import scrape, value
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

PROMETHEUS = "/usr/bin/prometheus"


def worker_url(dev: AgentProcess) -> str:
    return f"http://127.0.0.1:{dev.port + 1}"


def metrics_token(dev: AgentProcess, tmp_path: Path) -> str:
    """The read-only token ``cube dev`` wrote in its manager's data dir."""
    return (tmp_path / dev.name / "manager" / "metrics-token").read_text().strip()


def status(method: str, url: str, token: str | None, **kwargs: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, url, headers=headers, timeout=10, **kwargs).status_code


def submit(dev: AgentProcess, name: str, **spec: Any) -> str:
    response = api.post(f"{dev.url}/v1/tasks", json={"name": name, "image": IMAGE, **spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- who may read it ----------------------------------------------------------------------------
def test_metrics_need_a_token_and_the_metrics_token_opens_nothing_else(
    start_dev: Any, tmp_path: Path
) -> None:
    dev = start_dev()
    reader = metrics_token(dev, tmp_path)
    token_file = tmp_path / dev.name / "manager" / "metrics-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    for url in (dev.url, worker_url(dev)):
        assert status("GET", f"{url}/metrics", None) == 401
        assert status("GET", f"{url}/metrics", "not-a-token-of-this-cluster") == 401
        assert status("GET", f"{url}/metrics", reader) == 200
        assert status("GET", f"{url}/metrics", api.TOKEN) == 200  # the cluster token too
        assert status("GET", f"{url}/v1/tasks", reader) == 403
    spec = {"name": "nope", "image": IMAGE}
    assert status("POST", f"{dev.url}/v1/tasks", reader, json=spec) == 403
    assert status("POST", f"{dev.url}/v1/nodes/{dev.name}/drain", reader) == 403
    assert api.get(f"{dev.url}/v1/tasks").json() == []


def test_metrics_open_serves_metrics_without_a_token_and_nothing_more(start_dev: Any) -> None:
    dev = start_dev("--metrics-open")
    for url in (dev.url, worker_url(dev)):
        assert "cube_" in scrape(url, token=None)
        assert status("GET", f"{url}/v1/tasks", None) == 401


def test_a_worker_takes_the_metrics_token_it_is_given(start_worker: Any) -> None:
    reader = secrets.token_urlsafe(32)
    worker = start_worker("--metrics-token", reader)
    text = scrape(worker.url, token=reader)
    assert value(text, "cube_worker_containers_running", node=worker.name) == 0
    assert status("GET", f"{worker.url}/v1/tasks", reader) == 403
    assert status("GET", f"{worker.url}/metrics", None) == 401
    scrape(worker.url, token=api.TOKEN)  # its own token (CUBE_WORKER_TOKEN in the tests)


def test_a_worker_finds_the_metrics_token_of_its_manager_on_this_machine(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager = start_manager()
    reader = (tmp_path / manager.name / "metrics-token").read_text().strip()
    worker = start_worker("--manager", manager.url)
    assert value(scrape(worker.url, token=reader), "cube_worker_containers_running") == 0
    assert value(scrape(manager.url, token=reader), "cube_nodes", state="ready") is not None


def test_the_metrics_token_from_the_environment_and_metrics_open_on_each_agent(
    start_manager: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = secrets.token_urlsafe(32)
    monkeypatch.setenv("CUBE_METRICS_TOKEN", reader)
    manager = start_manager()
    scrape(manager.url, token=reader)
    assert status("GET", f"{manager.url}/v1/nodes", reader) == 403
    monkeypatch.delenv("CUBE_METRICS_TOKEN")
    for agent in (start_manager("--metrics-open"), start_worker("--metrics-open")):
        assert "cube_http_request_duration_seconds" in scrape(agent.url, token=None)
        assert status("GET", f"{agent.url}/v1/tasks", None) == 401


# --- what it says -------------------------------------------------------------------------------
def test_the_route_label_is_the_template_a_client_reads_without_converters(
    start_manager: Any,
) -> None:
    """``/v1/jobs/{job_id}`` is routed with a converter (``{job_id:jobid}``, which keeps
    ``/v1/jobs/plan`` apart); the label shows the template as the API documents it."""
    manager = start_manager()
    assert api.get(f"{manager.url}/v1/jobs/nosuch").status_code == 404
    text = scrape(manager.url)
    labels = {"method": "GET", "status": "404"}
    route = "/v1/jobs/{job_id}"
    assert value(text, "cube_http_request_duration_seconds_count", route=route, **labels) == 1
    assert ":jobid}" not in text


def test_metric_values_follow_the_cluster(start_dev: Any) -> None:
    dev = start_dev()
    wait_for(lambda: value(scrape(dev.url), "cube_nodes", state="ready") == 1, what="node ready")
    flaky = submit(
        dev,
        "flaky",
        command=["sh", "-c", "exit 3"],
        restart={"policy": "on-failure", "max_attempts": 2, "delay": "100ms"},
    )
    sick = submit(
        dev,
        "sick",
        command=["sleep", "600"],
        health={"http": {"port": 9, "path": "/"}, "interval": "500ms", "failure_threshold": 100},
    )

    def restarts() -> float | None:
        text = scrape(worker_url(dev))
        return value(text, "cube_worker_task_restarts_total", task=flaky, name="flaky")

    wait_for(lambda: restarts() == 2, timeout=60, what="two restarts of the flaky task")

    def gave_up() -> bool:
        task = api.get(f"{dev.url}/v1/tasks/{flaky}").json()
        return task["restarts"] == 2 and "gave up" in task["reason"]

    wait_for(gave_up, timeout=30, what="the flaky task to fail for good")
    assert value(scrape(dev.url), "cube_tasks", state="failed") == 1
    text = scrape(worker_url(dev))
    starts = value(text, "cube_worker_container_start_duration_seconds_count")
    assert (starts or 0) >= 3  # flaky: 3 starts; sick: 1

    def health_failures() -> float | None:
        return value(scrape(worker_url(dev)), "cube_worker_health_check_failures_total", task=sick)

    wait_for(health_failures, timeout=30, what="a failed health check to be counted")
    assert value(scrape(dev.url), "cube_task_state", task=sick, state="scheduled") == 1

    text = scrape(dev.url)
    assert value(text, "cube_scheduling_decisions_total", outcome="placed") == 2
    assert value(text, "cube_scheduling_decision_duration_seconds_count") == 2
    assert (value(text, "cube_collection_pass_duration_seconds_count") or 0) >= 1
    assert (value(text, "cube_job_reconcile_pass_duration_seconds_count") or 0) >= 1
    assert (value(text, "cube_node_reconcile_duration_seconds_count") or 0) >= 1
    worker_calls = value(
        scrape(worker_url(dev)), "cube_http_request_duration_seconds_count", route="/v1/stats"
    )
    assert (worker_calls or 0) >= 1  # the manager's polls
    route = {"route": "/v1/tasks/{task_id}", "method": "GET", "status": "200"}
    assert (value(text, "cube_http_request_duration_seconds_count", **route) or 0) >= 1
    assert (
        value(text, "cube_http_request_duration_seconds_count", route=f"/v1/tasks/{flaky}") is None
    )

    assert api.post(f"{dev.url}/v1/nodes/{dev.name}/drain").status_code == 200
    text = scrape(dev.url)
    assert value(text, "cube_nodes", state="draining") == 1
    assert value(text, "cube_nodes", state="ready") == 0
    # The sick task is moved off the drained node, and waits: nowhere else to go.
    wait_for(lambda: value(scrape(dev.url), "cube_tasks_pending") == 1, what="a Pending task")
    text = scrape(dev.url)
    assert value(text, "cube_task_state", task=sick, state="pending") == 1
    assert (value(text, "cube_scheduling_decisions_total", outcome="unplaceable") or 0) >= 1


# --- a real Prometheus ----------------------------------------------------------------------------


def readme_prometheus_yml() -> str:
    """The README's minimal prometheus.yml, as written there."""
    text = README.read_text()
    start = text.index("```yaml\nglobal:") + len("```yaml\n")
    return text[start : text.index("```", start)]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Factory: run Debian's Prometheus with a config on a free loopback port; its URL."""
    if shutil.which(PROMETHEUS) is None:
        pytest.fail(f"{PROMETHEUS} is missing (scripts/setup.sh installs the prometheus package)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: str) -> str:
        (tmp_path / "prometheus.yml").write_text(config)
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=30, what="prometheus to be ready")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_a_dev_cluster_and_sees_the_task_running(
    start_dev: Any, prometheus: Any, tmp_path: Path
) -> None:
    dev = start_dev()
    token_file = tmp_path / dev.name / "manager" / "metrics-token"
    # The README's file, for this cluster's ports and data dir, scraping every second.
    config = readme_prometheus_yml()
    for written, here in (
        ("/root/.local/share/cube/dev/manager/metrics-token", str(token_file)),
        ("127.0.0.1:5555", f"127.0.0.1:{dev.port}"),
        ("127.0.0.1:5556", f"127.0.0.1:{dev.port + 1}"),
        ("scrape_interval: 15s", "scrape_interval: 1s"),
    ):
        assert written in config
        config = config.replace(written, here)
    server = prometheus(config)
    out = ok(
        cube(
            "run",
            "--name",
            "scraped",
            "--image",
            IMAGE,
            "--wait",
            "--",
            "sleep",
            "600",
            addr=dev.url,
        )
    )
    task_id = out.splitlines()[0]

    def running() -> list[dict[str, Any]]:
        return query(server, f'cube_task_state{{task="{task_id}", state="running"}} == 1')

    [series] = wait_for(running, timeout=60, what="Prometheus to see the task Running")
    assert series["metric"]["name"] == "scraped"
    assert series["metric"]["node"] == dev.name
    # Both targets up, and the worker's side agrees.
    targets = {f"127.0.0.1:{dev.port}", f"127.0.0.1:{dev.port + 1}"}

    def both_up() -> bool:
        return {r["metric"]["instance"] for r in query(server, "up == 1")} == targets

    wait_for(both_up, what="both targets up")
    wait_for(
        lambda: query(server, f'cube_worker_containers_running{{node="{dev.name}"}} == 1'),
        what="the worker's running containers",
    )
