"""WebSocket routes' shared pieces: refusing a handshake, reading an exec's query."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.websockets import WebSocket

from cube.api.errors import cube_error_response
from cube.api.exec_wire import command_of, flag
from cube.errors import CubeError


async def deny(websocket: WebSocket, exc: CubeError) -> None:
    """Refuse the handshake with the HTTP answer ``exc`` stands for (404, 409, 422...)."""
    await websocket.send_denial_response(cube_error_response(exc))


@dataclass(frozen=True)
class ExecRequest:
    command: list[str]
    stdin: bool
    tty: bool

    @classmethod
    def of(cls, websocket: WebSocket) -> ExecRequest:
        """From the query (see :mod:`cube.api.exec_wire`); InvalidSpec naming ``cmd``."""
        query = websocket.query_params
        return cls(
            command=command_of(query.getlist("cmd")),
            stdin=flag(query.get("stdin")),
            tty=flag(query.get("tty")),
        )

    def query(self) -> list[tuple[str, str]]:
        """The query that asks the same again (the manager, of the worker)."""
        return [
            *(("cmd", c) for c in self.command),
            ("stdin", str(self.stdin).lower()),
            ("tty", str(self.tty).lower()),
        ]
