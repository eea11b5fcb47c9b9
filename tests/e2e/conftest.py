"""Fixtures of the end-to-end tests: a real Docker engine, real agents started as processes,
and no container of the session left behind.

Docker tests fail (never skip) when the engine or the test image is missing:
``bash scripts/setup.sh`` provides both.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import AgentGroup, AgentProcess
from tests.support.engine import (
    IMAGE,
    SESSION,
    docker,
)
from tests.support.ports import free_port_pair


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine that answers, and the test image. Fails loudly if either is missing."""
    info = subprocess.run(["docker", "version"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"no Docker engine answers (run scripts/setup.sh): {info.stderr.strip()}")
    image = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=60)
    if image.returncode != 0:
        pytest.fail(f"test image {IMAGE} is missing (run scripts/build-image.sh)")


@pytest.fixture(scope="session", autouse=True)
def _remove_session_containers() -> Iterator[None]:
    """Whatever happens, no container of this test session survives it."""
    yield
    if subprocess.run(["docker", "version"], capture_output=True, timeout=60).returncode == 0:
        ids = docker("ps", "-aq", "--filter", "label=cube.managed-by=cube", check=False).split()
        for cid in ids:
            worker = docker(
                "inspect", "-f", '{{index .Config.Labels "cube.worker"}}', cid, check=False
            )
            if worker.startswith(f"t{SESSION}-"):
                docker("rm", "-f", cid, check=False)
        for row in docker(
            "network",
            "ls",
            "--filter",
            "label=cube.managed-by=cube",
            "--format",
            '{{.Name}} {{.Label "cube.worker"}}',
            check=False,
        ).splitlines():
            name, _, worker = row.partition(" ")
            if worker.startswith(f"t{SESSION}-"):
                docker("network", "rm", name, check=False)


@pytest.fixture
def start_worker(docker_engine: None, tmp_path: Path) -> Iterator[Any]:
    """Factory: start a real ``cube worker`` process; killed and its containers removed after."""
    agents = AgentGroup(tmp_path, "worker", prefix="w")
    yield agents.start
    agents.close()


@pytest.fixture
def start_manager(tmp_path: Path) -> Iterator[Any]:
    """Factory: start a real ``cube manager`` process; killed after the test.

    It polls its nodes every 0.2s so that tests see changes quickly. Restart one with
    ``agent.kill(); agent.start()``: same port, same data directory. Workers join it
    with ``start_worker("--manager", manager.url)``.
    """
    agents = AgentGroup(tmp_path, "manager", prefix="m", named=False, runs_tasks=False)

    def start(
        *extra: str,
        scheduler: str = "round-robin",
        name: str | None = None,
        port: int | None = None,
    ) -> AgentProcess:
        options = ["--scheduler", scheduler, "--collect-interval", "0.2"]
        return agents.start(*options, *extra, name=name, port=port)

    yield start
    agents.close()


@pytest.fixture
def start_dev(docker_engine: None, tmp_path: Path) -> Iterator[Any]:
    """Factory: start a real ``cube dev`` (a manager on the returned agent's port, its
    worker on the next one); killed and its containers removed after the test."""
    agents = AgentGroup(tmp_path, "dev", prefix="d", ports=free_port_pair)

    def start(*extra: str, name: str | None = None) -> AgentProcess:
        return agents.start("--collect-interval", "0.2", *extra, name=name)

    yield start
    agents.close()
