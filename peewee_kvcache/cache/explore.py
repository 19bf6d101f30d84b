"""Exploring reads, made off the query path.

A level that does not pay for a query shape at its current estimate is still tried one miss in
``explore_every`` (costs.py), so that a rising hit rate is seen. The query need not wait for that
try: it goes to the database as any skipped miss does, and the background writer reads the level
for it instead, recording the read's time and whether the level had a usable entry, as the
query's own read would have. L1 is read entry by entry (a local read); L2 with one bulk metadata
read per 100 keys, an entry's presence standing for a hit (what a re-check reads too). Nothing read
here is served or kept: the query already has its rows.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from ..core import forksafe
from ..kv.base import chunked
from ..kv.limits import BULK_GET_MAX_KEYS
from ..l2.gateway import L2Gateway
from .costs import L1, L2, CostModel

#: (level, digest) -> the shape and stamp names of the miss that asked for the try
_Queued = Dict[Tuple[int, str], Tuple[Optional[Hashable], Tuple[str, ...]]]


@dataclass(eq=False)
class Explorer:
    """Queues exploring reads and makes them in one background task per batch."""

    l2: L2Gateway
    costs: CostModel
    #: read L1 for a digest and measure it for a shape, as a miss's read would (the reader's)
    try_l1: Callable[[str, Optional[Hashable]], None]
    #: hand work to the background writer, where it does not split a batch of entry writes
    submit: Callable[[Callable[[], None]], None]
    _queued: _Queued = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        forksafe.renew_locks(self, "_lock")
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """Tries queued in the parent are the parent's (its writer's queue did not fork)."""
        self._queued = {}

    def explore(self, level: int, digest: str, names: Sequence[str],
                shape: Optional[Hashable]) -> None:
        """Try ``level`` for this miss of ``shape`` in the background."""
        with self._lock:
            first = not self._queued
            self._queued[(level, digest)] = (shape, tuple(names))
        if first:
            self.submit(self.run)

    def run(self) -> None:
        """Every queued try (the background writer's task)."""
        with self._lock:
            queued, self._queued = self._queued, {}
        l2_tries: List[Tuple[str, Optional[Hashable], Tuple[str, ...]]] = []
        for (level, digest), (shape, names) in queued.items():
            if level == L1:
                self.try_l1(digest, shape)
            else:
                l2_tries.append((digest, shape, names))
        for chunk in chunked(l2_tries, BULK_GET_MAX_KEYS):
            self._try_l2(chunk)

    def _try_l2(self, tries: Sequence[Tuple[str, Optional[Hashable], Tuple[str, ...]]]) -> None:
        keys = [self.l2.layout.entry_key(digest, names) for digest, _, names in tries]
        started = time.perf_counter()
        found = self.l2.metadata("L2 read for an exploring try failed", keys)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if found is None:  # a fault or not sent: nothing learned
            return
        for key, (_, shape, _) in zip(keys, tries):
            self.costs.read(L2, shape, elapsed_ms, found.get(key) is not None)
