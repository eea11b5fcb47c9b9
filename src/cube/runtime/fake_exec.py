""":class:`~cube.runtime.exec.ExecSession` without an engine, for FakeRuntime.

It knows three commands, enough for pure-logic tests of what carries an exec's streams:
``echo ARGS`` prints them, ``cat`` copies stdin to stdout until stdin ends, and
``exit N`` ends with code N. Anything else prints ``fake: CMD: not found`` on stderr
and ends with 127, as a shell would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from cube.runtime.exec import STDERR, STDOUT


class FakeExec:
    def __init__(self, command: Sequence[str], *, stdin: bool, tty: bool) -> None:
        self.command, self.stdin, self.tty = list(command), stdin, tty
        #: (rows, cols) of every resize, in order.
        self.sizes: list[tuple[int, int]] = []
        self.closed = False
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._code = 0

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        name, *args = self.command or [""]
        if name == "echo":
            yield STDOUT, (" ".join(args) + "\n").encode()
        elif name == "cat":
            while self.stdin and (data := await self._input.get()) is not None:
                yield STDOUT, data
        elif name == "exit" and args and args[0].isdigit():
            self._code = int(args[0])
        else:
            self._code = 127
            yield (STDOUT if self.tty else STDERR), f"fake: {name}: not found\n".encode()

    async def write(self, data: bytes) -> None:
        self._input.put_nowait(data)

    async def close_stdin(self) -> None:
        self._input.put_nowait(None)

    async def resize(self, rows: int, cols: int) -> None:
        if self.tty:
            self.sizes.append((rows, cols))

    async def wait(self) -> int:
        return self._code

    async def close(self) -> None:
        self.closed = True
