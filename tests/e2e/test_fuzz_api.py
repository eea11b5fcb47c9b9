"""Schemathesis against the manager's and the worker's OpenAPI schemas, on real processes.

Every generated request goes to a real ``cube manager`` (with one real worker joined)
or to a standalone ``cube worker``, with the session's token. The checks (``CHECKS``):
no 5xx at all; status code, content type, headers and body as the schema documents them;
a method a path does not have answers 405 with an ``Allow`` header listing the ones it has.

Left out, on purpose: ``positive_data_acceptance`` (a spec can be schema-valid and still
refused: exactly one of ``health.http``/``health.tcp``, a host port published twice, a
worker address nobody answers at) and ``negative_data_rejection`` (Cube takes the short
forms a YAML author writes, ``command: "sleep 60"``, ``memory: 64MiB``, ``ports:
["8080:80"]``, which the JSON schema does not spell out).

Each operation gets schemathesis' coverage cases (boundaries, wrong types, missing and
unexpected methods...), then ``MAX_EXAMPLES`` fuzzed ones, valid and invalid mixed; then
the stateful phase chains calls along the links schemathesis infers from the schema (a task
created, then read, its events and logs asked for, stopped), ``STATEFUL_EXAMPLES`` scenarios
of up to ``STATEFUL_STEPS`` calls, under the same checks. A fixed seed and derandomized
generation make CI send the same cases every time;
``REQUEST_TIMEOUT`` bounds each case and the timeout mark the whole run. The number of cases
sent, per operation, is printed and written to ``$CUBE_FUZZ_REPORT`` (default:
``fuzz-api-cases.json`` in pytest's temporary directory).

The tests drive schemathesis' Python API (``as_strategy`` under ``@given``) rather than
its pytest plugin, whose lazy schemas do not run on pytest 9.2 (``Function._nodeid``).

Generated specs may be valid: they become tasks of random images on the worker, whose
pulls fail at once (no registry); the fixtures remove every container by worker label.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import BaseSchema, Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

#: Fuzzed cases per operation; schemathesis' coverage cases come on top.
MAX_EXAMPLES = 50
SEED = 20240501
#: The longest one case may take, its deadline: far above a healthy answer (milliseconds),
#: well below a hang. Enforced on the request (a timeout fails the test), not as a Hypothesis
#: deadline, which conftest's profile turns off: a busy CI machine is slow, not wrong.
REQUEST_TIMEOUT = 20.0

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
    allow_header_conformance,
]

#: Cases sent, per schema and per operation: the record the issue asks for.
SENT: dict[str, Counter[str]] = {"manager": Counter(), "worker": Counter()}

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "headers": api.HEADERS,
    "request-timeout": REQUEST_TIMEOUT,
    "generation": {"mode": "all", "deterministic": True, "database": "none"},
}

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
    verbosity=Verbosity.quiet,
)


def load_schema(url: str) -> BaseSchema:
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(
        f"{url}/openapi.json", headers=api.HEADERS, config=config, timeout=10
    )
    schema.config.update(base_url=url)
    return schema


#: Operations run in this order: tasks get created first, so that reading and stopping
#: them (an ID like "0" is a likely guess, and the manager takes unique prefixes) also
#: meets real tasks, not only 404s.
METHOD_ORDER = {"POST": 0, "GET": 1, "DELETE": 2}


def fuzz(schema: BaseSchema, who: str) -> list[str]:
    """Send every operation its coverage cases, then fuzzed ones (valid and invalid).

    Returns one description per distinct failure (operation, check, message), with a
    curl command that reproduces it; the run goes on after a failure to find them all.
    """
    found: Found = {}
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: (METHOD_ORDER.get(op.method.upper(), 1), op.path),
    )
    assert operations, "the schema lists no operation"

    def send(case: Case) -> None:
        bounded(case)
        SENT[who][case.operation.label] += 1
        judge(case, case.call(headers=api.HEADERS), found)

    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for operation in operations:
        config = schema.config.generation_for(operation=operation, phase="coverage")
        for case in schema.iter_coverage_cases(
            operation, generation_modes=modes, generation_config=config
        ):
            send(case)

        # Valid and invalid cases mixed, as schemathesis' own fuzzing phase draws them.
        @FUZZ_SETTINGS
        @given(case=st.one_of([operation.as_strategy(generation_mode=m) for m in modes]))
        def fuzzed(case: Case) -> None:
            send(case)

        fuzzed()
    return list(found.values())


def bounded(case: Case) -> None:
    """A job's log stream, followed, goes on while the job lives (its allocations of random
    images never run, nor end): such a case asks for what is there now instead."""
    path = case.operation.path
    job_logs = path.startswith("/v1/jobs/") and path.endswith("/logs")
    if job_logs and isinstance(case.query, dict) and "follow" in case.query:
        case.query["follow"] = "false"


#: Distinct failures: (operation, check, message) -> a description with a curl command.
Found = dict[tuple[str, str, str], str]


def judge(case: Case, response: Response, found: Found) -> None:
    """Run ``CHECKS`` on one answer, adding each new failure to ``found``."""
    try:
        case.validate_response(response, checks=CHECKS, headers=api.HEADERS)
    except FailureGroup as group:
        for failure in group.exceptions:
            key = (case.operation.label, type(failure).__name__, failure.message)
            found.setdefault(key, f"{case.operation.label}: {group}")
    except Failure as failure:
        key = (case.operation.label, type(failure).__name__, failure.message)
        found.setdefault(key, f"{case.operation.label}: {failure}\n{case.as_curl_command()}")


#: Stateful scenarios per schema, and the most calls in one.
STATEFUL_EXAMPLES = 40
STATEFUL_STEPS = 8

STATEFUL_SETTINGS = settings(
    FUZZ_SETTINGS, max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS
)


#: Left out of the stateful phase (the fuzzing above covers them): the routes that move a
#: job's deployment. Whether they answer 200 or 409 depends on what the job loop did in
#: between, not on the calls: a generated image fails its pull at once, its allocation
#: fails, and the next pass fails the deployment, so a pause sent right after the submit
#: finds it running or failed by a few milliseconds. Schemathesis offers a link only from
#: a 2xx answer, so the same choices found other links on another run: Hypothesis
#: refuses that as flaky data generation and ends the phase early. Their chains are
#: tested in tests/component/test_job_deployments.py, with the clock and the passes in the test's
#: hands. The routes that read a job's deployments and history stay in: their status
#: depends only on whether the scenario's job exists (the deployment is made with the
#: submit, not by a pass).
STATEFUL_EXCLUDED = r"^/v1/jobs/[^/]+/(promote|pause|resume|fail|revert)$"


def fuzz_stateful(schema: BaseSchema, who: str) -> list[str]:
    """Schemathesis' stateful phase: scenarios that chain calls along inferred links
    (the ID a POST answers is the one the next GET or DELETE asks for)."""
    found: Found = {}
    schema = schema.exclude(path_regex=STATEFUL_EXCLUDED)

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            bounded(case)
            return {"headers": api.HEADERS}

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            SENT[who][f"stateful {case.operation.label}"] += 1
            judge(case, response, found)

    # Which links a scenario may follow depends on the server's answers (a link comes only
    # from a 2xx), and those depend on timing (a container still starting, a loop that ran
    # meanwhile). When Hypothesis replays a choice that found other links, it stops the
    # phase as "flaky data generation": not a server error. Every call made until then was
    # judged, and the phase must still have chained enough.
    with contextlib.suppress(FlakyStrategyDefinition):
        Machine.run(settings=STATEFUL_SETTINGS)
    chained = {op for op in SENT[who] if op.startswith("stateful ")}
    assert len(chained) >= 5, f"the stateful phase reached only {sorted(chained)}"
    return list(found.values())


def check_agent(agent: AgentProcess) -> None:
    """The agent survived the fuzzing, and logged no unexpected error (a 500's trace)."""
    assert agent.proc is not None
    assert agent.proc.poll() is None, agent.logs()
    unexpected = [line for line in agent.logs().splitlines() if "unexpected error" in line]
    assert not unexpected, "\n".join(unexpected)


def test_manager_api(start_manager: Any, start_worker: Any) -> None:
    manager = start_manager()
    worker = start_worker("--manager", manager.url)

    def joined() -> bool:
        nodes = api.get(f"{manager.url}/v1/nodes").json()
        return any(n["name"] == worker.name for n in nodes)

    wait_for(joined, timeout=30, what=f"{worker.name} to join the manager")
    schema = load_schema(manager.url)
    problems = fuzz(schema, "manager") + fuzz_stateful(schema, "manager")
    assert not problems, "\n\n".join(problems)
    check_agent(manager)
    check_agent(worker)


def test_worker_api(start_worker: Any) -> None:
    worker = start_worker()
    schema = load_schema(worker.url)
    problems = fuzz(schema, "worker") + fuzz_stateful(schema, "worker")
    assert not problems, "\n\n".join(problems)
    check_agent(worker)


@pytest.fixture(scope="module", autouse=True)
def _report_cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Print and record how many cases each schema got."""
    yield
    default = tmp_path_factory.getbasetemp() / "fuzz-api-cases.json"
    path = Path(os.environ.get("CUBE_FUZZ_REPORT", default))
    report = {who: {"total": sum(c.values()), **dict(sorted(c.items()))} for who, c in SENT.items()}
    path.write_text(json.dumps(report, indent=2) + "\n")
    for who, counts in SENT.items():
        print(f"\nschemathesis: {sum(counts.values())} cases against the {who}'s schema ({path})")
