"""The CLI's one connection to the manager's HTTP API (``/v1``), synchronous.

Every request goes through :meth:`ManagerClient._send`, so an HTTP error answer
becomes the matching Cube error (:func:`cube.api.client.check`) and a connection
failure becomes one :class:`~cube.errors.Unavailable` that says how to fix it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx
from click.core import ParameterSource
from pydantic import TypeAdapter, ValidationError

from cube import errors
from cube.api.client import check, error_from_response, unreachable
from cube.api.tls import Verify, client_verify
from cube.cli.credentials import CA_ENV, TOKEN_ENV, TOKEN_FILE, FoundToken, find_token
from cube.errors import FieldError
from cube.job.deployment import Deployment
from cube.job.logs import LogRecord
from cube.job.model import Allocation, Job, JobVersion
from cube.job.wire import HistoryEntry, JobDetail, JobPlan
from cube.node import Node
from cube.task.model import Task, TaskEvent
from cube.task.spec import KEEP_SECRETS, TaskRequest

DEFAULT_ADDR = "http://127.0.0.1:5555"
ADDR_ENV = "CUBE_ADDR"
#: Seconds to wait for an answer. Stopping a task waits for its container, so not 5.
DEFAULT_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 5.0
_HINT = "is `cube manager` or `cube dev` running? set --manager or CUBE_ADDR"

T = TypeVar("T")
R = TypeVar("R")

_TASK = TypeAdapter(Task)
_TASKS = TypeAdapter(list[Task])
_EVENTS = TypeAdapter(list[TaskEvent])
_NODE = TypeAdapter(Node)
_NODES = TypeAdapter(list[Node])
_HEALTH = TypeAdapter(dict[str, Any])
_JOB = TypeAdapter(Job)
_JOBS = TypeAdapter(list[Job])
_JOB_DETAIL = TypeAdapter(JobDetail)
_JOB_PLAN = TypeAdapter(JobPlan)
_VERSIONS = TypeAdapter(list[JobVersion])
_DEPLOYMENT = TypeAdapter(Deployment)
_DEPLOYMENTS = TypeAdapter(list[Deployment])
_HISTORY = TypeAdapter(list[HistoryEntry])
_ALLOC = TypeAdapter(Allocation)
_ALLOCS = TypeAdapter(list[Allocation])
_YAML = {"Content-Type": "application/yaml"}


def normalise_url(url: str) -> str:
    """``127.0.0.1:5555`` -> ``http://127.0.0.1:5555``; anything but http(s) is a usage error."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    try:
        parsed = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise _bad_address(url, str(exc)) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _bad_address(url, "expected http://HOST:PORT")
    return text


def _bad_address(url: str, why: str) -> errors.InvalidSpec:
    return errors.InvalidSpec([FieldError("--manager", f"{why}, got {url!r}")])


