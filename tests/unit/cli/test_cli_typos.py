"""Typos in a command's name: the top-level ``cube`` suggests the command meant, as its
subgroups (``cube job stauts``) and git do, and exits 2 (bad usage)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cube.cli.main import cli


@pytest.mark.parametrize(("typo", "meant"), [("stauts", "status"), ("nodse", "nodes")])
def test_a_mistyped_command_is_told_the_one_it_may_have_meant(typo: str, meant: str) -> None:
    result = CliRunner().invoke(cli, [typo])
    assert result.exit_code == 2
    assert f"No such command '{typo}'. Did you mean '{meant}'?" in result.output
