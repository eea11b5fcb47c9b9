"""How the manager talks to workers: one async HTTP client for the whole fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from pydantic import TypeAdapter

from cube.api.client import check, unreachable
from cube.api.tls import Verify, shared_verify
from cube.protocol import NODE_TIMEOUT_HEADER, NodeReport, TaskChanges
from cube.task.model import Task, TaskEvent
from cube.task.spec import KEEP_SECRETS, TaskRequest

_TASKS = TypeAdapter(list[Task])
_EVENTS = TypeAdapter(list[TaskEvent])

#: Idle connections are dropped sooner than a worker (uvicorn: after 5 s) closes them: a
#: request sent on a connection the worker is closing fails ("server disconnected").
KEEPALIVE_EXPIRY = 2.0


class WorkerClient:
    """Calls a worker's ``/v1`` API by its base URL. One instance serves every node."""

    def __init__(self, *, timeout: float = 5.0, verify: Verify = True) -> None:
        #: Seconds a call waits for its answer (a join's check may wait longer: see
        #: NodeRegistry.call_timeout_in_force).
        self.timeout = timeout
        # One TLS context for every client below (building one costs milliseconds).
        self._tls = shared_verify(verify)
        # One connection pool for the fleet's calls: a 1,000-node cluster must not mean
        # 1,000 pools (blocking queries, which stay open, are the exception: see below).
        # Few idle connections: each is checked (a system call) every time the pool hands
        # one out, 10 % of a 1,000-node manager's CPU with 200 (py-spy); and with one
        # origin per node, polled seconds apart, an idle connection is seldom reused.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=200,
                max_keepalive_connections=32,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            verify=self._tls,
        )
        # Blocking queries stay open for seconds: each node gets a client of its own (see
        # _watch_client).
        self._watch_clients: dict[str, httpx.AsyncClient] = {}
        #: Worker address -> the token its API accepts (given by the worker when it joined).
        self.credentials: dict[str, str] = {}
        #: The node timeout in force, told to workers with every call (NODE_TIMEOUT_HEADER).
        self.node_timeout: float | None = None

    def _watch_client(self, address: str) -> httpx.AsyncClient:
        """The node's own client for its blocking queries: one connection, held open.

        Not the fleet's pool: httpx looks at every queued request and every connection
        each time it assigns one, so a thousand long-held queries in one pool made each
        assignment O(nodes), a quarter of a 1,000-node manager's CPU (py-spy, while
        bench/manager.py started 10,000 tasks). A pool per node keeps it O(1).
        """
        client = self._watch_clients.get(address)
        if client is None:
            client = self._watch_clients[address] = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=1,
                    max_keepalive_connections=1,
                    keepalive_expiry=KEEPALIVE_EXPIRY,
                ),
                verify=self._tls,
            )
        return client

    @property
    def tls(self) -> Verify:
        """What the fleet's connections trust (for the manager's own WebSockets to nodes)."""
        return self._tls

    def headers(self, address: str) -> dict[str, str]:
        """The headers every call to the node at ``address`` carries: its token, the timeout."""
        return self._headers(address)

    def _headers(self, address: str) -> dict[str, str]:
        headers = {}
        if (token := self.credentials.get(address)) is not None:
            headers["Authorization"] = f"Bearer {token}"
        if self.node_timeout is not None:
            headers[NODE_TIMEOUT_HEADER] = f"{self.node_timeout:g}"
        return headers

    async def _request(
        self, method: str, address: str, path: str, **kwargs: object
    ) -> httpx.Response:
        url = f"{address.rstrip('/')}/v1{path}"
        try:
            response = await self._http.request(
                method,
                url,
                headers=self._headers(address),
                **kwargs,  # type: ignore[arg-type]
            )
        except httpx.HTTPError as exc:
            raise unreachable(address, exc) from None
        return check(response)

    async def stats(self, address: str, *, wait: float | None = None) -> NodeReport:
        """``wait``: seconds to wait for the answer, if not the client's timeout."""
        extra = {} if wait is None else {"timeout": wait}
        return NodeReport.model_validate_json(
            (await self._request("GET", address, "/stats", **extra)).content
        )

    async def tasks(self, address: str) -> list[Task]:
        return _TASKS.validate_json((await self._request("GET", address, "/tasks")).content)

    async def watch(self, address: str, *, since: str | None, wait: float) -> TaskChanges | None:
        """A blocking query: the node's tasks changed after index ``since`` (all of them
        without one) and their histories, as soon as one changes or after ``wait`` seconds.

        None from a worker that does not answer blocking queries.
        """
        params: dict[str, str] = {"wait": f"{wait:g}"}
        if since is not None:
            params["since"] = since
        url = f"{address.rstrip('/')}/v1/changes"
        try:
            response = await self._watch_client(address).get(
                url,
                params=params,
                headers=self._headers(address),
                timeout=httpx.Timeout(wait + 10.0, pool=None),
            )
        except httpx.HTTPError as exc:
            raise unreachable(address, exc) from None
        if response.status_code in (404, 405):
            return None
        return TaskChanges.model_validate_json(check(response).content)

    async def run(self, address: str, request: TaskRequest) -> Task:
        body = request.model_dump(mode="json", context=KEEP_SECRETS)
        response = await self._request("POST", address, "/tasks", json=body)
        return Task.model_validate_json(response.content)

    async def stop(
        self, address: str, task_id: str, *, wait: float, reason: str | None = None
    ) -> Task:
        """Stop a task on a node; ``reason``: recorded as the reason of its end."""
        params = {"reason": reason[:500]} if reason else None
        response = await self._request(
            "DELETE", address, f"/tasks/{task_id}", timeout=wait, params=params
        )
        return Task.model_validate_json(response.content)

    async def events(self, address: str, task_id: str) -> list[TaskEvent]:
        response = await self._request("GET", address, f"/tasks/{task_id}/events")
        return _EVENTS.validate_json(response.content)

    async def logs(
        self,
        address: str,
        task_id: str,
        *,
        tail: int | None,
        follow: bool,
        since: float | None = None,
    ) -> AsyncIterator[bytes]:
        params: dict[str, str] = {"follow": "true" if follow else "false"}
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = f"{since:.6f}"
        url = f"{address.rstrip('/')}/v1/tasks/{task_id}/logs"
        try:
            async with self._http.stream(
                "GET",
                url,
                params=params,
                headers=self._headers(address),
                timeout=httpx.Timeout(5.0, read=None),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    check(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            raise unreachable(address, exc) from None

    async def aclose(self) -> None:
        await self._http.aclose()
        for client in self._watch_clients.values():
            await client.aclose()
