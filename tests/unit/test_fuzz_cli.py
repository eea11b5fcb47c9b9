"""Hypothesis against the CLI's spec parser: ``cube run`` flags and spec file contents.

``cube run`` runs in-process (click's ``CliRunner``) against an ``httpx.MockTransport``
standing in for the manager, so thousands of cases take seconds and need no server.
Whatever the input, the CLI exits 0, 1 or 2; a failure is one readable ``Error:`` line,
never a traceback; nothing is sent when the input is invalid. A valid spec, written as
a YAML or JSON file or given as flags, reaches the manager as the same ``TaskRequest``.

Deterministic (``derandomize``) and bounded: ``MAX_EXAMPLES`` per property, and the
timeout mark on the whole module. The number of cases run is printed and written to
``$CUBE_FUZZ_CLI_REPORT`` (default: ``fuzz-cli-cases.json`` in pytest's temporary
directory).
"""

from __future__ import annotations

import json
import os
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cube.cli.main import cli
from cube.errors import InvalidSpec
from cube.task.model import Task
from cube.task.spec import TaskRequest
from cube.task.specfile import load_spec_file
from cube.units import parse_size

pytestmark = pytest.mark.timeout(240)

MAX_EXAMPLES = 300
TASK_ID = "0123456789abcdef0123456789abcdef"

FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,  # as in conftest's profile: a busy CI machine is slow, not wrong
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Cases run, per property: the record the issue asks for.
RUN: Counter[str] = Counter()

MiB = 1024**2


# ------------------------------------------------------------------ the fake manager


@dataclass
class Manager:
    """Answers ``POST /v1/tasks`` as told: the task (201) or an error; records the bodies."""

    answer: str = "created"
    bodies: list[Any] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if (request.method, request.url.path) != ("POST", "/v1/tasks"):
            return httpx.Response(404, json={"error": "not_found", "message": "no such route"})
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.answer == "created":
            task = Task(id=TASK_ID, spec=TaskRequest.model_validate(body).spec())
            return httpx.Response(201, json=task.model_dump(mode="json"))
        if self.answer == "rejected":
            problem = {"field": "ports.0.host", "message": "port 22 is reserved"}
            body = {"error": "invalid_spec", "message": "ports.0.host: …", "fields": [problem]}
            return httpx.Response(422, json=body)
        if self.answer == "conflict":
            return httpx.Response(409, json={"error": "conflict", "message": "same ID"})
        if self.answer == "broken":
            return httpx.Response(500, text="<html>\nInternal Server Error\n</html>")
        return httpx.Response(201, json={"not": "a task"})


ANSWERS = st.sampled_from(["created", "rejected", "conflict", "broken", "nonsense"])


def cube_run(manager: Manager, *args: str) -> Result:
    env = {"CUBE_ADDR": None, "FORCE_COLOR": None, "COLUMNS": None, "TTY_COMPATIBLE": None}
    return CliRunner().invoke(cli, ["run", *args], obj=httpx.MockTransport(manager.handle), env=env)


def check_exit(result: Result, manager: Manager) -> None:
    """Exit 0, 1 or 2; on failure one ``Error:`` line and no traceback.

    2 means bad input: the CLI's own verdict (nothing sent) or the manager's (a 422).
    """
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert result.stderr.endswith(f"{errors[0]}\n"), "the error is the last line, whole"
        assert errors[0].isprintable(), "no control characters, no terminal escapes"
        assert len(errors[0]) > len("Error: "), result.stderr
    if result.exit_code == 2 and manager.answer != "rejected":
        assert manager.bodies == [], "nothing is sent when the input is invalid"
    if result.exit_code == 0:
        assert len(manager.bodies) == 1
        assert result.stdout.strip() == TASK_ID or json.loads(result.stdout)["id"] == TASK_ID


# ------------------------------------------------------------------ valid specs

NAMES = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
IMAGES = st.from_regex(r"\A[a-zA-Z0-9][a-zA-Z0-9._/:@-]{0,60}\Z")
IDS = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
ENV_KEYS = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z")
#: Any text a YAML or JSON file can carry: control characters, "yes", "null", "1e3"...
TEXT = st.text(max_size=24)
SIZE_UNITS = ["", "B", "k", "KiB", "MiB", "MB", "GiB", "G"]