class ManagerClient:
    """Blocking client of the manager API; one method per endpoint, Cube models in and out.

    ``transport`` replaces the network, e.g. with an ``httpx.MockTransport`` in tests.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_ADDR,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
        verify: Verify = True,
        credential_hint: str = "",
    ) -> None:
        """``credential_hint`` is added to a 401: where the token came from, or was
        looked for."""
        self.base_url = normalise_url(base_url)
        self._credential_hint = credential_hint
        connect = min(timeout, _CONNECT_TIMEOUT)
        self._timeout = httpx.Timeout(timeout, connect=connect)
        # Following waits for output as long as the task lives: no read timeout then.
        self._follow_timeout = httpx.Timeout(timeout, connect=connect, read=None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        #: What a WebSocket to the manager (cube exec) sends and trusts, as the calls do.
        self.headers, self.verify = headers, verify
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self._timeout,
            transport=transport,
            headers=headers,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- tasks

    def run(self, request: TaskRequest) -> Task:
        body = request.model_dump(mode="json", exclude_none=True, context=KEEP_SECRETS)
        return self._parse(_TASK, self._send("POST", "/v1/tasks", json=body))

    def tasks(self, *, state: str | None = None, node: str | None = None) -> list[Task]:
        params = {k: v for k, v in (("state", state), ("node", node)) if v is not None}
        return self._parse(_TASKS, self._send("GET", "/v1/tasks", params=params))

    def task(self, task_id: str) -> Task:
        """One task, by its ID or a unique prefix of it."""
        return self._parse(_TASK, self._send("GET", _task_path(task_id)))

    def stop(self, task_id: str) -> Task:
        return self._parse(_TASK, self._send("DELETE", _task_path(task_id)))

    def events(self, task_id: str) -> list[TaskEvent]:
        return self._parse(_EVENTS, self._send("GET", _task_path(task_id, "/events")))

    def logs(
        self, task_id: str, *, tail: int | None = None, follow: bool = False
    ) -> Iterator[bytes]:
        """The container's output as it arrives; with ``follow``, until the task ends."""
        params: dict[str, str | int] = {} if tail is None else {"tail": tail}
        if follow:
            params["follow"] = "true"
        with self._stream(_task_path(task_id, "/logs"), params, follow=follow) as response:
            yield from response.iter_bytes()

    def job_logs(self, job_id: str, **params: str) -> Iterator[LogRecord]:
        """A job's merged log stream, record by record (``GET /v1/jobs/{id}/logs``)."""
        follow = params.get("follow") == "true"
        with self._stream(_job_path(job_id, "/logs"), params, follow=follow) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield self._parse_line(line, response)

    @contextlib.contextmanager
    def _stream(
        self, path: str, params: Mapping[str, str | int], *, follow: bool
    ) -> Iterator[httpx.Response]:
        """A streamed GET whose answer was a success; following, without a read timeout.
        A connection that breaks, before or while the body is read, is Unavailable."""
        timeout = self._follow_timeout if follow else self._timeout
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _parse_line(self, line: str, response: httpx.Response) -> LogRecord:
        try:
            return LogRecord.model_validate_json(line)
        except ValidationError:
            raise errors.CubeError(
                f"unexpected line from {response.request.url}: {line[:200]!r}"
            ) from None

    # --- jobs and allocations

    def submit_job(self, text: str) -> tuple[Job, bool]:
        """Submit a job file's text (YAML or JSON) as it is; True when a new version."""
        response = self._send("POST", "/v1/jobs", content=text.encode(), headers=_YAML)
        return self._parse(_JOB, response), response.status_code == 201

    def plan_job(self, text: str) -> JobPlan:
        response = self._send("POST", "/v1/jobs/plan", content=text.encode(), headers=_YAML)
        return self._parse(_JOB_PLAN, response)

    def jobs(self) -> list[Job]:
        return self._parse(_JOBS, self._send("GET", "/v1/jobs"))

    def job(self, job_id: str) -> JobDetail:
        return self._parse(_JOB_DETAIL, self._send("GET", _job_path(job_id)))

    def job_versions(self, job_id: str) -> list[JobVersion]:
        return self._parse(_VERSIONS, self._send("GET", _job_path(job_id, "/versions")))

    def stop_job(self, job_id: str, *, purge: bool = False) -> Job:
        params = {"purge": "true"} if purge else {}
        return self._parse(_JOB, self._send("DELETE", _job_path(job_id), params=params))

    def scale_job(self, job_id: str, group: str, count: int) -> Job:
        body = {"group": group, "count": count}
        return self._parse(_JOB, self._send("POST", _job_path(job_id, "/scale"), json=body))

    def job_history(self, job_id: str) -> list[HistoryEntry]:
        return self._parse(_HISTORY, self._send("GET", _job_path(job_id, "/history")))

    def job_deployments(self, job_id: str) -> list[Deployment]:
        return self._parse(_DEPLOYMENTS, self._send("GET", _job_path(job_id, "/deployments")))

    def promote_job(self, job_id: str) -> Deployment:
        return self._parse(_DEPLOYMENT, self._send("POST", _job_path(job_id, "/promote")))

    def pause_job(self, job_id: str) -> Deployment:
        return self._parse(_DEPLOYMENT, self._send("POST", _job_path(job_id, "/pause")))

    def resume_job(self, job_id: str) -> Deployment:
        return self._parse(_DEPLOYMENT, self._send("POST", _job_path(job_id, "/resume")))

    def fail_job(self, job_id: str) -> Deployment:
        return self._parse(_DEPLOYMENT, self._send("POST", _job_path(job_id, "/fail")))

    def revert_job(self, job_id: str, version: int | None = None) -> Job:
        body = {} if version is None else {"version": version}
        return self._parse(_JOB, self._send("POST", _job_path(job_id, "/revert"), json=body))

    def allocations(self, *, job: str | None = None, node: str | None = None) -> list[Allocation]:
        params = {k: v for k, v in (("job", job), ("node", node)) if v is not None}
        return self._parse(_ALLOCS, self._send("GET", "/v1/allocations", params=params))

    def allocation(self, alloc_id: str) -> Allocation:
        path = f"/v1/allocations/{_segment(alloc_id, 'id', kind='allocation')}"
        return self._parse(_ALLOC, self._send("GET", path))

    # --- nodes and the manager itself

    def nodes(self) -> list[Node]:
        return self._parse(_NODES, self._send("GET", "/v1/nodes"))

    def node(self, name: str) -> Node:
        return self._parse(_NODE, self._send("GET", f"/v1/nodes/{_segment(name, 'node')}"))

    def drain(self, name: str) -> Node:
        return self._parse(_NODE, self._send("POST", f"/v1/nodes/{_segment(name, 'node')}/drain"))

    def undrain(self, name: str) -> Node:
        path = f"/v1/nodes/{_segment(name, 'node')}/undrain"
        return self._parse(_NODE, self._send("POST", path))

    def health(self) -> dict[str, Any]:
        return self._parse(_HEALTH, self._send("GET", "/v1/health"))

    # --- plumbing

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return self._check(response)

    def _check(self, response: httpx.Response) -> httpx.Response:
        """:func:`check`, and a refused token says which token it was."""
        if response.status_code == 401:
            self._check_is_manager()
            if self._credential_hint:
                hint = self._credential_hint
                raise errors.CubeError(f"{error_from_response(response)}: {hint}")
        return check(response)

    def _check_is_manager(self) -> None:
        """After a refused token: a worker's address (its port is next to the manager's)
        refuses every token a user has, and "invalid token" sends them after the wrong
        thing. ``GET /v1/health`` needs none and says what answers."""
        try:
            health = self._http.get("/v1/health").json()
        except (httpx.HTTPError, ValueError):
            return
        role = health.get("role") if isinstance(health, dict) else None
        if isinstance(role, str) and role != "manager":
            name = health.get("name")
            raise errors.CubeError(
                f"{self.base_url} is a Cube {role}{f' ({name})' if name else ''}, not a manager;"
                " give the manager's address with --manager or CUBE_ADDR"
            )

    def _parse(self, adapter: TypeAdapter[T], response: httpx.Response) -> T:
        """Decode a success answer; one that does not fit means the address is not a manager."""
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["msg"] if exc.error_count() else str(exc)
            raise errors.CubeError(
                f"unexpected answer from {response.request.url} ({first}); "
                f"is {self.base_url} a Cube manager?"
            ) from None

    def _unreachable(self, exc: Exception) -> errors.Unavailable:
        cause = unreachable(f"the manager at {self.base_url}", exc)
        return errors.Unavailable(f"{cause.message} ({_HINT})")

    def refused(self, status: int, body: bytes, path: str) -> errors.CubeError:
        """The error a refused WebSocket handshake stands for, as :meth:`_check` says it."""
        request = self._http.build_request("GET", path)
        try:
            self._check(httpx.Response(status, content=body, request=request))
        except errors.CubeError as exc:
            return exc
        return errors.CubeError(f"the manager refused {path} (HTTP {status})")

    def cannot_reach(self, exc: Exception) -> errors.Unavailable:
        return self._unreachable(exc)


