"""The pure parts of a job's merged log stream: which containers, lines, prefixes, filters."""

from __future__ import annotations

import io
import os
import pty

import httpx
import pytest
from click.testing import CliRunner

from cube.cli.joblogs import JobLogPrinter, note, wants_colour
from cube.cli.main import cli
from cube.errors import InvalidSpec
from cube.job.logs import LineSplitter, LogRecord, log_sources
from cube.job.model import Allocation, AllocTask
from cube.job.parse import parse_job
from cube.manager.joblogs_api import check_filters, since_time
from cube.task.model import Task
from cube.task.spec import TaskSpec


def alloc(group: str, index: int, *names: str) -> Allocation:
    a = Allocation(job="shop", group=group, index=index, version=1, group_hash="h")
    a.tasks = {n: AllocTask(id=f"{a.id}-{n}") for n in names}
    return a


def placed(a: Allocation, name: str, *, node: str | None = "w1", container: str = "c") -> Task:
    task = Task(id=a.tasks[name].id, spec=TaskSpec(name=name, image="busybox"), node=node)
    task.container_id = container + a.id
    return task


def test_sources_are_the_placed_containers_filtered_and_in_order() -> None:
    web1, web0, db = alloc("web", 1, "api", "side"), alloc("web", 0, "api"), alloc("db", 0, "pg")
    tasks = {
        t.id: t
        for t in (
            placed(web1, "api", node="w2"),
            placed(web1, "side"),
            placed(web0, "api"),
            placed(db, "pg"),
        )
    }
    unplaced = alloc("web", 2, "api")
    tasks[unplaced.tasks["api"].id] = placed(unplaced, "api", node=None)
    every = log_sources([web1, web0, db, unplaced], tasks)
    assert [(s.group, s.index, s.task, s.node) for s in every] == [
        ("db", 0, "pg", "w1"),
        ("web", 0, "api", "w1"),
        ("web", 1, "api", "w2"),
        ("web", 1, "side", "w1"),
    ]
    assert every[1].name == "shop.web[0]"
    only = log_sources([web1, web0, db], tasks, group="web", task="api")
    assert [(s.index, s.task) for s in only] == [(0, "api"), (1, "api")]


def test_a_restart_is_a_new_source() -> None:
    a = alloc("web", 0, "api")
    [first] = log_sources([a], {a.tasks["api"].id: placed(a, "api", container="one")})
    [second] = log_sources([a], {a.tasks["api"].id: placed(a, "api", container="two")})
    assert first.key != second.key
    assert first.key[0] == second.key[0]


def test_lines_split_across_chunks_and_characters_split_across_chunks_are_whole() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\r\n\xc3") == ["two"]
    assert splitter.feed(b"\xa9t\xe9 ") == []
    assert splitter.flush() == ["ét\ufffd "]
    assert splitter.flush() == []


