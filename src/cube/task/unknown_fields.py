"""What to say about a field a spec does not have: the one meant, or the ones it has.

Specs forbid unknown fields, so that a typo is an error rather than a setting silently
ignored; pydantic's own words for it, "Extra inputs are not permitted", leave the user to
find the right spelling. ``groups[0].cout`` says ``unknown field; did you mean 'count'?``
instead, and a field with no near spelling lists the fields of that place.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

#: How a message that lists the fields of the place begins.
FIELDS_HERE = "unknown field; the fields here: "


def unknown_field(
    model: type[BaseModel], loc: Sequence[str | int], *, list_fields: bool = True
) -> str:
    """The message for the unknown field at ``loc`` (pydantic's location) of ``model``;
    ``list_fields``: whether a field with no near spelling lists the fields of its place
    (not when another error has listed them already)."""
    known = fields_at(model, loc[:-1])
    if not known:
        return "unknown field"
    near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if near:
        return f"unknown field; did you mean '{near[0]}'?"
    return FIELDS_HERE + ", ".join(known) if list_fields else "unknown field"


class UnknownFields:
    """Tells each unknown field of one validation of ``model``, listing the fields of a
    place once, not once per unknown field there: ten unknown keys (a YAML alias bomb
    makes them) must not make an answer ten lists long."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self._listed: set[tuple[str | int, ...]] = set()

    def __call__(self, loc: Sequence[str | int]) -> str:
        place = tuple(loc[:-1])
        message = unknown_field(self.model, loc, list_fields=place not in self._listed)
        if message.startswith(FIELDS_HERE):
            self._listed.add(place)
        return message


def fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The field names (as written in a file) of the model at ``loc`` inside ``model``:
    list indexes are stepped over; a location this cannot follow gives none."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        inner: list[type[BaseModel]] = []
        for m in models:
            for name, info in m.model_fields.items():
                if part in (name, info.alias):
                    inner += _models_in(info.annotation)
        if not inner:
            return []
        models = inner
    names = {info.alias or name for m in models for name, info in m.model_fields.items()}
    return sorted(names)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: itself, or inside ``list[...]``, ``X | None``..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType) or get_args(annotation):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []
