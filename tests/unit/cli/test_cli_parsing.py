"""The user-facing CLI without a manager: flags -> request, output, errors, exit codes.

Commands that talk to the manager run against :class:`FakeManager`, an
``httpx.MockTransport`` handed to the CLI as its context object, so every test
here is pure: no server, no Docker.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from cube.cli import credentials
from cube.cli import output as out
from cube.cli import tasks as task_cli
from cube.cli.client import DEFAULT_ADDR, ManagerClient, normalise_url
from cube.cli.errors import handle_errors
from cube.cli.main import cli
from cube.cli.run import RunFlags, build_request, check_running, describe, wait_status
from cube.errors import CubeError, InvalidSpec, NotFound
from cube.job.model import Allocation, AllocStatus
from cube.job.parse import is_job_document
from cube.node import MachineStats, NodeState
from cube.scheduler import Decision, NodeScore
from cube.task.model import DesiredState, Health, PublishedPort, Task, TaskEvent
from cube.task.parse import decode_spec_text
from cube.task.spec import (
    AllocRef,
    HealthCheck,
    PortMapping,
    Protocol,
    RestartPolicy,
    TaskSpec,
)
from cube.task.specfile import load_spec_file
from cube.task.state import State
from tests.support.fake_manager import (
    TASK_ID,
    FakeManager,
    MiB,
    _jsonable,
    assert_one_error_line,
    make_node,
    make_task,
)
from tests.support.paths import EXAMPLES


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def cube(manager: FakeManager) -> Callable[..., Result]:
    """Run ``cube ARGS...`` against the fake manager."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), obj=manager.transport, env=env)

    return invoke


# ------------------------------------------------------------ request from flags


def test_flags_build_a_request() -> None:
    flags = RunFlags(
        name="web",
        image="cube-busybox:latest",
        command=("httpd", "-f", "-p", "80"),
        cpu=0.5,
        memory=128 * MiB,
        ports=("8080:80", "53/udp"),
        env={"MODE": "prod"},
        restart="on-failure",
        max_attempts=3,
        labels={"team": "web"},
        constraints={"zone": "a"},
        task_id="web-1",
    )
    request = build_request(None, flags)
    assert request.id == "web-1"
    assert request.command == ["httpd", "-f", "-p", "80"]
    assert request.resources.cpu == 0.5
    assert request.resources.memory == 128 * MiB
    assert request.ports == [
        PortMapping(container=80, host=8080),
        PortMapping(container=53, protocol=Protocol.UDP),
    ]
    assert request.env == {"MODE": "prod"}
    assert request.restart == RestartPolicy(policy="on-failure", max_attempts=3)
    assert request.labels == {"team": "web"}
    assert request.constraints == {"zone": "a"}


def test_flags_override_the_file_and_merge_mappings(tmp_path: Path) -> None:
    spec_file = tmp_path / "web.yaml"
    spec_file.write_text(
        "name: web\n"
        "image: cube-busybox:latest\n"
        "command: [sleep, '60']\n"
        "env: {A: '1', B: '1'}\n"
        "ports: ['8080:80']\n"
        "resources: {cpu: 0.25, memory: 32MiB}\n"
        "restart: {policy: on-failure, max_attempts: 3}\n"
    )
    flags = RunFlags(
        name="web2",
        memory=64 * MiB,
        env={"B": "2", "C": "3"},
        ports=("9090:80",),
        restart="always",
        command=("sleep", "5"),
    )
    request = build_request(spec_file, flags)
    assert request.name == "web2"
    assert request.image == "cube-busybox:latest"
    assert request.command == ["sleep", "5"]
    assert request.env == {"A": "1", "B": "2", "C": "3"}
    assert request.ports == [PortMapping(container=80, host=9090)]
    assert (request.resources.cpu, request.resources.memory) == (0.25, 64 * MiB)
    assert request.restart.policy == "always"
    assert request.restart.max_attempts == 3


def test_a_file_without_flags_is_sent_as_written() -> None:
    every = sorted(EXAMPLES.glob("*.*"))
    # Job files (examples/shop.yaml...) are `cube job run`'s: tests/unit/test_job_spec.py
    # reads them.
    examples = [p for p in every if not is_job_document(decode_spec_text(p.read_text()))]
    assert examples
    for path in examples:
        assert build_request(path, RunFlags()) == load_spec_file(path)