def sizes(low: int, high: int) -> st.SearchStrategy[Any]:
    """Sizes between ``low`` and ``high`` bytes: a number, or a string with a unit."""
    plain = st.integers(low, high)
    with_unit = st.builds(
        lambda n, unit: f"{n}{unit}",
        st.integers(1, 4096),
        st.sampled_from(SIZE_UNITS),
    ).filter(lambda text: low <= parse_size(text) <= high)
    return st.one_of(plain, with_unit)


DURATIONS = st.one_of(
    st.floats(0, 3600, allow_nan=False),
    st.sampled_from(["500ms", "5s", "1m30s", "2h", "0", "1.5", "10m"]),
)


@st.composite
def port_lists(draw: st.DrawFn) -> list[Any]:
    """Ports in every form the spec takes, no host port twice."""
    out: list[Any] = []
    seen: set[tuple[int, str]] = set()
    for _ in range(draw(st.integers(0, 4))):
        container = draw(st.integers(1, 65535))
        host = draw(st.one_of(st.none(), st.integers(0, 65535)))
        proto = draw(st.sampled_from(["tcp", "udp"]))
        if host and (host, proto) in seen:
            continue
        if host:
            seen.add((host, proto))
        forms: list[Any] = [{"container": container, "host": host, "protocol": proto}]
        text = f"{container}" if host is None else f"{host}:{container}"
        forms.append(text if proto == "tcp" else f"{text}/udp")
        if host is None and proto == "tcp":
            forms.append(container)
        out.append(draw(st.sampled_from(forms)))
    return out


RESTARTS = st.one_of(
    st.sampled_from(["never", "on-failure", "always"]),
    st.fixed_dictionaries(
        {"policy": st.sampled_from(["never", "on-failure", "always"])},
        optional={
            "max_attempts": st.one_of(st.none(), st.integers(0, 1_000_000)),
            "delay": DURATIONS,
            "backoff": st.floats(1, 10),
            "max_delay": DURATIONS,
        },
    ),
)

HEALTH = st.fixed_dictionaries(
    {},
    optional={
        "interval": DURATIONS,
        "timeout": DURATIONS,
        "failure_threshold": st.integers(1, 100),
        "start_period": DURATIONS,
    },
).flatmap(
    lambda base: st.one_of(
        st.builds(
            lambda port, path: {**base, "http": {"port": port, "path": path}},
            st.integers(1, 65535),
            st.text(max_size=20).map(lambda p: "/" + p),
        ),
        st.builds(lambda port: {**base, "tcp": {"port": port}}, st.integers(1, 65535)),
    )
)

MOUNTS = st.lists(
    st.fixed_dictionaries(
        {"source": TEXT.map(lambda p: "/" + p), "target": TEXT.map(lambda p: "/" + p)},
        optional={"read_only": st.booleans()},
    ),
    max_size=3,
)

SPECS = st.fixed_dictionaries(
    {"name": NAMES, "image": IMAGES},
    optional={
        "id": IDS,
        "command": st.one_of(
            st.lists(TEXT, max_size=5),
            st.lists(st.text(string.ascii_letters + string.digits, min_size=1), max_size=5).map(
                " ".join
            ),
        ),
        "env": st.dictionaries(ENV_KEYS, TEXT, max_size=4),
        "ports": port_lists(),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "cpu": st.one_of(st.floats(0.001, 1024), st.integers(1, 64)),
                "memory": sizes(6 * MiB, 1 << 40),
                "disk": sizes(0, 1 << 40),
            },
        ),
        "restart": RESTARTS,
        "health": HEALTH,
        "privileged": st.booleans(),
        "network": st.sampled_from(["bridge", "host", "none"]),
        "mounts": MOUNTS,
        "stop_timeout": DURATIONS,
        "labels": st.dictionaries(st.text(max_size=20), TEXT, max_size=4),
        "constraints": st.dictionaries(st.text(max_size=20), TEXT, max_size=4),
    },
)


def write_spec(directory: Path, spec: Any, fmt: str) -> Path:
    path = directory / f"spec.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(spec), encoding="utf-8")
    else:
        # Not allow_unicode: PyYAML then writes U+0085 as is, and reads it back as a line break.
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cli")


