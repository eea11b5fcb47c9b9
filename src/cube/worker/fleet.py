"""A fleet of simulated workers in one process (or one slice of a fleet run in several,
``cube sim-fleet --processes``), for benchmarks and demos.

Each simulated worker is a real :class:`~cube.worker.Worker` (task runners, state
machine, blocking queries, the lot) with a :class:`~cube.runtime.fake.FakeRuntime`
whose containers run until they are stopped, a :class:`~cube.store.MemoryStore`,
and no machine sampler (a thousand workers must not each read ``/proc``). They
all sit behind one HTTP server, and worker ``NAME``'s API is under a path prefix::

    http://HOST:PORT/w/NAME/v1/tasks        ==  a lone worker's  http://HOST:PORT/v1/tasks

so its address, as the manager sees it, is ``http://HOST:PORT/w/NAME`` (the manager
appends ``/v1/...`` to a node's address).

**One app for all workers.** Building the worker API (a FastAPI app) costs about
50 ms and 300 KiB, which makes a thousand of them slow to start and heavy. So
the fleet builds the worker API once, around a stand-in worker that forwards
every call to the worker the request's path names (held in a context variable,
which asyncio keeps per request). Routes, validation, errors and authentication
are the worker's own; only the path prefix is the fleet's.

All simulated workers accept the same token, which the fleet gives the manager
when it registers each of them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from cube.api.client import check
from cube.api.common import Health
from cube.api.errors import error_response
from cube.api.tls import Verify
from cube.auth import Authenticator, Role
from cube.errors import Conflict, CubeError
from cube.log import get_logger
from cube.node import Resources
from cube.runtime.fake import FakeRuntime
from cube.store.memory import MemoryStore
from cube.worker.agent import Worker
from cube.worker.api import create_app

log = get_logger("cube.fleet")

#: Where a simulated worker's API lives: ``/w/NAME/v1/...``.
PREFIX = "/w/"
#: The fake runtime reports every exit on its event stream, so the container listing
#: (the safety net for missed events) can be slow; a thousand workers listing every
#: second would spend the machine's CPU on the simulation rather than on the manager.
#: It also paces each worker's disconnect check: at 5,000 workers, 15 s is 333 timers a
#: second each way, against a node timeout of minutes at that size.
POLL_INTERVAL = 15.0
#: Seconds a blocking query woken by a change waits for the rest of the burst
#: (cube.worker.changes): a task's start is three changes, and a node gets its tasks
#: together; answered one by one they were 37 % of a saturated fleet's time (py-spy).
CHANGE_WINDOW = 0.5
#: Registrations in flight at once: each one makes the manager call the worker back.
JOIN_CONCURRENCY = 32

_current: contextvars.ContextVar[Worker] = contextvars.ContextVar("cube_fleet_worker")


def fleet_slice(count: int, index: int, processes: int) -> tuple[int, int]:
    """The first number and the size of slice ``index`` of ``count`` workers split over
    ``processes`` processes: consecutive numbers, sizes that differ by one at most."""
    size, extra = divmod(count, processes)
    return 1 + index * size + min(index, extra), size + (1 if index < extra else 0)


class _CurrentWorker:
    """Stands in for the worker the current request is for (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_current.get(), name)


