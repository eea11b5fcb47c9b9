"""``cube logs --job``: a job's merged log stream, with real workers, Docker and the CLI.

Two allocations on two workers; the stream shows both, picks up a replacement, and goes
on (saying so) when a worker is killed, and again when it comes back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.engine import IMAGE
from tests.support.jobs import cube, wait_allocs
from tests.support.manager_http import NODE_TIMEOUT, two_node_cluster, wait_node
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

#: Each allocation says which it is (and its version), then ticks three times a second.
TICKER = (
    'echo "start $CUBE_ALLOC_ID $VERSION"; i=0;'
    ' while true; do echo "tick $i"; i=$((i+1)); sleep 0.3; done'
)


def ticker_job(tmp_path: Path, name: str, version: str = "one") -> Path:
    task = {
        "name": "app",
        "image": IMAGE,
        "command": ["sh", "-c", TICKER],
        "env": {"VERSION": version},
        "stop_timeout": "1s",
        "resources": {"cpu": 0.05, "memory": "16MiB"},
    }
    spec = {"job": name, "groups": [{"name": "web", "count": 2, "tasks": [task]}]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


class Follower:
    """``cube logs --job JOB -f`` running, its stdout and stderr lines collected."""

    def __init__(self, manager: AgentProcess, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cube", "logs", *args, "--manager", manager.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=_collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def wait_out(self, text: str, *, after: int = 0, timeout: float = 30) -> int:
        """The index of the first stdout line from ``after`` on that contains ``text``."""
        return int(
            wait_for(
                lambda: next(
                    (i + 1 for i, x in enumerate(self.out) if i >= after and text in x), 0
                ),
                timeout=timeout,
                what=f"{text!r} in the stream (stderr: {self.err})",
            )
            - 1
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


@pytest.fixture
def followers() -> Any:
    started: list[Follower] = []

    def start(manager: AgentProcess, *args: str) -> Follower:
        started.append(Follower(manager, *args))
        return started[-1]

    yield start
    for f in started:
        f.stop()


def test_job_logs_merge_both_workers_follow_a_replacement_and_outlive_a_lost_worker(
    start_manager: Any, start_worker: Any, followers: Any, tmp_path: Path
) -> None:
    manager, a, b = two_node_cluster(start_manager, start_worker)
    assert cube(manager, "job", "run", str(ticker_job(tmp_path, "tick"))).returncode == 0
    allocs = wait_allocs(manager.url, "tick", 2)
    on = {x["node"]: x for x in allocs}
    assert set(on) == {a.name, b.name}  # one on each worker
    prefix = {n: f"web[{x['index']}] app@{n} | " for n, x in on.items()}

    # Without -f: what both wrote so far, each line prefixed, plain when piped.
    def both_ticked() -> subprocess.CompletedProcess[str] | None:
        done = cube(manager, "logs", "--job", "tick")
        ok = done.returncode == 0 and all(f"{p}tick 1" in done.stdout for p in prefix.values())
        return done if ok else None

    printed = wait_for(both_ticked, timeout=30, what="ticks of both allocations")
    for node, x in on.items():
        assert f"{prefix[node]}start {x['id']} one" in printed.stdout.splitlines()
    assert "\x1b[" not in printed.stdout
    # Scripts get the records: one JSON object per line.
    raw = api.get(f"{manager.url}/v1/jobs/tick/logs", params={"group": "web"}, timeout=30)
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/x-ndjson"
    records = [json.loads(line) for line in raw.text.splitlines()]
    first = next(r for r in records if r["alloc"] == on[a.name]["id"])
    assert first == {
        "kind": "line",
        "node": a.name,
        "text": f"start {on[a.name]['id']} one",
        "alloc": on[a.name]["id"],
        "name": f"tick.web[{on[a.name]['index']}]",
        "group": "web",
        "index": on[a.name]["index"],
        "task": "app",
    }
    # --since: the ticks of the last second or two, not the start lines from before.
    recent = cube(
        manager, "logs", "--job", "tick", "--group", "web", "--task", "app", "--since", "2s"
    )
    assert recent.returncode == 0, recent.stderr
    assert all(p + "tick" in recent.stdout for p in prefix.values()), recent.stdout
    assert " | start " not in recent.stdout

    follow = followers(manager, "--job", "tick", "-f")
    for p in prefix.values():
        follow.wait_out(p)

    b.kill()  # kill -9 mid-stream
    wait_for(
        lambda: any(f"node {b.name} went quiet" in x for x in follow.err),
        timeout=NODE_TIMEOUT + 10,
        what="the note that b went quiet",
    )
    # The other allocation goes on streaming.
    mark = len(follow.out)
    follow.wait_out(f"{prefix[a.name]}tick", after=mark)
    follow.wait_out(f"{prefix[a.name]}tick", after=follow.wait_out(prefix[a.name], after=mark) + 1)

    # b's allocation is replaced on a: the replacement's lines join the stream.
    wait_node(manager.url, b.name, "down", timeout=NODE_TIMEOUT + 5)
    # Until the manager has marked b's allocation lost, it is still listed as running: the
    # replacement is the allocation that neither worker had before.
    before = {x["id"] for x in allocs}
    moved = wait_for(
        lambda: [x for x in wait_allocs(manager.url, "tick", 2) if x["id"] not in before],
        timeout=60,
        what="the replacement of b's allocation",
    )
    [replacement] = moved
    assert replacement["node"] == a.name
    index = replacement["index"]
    follow.wait_out(f"web[{index}] app@{a.name} | start {replacement['id']}")

    b.start()  # it comes back: the stream says so
    wait_for(
        lambda: any(f"node {b.name} is back" in x for x in follow.err),
        timeout=30,
        what="the note that b is back",
    )
    assert sum("went quiet" in x for x in follow.err) == 1, follow.err
    assert follow.proc.poll() is None  # still following

    # A new version's allocations join the stream.
    newer = cube(manager, "job", "run", str(ticker_job(tmp_path, "tick", version="two")))
    assert newer.returncode == 0, newer.stderr
    for x in wait_allocs(manager.url, "tick", 2):
        follow.wait_out(f"web[{x['index']}] app@{x['node']} | start {x['id']} two")

    # A scale-up's new allocation joins the stream; stopping the job ends it.
    assert cube(manager, "job", "scale", "tick", "web", "3").returncode == 0
    third = next(x for x in wait_allocs(manager.url, "tick", 3) if x["index"] == 2)
    follow.wait_out(f"web[2] app@{third['node']} | start {third['id']}")
    assert cube(manager, "job", "stop", "tick").returncode == 0
    assert follow.proc.wait(timeout=60) == 0, follow.err


def test_job_logs_of_an_unknown_job_group_or_task_exit_1_naming_it(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, _, _ = two_node_cluster(start_manager, start_worker)
    unknown = cube(manager, "logs", "--job", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "Error: job nope not found"
    assert cube(manager, "job", "run", str(ticker_job(tmp_path, "tick"))).returncode == 0
    bad_group = cube(manager, "logs", "--job", "tick", "--group", "db")
    assert bad_group.returncode == 2
    assert "group: job tick has no group 'db' (web)" in bad_group.stderr
    bad_task = api.get(f"{manager.url}/v1/jobs/tick/logs", params={"task": "x"})
    assert bad_task.status_code == 422
    assert bad_task.json()["fields"][0]["field"] == "task"
    bad_since = api.get(f"{manager.url}/v1/jobs/tick/logs", params={"since": "soon"})
    assert bad_since.status_code == 422
    assert bad_since.json()["fields"][0]["field"] == "since"
