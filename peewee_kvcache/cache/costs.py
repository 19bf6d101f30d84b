"""When asking a level before the database pays, per query shape, from what this process measured.

A miss in process memory may ask the L1 directory, then L2, before the database. Asking a level
always pays its read and saves the database's time only when the level has the answer. For a
shape (one SQL text: a point lookup by id is one shape whatever the id) with database time
``db_ms`` and a level answering a fraction ``p`` of the time, asking costs ``level_ms + (1 - p) *
db_ms`` against ``db_ms``: it pays when ``level_ms < p * db_ms``. A 0.5 ms lookup never waits 40 ms
for a far L2; a 200 ms report does. On a host with one process, L1 holds only what memory already
holds, so its ~50 µs read is skipped for a 0.2 ms lookup; where other processes fill L1 (forked
workers), its hit rate, and so its reads, come back. The estimates are moving averages, so a
shape whose hit rate or cost changes is re-judged.

A shape a level could pay for (``level_ms < db_ms``) but does not at its current estimate is
still tried one miss in ``explore_every``, so a rising hit rate is seen: in the background
(explore.py), the miss itself going to the database, so the query pays nothing for it.

Until the database has run a shape, L2 is not asked (its cost is unknown, and L2 may be far);
L1 is (it is near, and it is how a new worker finds what its siblings computed).

A forked child forgets L1's hit rates: its siblings fill L1, the parent's process did not.

Updates race without a lock: a lost update of a moving average changes nothing that matters.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional

from ..core import forksafe

#: weight of the newest measurement in each moving average
_ALPHA = 0.2
#: what an unknown hit rate starts at: one in two
_UNKNOWN_RATE = 0.5
#: the two levels a miss in memory may ask, indices into a shape's hit rates
L1, L2 = 0, 1


@dataclass
class _Shape:
    """What is known of one query shape: the database's time, and each level's hit rate
    (indexed by ``L1`` / ``L2``; None: unknown, so the level is asked until measured)."""

    db_ms: float
    rates: List[Optional[float]]


class _Level:
    """One level's read latency, whether it is asked whatever the estimates, and its own count
    of exploring asks (a count shared by the levels, taken once by each on every miss, would
    give one level every even number and the other only odd ones: it would never explore)."""

    def __init__(self, always: bool, unknown_shape_asks: bool) -> None:
        self.always = always
        self.unknown_shape_asks = unknown_shape_asks
        #: the level's read latency (ms) as last measured; None until a read reached it
        self.ms: Optional[float] = None
        self.explored = itertools.count()


class CostModel:
    """Per-shape database time and hit rates of L1 and L2, and each level's read latency; see
    the module doc."""

    def __init__(self, max_shapes: int = 4096, explore_every: int = 16, always_l1: bool = False,
                 always_l2: bool = False):
        # ``l2_reads`` / ``l1_reads="always"``: every miss asks (measured all the same)
        self._levels = (_Level(always_l1, unknown_shape_asks=True),
                        _Level(always_l2, unknown_shape_asks=False))
        self._max_shapes = max_shapes
        self._explore_every = explore_every
        #: no entry until the database ran the shape
        self._shapes: Dict[Hashable, _Shape] = {}
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """A forked worker has siblings filling the L1 directory, which the parent (often alone
        before it forked) never had: what L1 holds is learned anew."""
        for known in self._shapes.values():
            known.rates[L1] = None

    @property
    def l2_ms(self) -> Optional[float]:
        """L2's read latency (ms) as last measured; None until a read reached L2."""
        return self._levels[L2].ms

    @property
    def l1_ms(self) -> Optional[float]:
        """L1's read latency (ms) as last measured; None until a read reached L1."""
        return self._levels[L1].ms

    def ask(self, level: int, shape: Optional[Hashable]) -> bool:
        """Whether a miss of ``shape`` should ask ``level`` (``L1`` or ``L2``) before the
        database (:meth:`would_ask`), or have it tried in the background on its exploring turn.
        Without a shape (the low-level get/put API) and until the level's latency is known, it
        asks."""
        return self.would_ask(level, shape) or self.explores(level, shape)

    def explores(self, level: int, shape: Optional[Hashable]) -> bool:
        """For a miss that :meth:`would_ask` does not send to ``level``: whether this is the
        level's exploring turn for ``shape`` (one in ``explore_every`` where it could pay)."""
        known = self._shapes.get(shape)
        costs = self._levels[level]
        return (known is not None and costs.ms is not None and costs.ms < known.db_ms
                and next(costs.explored) % self._explore_every == 0)

    def would_ask(self, level: int, shape: Optional[Hashable]) -> bool:
        """:meth:`ask` without its occasional exploring ask (a miss's read, and ``explain``)."""
        costs = self._levels[level]
        ms = costs.ms
        if costs.always or shape is None or ms is None:
            return True
        known = self._shapes.get(shape)
        if known is None:
            return costs.unknown_shape_asks
        rate = known.rates[level]
        return rate is None or ms < rate * known.db_ms

    def read(self, level: int, shape: Optional[Hashable], elapsed_ms: float,
             found: bool) -> None:
        """A read of ``level`` took ``elapsed_ms`` and found (or not) a usable entry."""
        costs = self._levels[level]
        costs.ms = elapsed_ms if costs.ms is None else moving_average(costs.ms, elapsed_ms)
        known = self._shapes.get(shape) if shape is not None else None
        if known is not None:
            rate, hit = known.rates[level], 1.0 if found else 0.0
            known.rates[level] = hit if rate is None else moving_average(rate, hit)

    def db_ran(self, shape: Optional[Hashable], elapsed_ms: float) -> None:
        """The database answered a miss of ``shape`` in ``elapsed_ms`` (rows fetched)."""
        if shape is None:
            return
        known = self._shapes.get(shape)
        if known is not None:
            known.db_ms = moving_average(known.db_ms, elapsed_ms)
            return
        if len(self._shapes) >= self._max_shapes:
            self._shapes.clear()  # a workload of ever-new texts: start learning again
        self._shapes[shape] = _Shape(elapsed_ms, [_UNKNOWN_RATE, _UNKNOWN_RATE])

    def db_ms(self, shape: Optional[Hashable]) -> Optional[float]:
        """The database's time for ``shape`` as estimated; None when unknown."""
        known = self._shapes.get(shape) if shape is not None else None
        return None if known is None else known.db_ms

    def estimate(self, shape: Hashable) -> Optional[Dict[str, Optional[float]]]:
        """What is known of ``shape`` (for ``explain`` and the tests), or None."""
        known = self._shapes.get(shape)
        return None if known is None else {"db_ms": known.db_ms,
                                           "l1_hit_rate": known.rates[L1],
                                           "l2_hit_rate": known.rates[L2]}


def moving_average(old: float, new: float) -> float:
    """``old`` moved a fifth of the way to ``new``."""
    return old + _ALPHA * (new - old)
