"""Shared fixtures: a real Docker engine, real worker processes, and cleanup by label.

Docker tests fail (never skip) when the engine or the test image is missing:
``bash scripts/setup.sh`` provides both.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests import api
from tests.manager_stores import OnSqlite, Refused, refused_manager, sqlite_manager

# Property tests judge correctness, not speed: on a busy 2-core CI machine a slow example
# is not a failing one.
settings.register_profile(
    "cube", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("cube")

IMAGE = "cube-busybox:latest"
SESSION = uuid.uuid4().hex[:6]
_counter = iter(range(1_000_000))


def unique_name(prefix: str = "w") -> str:
    """Names that tie every container a test creates to this test session."""
    return f"t{SESSION}-{prefix}{next(_counter)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def refused() -> AsyncIterator[Refused]:
    """A manager with node n1 on a store that refuses its writes while ``refused.store.full``
    (tests/manager_stores.py); closed after the test."""
    made = refused_manager()
    yield made
    await made.manager.close()


@pytest.fixture
async def on_sqlite(tmp_path: Path) -> AsyncIterator[OnSqlite]:
    """A manager with node n1 on a SQLite store whose write lock a test may hold
    (tests/manager_stores.py); closed after the test."""
    made = sqlite_manager(tmp_path / "cube.db")
    yield made
    await made.manager.close()
    made.store.close()


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    """A TCP socket listening on every address, held by the test as a process outside Cube
    would hold it. Its port: ``held_port.getsockname()[1]``; ``close()`` frees it."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s


def free_port_pair() -> int:
    """A port that is free, and the next one too (``cube dev`` puts its worker on port + 1).

    Picked below Linux's ephemeral range (32768 and up): a port + 1 in that range may be
    taken by any outgoing connection between the check and the bind.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two free ports in a row below the ephemeral range")


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def containers_of(label: str, *, running_only: bool = False) -> list[str]:
    """IDs of containers carrying ``label`` (``key=value``), as Docker itself sees them."""
    args = ["ps", "-q", "--no-trunc", "--filter", f"label={label}"]
    if not running_only:
        args.insert(1, "-a")
    return docker(*args).split()


def remove_containers(label: str) -> None:
    ids = containers_of(label)
    if ids:
        docker("rm", "-f", *ids, check=False)


def networks_of(label: str) -> list[str]:
    """Names of networks carrying ``label`` (``key=value``), as Docker itself sees them."""
    return docker("network", "ls", "--filter", f"label={label}", "--format", "{{.Name}}").split()


def remove_networks(label: str) -> None:
    for name in networks_of(label):
        docker("network", "rm", name, check=False)


def wait_for(
    predicate: Any, *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate} (last: {last!r})"
    )


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
def _private_data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test session's own ``CUBE_DATA_DIR``: agents and CLIs it starts neither read
    the token files of a cluster the user runs on this machine (the README's quickstart)
    nor leave their address pointers in the user's data dir."""
    saved = os.environ.get("CUBE_DATA_DIR")
    os.environ["CUBE_DATA_DIR"] = str(tmp_path_factory.mktemp("cube-data-root"))
    yield
    if saved is None:
        os.environ.pop("CUBE_DATA_DIR", None)
    else:
        os.environ["CUBE_DATA_DIR"] = saved


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


@dataclass
class AgentProcess:
    """A ``cube`` agent (worker or manager) running as a real process."""

    args: list[str]
    port: int
    log_path: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cube", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log_path.read_text()}")
            try:
                return api.get(f"{self.url}/v1/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=timeout, what=f"{self.name} to answer /v1/health")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM, and wait for a clean exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class _Agents:
    """The ``cube COMMAND`` processes one fixture starts: each answers on its own port, keeps
    its data in ``tmp_path/NAME`` and logs to ``tmp_path/NAME.log``; :meth:`close` kills
    them (no cleanup, as in a crash) and removes the containers and networks of those that
    run tasks."""

    def __init__(
        self,
        tmp_path: Path,
        command: str,
        *,
        prefix: str,
        named: bool = True,
        ports: Callable[[], int] = free_port,
        runs_tasks: bool = True,
    ) -> None:
        self.tmp_path, self.command, self.prefix = tmp_path, command, prefix
        self.named, self.ports, self.runs_tasks = named, ports, runs_tasks
        self.started: list[AgentProcess] = []

    def start(self, *args: str, name: str | None = None, port: int | None = None) -> AgentProcess:
        name = name or unique_name(self.prefix)
        port = port or self.ports()
        argv = [self.command, "--port", str(port), "--data-dir", str(self.tmp_path / name)]
        argv += ["--name", name] if self.named else []
        agent = AgentProcess(
            args=[*argv, *args], port=port, log_path=self.tmp_path / f"{name}.log", name=name
        )
        agent.start()
        self.started.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.started:
            agent.kill()
            if self.runs_tasks:
                remove_containers(f"cube.worker={agent.name}")
                remove_networks(f"cube.worker={agent.name}")


@pytest.fixture
def start_worker(docker_engine: None, tmp_path: Path) -> Iterator[Any]:
    """Factory: start a real ``cube worker`` process; killed and its containers removed after."""
    agents = _Agents(tmp_path, "worker", prefix="w")
    yield agents.start
    agents.close()


@pytest.fixture
def start_manager(tmp_path: Path) -> Iterator[Any]:
    """Factory: start a real ``cube manager`` process; killed after the test.

    It polls its nodes every 0.2s so that tests see changes quickly. Restart one with
    ``agent.kill(); agent.start()``: same port, same data directory. Workers join it
    with ``start_worker("--manager", manager.url)``.
    """
    agents = _Agents(tmp_path, "manager", prefix="m", named=False, runs_tasks=False)

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
    agents = _Agents(tmp_path, "dev", prefix="d", ports=free_port_pair)

    def start(*extra: str, name: str | None = None) -> AgentProcess:
        return agents.start("--collect-interval", "0.2", *extra, name=name)

    yield start
    agents.close()
