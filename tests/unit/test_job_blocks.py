"""Which placements wait after one of their group found no node (cube.manager.job_blocks)."""

from __future__ import annotations

from cube.job.plan import Place
from cube.manager.job_blocks import Blocks
from cube.scheduler import Decision

NONE = Decision(node=None, algorithm="e-pvm", reason="no node has 8.0 free CPU")


def counted(blocks: Blocks) -> int:
    return blocks.failures("shop")["web"].count


def test_a_service_group_waits_whole_until_the_capacity_or_the_version_changes() -> None:
    blocks = Blocks()
    blocks.plan_begins("shop", {"web"})
    blocks.found_no_node("shop", Place("web", 0, "new"), NONE, version=1, generation=7)
    assert blocks.waits("shop", Place("web", 1, "new"), version=1, generation=7)
    assert blocks.waits("shop", Place("web", 2, "new"), version=1, generation=7)
    assert counted(blocks) == 3
    assert blocks.failures("shop")["web"].reason == "no node has 8.0 free CPU"
    assert not blocks.waits("shop", Place("web", 1, "new"), version=1, generation=8)
    assert not blocks.waits("shop", Place("web", 1, "new"), version=2, generation=7)

    blocks.found_a_node("shop", Place("web", 1, "new"), version=1, generation=8)
    assert list(blocks.jobs()) == []


def test_a_system_group_waits_only_on_the_nodes_that_had_no_room() -> None:
    blocks = Blocks()
    on = {n: Place("web", 0, "eligible", node=n) for n in ("a", "b", "c", "d")}
    blocks.found_no_node("shop", on["a"], NONE, version=1, generation=7)
    assert not blocks.waits("shop", on["b"], version=1, generation=7)
    blocks.found_a_node("shop", on["b"], version=1, generation=7)
    blocks.found_no_node("shop", on["c"], NONE, version=1, generation=7)
    blocks.found_a_node("shop", on["d"], version=1, generation=7)
    assert counted(blocks) == 2

    blocks.plan_begins("shop", {"web"})  # the next pass: a and c wait, counted again
    assert blocks.waits("shop", on["a"], version=1, generation=7)
    assert blocks.waits("shop", on["c"], version=1, generation=7)
    assert counted(blocks) == 2

    # A node joined (generation 8): a fits now, c still not.
    blocks.plan_begins("shop", {"web"})
    blocks.found_a_node("shop", on["a"], version=1, generation=8)  # the old block goes
    blocks.found_no_node("shop", on["c"], NONE, version=1, generation=8)
    assert counted(blocks) == 1
    assert not blocks.waits("shop", on["a"], version=1, generation=8)
    blocks.found_a_node("shop", on["c"], version=1, generation=8)
    assert blocks.failures("shop") == {}


def test_a_group_that_places_nothing_now_waits_no_more_and_a_purge_forgets_all() -> None:
    blocks = Blocks()
    for group in ("web", "db"):
        blocks.found_no_node("shop", Place(group, 0, "new"), NONE, version=1, generation=7)
    blocks.found_no_node("other", Place("web", 0, "new"), NONE, version=1, generation=7)
    blocks.plan_begins("shop", {"db"})  # web was scaled to what runs
    assert set(blocks.failures("shop")) == {"db"}
    blocks.forget("shop")
    assert list(blocks.jobs()) == ["other"]
