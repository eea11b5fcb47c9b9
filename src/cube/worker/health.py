"""Health checks: probing a task's container, and deciding when it is healthy or not.

The probe does I/O (an HTTP GET or a TCP connect to the container's address); the
verdict is pure (:class:`HealthTracker`), so thresholds and grace periods are unit
tested without containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import httpx

from cube.task.spec import HealthCheck


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 200", "connection refused", ...


#: The probes' TLS context: none is ever used (a probe asks ``http://``), but an
#: ``httpx.AsyncClient`` made without one loads the CA bundle, 67 ms of CPU each time:
#: 20 containers checked every 0.5 s took more than the worker's whole event loop, and
#: the probes themselves timed out (bench/jobs.py --parts rolling, docs/benchmarks.md).
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class Prober(Protocol):
    async def __call__(self, check: HealthCheck, host: str) -> ProbeResult: ...


async def probe(check: HealthCheck, host: str) -> ProbeResult:
    """Run ``check`` once against the container at ``host`` (its IP on the engine's network)."""
    try:
        async with asyncio.timeout(check.timeout):
            if check.http is not None:
                url = f"http://{host}:{check.http.port}{check.http.path}"
                # A client (a connection) per probe, as Docker's and Kubernetes' checks:
                # a kept-alive connection would not show a server that stopped accepting.
                async with httpx.AsyncClient(verify=_NO_TLS) as http:
                    response = await http.get(url)
                ok = response.status_code == check.http.expected_status
                return ProbeResult(ok, f"GET {check.http.path}: HTTP {response.status_code}")
            assert check.tcp is not None
            _, writer = await asyncio.open_connection(host, check.tcp.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return ProbeResult(True, f"TCP {check.tcp.port}: connected")
    except TimeoutError:
        return ProbeResult(False, f"no answer within {check.timeout:g}s")
    except (OSError, httpx.HTTPError) as exc:
        return ProbeResult(False, str(exc) or type(exc).__name__)


class Verdict(StrEnum):
    STARTING = "starting"  # no success yet, still within the grace period or threshold
    HEALTHY = "healthy"
    FAILING = "failing"  # was healthy, failed fewer than failure_threshold times in a row
    UNHEALTHY = "unhealthy"  # failure_threshold consecutive failures: restart it


class HealthTracker:
    """Consecutive-failure counting with a start period, like Docker's and Kubernetes' probes.

    Failures during ``start_period`` (seconds since the container started) do not
    count, so a slow starter is not killed before it could ever answer.
    """

    def __init__(self, check: HealthCheck, *, started: float) -> None:
        self.check = check
        self.started = started
        self.failures = 0
        self.ever_healthy = False

    def record(self, ok: bool, *, now: float) -> Verdict:
        if ok:
            self.failures = 0
            self.ever_healthy = True
            return Verdict.HEALTHY
        if now - self.started < self.check.start_period:
            return Verdict.STARTING
        self.failures += 1
        if self.failures >= self.check.failure_threshold:
            return Verdict.UNHEALTHY
        return Verdict.FAILING if self.ever_healthy else Verdict.STARTING
