"""A worker joining a manager: register, and keep trying until the manager answers."""

from __future__ import annotations

import asyncio

import httpx

from cube.api.client import check
from cube.api.tls import Verify
from cube.errors import CubeError
from cube.log import get_logger

log = get_logger("cube.worker")


async def join_manager(
    manager_url: str,
    *,
    name: str,
    address: str,
    token: str | None = None,
    join_token: str | None = None,
    verify: Verify = True,
    retry: float = 2.0,
) -> None:
    """Register at the manager's ``POST /v1/nodes``, retrying until it is accepted.

    ``join_token`` proves the worker may join; ``token`` is what the manager must
    present when it calls this worker back.
    """
    body = {"name": name, "address": address, "token": token}
    headers = {"Authorization": f"Bearer {join_token}"} if join_token else {}
    async with httpx.AsyncClient(timeout=10.0, verify=verify) as http:
        while True:
            try:
                url = f"{manager_url.rstrip('/')}/v1/nodes"
                check(await http.post(url, json=body, headers=headers))
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