def test_a_line_without_end_is_cut_at_the_limit() -> None:
    splitter = LineSplitter(limit=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.feed(b"k\n0123456789\n") == ["ijk", "0123", "4567", "89"]


def record(**kw: object) -> LogRecord:
    base: dict[str, object] = {"kind": "line", "node": "w2", "group": "web", "task": "api"}
    return LogRecord.model_validate({**base, **kw})


def test_lines_are_prefixed_plain_when_piped_and_coloured_per_allocation_in_a_terminal() -> None:
    plain = io.BytesIO()
    printer = JobLogPrinter(plain, colour=False, escape=False)
    printer.write(record(alloc="a", index=1, text="hi \x1b[1mbold"))
    assert plain.getvalue() == b"web[1] api@w2 | hi \x1b[1mbold\n"

    tty = io.BytesIO()
    printer = JobLogPrinter(tty, colour=True, escape=False)
    for alloc_id, index in (("a", 0), ("b", 1), ("a", 0)):
        printer.write(record(alloc=alloc_id, index=index, text="x"))
    first, second, third = tty.getvalue().decode().splitlines()
    assert first.startswith("\x1b[36mweb[0] api@w2 | \x1b[0m")
    assert second.startswith("\x1b[33mweb[1] api@w2 | \x1b[0m")
    assert third == first


def test_escape_makes_the_output_inert_but_keeps_tabs() -> None:
    sink = io.BytesIO()
    JobLogPrinter(sink, colour=False, escape=True).write(record(text="a\tb\x1b[2J"))
    assert sink.getvalue() == b"web[0] api@w2 | a\tb\\x1b[2J\n"


def test_notes_name_the_node() -> None:
    quiet = note(LogRecord(kind="quiet", node="w2", text="cannot reach http://w2"))
    assert quiet == (
        "cube: node w2 went quiet (cannot reach http://w2); the other allocations go on streaming"
    )
    assert note(LogRecord(kind="back", node="w2")).startswith("cube: node w2 is back")


SHOP = parse_job(
    {
        "job": "shop",
        "groups": [
            {"name": "web", "tasks": [{"name": n, "image": "b"} for n in ("api", "side")]},
            {"name": "db", "tasks": [{"name": "pg", "image": "b"}]},
        ],
    }
)


def test_filters_that_name_nothing_in_the_job_are_refused_naming_the_field() -> None:
    check_filters(SHOP, "web", "side")
    check_filters(SHOP, None, "pg")
    with pytest.raises(InvalidSpec) as group:
        check_filters(SHOP, "cache", None)
    assert group.value.errors[0].field == "group"
    assert "no group 'cache' (web, db)" in group.value.message
    with pytest.raises(InvalidSpec) as task:
        check_filters(SHOP, "web", "pg")
    assert task.value.errors[0].field == "task"
    assert "group web has no task 'pg' (api, side)" in task.value.message


def test_since_is_a_duration_back_from_now() -> None:
    assert since_time("5m", 1000.0) == 700.0
    assert since_time(None, 1000.0) is None
    assert since_time("100000h", 1000.0) == 0.0
    with pytest.raises(InvalidSpec) as bad:
        since_time("yesterday", 1000.0)
    assert bad.value.errors[0].field == "since"


def test_colour_only_for_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent, child = pty.openpty()
    with os.fdopen(child, "wb") as terminal:
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert wants_colour(terminal)
        monkeypatch.setenv("NO_COLOR", "1")
        assert not wants_colour(terminal)
    os.close(parent)
    monkeypatch.delenv("NO_COLOR")
    assert not wants_colour(io.BytesIO())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a task ID, or --job JOB"),
        (["abc", "--job", "shop"], "--job streams every allocation: give no ID and no --tail"),
        (["--job", "shop", "--tail", "5"], "--job streams every allocation"),
        (["abc", "--since", "5m"], "--group, --task and --since go with --job"),
    ],
)
def test_logs_flags_that_do_not_fit_are_usage_errors(args: list[str], message: str) -> None:
    def no_call(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.url}")

    result = CliRunner().invoke(cli, ["logs", *args], obj=httpx.MockTransport(no_call))
    assert result.exit_code == 2
    assert message in result.output


def test_a_job_with_no_output_says_so_on_stderr() -> None:
    """``cube logs --job shop`` of a job that wrote nothing (nothing placed yet) printed
    nothing and exited 0, like a command that did not run; stdout stays the job's output."""
    line = LogRecord(
        kind="line", alloc="a1", group="web", index=0, task="api", node="w1", text="hi"
    )
    for records, said in (([], True), ([line], False)):
        body = "".join(r.model_dump_json() + "\n" for r in records)

        def answer(request: httpx.Request, body: str = body) -> httpx.Response:
            assert request.url.path == "/v1/jobs/shop/logs"
            return httpx.Response(200, text=body)

        result = CliRunner().invoke(
            cli, ["logs", "--job", "shop"], obj=httpx.MockTransport(answer), env={"NO_COLOR": "1"}
        )
        assert result.exit_code == 0, result.output
        assert result.stdout == ("" if said else "web[0] api@w1 | hi\n")
        assert (
            result.stderr
            == (
                "cube: no output from job shop (no allocation placed yet, or its tasks wrote"
                " nothing): `cube job status shop` shows its allocations\n"
            )
        ) is said
