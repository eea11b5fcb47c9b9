"""A worker joining a manager: register, and keep trying until the manager answers."""

from __future__ import annotations

import asyncio

import httpx

from cube.api.client import check
from cube.errors import CubeError
from cube.log import get_logger

log = get_logger("cube.worker")


async def join_manager(manager_url: str, *, name: str, address: str, retry: float = 2.0) -> None:
    """POST this worker to the manager's ``/v1/nodes``; retries until it is accepted."""
    body = {"name": name, "address": address}
    async with httpx.AsyncClient(timeout=10.0) as http:
        while True:
            try:
                check(await http.post(f"{manager_url.rstrip('/')}/v1/nodes", json=body))
                log.info("joined the cluster", node=name, manager=manager_url, address=address)
                return
            except httpx.HTTPError as exc:
                log.warning("manager not answering yet", manager=manager_url, error=str(exc))
            except CubeError as exc:
                log.warning(
                    "manager refused to register this worker",
                    manager=manager_url,
                    error=exc.message,
                )
            await asyncio.sleep(retry)
