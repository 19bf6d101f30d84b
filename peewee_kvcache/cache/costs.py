"""When asking L2 before the database pays, per query shape, from what this process measured.

A miss that asks L2 first always pays L2's round trip and saves the database's time only when L2
has the answer. For a shape (one SQL text: a point lookup by id is one shape whatever the id)
with database time ``db_ms`` and L2 answering a fraction ``p`` of the time, asking costs
``l2_ms + (1 - p) * db_ms`` against ``db_ms``: it pays when ``l2_ms < p * db_ms``. A 0.5 ms
lookup never waits 40 ms for a far L2; a 200 ms report does. The estimates are moving averages,
so a shape whose hit rate or cost changes is re-judged.

A shape L2 could pay for (``l2_ms < db_ms``) but does not at its current estimate is still asked
one miss in ``explore_every``, so a rising hit rate is seen; that costs at most
``l2_ms / explore_every`` per miss, below ``db_ms / explore_every``.

Updates race without a lock: a lost update of a moving average changes nothing that matters.
"""
from __future__ import annotations

import itertools
from typing import Dict, Hashable, List, Optional

#: weight of the newest measurement in each moving average
_ALPHA = 0.2


class CostModel:
    """Per-shape database time and L2 hit rate, and L2's read latency; see the module doc."""

    def __init__(self, max_shapes: int = 4096, explore_every: int = 16, always: bool = False):
        self._always = always  # ``l2_reads="always"``: every miss asks L2 (measured all the same)
        self._max_shapes = max_shapes
        self._explore_every = explore_every
        self._explored = itertools.count()
        #: shape -> [database ms, L2 hit rate]; no entry until the database ran the shape
        self._shapes: Dict[Hashable, List[float]] = {}
        #: L2's read latency (ms) as last measured; None until a read reached L2
        self.l2_ms: Optional[float] = None

    def ask_l2(self, shape: Optional[Hashable]) -> bool:
        """Whether a miss of ``shape`` should ask L2 before the database. Without a shape (the
        low-level get/put API) and until L2's latency is known, it asks."""
        if self.would_ask(shape):
            return True
        known = self._shapes.get(shape)  # None: the database's cost is unknown, run it first
        return (known is not None and self.l2_ms is not None and self.l2_ms < known[0]
                and next(self._explored) % self._explore_every == 0)

    def would_ask(self, shape: Optional[Hashable]) -> bool:
        """:meth:`ask_l2` without its occasional exploring ask (for ``explain``)."""
        l2_ms = self.l2_ms
        if self._always or shape is None or l2_ms is None:
            return True
        known = self._shapes.get(shape)
        return known is not None and l2_ms < known[1] * known[0]

    def l2_read(self, shape: Optional[Hashable], elapsed_ms: float, found: bool) -> None:
        """A read that reached L2 took ``elapsed_ms`` and found (or not) a usable entry."""
        self.l2_ms = elapsed_ms if self.l2_ms is None else _average(self.l2_ms, elapsed_ms)
        known = self._shapes.get(shape) if shape is not None else None
        if known is not None:
            known[1] = _average(known[1], 1.0 if found else 0.0)

    def db_ran(self, shape: Optional[Hashable], elapsed_ms: float) -> None:
        """The database answered a miss of ``shape`` in ``elapsed_ms`` (rows fetched)."""
        if shape is None:
            return
        known = self._shapes.get(shape)
        if known is not None:
            known[0] = _average(known[0], elapsed_ms)
            return
        if len(self._shapes) >= self._max_shapes:
            self._shapes.clear()  # a workload of ever-new texts: start learning again
        self._shapes[shape] = [elapsed_ms, 0.5]  # an unknown hit rate starts at one in two

    def estimate(self, shape: Hashable) -> Optional[Dict[str, float]]:
        """What is known of ``shape`` (for ``explain`` and the tests), or None."""
        known = self._shapes.get(shape)
        return None if known is None else {"db_ms": known[0], "l2_hit_rate": known[1]}


def _average(old: float, new: float) -> float:
    return old + _ALPHA * (new - old)