def test_run_sends_the_request_and_prints_only_the_id(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    manager.on("POST /v1/tasks", 201, make_task())
    result = cube(
        "run",
        "--name",
        "web",
        "--image",
        "cube-busybox:latest",
        "-p",
        "8080:80",
        "-e",
        "A=1",
        "--restart",
        "on-failure",
        "--",
        "sleep",
        "60",
        "--not-a-cube-flag",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{TASK_ID}\n"
    body = manager.body()
    assert body["command"] == ["sleep", "60", "--not-a-cube-flag"]
    assert body["ports"] == [{"container": 80, "host": 8080, "protocol": "tcp"}]
    assert body["env"] == {"A": "1"}
    assert body["restart"]["policy"] == "on-failure"
    assert "id" not in body


def test_run_takes_the_spec_file_as_argument_or_option(
    manager: FakeManager, cube: Callable[..., Result], tmp_path: Path
) -> None:
    manager.on("POST /v1/tasks", 201, make_task())
    spec_file = tmp_path / "t.json"
    spec_file.write_text(json.dumps({"name": "t", "image": "cube-busybox:latest"}))
    assert cube("run", str(spec_file), "--id", "my-id").exit_code == 0
    assert cube("run", "-f", str(spec_file)).exit_code == 0
    assert manager.body(0)["id"] == "my-id"
    assert manager.body(1)["name"] == "t"
    both = cube("run", str(spec_file), "-f", str(spec_file))
    assert both.exit_code == 2
    assert len(manager.requests) == 2


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--image", "cube-busybox:latest"], "name"),
        (["--name", "web"], "image"),
        (["--name", "Web!", "--image", "x"], "name"),
        (["--name", "web", "--image", "x", "--memory", "lots"], "--memory"),
        (["--name", "web", "--image", "x", "--memory", "1KiB"], "resources.memory"),
        (["--name", "web", "--image", "x", "--cpu", "0"], "resources.cpu"),
        (["--name", "web", "--image", "x", "--cpu", "many"], "--cpu"),
        (["--name", "web", "--image", "x", "-p", "80x"], "ports.0"),
        (["--name", "web", "--image", "x", "-p", "8080:80", "-p", "8080:81"], "ports"),
        (["--name", "web", "--image", "x", "-e", "NOVALUE"], "--env"),
        (["--name", "web", "--image", "x", "-e", "1X=y"], "env"),
        (["--name", "web", "--image", "x", "--label", "=v"], "--label"),
        (["--name", "web", "--image", "x", "--restart", "sometimes"], "--restart"),
        (["--name", "web", "--image", "x", "--max-attempts", "-1"], "restart.max_attempts"),
        (["--name", "web", "--image", "x", "--id", "a/b"], "id"),
        (["--name", "web", "--image", "x", "--timeout", "soon"], "--timeout"),
        (["missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_run_flags_exit_2_naming_the_field(
    manager: FakeManager, cube: Callable[..., Result], args: list[str], field: str
) -> None:
    result = cube("run", *args)
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, field)
    assert manager.requests == [], "nothing is sent when the request is invalid"


def test_a_bad_spec_file_names_the_field(cube: Callable[..., Result], tmp_path: Path) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text("name: web\nimage: x\nresources: {memory: lots}\n")
    result = cube("run", str(spec_file))
    assert result.exit_code == 2
    assert_one_error_line(result, f"{spec_file}:3:13: resources.memory:", "lots")


def test_a_spec_the_manager_rejects_exits_2_with_its_fields(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    manager.on(
        "POST /v1/tasks",
        422,
        {
            "error": "invalid_spec",
            "message": "ports.0.host: port 22 is reserved",
            "fields": [{"field": "ports.0.host", "message": "port 22 is reserved"}],
        },
    )
    result = cube("run", "--name", "web", "--image", "x", "-p", "22:22")
    assert result.exit_code == 2
    assert_one_error_line(result, "ports.0.host", "reserved")


def test_run_help_shows_an_example(cube: Callable[..., Result]) -> None:
    for command in (["run"], ["status"], ["logs"], ["stop"], ["nodes"], ["nodes", "show"]):
        result = cube(*command, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.stdout
    assert "[-- COMMAND [ARGS]...]" in cube("run", "--help").stdout


def test_every_command_s_help_has_an_example(cube: Callable[..., Result]) -> None:
    """The README says so of every command: each one of the tree, groups included."""

    def paths(command: click.Command, path: list[str]) -> Iterator[list[str]]:
        yield path
        if isinstance(command, click.Group):
            context = click.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None
                yield from paths(sub, [*path, name])

    every = list(paths(cli, []))
    assert ["job", "revert"] in every
    assert ["alloc", "status"] in every
    missing = [" ".join(path) for path in every if "Example" not in cube(*path, "--help").stdout]
    assert missing == []


def test_max_attempts_is_the_flag_and_the_spec_field(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    """One name for one thing: the flag is the spec's field; the old flag still works."""
    manager.on("POST /v1/tasks", 201, make_task())
    assert cube("run", "--name", "w", "--image", "x", "--max-attempts", "2").exit_code == 0
    assert manager.body()["restart"]["max_attempts"] == 2
    old = cube("run", "--name", "w", "--image", "x", "--max-restarts", "4")
    assert old.exit_code == 0, old.output
    assert manager.body(1)["restart"]["max_attempts"] == 4
    assert "--max-restarts is deprecated: use --max-attempts" in old.stderr
    both = cube("run", "--name", "w", "--image", "x", "--max-restarts", "4", "--max-attempts", "2")
    assert both.exit_code == 2
    help_text = cube("run", "--help").stdout
    assert "--max-attempts" in help_text
    assert "--max-restarts" not in help_text


# ------------------------------------------------------------------- run --wait


def _states(manager: FakeManager, *tasks: Task) -> None:
    """``GET /v1/tasks/ID`` answers each of ``tasks`` in turn, then the last one forever."""
    answers = iter(tasks)
    last: list[Task] = []

    def answer(_: httpx.Request) -> httpx.Response:
        last[:] = [next(answers, last[0] if last else tasks[-1])]
        return httpx.Response(200, json=last[0].model_dump(mode="json"))

    manager.routes[f"GET /v1/tasks/{TASK_ID}"] = answer


def test_wait_returns_0_once_running(manager: FakeManager, cube: Callable[..., Result]) -> None:
    manager.on("POST /v1/tasks", 201, make_task())
    _states(
        manager,
        make_task(state=State.SCHEDULED, node="w1", reason="pulling image"),
        make_task(state=State.RUNNING, node="w1"),
    )
    result = cube("run", "--name", "web", "--image", "x", "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{TASK_ID}\n"
    assert "Scheduled on w1: pulling image" in result.stderr
    assert "running on w1" in result.stderr


def test_wait_for_a_task_that_ran_to_exit_code_0_succeeds(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    """A batch task (``restart: never``) that exits 0 has done its job: exit 0, not an error."""
    manager.on("POST /v1/tasks", 201, make_task())
    done = make_task(state=State.COMPLETED, node="w1", exit_code=0, reason="exited with code 0")
    _states(manager, make_task(state=State.SCHEDULED, node="w1"), done)
    result = cube("run", "--name", "job", "--image", "x", "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{TASK_ID}\n"
    assert "completed on w1" in result.stderr


def test_wait_fails_with_the_reason(manager: FakeManager, cube: Callable[..., Result]) -> None:
    manager.on("POST /v1/tasks", 201, make_task())
    _states(manager, make_task(state=State.FAILED, exit_code=3, reason="exited with code 3"))
    result = cube("run", "--name", "web", "--image", "x", "--wait", "-o", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "failed"
    assert_one_error_line(result, TASK_ID[:12], "failed", "exited with code 3")


def test_wait_times_out_saying_why(manager: FakeManager, cube: Callable[..., Result]) -> None:
    pending = make_task(reason="no node has 64.0 free CPU")
    manager.on("POST /v1/tasks", 201, pending)
    _states(manager, pending)
    result = cube("run", "--name", "web", "--image", "x", "--wait", "--timeout", "50ms")
    assert result.exit_code == 1
    assert_one_error_line(result, "still pending", "no node has 64.0 free CPU")
    assert result.stdout == f"{TASK_ID}\n", "the ID first, to look at the task (README)"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"state": State.PENDING}, "waiting"),
        ({"state": State.RUNNING}, "running"),
        ({"state": State.COMPLETED}, "ended"),
        ({"state": State.COMPLETED, "exit_code": 0}, "succeeded"),
        ({"state": State.FAILED}, "ended"),
        ({"state": State.FAILED, "restart": "on-failure"}, "waiting"),
        ({"state": State.COMPLETED, "restart": "on-failure"}, "ended"),
        ({"state": State.COMPLETED, "restart": "always"}, "waiting"),
        ({"state": State.FAILED, "restart": "always", "desired": DesiredState.STOP}, "ended"),
        ({"state": State.FAILED, "restart": {"policy": "always", "max_attempts": 2}}, "waiting"),
        (
            {
                "state": State.FAILED,
                "restarts": 2,
                "restart": {"policy": "always", "max_attempts": 2},
            },
            "ended",
        ),
    ],
)
def test_a_failed_task_its_policy_restarts_is_still_worth_waiting_for(
    fields: dict[str, Any], expected: str
) -> None:
    restart = fields.pop("restart", "never")
    spec = TaskSpec(name="web", image="x", restart=RestartPolicy.model_validate(restart))
    assert wait_status(make_task(spec=spec, **fields)) == expected


def test_check_running_messages() -> None:
    check_running(make_task(state=State.RUNNING), timeout=1)
    check_running(make_task(state=State.COMPLETED, exit_code=0), timeout=1)
    with pytest.raises(CubeError, match=r"0123456789ab completed: exit code 3$"):
        check_running(make_task(state=State.COMPLETED, exit_code=3), timeout=1)
    stopped = make_task(state=State.COMPLETED, exit_code=0, desired=DesiredState.STOP)
    with pytest.raises(CubeError, match=r"0123456789ab completed: exit code 0$"):
        check_running(stopped, timeout=1)
    with pytest.raises(CubeError) as waited:
        check_running(make_task(state=State.SCHEDULED), timeout=60)
    assert waited.value.message == (
        "task 0123456789ab still scheduled after 1m: no reason given; it stays and runs when"
        " it can (`cube stop 0123456789ab` gives up)"
    )
    assert describe(make_task(node="w1", restarts=2, reason="r")) == (
        "0123456789ab Pending on w1 (restarts: 2): r"
    )


# ----------------------------------------------------------------------- status


def test_status_lists_tasks(manager: FakeManager, cube: Callable[..., Result]) -> None:
    running = make_task(
        state=State.RUNNING,
        node="w1",
        ports=[PublishedPort(container=80, host=8080)],
        created_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    manager.on("GET /v1/tasks", 200, [running])
    result = cube("status", "--state", "running", "--node", "w1")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "NODE", "IMAGE", "PORTS", "AGE", "RESTARTS"]
    expected = [TASK_ID[:12], "web", "Running", "w1", "cube-busybox:latest", "8080->80/tcp"]
    assert row.split() == [*expected, "5m", "0"]
    assert manager.requests[0].url.params == httpx.QueryParams(state="running", node="w1")


def test_status_shows_health_when_a_task_has_a_check(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    check = HealthCheck.model_validate({"tcp": {"port": 80}})
    checked = make_task(spec=TaskSpec(name="db", image="x", health=check), health=Health.HEALTHY)
    manager.on("GET /v1/tasks", 200, [checked, make_task()])
    lines = cube("status").stdout.splitlines()
    assert lines[0].split()[-1] == "HEALTH"
    assert lines[1].split()[-1] == "Healthy"
    assert lines[2].split()[-1] == "-"


SHOP_WEB_2 = AllocRef(id="a1b2c3d4e5f6", job="shop", group="web", index=2, size=2)


def test_status_names_the_allocation_of_a_jobs_task(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    proxy = make_task(spec=TaskSpec(name="proxy", image="x"), alloc=SHOP_WEB_2)
    manager.on("GET /v1/tasks", 200, [proxy, make_task()])
    header, of_job, alone = (line.split() for line in cube("status").stdout.splitlines())
    assert header[:4] == ["ID", "NAME", "ALLOC", "STATE"]
    assert of_job[1:4] == ["proxy", "shop.web[2]", "Pending"]
    assert alone[1:4] == ["web", "-", "Pending"]
    listed = json.loads(cube("status", "-o", "json").stdout)
    assert listed[0]["alloc"] == SHOP_WEB_2.model_dump(mode="json")
    assert listed[1]["alloc"] is None

    manager.on(f"GET /v1/tasks/{TASK_ID}", 200, proxy)
    manager.on(f"GET /v1/tasks/{TASK_ID}/events", 200, [])
    detail = cube("status", TASK_ID).stdout
    assert re.search(r"Allocation:\s+shop\.web\[2\] \(a1b2c3d4e5f6\)\n", detail)


def test_status_json_is_the_api_json(manager: FakeManager, cube: Callable[..., Result]) -> None:
    tasks = [make_task(state=State.RUNNING, node="w1")]
    manager.on("GET /v1/tasks", 200, tasks)
    result = cube("status", "-o", "json")
    assert json.loads(result.stdout) == _jsonable(tasks)
    assert result.stdout.startswith("[\n  {"), "pretty-printed"


def test_status_json_leaves_out_what_the_api_left_out(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    """Task lists come without ``placement`` (GET /v1/tasks/{id} has it): the CLI must not
    print it back as a null that reads like "no placement"."""
    listed = make_task(state=State.RUNNING, node="w1").model_dump(mode="json")
    del listed["placement"]
    manager.on("GET /v1/tasks", 200, [listed])
    assert json.loads(cube("status", "-o", "json").stdout) == [listed]


def test_status_of_no_tasks(manager: FakeManager, cube: Callable[..., Result]) -> None:
    manager.on("GET /v1/tasks", 200, [])
    result = cube("status")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "No tasks.\n")


def test_status_of_one_task_explains_it(manager: FakeManager, cube: Callable[..., Result]) -> None:
    decision = Decision(
        node="w1",
        algorithm="epvm",
        reason="w1: best epvm score of 2 feasible nodes (3 of 3 examined)",
        scores={"w1": NodeScore(raw=0.5, score=1.0), "w2": NodeScore(raw=0.7, score=0.25)},
        filtered={"w3": "needs 2.0 CPU, 1.5 free"},
        filtered_counts={"cpu": 1},
        candidates=2,
        examined=3,
        total=3,
    )
    task = make_task(
        spec=TaskSpec(name="web", image="x", env={"TOKEN": "s3cret"}, command=["sleep", "9"]),
        state=State.FAILED,
        node="w1",
        reason="exited [code 3]",
        exit_code=3,
        placement=decision.model_dump(mode="json"),
    )
    events = [
        TaskEvent(state=State.PENDING, reason="submitted"),
        TaskEvent(previous=State.PENDING, state=State.SCHEDULED, reason="placed", node="w1"),
        TaskEvent(previous=State.SCHEDULED, state=State.FAILED, exit_code=3, node="w1"),
    ]
    manager.on("GET /v1/tasks/0123", 200, task)
    manager.on(f"GET /v1/tasks/{TASK_ID}/events", 200, events)
    result = cube("status", "0123")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert re.search(r"State:\s+Failed: exited \[code 3\]", text), "reasons are not markup"
    assert re.search(r"Resources:\s+cpu 0.1, memory 64MiB, disk 0B", text)
    assert re.search(r"Command:\s+sleep 9", text)
    assert re.search(r"Env:\s+TOKEN\n", text)
    assert "s3cret" not in text
    assert re.search(r"Pending -> Scheduled\s+placed\s+-\s+w1", text)
    assert re.search(r"Scheduled -> Failed\s+-\s+3\s+w1", text)
    assert re.search(r"Algorithm:\s+epvm", text)
    assert re.search(r"w2\s+0.250\s+0.7", text)
    assert re.search(r"w3\s+needs 2.0 CPU, 1.5 free", text)
    assert re.search(r"Filtered:\s+1 cpu", text)
    assert all(line == line.rstrip() for line in text.splitlines()), "no trailing blanks"


def test_status_of_one_task_as_json_has_its_events(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    task = make_task(state=State.RUNNING, node="w1")
    events = [
        TaskEvent(state=State.PENDING),
        TaskEvent(state=State.RUNNING, previous=State.PENDING, reason="started", node="w1"),
    ]
    manager.on(f"GET /v1/tasks/{TASK_ID}", 200, task)
    manager.on(f"GET /v1/tasks/{TASK_ID}/events", 200, events)
    result = cube("status", TASK_ID, "-o", "json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown.pop("events") == _jsonable(events)
    assert shown == _jsonable(task)


def test_status_of_an_unknown_task_exits_1(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    manager.on("GET /v1/tasks/nope", 404, {"error": "not_found", "message": "no task 'nope'"})
    result = cube("status", "nope")
    assert result.exit_code == 1
    assert assert_one_error_line(result) == "Error: no task 'nope'"


def test_status_filters_go_with_the_list_only(cube: Callable[..., Result]) -> None:
    assert cube("status", "abc", "--state", "running").exit_code == 2
    assert cube("status", "--state", "asleep").exit_code == 2


def test_status_with_no_manager_listening_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    for args, env in (
        (["status", "--manager", address], {}),
        (["status"], {"CUBE_ADDR": f"127.0.0.1:{port}"}),
    ):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 1
        assert result.stdout == ""
        line = assert_one_error_line(result, f"the manager at {address}", "CUBE_ADDR")
        assert result.stderr == line + "\n"


def test_a_bad_manager_address_is_a_usage_error(cube: Callable[..., Result]) -> None:
    result = cube("status", "--manager", "ftp://example.com")
    assert result.exit_code == 2
    assert_one_error_line(result, "--manager")


def test_an_answer_that_is_not_the_api_is_an_error(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    manager.routes["GET /v1/tasks"] = lambda _: httpx.Response(200, text="<html>hello</html>")
    result = cube("status")
    assert result.exit_code == 1
    assert_one_error_line(result, "unexpected answer", "a Cube manager?")


# ------------------------------------------------------------------ logs, stop


def test_logs_stream_bytes(manager: FakeManager, cube: Callable[..., Result]) -> None:
    def logs(request: httpx.Request) -> httpx.Response:
        assert request.url.params == httpx.QueryParams(tail="2", follow="true")
        return httpx.Response(200, content=iter([b"one\n", b"\xff two\n"]))

    manager.routes["GET /v1/tasks/abc/logs"] = logs
    result = cube("logs", "abc", "--tail", "2", "-f")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"one\n\xff two\n"


def test_logs_of_an_unknown_task(manager: FakeManager, cube: Callable[..., Result]) -> None:
    result = cube("logs", "abc")
    assert result.exit_code == 1
    assert_one_error_line(result, "no such route")


def test_stop(manager: FakeManager, cube: Callable[..., Result]) -> None:
    manager.on("DELETE /v1/tasks/0123", 200, make_task(state=State.COMPLETED))
    assert cube("stop", "0123").stdout == f"stopped {TASK_ID}\n"
    slow = make_task(state=State.RUNNING, desired=DesiredState.STOP)
    manager.on("DELETE /v1/tasks/0123", 200, slow)
    result = cube("stop", "0123")
    assert result.stdout == f"stopping {TASK_ID}\n"
    assert json.loads(cube("stop", "0123", "-o", "json").stdout)["desired"] == "stop"


# ------------------------------------------------------------------------ nodes


def test_nodes_table(manager: FakeManager, cube: Callable[..., Result]) -> None:
    seen = datetime.now(UTC) - timedelta(seconds=3)
    stats = MachineStats(cpu_percent=12.4, memory_total=8 * 1024 * MiB, memory_available=0)
    nodes = [make_node("w2", last_seen=seen), make_node("w1", stats=stats, tasks=2)]
    manager.on("GET /v1/nodes", 200, nodes)
    result = cube("nodes")
    assert result.exit_code == 0, result.output
    header, w1, w2 = (line.split() for line in result.stdout.splitlines())
    assert header[:6] == ["NAME", "ADDRESS", "STATE", "CPU", "MEMORY", "DISK"]
    assert w1[:5] == ["w1", "http://127.0.0.1:5556", "Ready", "0.5/4.0", "64MiB/8GiB"]
    assert w1[5:] == ["0B/0B", "12%", "8GiB", "2", "never"]
    assert w2[-4:] == ["-", "0", "3s", "ago"]
    assert json.loads(cube("nodes", "-o", "json").stdout) == _jsonable(nodes)


def test_nodes_show(manager: FakeManager, cube: Callable[..., Result]) -> None:
    manager.on("GET /v1/nodes/w1", 200, make_node(labels={"zone": "a"}, reason="drained"))
    manager.on("GET /v1/allocations", 200, [])
    result = cube("nodes", "show", "w1")
    assert result.exit_code == 0, result.output
    assert re.search(r"State:\s+Ready: drained", result.stdout)
    assert re.search(r"Labels:\s+zone=a", result.stdout)
    assert re.search(r"memory\s+8GiB\s+64MiB\s+7.9GiB", result.stdout)


def test_nodes_show_lists_the_allocations_it_holds(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    web = Allocation(
        job="shop", group="web", index=2, version=1, group_hash="h", node="w1", tasks={}
    )
    web.transition(AllocStatus.RUNNING, "every task running", now=datetime.now(UTC))
    ended = Allocation(job="shop", group="web", index=0, version=1, group_hash="h", node="w1")
    ended.transition(AllocStatus.COMPLETE, "stopped", now=datetime.now(UTC))
    manager.on("GET /v1/nodes/w1", 200, make_node())
    manager.on("GET /v1/allocations", 200, [web, ended])
    result = cube("nodes", "show", "w1")
    assert result.exit_code == 0, result.output
    assert manager.requests[-1].url.params == httpx.QueryParams(node="w1")
    _, listed = result.stdout.split("Allocations\n")
    header, row = listed.splitlines()
    assert header.split()[:6] == ["ID", "NAME", "NODE", "VERSION", "DESIRED", "STATUS"]
    assert row.split()[:6] == [web.id[:12], "shop.web[2]", "w1", "1", "run", "Running"]
    assert "shop.web[0]" not in result.stdout  # ended: history, not what the node holds

    shown = json.loads(cube("nodes", "show", "w1", "-o", "json").stdout)
    assert shown.pop("allocations") == _jsonable([web])
    assert shown == _jsonable(make_node()) | {"registered_at": shown["registered_at"]}


def test_a_subcommand_uses_its_groups_manager(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    manager.on("GET /v1/nodes/w1", 200, make_node())
    manager.on("GET /v1/allocations", 200, [])
    assert cube("nodes", "--manager", "10.1.2.3:7000", "show", "w1").exit_code == 0
    assert str(manager.requests[-2].url) == "http://10.1.2.3:7000/v1/nodes/w1"
    assert cube("nodes", "show", "w1", env={"CUBE_ADDR": "10.9.9.9:1"}).exit_code == 0
    assert {r.url.host for r in manager.requests[-2:]} == {"10.9.9.9"}


# ---------------------------------------------------------- client and helpers


def test_client_maps_errors_and_escapes_ids() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"error": "not_found", "message": "no task"})

    with ManagerClient("localhost:1", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(NotFound):
            client.task("a?c#d")
        with pytest.raises(InvalidSpec, match="id: must not be empty"):
            client.events("")
    assert seen == ["/v1/tasks/a%3Fc%23d"]


@pytest.mark.parametrize("value", ["a/b", "..", "."])
def test_an_id_that_cannot_be_one_path_segment_is_not_found_without_asking(value: str) -> None:
    """The server decodes %2F before routing and dot segments resolve to another path:
    sent, these would reach no route (a bare "Not Found") or the wrong one."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"detail": "Not Found"})

    with ManagerClient("localhost:1", transport=httpx.MockTransport(handler)) as client:
        for call, kind in (
            (client.task, "task"),
            (client.job, "job"),
            (client.allocation, "allocation"),
            (client.node, "node"),
        ):
            with pytest.raises(NotFound, match=f"^{kind} {re.escape(value)} not found$"):
                call(value)
    assert seen == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:5555", "http://127.0.0.1:5555"),
        ("https://cube.example.com/", "https://cube.example.com"),
        (DEFAULT_ADDR, DEFAULT_ADDR),
    ],
)
def test_manager_addresses(given: str, expected: str) -> None:
    assert normalise_url(given) == expected


def test_formatting_helpers() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert out.format_port(80, 8080, "tcp") == "8080->80/tcp"
    assert out.format_port(53, None, "udp") == "53/udp"
    assert out.title("running") == "Running"
    assert out.age(now - timedelta(seconds=90), now=now) == "1m"
    assert out.age(now + timedelta(seconds=5), now=now) == "0s", "clock skew is not negative"
    assert out.age(None) == "-"
    assert out.timestamp(now, now=now).endswith("(0s ago)")
    assert out.ratio(0.5, 4, out.format_cpu) == "0.5/4.0"
    assert out.ratio(64 * MiB, 1024 * MiB, out.format_size) == "64MiB/1GiB"
    assert out.percent(12.6) == "13%"
    assert out.or_dash(None) == out.or_dash("") == "-"


def test_task_ports_only_while_bound() -> None:
    spec = TaskSpec(name="web", image="x", ports=["8080:80", "9000", "53:53/udp"])
    requested = "8080->80/tcp, 9000/tcp, 53->53/udp"
    assert task_cli.task_ports(make_task(spec=spec)) == ""
    assert task_cli.ports_line(make_task(spec=spec)) == f"{requested} (requested, not bound)"
    bound = [PublishedPort(container=9000, host=32768)]
    published = make_task(spec=spec, ports=bound, state=State.RUNNING)
    assert task_cli.task_ports(published) == "32768->9000/tcp"
    assert task_cli.ports_line(published) == "32768->9000/tcp"
    ended = make_task(spec=spec, ports=bound, state=State.COMPLETED)
    assert task_cli.task_ports(ended) == ""


def test_status_list_shows_no_ports_before_binding_and_a_short_pending_reason(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    why = "no node has 64.0 free CPU; largest free: 3.5 on w1 (and 6 more nodes filtered)"
    pending = make_task(reason=why)
    done = make_task(state=State.COMPLETED, ports=[PublishedPort(container=80, host=8080)])
    manager.on("GET /v1/tasks", 200, [pending, done])
    header, *rows = cube("status").stdout.splitlines()
    assert header.split()[-1] == "REASON"
    reason_at = header.index("REASON")
    assert [row.split()[5] for row in rows] == ["-", "-"], "PORTS"
    assert rows[0][reason_at:] == why[: task_cli.REASON_WIDTH - 1] + "…"


def test_tables_keep_whole_ids_when_piped(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    image = f"registry.example.com/{'x' * 200}:latest"
    task = make_task(spec=TaskSpec(name="a" * 63, image=image))
    manager.on("GET /v1/tasks", 200, [task])
    row = cube("status").stdout.splitlines()[1]
    assert row.split()[:5] == [TASK_ID[:12], "a" * 63, "Pending", "-", image]


# ------------------------------------------------- text from the cluster is inert

#: What a hostile spec, worker or container could send: clear the screen, set the
#: window title, a C1 CSI (0x9b), and a right-to-left override.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202e"
SHOWN = r"\x1b[2J\x1b]0;pwned\x07\x9b31m\u202e"


def test_inert_shows_every_control_character_as_its_escape() -> None:
    assert out.inert(HOSTILE) == SHOWN
    assert out.inert("a\tb\nc") == r"a\x09b\x0ac"
    assert out.inert("a\tb\nc\x1b", lines=True) == "a\tb\nc\\x1b"
    assert out.inert("naïve 日本 ok") == "naïve 日本 ok"


def _no_control(text: str) -> None:
    assert not [c for c in text if c != "\n" and out.inert(c) != c], repr(text)


def test_status_of_a_task_shows_a_hostile_command_and_labels_inert(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    spec = TaskSpec(name="web", image="x", command=["echo", HOSTILE], labels={"k": HOSTILE})
    task = make_task(spec=spec, state=State.FAILED, reason=f"exited: {HOSTILE}")
    manager.on(f"GET /v1/tasks/{TASK_ID}", 200, task)
    event = TaskEvent(state=State.FAILED, previous=State.RUNNING, reason=HOSTILE)
    manager.on(f"GET /v1/tasks/{TASK_ID}/events", 200, [event])
    manager.on("GET /v1/tasks", 200, [task])
    result = cube("status", TASK_ID)
    assert result.exit_code == 0, result.output
    _no_control(result.stdout)
    assert f"echo '{SHOWN}'" in result.stdout
    assert f"k={SHOWN}" in result.stdout
    listed = cube("status").stdout
    _no_control(listed)
    assert "exited: \\x1b[2J" in listed
    shown = cube("status", TASK_ID, "-o", "json").stdout
    _no_control(shown)
    assert json.loads(shown)["spec"]["labels"] == {"k": HOSTILE}, "JSON keeps the value"


def test_nodes_show_labels_a_worker_reported_inert(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    manager.on("GET /v1/nodes/w1", 200, make_node(labels={"zone": HOSTILE}))
    manager.on("GET /v1/nodes", 200, [make_node(reason=HOSTILE)])
    manager.on("GET /v1/allocations", 200, [])
    result = cube("nodes", "show", "w1")
    _no_control(result.stdout)
    assert f"zone={SHOWN}" in result.stdout
    _no_control(cube("nodes", "show", "w1", "-o", "json").stdout)
    _no_control(cube("nodes").stdout)


def test_an_error_line_is_inert(capsys: pytest.CaptureFixture[str]) -> None:
    @handle_errors
    def command() -> None:
        raise CubeError(f"task {HOSTILE} not found")

    with pytest.raises(SystemExit):
        command()
    err = capsys.readouterr().err
    _no_control(err)
    assert err == f"Error: task {SHOWN} not found\n"


def test_logs_are_raw_and_inert_with_escape(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    raw = f"red \x1b[31m{HOSTILE}\tend\n".encode()
    # A UTF-8 character split between two chunks stays one character.
    chunks = [raw[:-8], raw[-8:-5], raw[-5:]]
    manager.routes["GET /v1/tasks/abc/logs"] = lambda _: httpx.Response(200, content=iter(chunks))
    assert cube("logs", "abc").stdout_bytes == raw
    escaped = cube("logs", "abc", "--escape").stdout
    assert escaped == f"red \\x1b[31m{SHOWN}\tend\n"


# ---------------------------------------------------------------- credentials


def test_a_manager_address_points_to_its_data_dir_while_it_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBE_DATA_DIR", str(tmp_path))
    data = tmp_path / "m1"
    pointer = credentials.claim_address("0.0.0.0", 6001, data)
    assert pointer is not None
    assert credentials.manager_dir_at("http://127.0.0.1:6001") == data
    assert credentials.manager_dir_at("localhost:6001") == data
    assert credentials.manager_dir_at("http://127.0.0.1:6002") is None
    credentials.claim_address("127.0.0.1", 6003, data)
    assert credentials.manager_dir_at("http://10.0.0.5:6003") is None, "another machine"
    record = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**record, "pid": 2**22 + 1}))  # above pid_max: dead
    assert credentials.manager_dir_at("http://127.0.0.1:6001") is None
    pointer.write_text(json.dumps(record))
    credentials.release_address(pointer)
    assert not pointer.exists()
    assert credentials.claim_address("127.0.0.1", 0, data) is None, "port 0: unknown yet"


def test_a_refused_token_is_named_by_where_it_came_from() -> None:
    found = credentials.FoundToken("t", "/x/token")
    assert found.hint(option="--token", env="CUBE_TOKEN") == (
        "the token sent came from /x/token; give the right one with --token or CUBE_TOKEN"
    )
    missing = credentials.FoundToken(None, searched=[Path("/a/token"), Path("/b/token")])
    assert missing.hint(option="--token", env="CUBE_TOKEN") == (
        "no token given with --token or CUBE_TOKEN, and no token file at /a/token, /b/token"
    )


def test_a_bad_job_file_is_one_line_naming_the_file_once_and_where(
    cube: Callable[..., Result], tmp_path: Path
) -> None:
    """``cube job run missing.yaml`` said ``missing.yaml: missing.yaml: cannot read job
    file: [Errno 2] ...`` and a YAML syntax error ``bad.yaml: body: not valid YAML``; they
    now read as ``cube run``'s: the file once, and the line and column."""
    missing = tmp_path / "missing.yaml"
    for command in ("run", "plan"):
        result = cube("job", command, str(missing))
        assert result.exit_code == 2
        line = assert_one_error_line(result, "does not exist")
        assert line.count("missing.yaml") == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("job: shop\ngroups: [\n")
    result = cube("job", "plan", str(broken))
    assert result.exit_code == 2
    line = assert_one_error_line(result)
    assert line.startswith(f"Error: {broken}:3:1: not valid YAML: ")
    # what is wrong (libyaml's words or PyYAML's), not only what YAML was doing
    assert line.endswith("node content (while parsing a flow node)") or line.endswith(
        "expected the node content, but found '<stream end>' (while parsing a flow node)"
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = cube("job", "run", str(empty))
    assert result.exit_code == 2
    assert (
        assert_one_error_line(result)
        == f"Error: {empty}: expected a mapping of job fields (job, groups)"
    )


def test_a_job_file_s_field_errors_say_on_which_line_as_cube_run_s_do(
    cube: Callable[..., Result], tmp_path: Path
) -> None:
    """``shop.yaml: groups[0].cout: ...`` named the field but not the line: each error of
    a job file is now at its line and column, as a task spec's (``web.yaml:5:3: ...``)."""
    shop = tmp_path / "shop.yaml"
    shop.write_text(
        "job: shop\n"
        "groups:\n"
        "  - name: web\n"
        "    cout: 3\n"
        "    tasks:\n"
        "      - name: api\n"
        "        image: cube-busybox:latest\n"
        "        resources: {memory: lots}\n"
    )
    result = cube("job", "plan", str(shop))
    assert result.exit_code == 2
    line = assert_one_error_line(result)
    assert f"{shop}:4:5: groups[0].cout: " in line, line
    assert f"{shop}:8:21: groups[0].tasks[0].resources.memory: invalid size 'lots'" in line


def test_a_task_spec_and_a_job_file_given_to_the_other_command_name_the_right_one(
    cube: Callable[..., Result], tmp_path: Path
) -> None:
    """A task spec given to ``cube job run`` was four errors (job, groups required; name,
    image not permitted), a job file given to ``cube run`` six: one line now says which
    command runs the file."""
    task = tmp_path / "web.yaml"
    task.write_text("name: web\nimage: cube-busybox:latest\n")
    for command in ("run", "plan"):
        result = cube("job", command, str(task))
        assert result.exit_code == 2
        assert assert_one_error_line(result) == (
            f"Error: {task}: a task spec (name:, image:), not a job file (job:, groups:):"
            " run it with `cube run FILE`"
        )
    job = tmp_path / "shop.yaml"
    job.write_text("job: shop\ngroups: [{name: web, tasks: [{name: a, image: b}]}]\n")
    result = cube("run", str(job))
    assert result.exit_code == 2
    assert assert_one_error_line(result) == (
        f"Error: {job}: a job file (job:, groups:), not a task spec: run it with"
        " `cube job run FILE`"
    )
    # A job file with a mistake in it is still told about its mistake.
    job.write_text("groups: [{name: web, tasks: [{name: a, image: b}]}]\nname: shop\n")
    result = cube("job", "run", str(job))
    assert "job: Field required" in assert_one_error_line(result)


def test_drain_and_undrain_say_what_they_do_once(
    cube: Callable[..., Result], manager: FakeManager
) -> None:
    """``cube nodes drain w1`` printed ``w1 draining (draining)``: the state is named only
    when it is not the one the change leads to."""
    manager.on("POST /v1/nodes/w1/drain", 200, make_node(state=NodeState.DRAINING, drain=True))
    result = cube("nodes", "drain", "w1")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "node w1 draining: its tasks move to other nodes and nothing new is placed on it"
        " (`cube nodes undrain w1` ends it)\n"
    )
    manager.on("POST /v1/nodes/w1/undrain", 200, make_node(state=NodeState.DOWN))
    assert cube("nodes", "undrain", "w1").stdout == "node w1 takes tasks again; it is down now\n"


def test_a_workers_address_is_named_as_one_not_as_a_bad_token() -> None:
    """``cube status --manager http://127.0.0.1:5556`` (the worker of ``cube dev``) said
    "invalid token: the token sent came from .../manager/token": the token was right."""

    def worker(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/health":
            return httpx.Response(200, json={"status": "ok", "role": "worker", "name": "w1"})
        return httpx.Response(401, json={"error": "unauthorized", "detail": "invalid token"})

    client = ManagerClient(
        "http://127.0.0.1:5556",
        transport=httpx.MockTransport(worker),
        token="t",
        credential_hint="h",
    )
    with pytest.raises(
        CubeError, match=r"^http://127.0.0.1:5556 is a Cube worker \(w1\), not a manager;"
    ):
        client.tasks()


def test_a_task_that_ended_shows_no_health(
    manager: FakeManager, cube: Callable[..., Result]
) -> None:
    """``cube status`` showed Completed tasks "stopped by user" as Healthy."""
    spec = TaskSpec(name="web", image="x", health=HealthCheck(http={"port": 80}))
    running = make_task(spec=spec, state=State.RUNNING, health=Health.HEALTHY)
    ended = make_task(spec=spec, state=State.COMPLETED, health=Health.HEALTHY)
    assert (task_cli.health_text(running), task_cli.health_text(ended)) == ("Healthy", "")
    manager.on("GET /v1/tasks", 200, [running, ended])
    header, *rows = cube("status").stdout.splitlines()
    at = header.index("HEALTH")
    assert [row[at:].split()[0] for row in rows] == ["Healthy", "-"]
