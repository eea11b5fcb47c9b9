"""``GET /v1/allocations?job=&node=`` over ASGI: a job or node the cluster does not know is a
404 naming it (and the name it may have meant), not an empty list: ``cube alloc status --job
shpo`` used to print "No allocations" and exit 0, which reads as "nothing runs"."""

from __future__ import annotations

import httpx

from cube.manager.api import create_app
from tests.support.fake_nodes import job_spec, submitted


async def test_an_unknown_job_or_node_is_a_404_with_the_name_it_may_have_meant() -> None:
    _, _, manager = await submitted(job_spec(count=2), "w1", "w2")
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        placed = await client.get("/v1/allocations", params={"job": "shop"})
        assert placed.status_code == 200
        assert len(placed.json()) == 2
        on_w1 = await client.get("/v1/allocations", params={"node": "w1"})
        assert on_w1.status_code == 200
        assert [a["node"] for a in on_w1.json()] == ["w1"]

        typo = await client.get("/v1/allocations", params={"job": "shpo"})
        assert typo.status_code == 404
        assert "job shpo not found; did you mean 'shop'?" in typo.text
        nowhere = await client.get("/v1/allocations", params={"node": "w9"})
        assert nowhere.status_code == 404
        assert "node w9 not found" in nowhere.text
    await manager.close()