def _segment(value: str, what: str, *, kind: str | None = None) -> str:
    """One URL path segment; an empty one would silently address the collection instead.

    A value with a ``/``, or ``.`` or ``..``, names nothing (IDs and names have neither),
    and cannot be sent as one segment: the server decodes ``%2F`` before routing and
    dot segments are resolved, so the request would reach no route ("Not Found") or
    another one. It is not found, said as for any unknown ``kind`` (default ``what``).
    """
    if not value:
        raise errors.InvalidSpec([FieldError(what, "must not be empty")])
    if "/" in value or value in (".", ".."):
        raise errors.NotFound(f"{kind or what} {value} not found")
    return quote(value, safe="")


def _task_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/tasks/{_segment(task_id, 'id', kind='task')}{suffix}"


def _given_token_source(ctx: click.Context) -> str:
    """``--token`` when this command line or its group's has it, else ``CUBE_TOKEN``."""
    current: click.Context | None = ctx
    while current is not None:
        if current.get_parameter_source("token") is ParameterSource.COMMANDLINE:
            return "--token"
        current = current.parent
    return TOKEN_ENV


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/v1/jobs/{_segment(job_id, 'job')}{suffix}"


def manager_option(func: Callable[..., R]) -> Callable[..., R]:
    """Add ``--manager URL`` (env ``CUBE_ADDR``) and call the command with a ``client``.

    A subcommand without its own ``--manager`` uses its group's, so
    ``cube nodes --manager URL show w1`` talks to URL. The context object, when
    it is an ``httpx.BaseTransport``, replaces the network (tests pass one to
    ``CliRunner.invoke(obj=...)``).
    """

    @click.option(
        "--manager",
        "manager_url",
        envvar=ADDR_ENV,
        default=DEFAULT_ADDR,
        show_default=True,
        show_envvar=True,
        metavar="URL",
        help="Address of the manager's API.",
    )
    @click.option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="The cluster token  [default: the token file of the manager at --manager, "
        "when it runs on this machine]",
    )
    @click.option(
        "--ca",
        envvar=CA_ENV,
        show_envvar=True,
        type=click.Path(exists=True, dir_okay=False),
        help="CA bundle to trust for an https:// manager.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, manager_url: str, token: str | None, ca: str | None, **kwargs: Any
    ) -> R:
        ctx = click.get_current_context()
        for key, value in (("manager_url", manager_url), ("token", token), ("ca", ca)):
            if ctx.get_parameter_source(key) in (
                ParameterSource.DEFAULT,
                ParameterSource.ENVIRONMENT,
            ):
                value = ctx.meta.get(f"cube.{key}", value)
            ctx.meta[f"cube.{key}"] = value
        manager_url, token, ca = (ctx.meta[f"cube.{k}"] for k in ("manager_url", "token", "ca"))
        transport = ctx.find_object(httpx.BaseTransport)
        if token is not None:
            found = FoundToken(token, _given_token_source(ctx))
        elif transport is None:
            found = find_token(manager_url, TOKEN_FILE)
        else:
            found = FoundToken(None)  # tests: a fake manager, and not the user's files
        with ManagerClient(
            manager_url,
            transport=transport,
            token=found.token,
            verify=client_verify(ca),
            credential_hint=found.hint(option="--token", env=TOKEN_ENV),
        ) as client:
            return func(*args, client=client, **kwargs)

    return wrapper
