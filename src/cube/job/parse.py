"""From a job file's text to a validated :class:`~cube.job.spec.JobSpec`, with errors that
name the field path as the user wrote it (``groups[0].tasks[1].image``), and the telling
apart of a job file from a task spec.

Apart from :mod:`cube.job.spec`, which says what a valid job *is* (the models, the rules
across fields, each group's derived views): this module says how a document becomes
one and how a refusal reads, as :mod:`cube.task.parse` does for task specs, whose
decoding it shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cube.errors import FieldError, InvalidSpec
from cube.job.spec import JobSpec
from cube.task.parse import _key, decode_spec_text
from cube.task.unknown_fields import UnknownFields


def field_path(loc: Sequence[str | int]) -> str:
    """A pydantic location as the user reads it: ``('groups', 0, 'count') -> groups[0].count``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_key(part)}" if out else _key(part)
    return out


def _field_errors(exc: ValidationError) -> list[FieldError]:
    unknown = UnknownFields(JobSpec)
    return [
        FieldError(
            field_path(err["loc"]) or "body",
            unknown(err["loc"])
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, "),
            loc=tuple(err["loc"]),
        )
        for err in exc.errors(include_url=False)
    ]


def is_job_document(data: Any) -> bool:
    """Whether decoded YAML/JSON is a job file (it has ``job:``) rather than a task spec."""
    return isinstance(data, dict) and "job" in data


def wrong_kind(data: Any, *, want_job: bool) -> str | None:
    """Why a decoded file is the other kind of spec than the command takes, or None: a
    task spec (``name:``, ``image:``) given to ``cube job run``, or a job file given to
    ``cube run``. One line that says which command runs it, instead of an error for
    every field, each true and none of them the point."""
    if not isinstance(data, dict):
        return None
    if want_job and not {"job", "groups"} & data.keys() and {"image", "name"} & data.keys():
        return (
            "a task spec (name:, image:), not a job file (job:, groups:): run it with"
            " `cube run FILE`"
        )
    if not want_job and is_job_document(data):
        return "a job file (job:, groups:), not a task spec: run it with `cube job run FILE`"
    return None


def parse_job(data: Any) -> JobSpec:
    """Validate a decoded job file, raising :class:`InvalidSpec` with field paths."""
    if not isinstance(data, dict):
        raise InvalidSpec([FieldError("body", "expected a mapping of job fields (job, groups)")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpec(_field_errors(exc)) from None


def parse_job_text(text: str | bytes, *, fmt: Literal["json", "yaml"] = "yaml") -> JobSpec:
    """Parse a job file's text (YAML reads JSON too)."""
    return parse_job(decode_spec_text(text, fmt=fmt))


def load_job_file(path: str | Path) -> JobSpec:
    """Read a YAML or JSON job file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec([FieldError(str(p), f"cannot read job file: {exc}")]) from None
    return parse_job_text(text, fmt="json" if p.suffix.lower() == ".json" else "yaml")
