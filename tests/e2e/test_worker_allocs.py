"""Job allocations on a real worker process and real Docker: tasks posted straight to the
worker's API with an ``alloc``, one request per task, as the manager sends them."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from cube.errors import ContainerError
from cube.runtime import DockerRuntime
from cube.task.model import Task
from cube.task.spec import AllocRef, Protocol, TaskSpec
from cube.worker.alloc_runner import AllocRunner
from cube.worker.container import container_config
from cube.worker.ports import HostPorts, Probe, probe_port
from tests.support import api
from tests.support.engine import (
    IMAGE,
    containers_of,
    docker,
    networks_of,
    remove_containers,
    remove_networks,
    unique_name,
)
from tests.support.invariants import assert_converges
from tests.support.waiting import wait_for
from tests.support.worker_http import post_task, task_of, wait_state

pytestmark = pytest.mark.docker

#: The API server: busybox httpd serving one page that names its allocation.
API_COMMAND = 'mkdir /w && echo "api of $CUBE_ALLOC_ID" > /w/index.html && httpd -f -p 8000 -h /w'

#: What the proxy answers when it cannot reach the API.
UNREACHABLE = "UNREACHABLE"

#: The reverse proxy: httpd with a CGI script that fetches the API by its task name. It
#: first prints Cube's variables, so the test reads them in its log.
PROXY_COMMAND = (
    "env | grep ^CUBE_ | sort; mkdir -p /p/cgi-bin"
    " && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
    "wget -q -O - http://api:8000/ || echo UNREACHABLE\\n' > /p/cgi-bin/api"
    " && chmod +x /p/cgi-bin/api && httpd -f -p 8080 -h /p"
)


def alloc_ref(job: str = "shop", index: int = 0, size: int = 2) -> dict[str, Any]:
    """An allocation of a group of ``size`` tasks (the shop's: an API and its proxy)."""
    return {"id": uuid.uuid4().hex, "job": job, "group": "web", "index": index, "size": size}


def member(alloc: dict[str, Any], name: str, command: str, **extra: Any) -> dict[str, Any]:
    """One task of ``alloc``, with the ID the manager would give it."""
    return {
        "id": f"{alloc['id']}-{name}",
        "alloc": alloc,
        "name": name,
        "image": IMAGE,
        "command": ["sh", "-c", command],
        "stop_timeout": "1s",
        **extra,
    }


def run_shop(
    url: str, alloc: dict[str, Any], **proxy_extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post the API and its proxy (on a host port the worker chooses); both running."""
    proxy = member(
        alloc, "proxy", PROXY_COMMAND, ports=[{"container": 8080, "host": 0}], **proxy_extra
    )
    for spec in (member(alloc, "api", API_COMMAND), proxy):
        response = post_task(url, spec)
        assert response.status_code == 201, response.text
    return (
        wait_state(url, f"{alloc['id']}-api", "running"),
        wait_state(url, f"{alloc['id']}-proxy", "running"),
    )


def through_proxy(port: int, api_expected: bool = True) -> str:
    """What the proxy published on ``port`` answers (the API's page, or UNREACHABLE).

    A running API container may not listen yet (its shell writes the page first), so
    when the API is expected the proxy is asked again until it reaches it."""
    return page(port, "/cgi-bin/api", final=lambda text: not api_expected or text != UNREACHABLE)


def page(port: int, path: str = "/", final: Callable[[str], bool] = lambda _: True) -> str:
    """The page at ``path`` on the host's ``port``, once something answers there with a
    page ``final`` accepts."""

    def answer() -> str | None:
        try:
            response = api.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        except httpx.HTTPError:
            return None
        text = response.text.strip()
        return text if response.status_code == 200 and final(text) else None

    return str(wait_for(answer, timeout=30, what=f"an answer on port {port}"))


def logs(url: str, task_id: str) -> str:
    return api.get(f"{url}/v1/tasks/{task_id}/logs", timeout=10).text


def net_label(alloc: dict[str, Any]) -> str:
    return f"cube.alloc-id={alloc['id']}"


def test_an_allocations_tasks_reach_each_other_by_name_and_know_their_place(
    start_worker: Any,
) -> None:
    worker = start_worker()
    alloc = alloc_ref(index=2)
    # Running only once healthy: the worker's probe reaches it on the allocation's network.
    health = {"http": {"port": 8080, "path": "/cgi-bin/api"}, "interval": "1s"}
    api_task, proxy = run_shop(worker.url, alloc, health=health)
    assert proxy["health"] == "healthy"

    [published] = proxy["ports"]
    assert published["container"] == 8080
    assert published["host"] > 0
    assert through_proxy(published["host"]) == f"api of {alloc['id']}"

    printed = logs(worker.url, proxy["id"]).splitlines()
    assert {
        "CUBE_JOB=shop",
        "CUBE_GROUP=web",
        "CUBE_ALLOC_INDEX=2",
        f"CUBE_ALLOC_ID={alloc['id']}",
        "CUBE_TASK=proxy",
        f"CUBE_PORT_8080={published['host']}",
    } <= set(printed)

    [network] = networks_of(net_label(alloc))
    inspect = json.loads(docker("inspect", proxy["container_id"]))[0]
    labels = inspect["Config"]["Labels"]
    assert (labels["cube.alloc-id"], labels["cube.job"], labels["cube.group"]) == (
        alloc["id"],
        "shop",
        "web",
    )
    assert list(inspect["NetworkSettings"]["Networks"]) == [network]
    api_net = json.loads(docker("inspect", api_task["container_id"]))[0]["NetworkSettings"]
    assert "api" in api_net["Networks"][network]["Aliases"]
    net = json.loads(docker("network", "inspect", network))[0]
    assert net["Labels"]["cube.worker"] == worker.name
    assert net["Labels"]["cube.managed-by"] == "cube"
    assert_converges(worker.url, [worker.name], {api_task["id"]: "running", proxy["id"]: "running"})

    # The manager moves the tasks away one by one: the network stays while one runs.
    assert api.delete(f"{worker.url}/v1/tasks/{api_task['id']}", timeout=30).status_code == 200
    assert networks_of(net_label(alloc)) == [network]
    assert api.delete(f"{worker.url}/v1/tasks/{proxy['id']}", timeout=30).status_code == 200
    assert networks_of(net_label(alloc)) == []
    assert_converges(worker.url, [worker.name], {})


def test_an_allocation_of_one_task_has_no_network_but_knows_its_place_and_port(
    start_worker: Any,
) -> None:
    worker = start_worker()
    alloc = alloc_ref(size=1)
    spec = member(
        alloc,
        "web",
        "env | grep ^CUBE_ | sort; mkdir /w && echo solo > /w/index.html && httpd -f -p 80 -h /w",
        ports=["80"],
    )
    assert post_task(worker.url, spec).status_code == 201
    task = wait_state(worker.url, spec["id"], "running")

    [published] = task["ports"]
    assert published["host"] > 0
    assert page(published["host"]) == "solo"
    assert {
        "CUBE_JOB=shop",
        "CUBE_GROUP=web",
        "CUBE_TASK=web",
        f"CUBE_ALLOC_ID={alloc['id']}",
        f"CUBE_PORT_80={published['host']}",
    } <= set(logs(worker.url, task["id"]).splitlines())
    inspect = json.loads(docker("inspect", task["container_id"]))[0]
    assert list(inspect["NetworkSettings"]["Networks"]) == ["bridge"]
    assert not inspect["NetworkSettings"]["Networks"]["bridge"]["Aliases"]
    assert inspect["Config"]["Labels"]["cube.alloc-size"] == "1"
    assert networks_of(net_label(alloc)) == []

    worker.kill()  # rebuilt from the store: still one of one, still without a network
    worker.start()
    assert task_of(worker.url, task["id"])["alloc"] == alloc
    assert networks_of(net_label(alloc)) == []
    assert api.delete(f"{worker.url}/v1/tasks/{task['id']}", timeout=30).status_code == 200
    assert_converges(worker.url, [worker.name], {task["id"]: "completed"})


def test_a_task_on_no_network_stays_there_and_still_knows_its_place(start_worker: Any) -> None:
    worker = start_worker()
    alloc = alloc_ref()
    spec = member(alloc, "batch", "env | grep ^CUBE_ | sort", network="none", ports=["8080"])
    post_task(worker.url, spec)
    task = wait_state(worker.url, spec["id"], "completed")

    assert "CUBE_TASK=batch" in logs(worker.url, task["id"]).splitlines()
    assert "CUBE_PORT" not in logs(worker.url, task["id"])
    inspect = json.loads(docker("inspect", task["container_id"]))[0]
    assert inspect["HostConfig"]["NetworkMode"] == "none"
    assert inspect["Config"]["Labels"]["cube.alloc-id"] == alloc["id"]
    assert networks_of(net_label(alloc)) == []


def test_the_same_task_id_in_another_allocation_is_a_conflict(start_worker: Any) -> None:
    worker = start_worker()
    alloc = alloc_ref()
    spec = member(alloc, "api", "sleep 600")
    assert post_task(worker.url, spec).status_code == 201
    assert post_task(worker.url, spec).status_code == 200  # the same again: a no-op
    moved = post_task(worker.url, {**spec, "alloc": {**alloc, "index": 1}})
    assert moved.status_code == 409
    assert "another allocation" in moved.json()["message"]
    assert task_of(worker.url, spec["id"])["alloc"] == alloc


def test_a_killed_worker_adopts_its_allocation_and_duplicates_nothing(start_worker: Any) -> None:
    worker = start_worker()
    alloc = alloc_ref()
    api_task, proxy = run_shop(worker.url, alloc)
    [network] = networks_of(net_label(alloc))
    network_id = docker("network", "inspect", "-f", "{{.Id}}", network)

    worker.kill()
    worker.start()

    for before in (api_task, proxy):
        after = task_of(worker.url, before["id"])
        assert (after["state"], after["container_id"]) == ("running", before["container_id"])
        assert after["alloc"] == alloc
        assert containers_of(f"cube.task-id={before['id']}") == [before["container_id"]]
    assert networks_of(net_label(alloc)) == [network]
    assert docker("network", "inspect", "-f", "{{.Id}}", network) == network_id
    assert "adopted allocation network" in worker.logs()
    assert through_proxy(proxy["ports"][0]["host"]) == f"api of {alloc['id']}"
    assert_converges(worker.url, [worker.name], {api_task["id"]: "running", proxy["id"]: "running"})

    for task in (api_task, proxy):  # the restarted worker still owns the network
        api.delete(f"{worker.url}/v1/tasks/{task['id']}", timeout=30)
    assert networks_of(net_label(alloc)) == []


def test_a_restarted_task_rejoins_its_network_on_the_same_host_port(start_worker: Any) -> None:
    worker = start_worker()
    alloc = alloc_ref()
    _, proxy = run_shop(worker.url, alloc, restart={"policy": "on-failure", "delay": "100ms"})
    through_proxy(proxy["ports"][0]["host"])

    docker("kill", proxy["container_id"])

    def restarted() -> dict[str, Any] | None:
        task = task_of(worker.url, proxy["id"])
        return task if task["state"] == "running" and task["restarts"] == 1 else None

    again = wait_for(restarted, what="the proxy's restart")
    assert again["container_id"] != proxy["container_id"]
    assert again["ports"] == proxy["ports"]
    assert through_proxy(again["ports"][0]["host"]) == f"api of {alloc['id']}"
    assert len(networks_of(net_label(alloc))) == 1


def test_an_orphaned_network_of_this_worker_is_removed_at_start_and_others_kept(
    start_worker: Any,
) -> None:
    name = unique_name()
    mine = f"{name}-orphan"
    other_worker = unique_name()
    theirs = f"{other_worker}-net"
    for network, owner in ((mine, name), (theirs, other_worker)):
        docker(
            "network",
            "create",
            "--label",
            "cube.managed-by=cube",
            "--label",
            f"cube.worker={owner}",
            "--label",
            f"cube.alloc-id={uuid.uuid4().hex}",
            network,
        )
    try:
        worker = start_worker(name=name)
        assert networks_of(f"cube.worker={worker.name}") == []
        assert networks_of(f"cube.worker={other_worker}") == [theirs]
    finally:
        remove_networks(f"cube.worker={other_worker}")
        remove_networks(f"cube.worker={name}")


def test_the_network_of_an_allocation_whose_tasks_ended_while_away_goes_at_restart(
    start_worker: Any,
) -> None:
    worker = start_worker()
    alloc = alloc_ref()
    api_task, proxy = run_shop(worker.url, alloc)
    worker.kill()
    docker("rm", "-f", api_task["container_id"], proxy["container_id"])
    assert len(networks_of(net_label(alloc))) == 1

    worker.start()

    for task in (api_task, proxy):
        assert "container disappeared" in wait_state(worker.url, task["id"], "failed")["reason"]
    wait_for(lambda: networks_of(net_label(alloc)) == [], what="the network to go")
    assert_converges(worker.url, [worker.name], {api_task["id"]: "failed", proxy["id"]: "failed"})


def test_two_allocations_on_one_worker_cannot_see_each_other(start_worker: Any) -> None:
    worker = start_worker()
    first, second = alloc_ref(index=0), alloc_ref(index=1)
    _, proxy = run_shop(worker.url, first)
    assert through_proxy(proxy["ports"][0]["host"]) == f"api of {first['id']}"

    lonely = member(second, "proxy", PROXY_COMMAND, ports=[{"container": 8080, "host": 0}])
    post_task(worker.url, lonely)
    other = wait_state(worker.url, lonely["id"], "running")
    assert other["ports"][0]["host"] != proxy["ports"][0]["host"]
    assert through_proxy(other["ports"][0]["host"], api_expected=False) == UNREACHABLE
    assert len(networks_of(net_label(first))) == len(networks_of(net_label(second))) == 1


# --- the race for a chosen host port, in process against the real engine ------------------


@pytest.fixture
async def engine(docker_engine: None) -> AsyncIterator[DockerRuntime]:
    runtime = DockerRuntime()
    yield runtime
    await runtime.close()


@pytest.fixture
def squatter() -> Iterator[int]:
    """A port some other process listens on, on every address."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield int(s.getsockname()[1])


def alloc_runner(runtime: DockerRuntime, node: str, probe: Probe) -> AllocRunner:
    ref = AllocRef.model_validate(alloc_ref())
    return AllocRunner(
        ref, node=node, runtime=runtime, ports=HostPorts(probe=probe), live=lambda _: True
    )


async def test_a_port_taken_between_its_choice_and_the_start_is_chosen_again(
    engine: DockerRuntime, squatter: int
) -> None:
    offered: list[int] = []

    def late_probe(port: int, protocol: Protocol) -> int | None:
        # The first choice looks free and is taken by the time the engine binds it.
        chosen = squatter if not offered else probe_port(port, protocol)
        offered.append(chosen or 0)
        return chosen

    node = unique_name()
    runner = alloc_runner(engine, node, late_probe)
    spec = TaskSpec(name="proxy", image=IMAGE, command=["sleep", "60"], ports=["8080"])
    task = Task(spec=spec, node=node, alloc=runner.alloc)
    try:
        info = await runner.launcher(task)(container_config(task, node), None)
        env = json.loads(docker("inspect", info.id))[0]["Config"]["Env"]
    finally:
        remove_containers(f"cube.worker={node}")
        await engine.remove_network(runner.network)

    assert offered[0] == squatter
    [published] = info.ports
    assert published.host not in (squatter, 0)
    assert f"CUBE_PORT_8080={published.host}" in env


async def test_a_pinned_port_that_is_taken_fails_the_start_and_leaves_no_container(
    engine: DockerRuntime, squatter: int
) -> None:
    node = unique_name()
    runner = alloc_runner(engine, node, probe_port)
    spec = TaskSpec(name="proxy", image=IMAGE, command=["sleep", "60"], ports=[f"{squatter}:80"])
    task = Task(spec=spec, node=node, alloc=runner.alloc)
    try:
        with pytest.raises(ContainerError, match="address already in use"):
            await runner.launcher(task)(container_config(task, node), None)
        assert containers_of(f"cube.worker={node}") == []
    finally:
        remove_containers(f"cube.worker={node}")
        await engine.remove_network(runner.network)