@FUZZ
@given(spec=SPECS, fmt=st.sampled_from(["yaml", "json"]), output=st.sampled_from(["table", "json"]))
def test_a_valid_spec_file_reaches_the_manager_unchanged(
    workdir: Path, spec: dict[str, Any], fmt: str, output: str
) -> None:
    RUN["valid spec files"] += 1
    expected = TaskRequest.model_validate(spec)
    path = write_spec(workdir, spec, fmt)
    assert load_spec_file(path) == expected
    manager = Manager()
    result = cube_run(manager, str(path), "-o", output)
    check_exit(result, manager)
    assert result.exit_code == 0, result.output
    assert TaskRequest.model_validate(manager.bodies[0]) == expected
    # The normal form the CLI sends reads back as the same request, as YAML too.
    again = write_spec(workdir, manager.bodies[0], "yaml")
    assert load_spec_file(again) == expected


# ------------------------------------------------------------------ specs as flags


@st.composite
def flag_specs(draw: st.DrawFn) -> tuple[list[str], dict[str, Any]]:
    """``cube run`` flags, and the spec (as a dict) they stand for."""
    spec: dict[str, Any] = {"name": draw(NAMES), "image": draw(IMAGES)}
    args = [f"--name={spec['name']}", f"--image={spec['image']}"]
    resources: dict[str, Any] = {}
    if draw(st.booleans()):
        resources["cpu"] = draw(st.floats(0.001, 1024))
        args.append(f"--cpu={resources['cpu']!r}")
    for key in ("memory", "disk"):
        if draw(st.booleans()):
            text = draw(sizes(6 * MiB, 1 << 40).map(str))
            resources[key] = parse_size(text)
            args.append(f"--{key}={text}")
    if resources:
        spec["resources"] = resources
    ports = draw(port_lists().map(lambda ps: [p for p in ps if not isinstance(p, dict)]))
    if ports:
        spec["ports"] = ports
        args += [f"--port={p}" for p in ports]
    for option, key, keys in (
        ("--env", "env", ENV_KEYS),
        ("--label", "labels", st.text(min_size=1, max_size=20).filter(lambda k: "=" not in k)),
        ("--constraint", "constraints", st.text(min_size=1, max_size=20)),
    ):
        pairs = draw(st.lists(st.tuples(keys.filter(lambda k: "=" not in k), TEXT), max_size=3))
        if pairs:
            spec[key] = dict(pairs)
            args += [f"{option}={k}={v}" for k, v in pairs]
    restart: dict[str, Any] = {}
    if draw(st.booleans()):
        restart["policy"] = draw(st.sampled_from(["never", "on-failure", "always"]))
        args.append(f"--restart={restart['policy']}")
    if draw(st.booleans()):
        restart["max_attempts"] = draw(st.integers(0, 1_000_000))
        args.append(f"--max-attempts={restart['max_attempts']}")
    if restart:
        spec["restart"] = restart
    if draw(st.booleans()):
        spec["id"] = draw(IDS)
        args.append(f"--id={spec['id']}")
    command = draw(st.lists(TEXT, max_size=4))
    if command:
        spec["command"] = command
        args += ["--", *command]
    return args, spec


@FUZZ
@given(flags=flag_specs())
def test_flags_reach_the_manager_as_the_spec_they_stand_for(
    flags: tuple[list[str], dict[str, Any]],
) -> None:
    RUN["valid flags"] += 1
    args, spec = flags
    manager = Manager()
    result = cube_run(manager, *args)
    check_exit(result, manager)
    assert result.exit_code == 0, result.output
    assert TaskRequest.model_validate(manager.bodies[0]) == TaskRequest.model_validate(spec)


# ------------------------------------------------------------------ anything at all

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)

#: Spec fields, nested ones, and one that is not (any text is tried too).
FIELDS = [*TaskRequest.model_fields, "resources.memory", "resources.x", "health.http", "x"]


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """A valid spec with a field (or a nested one) replaced, added or removed."""
    spec = dict(draw(SPECS))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(FIELDS), TEXT))
        if draw(st.integers(0, 4)) == 0:
            spec.pop(key, None)
        elif key in FIELDS and "." in key:
            top, sub = key.split(".")
            inner = spec.get(top)
            spec[top] = {**(inner if isinstance(inner, dict) else {}), sub: draw(JSON_VALUES)}
        else:
            spec[key] = draw(JSON_VALUES)
    return spec


