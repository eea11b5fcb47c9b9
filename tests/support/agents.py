"""Real ``cube`` agents (worker, manager, dev) started as processes by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import api
from tests.support.engine import (
    remove_containers,
    remove_networks,
    unique_name,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_for


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


class AgentGroup:
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
