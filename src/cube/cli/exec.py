"""``cube exec``: run a command in a running task's container, through the manager.

The CLI's only WebSocket (``WS /v1/exec/{target}``, see :mod:`cube.api.exec_wire`):
stdin goes up from a thread, output comes down on the main thread, and the command's
exit code becomes the CLI's. With ``-t`` and a terminal on stdin, the terminal is put
in raw mode (keys reach the command as typed, Ctrl-C included) and its size is sent at
the start and on every SIGWINCH.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import sys
import termios
import threading
import tty as ttys
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import click
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from cube import errors
from cube.api.exec_wire import EOF_MESSAGE, control, resize_message
from cube.cli import output as out
from cube.cli.client import ManagerClient, manager_option
from cube.cli.errors import handle_errors

#: Seconds to wait for the manager (and, through it, the worker) to accept.
OPEN_TIMEOUT = 20.0
#: Seconds to wait for the manager's goodbye when leaving early (the reader went away):
#: output still streaming in must not hold the CLI.
CLOSE_TIMEOUT = 1.0


@click.command("exec")
@click.argument("target", metavar="ALLOC_OR_TASK")
@click.argument("command", nargs=-1, required=True, metavar="-- CMD...")
@click.option("--task", "task_name", metavar="T", help="The task of the allocation to run in.")
@click.option("-i", "--interactive", is_flag=True, help="Send stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@handle_errors
@manager_option
def exec_command(
    client: ManagerClient,
    target: str,
    command: tuple[str, ...],
    task_name: str | None,
    interactive: bool,
    tty: bool,
) -> None:
    """Run a command inside a running task's container and exit with its exit code.

    ALLOC_OR_TASK is a task (ID, ID prefix or name) or a job's allocation (ID, ID prefix
    or job.group[index]; --task picks one of its tasks when it has several). -i sends
    stdin to the command, -t gives it a terminal (both, for a shell).

    \b
    Example:
      cube exec web -- cat /etc/hostname
      echo hi | cube exec web -i -- cat
      cube exec 'shop.web[0]' --task api -it -- sh
    """
    try:
        code = run_exec(client, target, list(command), task=task_name, stdin=interactive, tty=tty)
    except (
        BrokenPipeError
    ):  # `cube exec T -- yes | head`: as a shell reports a writer SIGPIPE ended
        out.silence_stdout()
        code = 128 + signal.SIGPIPE
    sys.exit(code)


def run_exec(
    client: ManagerClient,
    target: str,
    command: list[str],
    *,
    task: str | None,
    stdin: bool,
    tty: bool,
) -> int:
    query = [("cmd", c) for c in command] + [
        ("stdin", str(stdin).lower()),
        ("tty", str(tty).lower()),
    ]
    if task is not None:
        query.append(("task", task))
    path = f"/v1/exec/{quote(target, safe='')}?{urlencode(query)}"
    with _open(client, path) as ws, _raw_terminal(tty and stdin):
        if tty:
            _send_sizes(ws)
        if stdin:
            threading.Thread(target=_pump_stdin, args=(ws,), daemon=True).start()
        return _receive(ws)


@contextlib.contextmanager
def _open(client: ManagerClient, path: str) -> Iterator[ClientConnection]:
    base = client.base_url
    url = ("wss" + base[5:] if base.startswith("https") else "ws" + base[4:]) + path
    verify = client.verify
    try:
        ws = connect(
            url,
            additional_headers=client.headers,
            ssl=verify if isinstance(verify, ssl.SSLContext) else None,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            max_size=None,
            compression=None,
        )
    except InvalidStatus as exc:
        raise client.refused(
            exc.response.status_code, bytes(exc.response.body or b""), path
        ) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise client.cannot_reach(exc) from None
    with ws:
        yield ws


def _receive(ws: ClientConnection) -> int:
    """Print output until the exit code arrives; return it."""
    sinks = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    try:
        for message in ws:
            if isinstance(message, bytes):
                sink = sinks.get(message[0], sys.stdout.buffer)
                sink.write(message[1:])
                sink.flush()
                continue
            answer = control(message)
            if answer.get("type") == "exit" and isinstance(answer.get("code"), int):
                return int(answer["code"])
            if answer.get("type") == "error":
                raise errors.CubeError(f"exec broke off: {answer.get('message', '')}")
    except ConnectionClosed as exc:
        raise errors.Unavailable(f"the connection to the manager broke: {exc}") from None
    raise errors.Unavailable("the manager closed the connection before the command ended")


def _pump_stdin(ws: ClientConnection) -> None:
    """stdin to the command, then its end: ``echo hi | cube exec T -i -- cat`` ends."""
    fd = sys.stdin.fileno()
    with contextlib.suppress(OSError, ConnectionClosed):
        while data := os.read(fd, 65536):
            ws.send(data)
        ws.send(EOF_MESSAGE)


def _send_sizes(ws: ClientConnection) -> None:
    """The terminal's size now and after each change, if stdout is a terminal."""
    if not sys.stdout.isatty():
        return

    def send() -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            size = os.get_terminal_size(sys.stdout.fileno())
            ws.send(resize_message(size.lines, size.columns))

    send()
    # From a thread: the handler runs on the main thread, which may be inside recv.
    signal.signal(signal.SIGWINCH, lambda *_: threading.Thread(target=send, daemon=True).start())


@contextlib.contextmanager
def _raw_terminal(wanted: bool) -> Iterator[None]:
    """Raw mode on stdin while the command runs, if it is a terminal; restored after."""
    if not wanted or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    ttys.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
