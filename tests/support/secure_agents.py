"""Agents started with their own tokens and TLS, for the tests of authentication."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cube.api.tls import client_verify
from tests.support.agents import AgentProcess
from tests.support.engine import remove_containers, unique_name
from tests.support.ports import free_port
from tests.support.waiting import wait_for

#: The tokens the test suite puts in every agent's environment; some tests run without them.
SESSION_TOKEN_ENV = ("CUBE_TOKEN", "CUBE_JOIN_TOKEN", "CUBE_WORKER_TOKEN")


@dataclass
class Agent(AgentProcess):
    """An :class:`AgentProcess` that may serve HTTPS and may run without the session's tokens."""

    scheme: str = "http"
    ca: Path | None = None
    #: Environment variables removed from the agent's environment (after ``env`` is applied).
    drop_env: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=Path)
    #: (soft, hard) limit of open files to start the process with; None: this process' own.
    open_files: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> None:
        env = {**os.environ, **self.env}
        for key in self.drop_env:
            env.pop(key, None)
        limits = self.open_files

        def set_limits() -> None:
            if limits is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)

        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cube", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=set_limits if limits else None,
            )
        verify = trust(self.ca)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.logs()}")
            try:
                response = httpx.get(f"{self.url}/v1/health", timeout=1, verify=verify)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        wait_for(healthy, timeout=timeout, what=f"{self.name} to answer /v1/health")


class Agents:
    """Starts managers and workers; every one is killed, and its containers removed, after."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Agent] = []

    def manager(self, *extra: str, data_dir: Path | None = None, **options: Any) -> Agent:
        name = unique_name("m")
        data = data_dir or self.tmp_path / name
        args = ["manager", "--data-dir", str(data), "--collect-interval", "0.2", *extra]
        return self._start(name, args, data, **options)

    def worker(self, *extra: str, data_dir: Path | None = None, **options: Any) -> Agent:
        name = unique_name("w")
        data = data_dir or self.tmp_path / name
        args = ["worker", "--name", name, "--data-dir", str(data), *extra]
        return self._start(name, args, data, **options)

    def _start(
        self,
        name: str,
        args: list[str],
        data: Path,
        *,
        env: dict[str, str] | None = None,
        drop_env: tuple[str, ...] = (),
        scheme: str = "http",
        ca: Path | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> Agent:
        port = free_port()
        agent = Agent(
            args=[*args, "--port", str(port)],
            port=port,
            log_path=self.tmp_path / f"{name}.log",
            name=name,
            env=env or {},
            scheme=scheme,
            ca=ca,
            drop_env=drop_env,
            data_dir=data,
            open_files=open_files,
        )
        self.started.append(agent)
        agent.start()
        return agent

    def close(self) -> None:
        for agent in self.started:
            agent.kill()
        for agent in self.started:
            remove_containers(f"cube.worker={agent.name}")


def make_certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost: (ca, cert, key)."""
    names = ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    ca_key, ca, key, csr, cert = (where / n for n in names)
    ext = where / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=cube-ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ):
        result = subprocess.run(["openssl", *map(str, command)], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
    return ca, cert, key


trust = client_verify
