"""What an engine's refusal to create a network tells the user (pure: the engine's words in,
Cube's error out)."""

from __future__ import annotations

import pytest

from cube.runtime.docker_json import network_refused


@pytest.mark.parametrize(
    "engine_says",
    [
        "could not find an available, non-overlapping IPv4 address pool among the defaults"
        " to assign to the network",  # Docker 23 and later
        "all predefined address pools have been fully subnetted",  # before
    ],
)
def test_an_engine_out_of_address_pools_is_told_how_to_get_more(engine_says: str) -> None:
    reason = network_refused("cube-alloc-1", engine_says)
    assert reason.startswith(f"network cube-alloc-1: {engine_says} (")
    assert "default-address-pools" in reason
    assert "/etc/docker/daemon.json" in reason


def test_other_network_refusals_are_passed_on_as_they_are() -> None:
    reason = network_refused("cube-alloc-1", "network with name cube-alloc-1 already exists")
    assert reason == "network cube-alloc-1: network with name cube-alloc-1 already exists"
