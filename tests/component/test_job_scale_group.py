"""``POST /v1/jobs/{id}/scale`` with a group the job does not have: a 422 naming the field
and the groups it has, as ``cube logs --job --group`` says it (``cube job scale shop webb 3``
used to be told only that ``webb`` is not one)."""

from __future__ import annotations

import httpx

from cube.manager.api import create_app
from tests.support.fake_nodes import job_spec, submitted


async def test_scaling_a_group_the_job_lacks_names_the_groups_it_has() -> None:
    _, _, manager = await submitted(job_spec(count=1), "w1")
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        response = await client.post("/v1/jobs/shop/scale", json={"group": "webb", "count": 3})
    assert response.status_code == 422
    [field] = response.json()["fields"]
    assert field["field"] == "group"
    assert field["message"] == "job shop has no group 'webb' (web)"
    assert manager.jobs.job("shop").version == 1  # nothing changed
    await manager.close()
