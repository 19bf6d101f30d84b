"""Stampede protection: threads and processes sharing an L1 directory that miss the same key run
its query once; the others wait for the result in L1, at most ``stampede_wait`` seconds.

The lock is an L1 key (``fill:<digest>``) added only if absent and expiring by itself, so a
leader that dies cannot hold it past ``stampede_wait``. When L1 can't coordinate, everybody leads.

Taking and releasing the lock are two L1 writes, and a guarded miss writes its L1 copy at once
(followers read it there): a few hundred µs, more than a cheap query costs, and a stampede of
cheap queries costs little. So a shape is guarded only while its measured database time is
unknown (a cold start, where stampedes happen) or at least ``GUARD_MIN_DB_MS`` and
``GUARD_COST_FACTOR`` times what the lock costs here, so the guard adds at most a few percent to
the misses it guards. The lock's cost is averaged over the takes that won it (and the releases):
in a stampede the followers' takes wait on the leader's, and counting them would call the lock
costly, and drop the guard, exactly when it is needed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional

from ..core.codec import CachedResult
from ..core.faults import Report
from ..core.stats import Counters
from ..levels.l1 import L1_FAULTS
from .costs import CostModel, moving_average
from .reads import Reader

#: a query shape whose database time is at least this (ms) is worth two L1 writes to run once
GUARD_MIN_DB_MS = 2.0
#: ... and at least this many times the lock's measured cost
GUARD_COST_FACTOR = 20.0


@dataclass(eq=False)
class Stampede:
    """The fill locks of one cache (``wait_s``: ``stampede_wait``)."""

    wait_s: float
    l1: Any
    reader: Reader
    counters: Counters
    fault: Report
    costs: CostModel
    #: what winning and releasing a lock cost here (ms, moving averages from 0: a shape is
    #: guarded more readily until they are known)
    _take_ms: float = field(default=0.0, init=False)
    _release_ms: float = field(default=0.0, init=False)

    def guards(self, shape: Optional[Hashable]) -> bool:
        """Whether a miss of ``shape`` should run once for all (see the module doc)."""
        if not self.wait_s:
            return False
        db_ms = self.costs.db_ms(shape)
        lock_ms = self._take_ms + self._release_ms
        return db_ms is None or db_ms >= max(GUARD_MIN_DB_MS, GUARD_COST_FACTOR * lock_ms)

    def lead(self, digest: str) -> bool:
        """Claim the right to run the query for ``digest``. True for the leader, and when L1
        can't coordinate (nobody waits then)."""
        try:
            started = time.perf_counter()
            taken = bool(self.l1.entries.add("fill:" + digest, 1, expire=self.wait_s))
            if taken:  # a follower's take waited on the leader's: not what a guard costs
                elapsed_ms = (time.perf_counter() - started) * 1000
                self._take_ms = moving_average(self._take_ms, elapsed_ms)
            return taken
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 fill lock failed (this query runs unguarded)", exc)
            return True

    def end(self, digest: str) -> None:
        """The leader is done: followers stop waiting."""
        try:
            started = time.perf_counter()
            self.l1.entries.delete("fill:" + digest)
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._release_ms = moving_average(self._release_ms, elapsed_ms)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 fill unlock failed (followers wait for its expiry)",
                        exc)

    def await_result(self, digest: str) -> Optional[CachedResult]:
        """A follower waits for the leader's result in L1; None when the leader finished
        without a cacheable result, took too long, or L1 failed."""
        self.counters.incr("stampede_waits")
        deadline = time.monotonic() + self.wait_s
        delay = 0.002
        while True:
            try:
                leader_done = self.l1.entries.get("fill:" + digest) is None
            except L1_FAULTS as exc:
                self.fault("l1_errors", "L1 fill lock read failed, counted as a miss", exc)
                return None
            result, _ = self.reader.local(digest)
            if result is not None:
                self.counters.incr("hits")
                return result
            if leader_done or time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

