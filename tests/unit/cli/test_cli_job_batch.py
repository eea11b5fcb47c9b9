"""``cube job run`` of a batch job, against a fake manager: once the job is complete it
says so on stdout, as a service's run ends with its deployment's status (it used to end
on the progress line again, never saying the job was over)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cube.cli.main import cli
from cube.job.model import AllocStatus, Job, JobStatus
from cube.job.parse import parse_job
from cube.job.wire import JobDetail
from tests.support.fake_manager import FakeManager, alloc

CRUNCH = {
    "job": "crunch",
    "type": "batch",
    "groups": [{"name": "work", "count": 2, "tasks": [{"name": "step", "image": "b"}]}],
}


def test_a_batch_run_ends_saying_the_job_is_complete(tmp_path: Path) -> None:
    fake = FakeManager()
    job = Job(
        id="crunch",
        version=1,
        status=JobStatus.COMPLETE,
        status_reason="all 2 allocations completed",
    )
    done = [alloc(i, AllocStatus.COMPLETE, job="crunch", group="work", version=1) for i in range(2)]
    fake.on("POST /v1/jobs", status=201, body=Job(id="crunch", version=1))
    fake.on(
        "GET /v1/jobs/crunch",
        body=JobDetail(job=job, spec=parse_job(CRUNCH), allocations=done, placement_failures={}),
    )
    path = tmp_path / "crunch.yaml"
    path.write_text(str(CRUNCH).replace("'", '"'))
    result = CliRunner().invoke(cli, ["job", "run", str(path)], obj=fake.transport)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "job crunch: work: 2 placed, 0 running of 2, 2 complete",
        "job crunch: Complete: all 2 allocations completed",
    ]
