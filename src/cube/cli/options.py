"""Parsing of CLI values that need more than click's built-in types."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cube.units import parse_duration, parse_size

if TYPE_CHECKING:  # click >= 8.3 makes ParamType generic; older clicks cannot subscript it
    _IntParam = click.ParamType[int, object]
else:
    _IntParam = click.ParamType


class SizeType(_IntParam):
    """``--memory 2GiB``: a size with a unit, converted to bytes."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


def parse_labels(values: tuple[str, ...], *, option: str = "--label") -> dict[str, str]:
    """``("zone=a", "disk=ssd")`` -> ``{"zone": "a", "disk": "ssd"}``."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        out[key] = value
    return out


def pairs_callback(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """Click callback for repeatable ``KEY=VALUE`` options."""
    return parse_labels(values, option=param.opts[-1])


def duration_callback(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Click callback for durations like ``60s`` or ``2m``."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def optional_duration_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> float | None:
    """:func:`duration_callback` for an option that may be left out (None)."""
    return None if value is None else duration_callback(ctx, param, value)