YAML_SNIPPETS = st.sampled_from(
    [
        "name: web\nimage: x\nresources: {memory: .inf}\n",
        "name: web\nimage: x\nresources: {cpu: .nan}\n",
        "name: web\nimage: x\nstop_timeout: 2001-12-14\n",
        "name: web\nimage: x\nenv: {1: 2}\n",
        "name: web\nimage: x\nlabels: {? [a, b] : c}\n",
        "name: web\nimage: x\ncommand: 'sleep \"60'\n",
        "name: web\nimage: x\nports: ['99999:1']\n",
        "name: web\nimage: x\nrestart: {policy: always, max_attempts: 1e400}\n",
        "name: web\nimage: x\nresources: {memory: " + "9" * 400 + "}\n",
        "!!python/object/apply:os.system ['true']\n",
        "a: &a [*a]\n",
        "[" * 5000 + "]" * 5000,
        "- name: web\n  image: x\n",
        "name: web\nimage: x\n---\nname: other\n",
        "\ufeffname: web\nimage: x\n",
        "",
    ]
)

CONTENTS = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    YAML_SNIPPETS,
    st.tuples(JSON_VALUES, st.booleans()).map(
        lambda v: json.dumps(v[0]) if v[1] else yaml.safe_dump(v[0])
    ),
    st.tuples(mutated_specs(), st.booleans()).map(
        lambda v: json.dumps(v[0]) if v[1] else yaml.safe_dump(v[0])
    ),
)


@FUZZ
@given(content=CONTENTS, suffix=st.sampled_from([".yaml", ".json", ".yml", ""]), answer=ANSWERS)
def test_any_spec_file_gives_an_exit_code_and_one_error_line(
    workdir: Path, content: str | bytes, suffix: str, answer: str
) -> None:
    RUN["arbitrary spec files"] += 1
    path = workdir / f"anything{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    manager = Manager(answer=answer)
    result = cube_run(manager, str(path))
    check_exit(result, manager)
    try:
        expected: TaskRequest | None = load_spec_file(path)
    except InvalidSpec:
        expected = None
    if expected is None:
        assert result.exit_code == 2, result.output
    else:
        assert result.exit_code == (0 if answer == "created" else 2 if answer == "rejected" else 1)
        assert TaskRequest.model_validate(manager.bodies[0]) == expected


#: ``cube run``'s options, a few it does not have, and its separator.
OPTIONS = [
    "--name",
    "--image",
    "--cpu",
    "--memory",
    "--disk",
    "-p",
    "--port",
    "-e",
    "--env",
    "--restart",
    "--max-attempts",
    "--label",
    "--constraint",
    "--id",
    "-o",
    "--timeout",
    "-f",
    "--bogus",
    "-x",
]
VALUES = st.one_of(
    TEXT,
    st.sampled_from(["", "-", "--", "=", "a=b", "=b", "0", "-1", "nan", "inf", "1e400"]),
    st.sampled_from(["64MiB", "1.5GiB", "8080:80", "53/udp", "on-failure", "json", "5s"]),
    st.integers().map(str),
    st.floats().map(repr),
)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    args = ["--name=web", "--image=x"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 6))):
        option, value = draw(st.sampled_from(OPTIONS)), draw(VALUES)
        args += draw(st.sampled_from([[f"{option}={value}"], [option, value], [option], [value]]))
    if draw(st.booleans()):
        args += ["--", *draw(st.lists(TEXT, max_size=3))]
    return args


@FUZZ
@given(args=argvs(), answer=ANSWERS)
def test_any_flags_give_an_exit_code_and_one_error_line(args: list[str], answer: str) -> None:
    RUN["arbitrary flags"] += 1
    manager = Manager(answer=answer)
    check_exit(cube_run(manager, *args), manager)


@pytest.fixture(scope="module", autouse=True)
def _report_cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Print and record how many cases each property ran."""
    yield
    default = tmp_path_factory.getbasetemp() / "fuzz-cli-cases.json"
    path = Path(os.environ.get("CUBE_FUZZ_CLI_REPORT", default))
    report = {"total": sum(RUN.values()), **dict(sorted(RUN.items()))}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nhypothesis: {sum(RUN.values())} cases against the CLI's spec parser ({path})")
