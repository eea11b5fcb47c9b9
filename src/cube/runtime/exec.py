"""Running a command in a container (``cube exec``): the session the runtime hands out, and
Docker's implementation of it.

Docker's exec API is three calls: ``POST /containers/{id}/exec`` creates the exec,
``POST /exec/{id}/start`` *hijacks* the HTTP connection (``Upgrade: tcp``, answered by
101) so that stdin, stdout and stderr travel over the raw socket, and
``GET /exec/{id}/json`` gives the exit code once the process ended. httpx cannot hand a
connection over like that, so the start call is written by hand on a connection of its
own (asyncio's, which can half-close: the end of stdin is a shutdown of the write side,
as the docker CLI does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import httpx

from cube.errors import Conflict, ContainerError, NotFound, RuntimeUnavailable

STDOUT = 1
STDERR = 2
#: How long to wait for the engine to record an exec's exit code after its output ended.
EXIT_WAIT = 10.0


class ExecSession(Protocol):
    """A command running in a container, its standard streams attached."""

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(:data:`STDOUT` or :data:`STDERR`, bytes) as the command writes; with a TTY
        everything is STDOUT. Ends when the command closed its output."""

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin (ignored without stdin)."""

    async def close_stdin(self) -> None:
        """End of input: the command reads EOF."""

    async def resize(self, rows: int, cols: int) -> None:
        """Set the TTY's size (no-op without a TTY)."""

    async def wait(self) -> int:
        """The command's exit code, once its output ended."""

    async def close(self) -> None:
        """Release the connection."""


class DockerExec:
    """:class:`ExecSession` on a hijacked Docker Engine connection."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        exec_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tty: bool,
    ) -> None:
        self._client, self.exec_id, self.tty = client, exec_id, tty
        self._reader, self._writer = reader, writer

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        if self.tty:  # raw: no framing
            while chunk := await self._reader.read(65536):
                yield STDOUT, chunk
            return
        while True:  # frames: stream (1 byte), 3 zero bytes, size (4 bytes, big-endian)
            try:
                header = await self._reader.readexactly(8)
                data = await self._reader.readexactly(struct.unpack(">I", header[4:])[0])
            except asyncio.IncompleteReadError:
                return
            yield (STDERR if header[0] == STDERR else STDOUT), data

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close_stdin(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def resize(self, rows: int, cols: int) -> None:
        if self.tty:
            params = {"h": rows, "w": cols}
            with contextlib.suppress(ContainerError):  # the command just ended: no TTY left
                await _call(self._client, "POST", f"/exec/{self.exec_id}/resize", params=params)

    async def wait(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_WAIT
        while True:
            state = (await _call(self._client, "GET", f"/exec/{self.exec_id}/json")).json()
            if not state.get("Running") and state.get("ExitCode") is not None:
                return int(state["ExitCode"])
            if loop.time() > deadline:
                raise ContainerError(f"exec {self.exec_id[:12]}: no exit code after its output")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def docker_exec(
    client: httpx.AsyncClient,
    socket: str,
    api_version: str,
    container_id: str,
    command: Sequence[str],
    *,
    stdin: bool,
    tty: bool,
) -> DockerExec:
    """Create the exec and start it on a hijacked connection to the engine at ``socket``."""
    body = {
        "AttachStdin": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": tty,
        "Cmd": list(command),
    }
    created = await _call(client, "POST", f"/containers/{container_id}/exec", json=body)
    exec_id = str(created.json()["Id"])
    try:
        reader, writer = await asyncio.open_unix_connection(socket, limit=1 << 20)
    except OSError as exc:
        why = f"cannot reach the Docker engine at unix://{socket}: {exc}"
        raise RuntimeUnavailable(why) from None
    try:
        await _start(reader, writer, f"/{api_version}/exec/{exec_id}/start", tty=tty)
    except BaseException:
        writer.close()
        raise
    return DockerExec(client, exec_id, reader, writer, tty=tty)


async def _start(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, *, tty: bool
) -> None:
    body = json.dumps({"Detach": False, "Tty": tty}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    try:
        answer = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise ContainerError(f"exec start: no answer from the engine ({exc})") from None
    status_line, *lines = answer.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    if status in (101, 200):  # upgraded; an engine that ignores Upgrade hijacks after 200
        return
    length = next(
        (int(v) for k, _, v in (x.partition(":") for x in lines) if k.lower() == "content-length"),
        0,
    )
    raw = await reader.readexactly(length) if length else b""
    raise _error(status, raw)


async def _call(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: object
) -> httpx.Response:
    try:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    except httpx.TransportError as exc:
        raise RuntimeUnavailable(f"cannot reach the Docker engine: {exc}") from None
    if response.status_code >= 300:
        raise _error(response.status_code, response.content)
    return response


def _error(status: int, raw: bytes) -> Exception:
    """The engine's refusal: 404 no such container, 409 it is not running (or paused)."""
    try:
        message = str(json.loads(raw).get("message", "")).strip()
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace").strip()
    message = message or f"HTTP {status}"
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    return ContainerError(message)
