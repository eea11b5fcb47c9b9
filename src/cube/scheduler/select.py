"""Phase 3 of placement: take the best candidate (Nomad's MaxScoreIterator).

Ties are broken by node name, so the same inputs always give the same node and
a test or a user can predict the outcome without knowing the input order.
"""

from __future__ import annotations

from collections.abc import Sequence


def ranked(names: Sequence[str], scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` best candidates, best first: highest score, then smallest name."""
    order = sorted(zip([-s for s in scores], names, range(len(scores)), strict=True))
    return [i for _, _, i in order[:k]]


def pick(names: Sequence[str], scores: Sequence[float]) -> int | None:
    """Index of the highest score; among equal scores, the smallest name. ``None`` if empty."""
    best = ranked(names, scores, 1)
    return best[0] if best else None