class Fleet:
    """``count`` simulated workers named ``PREFIX-0001``... and the one app serving them.

    ``first`` and ``width``: where the numbers start and how many digits they have, for a
    fleet that is one slice of a larger one (``cube sim-fleet --processes``)."""

    def __init__(
        self,
        *,
        count: int,
        capacity: Resources,
        token: str,
        prefix: str = "sim",
        labels: dict[str, str] | None = None,
        first: int = 1,
        width: int | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("a fleet needs at least one worker")
        width = width or max(4, len(str(count)))
        self.token = token
        self.workers: dict[str, Worker] = {}
        for i in range(first, first + count):
            name = f"{prefix}-{i:0{width}d}"
            self.workers[name] = Worker(
                name=name,
                runtime=FakeRuntime(),
                store=MemoryStore(),
                capacity=capacity,
                sampler=None,
                labels=dict(labels or {}),
                poll_interval=POLL_INTERVAL,
                change_window=CHANGE_WINDOW,
            )
        worker_api = create_app(
            cast(Worker, _CurrentWorker()),
            authenticator=Authenticator({Role.MANAGER: [token]}),
        )
        self.app = _fleet_app(self, worker_api)

    def addresses(self, base_url: str) -> dict[str, str]:
        """Worker name -> the address the manager should use, given the server's URL."""
        base = base_url.rstrip("/")
        return {name: f"{base}{PREFIX}{name}" for name in self.workers}

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers.values()))
        log.info("fleet started", workers=len(self.workers))

    def stopping(self) -> None:
        """The server was told to stop: answer every worker's blocking queries now, rather
        than hold them until the graceful shutdown gives up on them (10 s, then thousands
        of cancelled requests, each logged with its traceback)."""
        for worker in self.workers.values():
            worker.feed.close()

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers.values()))
        for worker in self.workers.values():
            await worker.runtime.close()
            worker.store.close()
        log.info("fleet stopped", workers=len(self.workers))

    async def join(
        self,
        manager_url: str,
        base_url: str,
        *,
        join_token: str | None,
        verify: Verify = True,
        retry: float = 2.0,
    ) -> None:
        """Register every worker with the manager (``POST /v1/nodes``), retrying each until
        it is accepted; a few at a time, through one HTTP client. Simulated workers keep
        no node secret: a name the manager already knows is refused (Conflict), so a
        fleet started again against the same manager needs another ``--prefix``."""
        url = f"{manager_url.rstrip('/')}/v1/nodes"
        headers = {"Authorization": f"Bearer {join_token}"} if join_token else {}
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)
        limits = httpx.Limits(max_connections=JOIN_CONCURRENCY)
        async with httpx.AsyncClient(timeout=30.0, verify=verify, limits=limits) as http:

            async def join_one(name: str, address: str) -> None:
                body = {"name": name, "address": address, "token": self.token}
                while True:
                    async with gate:
                        try:
                            check(await http.post(url, json=body, headers=headers))
                            return
                        except Conflict as exc:  # the name is another worker's (409)
                            raise Conflict(f"{name}: {exc.message}") from None
                        except (httpx.HTTPError, CubeError) as exc:
                            error = exc.message if isinstance(exc, CubeError) else str(exc)
                            log.warning("join failed, retrying", node=name, error=error)
                    await asyncio.sleep(retry)

            await asyncio.gather(
                *(join_one(name, a) for name, a in self.addresses(base_url).items())
            )
        log.info("fleet joined the cluster", workers=len(self.workers), manager=manager_url)


def _fleet_app(fleet: Fleet, worker_api: FastAPI) -> FastAPI:
    """The fleet's own app: its lifespan starts the workers; ``/w/NAME/...`` goes to them."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await fleet.start()
        try:
            yield
        finally:
            await fleet.close()

    app = FastAPI(title="Cube simulated fleet", version="1", lifespan=lifespan)
    app.add_middleware(_Route, workers=fleet.workers, worker_api=worker_api)

    @app.get("/v1/health")
    async def health() -> Health:
        return Health(role="fleet", name=f"{len(fleet.workers)} simulated workers")

    return app


class _Route:
    """ASGI middleware: ``/w/NAME/rest`` runs the worker API on ``/rest`` for worker NAME."""

    def __init__(self, app: ASGIApp, *, workers: dict[str, Worker], worker_api: ASGIApp) -> None:
        self.app = app
        self.workers = workers
        self.worker_api = worker_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        name, _, rest = path[len(PREFIX) :].partition("/")
        worker = self.workers.get(name)
        if worker is None:
            response = error_response(404, "not_found", f"no simulated worker named {name!r}")
            await response(scope, receive, send)
            return
        inner = dict(scope, path=f"/{rest}", raw_path=f"/{rest}".encode())
        reset = _current.set(worker)
        try:
            await self.worker_api(inner, receive, send)
        finally:
            _current.reset(reset)
