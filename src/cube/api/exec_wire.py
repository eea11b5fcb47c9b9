"""What ``cube exec`` sends over its WebSocket, CLI -> manager -> worker and back.

The command and its options are in the URL's query (``cmd`` once per argument,
``stdin=true``, ``tty=true``; the manager's route also takes ``task``). A refusal
(unknown task, not running, bad token) is the HTTP answer to the handshake, with the
usual error body, so scripts and the CLI read it like any other API error. Then:

* client -> server: binary messages are stdin; text messages are JSON controls,
  ``{"type": "eof"}`` (end of stdin) and ``{"type": "resize", "rows": R, "cols": C}``.
* server -> client: binary messages are output, their first byte the stream (1 stdout,
  2 stderr); the last message is text, ``{"type": "exit", "code": N}``, or
  ``{"type": "error", "message": "..."}`` when the exec broke off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cube.errors import FieldError, InvalidSpec

#: The most arguments, and the longest one, a command may have.
MAX_ARGS = 256
MAX_ARG = 8192

EOF_MESSAGE = json.dumps({"type": "eof"})


def output_frame(stream: int, data: bytes) -> bytes:
    return bytes([stream]) + data


def exit_message(code: int) -> str:
    return json.dumps({"type": "exit", "code": code})


def error_message(message: str) -> str:
    return json.dumps({"type": "error", "message": message})


def resize_message(rows: int, cols: int) -> str:
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


def control(text: str) -> dict[str, Any]:
    """A text message as a dict; anything that is not a JSON object is an empty one."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def size_of(message: Mapping[str, Any]) -> tuple[int, int] | None:
    """(rows, cols) of a resize message, if it is a sane one."""
    rows, cols = message.get("rows"), message.get("cols")
    if isinstance(rows, int) and isinstance(cols, int) and 0 < rows < 10000 and 0 < cols < 10000:
        return rows, cols
    return None


def command_of(args: list[str]) -> list[str]:
    """The ``cmd`` query values, checked: 422 naming ``cmd`` when unusable."""
    if not args or not args[0]:
        raise InvalidSpec([FieldError("cmd", "give the command to run, one cmd= per argument")])
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG for a in args):
        why = f"at most {MAX_ARGS} arguments of at most {MAX_ARG} characters each"
        raise InvalidSpec([FieldError("cmd", why)])
    if any("\x00" in a for a in args):
        raise InvalidSpec([FieldError("cmd", "an argument contains a NUL character")])
    return args


def flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")
