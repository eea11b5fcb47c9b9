"""Phase 3 of placement: take the best candidate (Nomad's MaxScoreIterator).

Ties are broken by node name, so the same inputs always give the same node and
a test or a user can predict the outcome without knowing the input order.
"""

from __future__ import annotations

from collections.abc import Sequence


def ranked(names: Sequence[str], scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` best candidates, best first: highest score, then smallest name."""
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} names for {len(scores)} scores")
    # Two stable sorts with C-level keys (a few times faster than sorting tuples): by
    # name, then by score descending, which keeps equal scores in name order.
    order = sorted(range(len(scores)), key=names.__getitem__)
    order.sort(key=scores.__getitem__, reverse=True)
    return order[:k]


def pick(names: Sequence[str], scores: Sequence[float]) -> int | None:
    """Index of the highest score; among equal scores, the smallest name. ``None`` if empty."""
    best = ranked(names, scores, 1)
    return best[0] if best else None
