"""The benchmark scripts still run: each at a tiny size, as a user would run it.

Not a measurement (timings are never asserted: machines are noisy). These check that
``bench/*.py`` work against today's code, exit 0, and save the JSON their results
table in ``docs/benchmarks.md`` is made from, with the fields it quotes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import BENCH

pytestmark = pytest.mark.timeout(600)


def run_bench(script: str, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``bench/SCRIPT`` with ``args`` and ``--json OUT``; its saved results."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    saved: dict[str, Any] = json.loads(out.read_text())
    assert saved["machine"]["nproc"] >= 1
    return saved


def test_scheduler_bench_places_every_task_feasibly(tmp_path: Path) -> None:
    saved = run_bench(
        "scheduler.py",
        tmp_path / "s.json",
        *("--nodes", "50,200", "--placements", "1000", "--exhaustive-samples", "5"),
    )
    rows = saved["results"]
    assert {r["algorithm"] for r in rows} == {"round-robin", "epvm", "bin-pack", "spread"}
    assert {r["nodes"] for r in rows} == {50, 200}
    for row in rows:
        assert row["violations"] == 0, row
        assert row["placed"] > 0, row
        assert row["rate_cpu"] > 0, row


@pytest.mark.docker
def test_start_bench_compares_cube_with_the_engine(tmp_path: Path) -> None:
    saved = run_bench(
        "start.py",
        tmp_path / "start.json",
        *("--systems", "cube,docker-api-parallel", "--sizes", "3", "--trials", "1"),
    )
    systems = {r["system"]: r for r in saved["summary"]}
    assert set(systems) == {"cube", "docker-api-parallel"}
    for row in systems.values():
        assert row["trials"] == 1, row
        assert row["median_s"] > 0, row
    assert not [r for r in saved["runs"] if r["error"]], saved["runs"]


@pytest.mark.docker
def test_recovery_bench_times_a_crash(tmp_path: Path) -> None:
    saved = run_bench(
        "recovery.py", tmp_path / "r.json", *("--scenarios", "crash", "--trials", "1")
    )
    (row,) = saved["summary"]
    assert row["scenario"] == "crash", row
    assert row["trials"] == 1, row
    assert row["median_s"] > 0, row


def test_manager_bench_runs_a_small_simulated_fleet(tmp_path: Path) -> None:
    saved = run_bench(
        "manager.py",
        tmp_path / "m.json",
        *("--workers", "20", "--tasks", "200", "--duration", "3"),
        *("--gets", "10", "--steady-posts", "10", "--settle", "1"),
    )
    result = saved["result"]
    assert result["failed_requests"] == 0, result["errors"]
    assert result["post_burst_ms"]["n"] == 200, result
    assert result["get_tasks_ms"]["n"] == 10, result
    assert result["staleness_steady"]["max"] is not None, result


@pytest.mark.docker
def test_jobs_bench_starts_a_job_against_the_engine(tmp_path: Path) -> None:
    saved = run_bench(
        "jobs.py",
        tmp_path / "j.json",
        *("--parts", "docker", "--systems", "cube-job,docker-api-parallel"),
        *("--sizes", "2", "--trials", "1"),
    )
    docker = saved["docker"]
    assert not [r for r in docker["runs"] if r["error"]], docker["runs"]
    systems = {r["system"]: r for r in docker["summary"]}
    assert set(systems) == {"cube-job", "docker-api-parallel"}
    assert systems["cube-job"]["median_s"] > 0, systems
    assert systems["cube-job"]["manager_running_s"] > 0, systems


@pytest.mark.docker
def test_jobs_bench_rolls_an_update_out_under_its_poller(tmp_path: Path) -> None:
    """Cube only: Swarm needs the engine to itself (``flock -x``), as the bench says."""
    saved = run_bench(
        "jobs.py",
        tmp_path / "j.json",
        *("--parts", "rolling", "--rolling-sizes", "2", "--rolling-systems", "cube"),
        *("--trials", "1"),
    )
    (run,) = saved["rolling"]["runs"]
    assert run["error"] == "", run
    assert run["seconds"] > 0, run
    assert run["polls"] > 0, run
    assert run["all_new"], run
    assert run["fewest_answering"] >= 0, run
    # Where the time went: one batch of both allocations (max_parallel 5), each phase
    # measured, then the deployment's end.
    batch, end = run["batches"]
    assert batch["size"] == 2, run["batches"]
    phases = ("place_to_accepted", "accepted_to_started", "started_to_healthy", "healthy_to_seen")
    assert all(batch[p] >= 0 for p in phases), batch
    assert end["size"] == 0, run["batches"]
    assert end["healthy_to_placed"] >= 0, end


def test_jobs_bench_runs_jobs_on_a_small_simulated_fleet(tmp_path: Path) -> None:
    # The fleet in two processes (cube sim-fleet --processes): 5 workers on each port.
    saved = run_bench(
        "jobs.py",
        tmp_path / "j.json",
        *("--parts", "sim", "--nodes", "10", "--jobs", "2", "--count", "10", "--every", "0.5"),
        *("--fleet-processes", "2", "--heap-reports", str(tmp_path / "heap")),
    )
    sim = saved["sim"]
    assert sim["error"] == "", sim
    assert sim["running"] == 20, sim
    assert sim["rate"] > 0, sim
    assert sim["manager_peak_rss"] > 0, sim
    assert sim["fleet_processes"] == 2, sim
    assert sim["fleet_cpu_s"] > 0, sim  # the children's CPU is counted
    assert (sim["no_call_stops"], sim["nodes_down"]) == (0, 0), sim
    # The manager wrote a heap report when told (SIGUSR2), once joined and once all Running.
    report = subprocess.run(
        [sys.executable, str(BENCH / "heap_report.py"), str(tmp_path / "heap")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "cube.task.model.Task" in report, report


def test_jobs_bench_runs_the_job_service_in_process(tmp_path: Path) -> None:
    saved = run_bench(
        "jobs.py",
        tmp_path / "inproc.json",
        *("--parts", "inproc", "--nodes", "20", "--jobs", "3", "--count", "10"),
        *("--timeout", "120"),
    )
    row = saved["inproc"]
    assert row["error"] == "", row
    assert row["running"] == 30, row
    assert row["rate"] > 0, row
    assert row["passes"] >= 1, row
    assert row["peak_mib"] > 0, row
