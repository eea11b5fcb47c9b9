"""The exec session's bridge to a WebSocket (cube.worker.exec_api.serve) and the wire's
pieces, on FakeRuntime's session: no Docker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cube.api.exec_wire import (
    EOF_MESSAGE,
    command_of,
    control,
    resize_message,
    size_of,
)
from cube.errors import Conflict, InvalidSpec
from cube.runtime.base import ContainerConfig
from cube.runtime.exec import STDERR
from cube.runtime.fake import FakeRuntime
from cube.runtime.fake_exec import FakeExec
from cube.worker.exec_api import _input, serve


class Socket:
    """The server side of a WebSocket, as :func:`serve` uses it: what the client sends
    is queued in ``inbox``; what the server sends lands in ``sent``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[bytes | dict[str, Any]] = []
        self.closed = False

    def send_in(self, data: bytes | str) -> None:
        key = "bytes" if isinstance(data, bytes) else "text"
        self.inbox.put_nowait({"type": "websocket.receive", key: data})

    def hang_up(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect"})

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self) -> None:
        self.closed = True


async def bridge(session: FakeExec, socket: Socket) -> list[bytes | dict[str, Any]]:
    await asyncio.wait_for(serve(socket, session, stdin=session.stdin), timeout=10)  # type: ignore[arg-type]
    assert socket.closed
    return socket.sent


async def test_stdin_goes_in_until_its_end_and_the_exit_code_comes_last() -> None:
    socket = Socket()
    socket.send_in(b"hi\n")
    socket.send_in(b"there\n")
    socket.send_in(EOF_MESSAGE)
    sent = await bridge(FakeExec(["cat"], stdin=True, tty=False), socket)
    assert sent == [b"\x01hi\n", b"\x01there\n", {"type": "exit", "code": 0}]


async def test_stderr_is_its_own_stream_and_a_failing_command_its_code() -> None:
    sent = await bridge(FakeExec(["nope"], stdin=False, tty=False), Socket())
    assert sent == [bytes([STDERR]) + b"fake: nope: not found\n", {"type": "exit", "code": 127}]


async def test_resizes_reach_a_tty_and_nonsense_is_ignored() -> None:
    session, socket = FakeExec(["cat"], stdin=True, tty=True), Socket()
    for text in (resize_message(40, 120), '{"type": "resize", "rows": -1}', "not json"):
        socket.send_in(text)
    socket.send_in(EOF_MESSAGE)
    assert (await bridge(session, socket))[-1] == {"type": "exit", "code": 0}
    assert session.sizes == [(40, 120)]


@pytest.mark.parametrize("stdin", [True, False])
async def test_input_reaches_the_command_only_with_stdin(stdin: bool) -> None:
    session, socket = FakeExec(["cat"], stdin=stdin, tty=False), Socket()
    socket.send_in(b"data")
    socket.send_in(EOF_MESSAGE)
    socket.hang_up()
    await asyncio.wait_for(_input(socket, session, stdin=stdin), timeout=10)  # type: ignore[arg-type]
    written = [session._input.get_nowait() for _ in range(session._input.qsize())]
    assert written == ([b"data", None] if stdin else [])


async def test_a_client_that_hangs_up_ends_the_exec_without_an_exit_code() -> None:
    socket = Socket()
    socket.hang_up()
    assert await bridge(FakeExec(["cat"], stdin=True, tty=False), socket) == []


async def test_the_fake_runtime_refuses_a_container_that_does_not_run() -> None:
    runtime = FakeRuntime()
    info = await runtime.run(ContainerConfig(name="c", image="busybox"))
    session = await runtime.exec(info.id, ["exit", "5"], stdin=False, tty=False)
    assert [x async for x in session.output()] == []
    assert await session.wait() == 5
    runtime.crash(info.id)
    with pytest.raises(Conflict):
        await runtime.exec(info.id, ["true"], stdin=False, tty=False)


def test_commands_are_checked_naming_cmd() -> None:
    assert command_of(["sh", "-c", "true"]) == ["sh", "-c", "true"]
    for bad in ([], [""], ["x"] * 300, ["a\x00b"]):
        with pytest.raises(InvalidSpec) as refused:
            command_of(bad)
        assert refused.value.errors[0].field == "cmd"


def test_controls_and_sizes_are_read_defensively() -> None:
    assert control("[1]") == {}
    assert control("{") == {}
    assert size_of({"rows": 24, "cols": 80}) == (24, 80)
    assert size_of({"rows": 0, "cols": 80}) is None
    assert size_of({"rows": 24}) is None
