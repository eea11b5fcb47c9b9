"""Jobs with an update policy, as the rollout tests build them."""

from __future__ import annotations

from typing import Any

from cube.job.parse import parse_job
from cube.job.spec import JobSpec

UPDATE = {"min_healthy_time": "2s", "healthy_deadline": "10s", "progress_deadline": "30s"}


def job_spec(image: str = "cube-busybox:1", count: int = 3, **update: Any) -> JobSpec:
    return parse_job(
        {
            "job": "shop",
            "update": {**UPDATE, **update},
            "groups": [{"name": "web", "count": count, "tasks": [{"name": "api", "image": image}]}],
        }
    )
