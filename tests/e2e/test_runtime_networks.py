"""Private networks through the runtime seam: the Docker engine and the fake behave alike.

An allocation's tasks share a user-defined network and find each other by name there;
these tests hold the runtime to that promise before anything builds on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from cube.errors import ContainerError
from cube.runtime import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    ContainerConfig,
    ContainerRuntime,
    DockerRuntime,
    FakeRuntime,
)
from tests.support.engine import IMAGE, docker, unique_name


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "fake"])
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[ContainerRuntime]:
    engine: ContainerRuntime
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
        engine = DockerRuntime()
    else:
        engine = FakeRuntime()
    yield engine
    await engine.close()


@pytest.fixture
def labels() -> dict[str, str]:
    """Labels no other test's networks carry, so listings see only this test's."""
    return {LABEL_MANAGED_BY: MANAGED_BY, "cube.test": unique_name("net")}


@pytest.fixture
def network(labels: dict[str, str]) -> Iterator[str]:
    """The name of the test's network; whatever the test left in the engine goes with it."""
    name = labels["cube.test"]
    yield name
    for row in docker("ps", "-aq", "--filter", f"label=cube.test={name}", check=False).split():
        docker("rm", "-f", row, check=False)
    for row in docker("network", "ls", "-q", "--filter", f"label=cube.test={name}").split():
        docker("network", "rm", row, check=False)


async def test_ensure_network_is_idempotent_even_when_raced(
    runtime: ContainerRuntime, labels: dict[str, str], network: str
) -> None:
    ids = await asyncio.gather(*(runtime.ensure_network(network, labels=labels) for _ in range(5)))
    assert len(set(ids)) == 1
    listed = await runtime.networks(labels)
    assert [(n.id, n.name) for n in listed] == [(ids[0], network)]
    assert listed[0].labels["cube.test"] == network


async def test_a_network_in_use_is_kept_and_a_removed_one_is_gone(
    runtime: ContainerRuntime, labels: dict[str, str], network: str
) -> None:
    await runtime.ensure_network(network, labels=labels)
    config = ContainerConfig(
        name=f"{network}-c", image=IMAGE, command=["sleep", "60"], labels=labels, network=network
    )
    container = await runtime.run(config)
    with pytest.raises(ContainerError, match="active endpoints"):
        await runtime.remove_network(network)
    assert [n.name for n in await runtime.networks(labels)] == [network]

    await runtime.remove(container.id)
    await runtime.remove_network(network)
    assert await runtime.networks(labels) == []
    await runtime.remove_network(network)  # gone already: a no-op, not an error


async def test_a_network_whose_containers_exited_can_be_removed(
    runtime: ContainerRuntime, labels: dict[str, str], network: str
) -> None:
    """An allocation's network goes when its tasks ended for good, though their exited
    containers are kept for their logs: they hold no endpoint on it any more."""
    await runtime.ensure_network(network, labels=labels)
    config = ContainerConfig(
        name=f"{network}-c", image=IMAGE, command=["sleep", "60"], labels=labels, network=network
    )
    container = await runtime.run(config)
    await runtime.stop(container.id, grace=0)

    await runtime.remove_network(network)

    assert await runtime.networks(labels) == []
    assert await runtime.inspect(container.id) is not None
    await runtime.remove(container.id)


@pytest.mark.docker
async def test_containers_on_a_network_reach_each_other_by_alias(
    labels: dict[str, str], network: str
) -> None:
    runtime = DockerRuntime()

    def shell(name: str, script: str, *aliases: str) -> ContainerConfig:
        return ContainerConfig(
            name=f"{network}-{name}",
            image=IMAGE,
            command=["sh", "-c", script],
            labels=labels,
            network=network,
            aliases=list(aliases),
        )

    try:
        await runtime.ensure_network(network, labels=labels)
        await runtime.run(
            shell("api", "echo reached-api > /tmp/index.html && httpd -f -p 8000 -h /tmp", "api")
        )
        # The client retries: httpd may need a moment before it listens.
        fetch = "for i in $(seq 50); do wget -qO- http://api:8000/ && exit; sleep 0.1; done; false"
        client = await runtime.run(shell("client", fetch))
        for _ in range(150):
            info = await runtime.inspect(client.id)
            if info is not None and not info.running:
                break
            await asyncio.sleep(0.1)
        assert info is not None
        assert info.exit_code == 0, info
        output = b"".join([chunk async for chunk in runtime.logs(client.id)])
        assert b"reached-api" in output
    finally:
        await runtime.close()
