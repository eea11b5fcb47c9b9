"""Structured logging: ``time level component message key=value ...``.

Every line names what it is about (``task=... node=...``) so that one grep follows
a task across manager and workers. Values are quoted when they contain spaces, and
newlines in them are escaped: one record is one line, a traceback included (in its
``traceback=`` field), so a grep for a task or an error finds the whole record.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any


def _format_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\r'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'
    return text


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as Python prints it, without the trailing newline."""
    return "".join(traceback.format_exception(exc)).rstrip("\n")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "kv", {})
        line = (
            f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower():5} "
            f"{record.name.removeprefix('cube.')}: {record.getMessage()}"
        )
        if fields:
            line += " " + " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class Logger:
    """A thin wrapper so call sites read ``log.info("task started", task=t.id, node=n)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, extra={"kv": fields})

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, *, exc: BaseException | None = None, **fields: Any) -> None:
        """With ``exc``, its traceback goes in the ``traceback`` field (last, one line)."""
        if exc is not None:
            fields["traceback"] = format_traceback(exc)
        self._log(logging.ERROR, msg, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)


def setup_logging(level: str = "info") -> None:
    """Send Cube's logs to stderr as key=value lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("cube")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
