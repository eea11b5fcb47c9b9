"""Spec files as a user reads them: errors point at the file, line and column.

``web.yaml:7:3: resources.memory: must be at least 6MiB``, like a compiler, so that an
editor can jump there. Decoding is :mod:`cube.task.parse`'s, validation
:mod:`cube.task.spec`'s; this module only finds where in the text each error is: YAML
keeps the position of every node (JSON is read the same way for that, being YAML), and
syntax errors carry theirs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cube.errors import FieldError, InvalidSpec
from cube.task.parse import _YAML_LOADER as _LOADER
from cube.task.parse import decode_spec_text, located_errors
from cube.task.spec import TaskRequest


def load_spec_file(path: str | Path) -> TaskRequest:
    """Read and validate a YAML or JSON spec file; :class:`InvalidSpec` names the place:
    its errors say ``FILE:LINE:COL: field: message``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec([FieldError(str(p), f"cannot read spec file: {exc}")]) from None
    fmt: Literal["json", "yaml"] = "json" if p.suffix.lower() == ".json" else "yaml"
    try:
        data = decode_spec_text(text, fmt=fmt)
    except InvalidSpec as exc:
        where = place(str(p), syntax_error_at(text, fmt))
        raise InvalidSpec([FieldError(where, e.message) for e in exc.errors]) from None
    if not isinstance(data, dict):
        raise InvalidSpec(
            [FieldError(str(p), "expected a mapping of spec fields (name, image, ...)")]
        )
    try:
        return TaskRequest.model_validate(data)
    except ValidationError as exc:
        root = _compose(text)
        located = [
            FieldError(f"{place(str(p), _position(root, loc))}: {found.field}", found.message)
            for loc, found in located_errors(exc, model=TaskRequest)
        ]
        raise InvalidSpec(located) from None


def located(name: str, text: str, errors: Sequence[FieldError]) -> list[FieldError]:
    """``errors`` of the file ``name`` whose text is ``text``, each at its line and column
    (``shop.yaml:7:5: groups[0].count``) when its ``loc`` says where, else at the file."""
    root = _compose(text) if any(e.loc for e in errors) else None
    return [FieldError(f"{place(name, _at(root, e.loc))}: {e.field}", e.message) for e in errors]


def _at(root: Node | None, loc: Sequence[str | int]) -> tuple[int, int] | None:
    return _position(root, loc) if loc else None


def place(name: str, position: tuple[int, int] | None) -> str:
    """``web.yaml:7:3``, or the name alone when the position is not known."""
    return f"{name}:{position[0]}:{position[1]}" if position else name


def syntax_error_at(text: str, fmt: Literal["json", "yaml"]) -> tuple[int, int] | None:
    """Line and column (from 1) of the syntax error in ``text``, if the parser says."""
    try:
        if fmt == "json":
            json.loads(text)
        else:
            yaml.load(text, Loader=_LOADER)
    except json.JSONDecodeError as exc:
        return exc.lineno, exc.colno
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return (mark.line + 1, mark.column + 1) if mark else None
    except (ValueError, yaml.YAMLError, RecursionError):
        return None
    return None


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=_LOADER)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None  # JSON that YAML does not read (a tab, say): no positions, still the file


def _position(root: Node | None, loc: Sequence[str | int]) -> tuple[int, int] | None:
    """Where the field at ``loc`` is written: its key in a mapping, its item in a list;
    for a field that is missing, the mapping that lacks it."""
    if root is None:
        return None
    node, mark = root, root.start_mark
    for part in loc:
        if isinstance(node, MappingNode):
            match = next(
                (
                    (key, value)
                    for key, value in node.value
                    if isinstance(key, ScalarNode) and key.value == str(part)
                ),
                None,
            )
            if match is None:
                break
            mark, node = match[0].start_mark, match[1]
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return mark.line + 1, mark.column + 1
