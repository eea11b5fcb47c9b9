"""cube.heap: what survives a full collection is frozen, and garbage is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from cube.heap import _freeze_after_full, freeze_survivors


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    if _freeze_after_full in gc.callbacks:
        gc.callbacks.remove(_freeze_after_full)
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_survivors_of_a_full_collection_are_frozen_and_new_cycles_still_freed(
    unfrozen: None,
) -> None:
    freeze_survivors()
    freeze_survivors()  # twice: one callback
    assert gc.callbacks.count(_freeze_after_full) == 1

    long_lived = [Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    gc.collect()
    assert gc.get_freeze_count() >= before + len(long_lived)

    a, b = Node(), Node()  # a cycle made after the freeze: collected as usual
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
