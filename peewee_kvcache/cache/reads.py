"""The read path: a key's result from the nearest level holding a valid one, or a miss.

Process memory, then the L1 directory (both hold stamped entries, checked the same way), then L2,
each level asked when asking it pays for this query shape (costs.py), else straight to the
database (on the level's exploring turn, the level is tried in the background: explore.py). An
L1 entry is served only within ``l1_max_age`` of its last check against L2; one served in the
second half of that window is queued for a batched re-check off the query path (refresh.py), and
an older one is a miss. A lookup makes at most one L2 read. A result read from L2 is kept in L1
and memory. Every fault is a miss, logged and counted: the caller (a query) goes to the
database.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Set, Tuple

from ..core.codec import CachedResult, CodecError, SignatureError, decode_entry, decode_entry_full
from ..core.config import now_ms
from ..core.faults import Report
from ..core.stats import Counters
from ..invalidation.sweeper import Sweeper
from ..l2.gateway import L2Gateway
from ..levels.entry import Entry
from ..levels.l1 import L1_FAULTS
from ..levels.memory import MemoryLevel
from .costs import L1, L2, CostModel
from .explore import Explorer
from .refresh import Refresher
from .settings import CacheSettings

#: L1 payloads are this library's own encoding: one that does not decode is a faulty L1
_L1_READ_FAULTS = L1_FAULTS + (CodecError,)
#: digests remembered as "read L1 next" at most (beyond, the hints are forgotten: the cost
#: model's occasional exploring read still finds such entries)
_MAX_L1_HINTS = 4096
#: the counter of misses that did not read a level, per level
_SKIPPED = {L1: "l1_skipped_cost", L2: "l2_skipped_cost"}


@dataclass(eq=False)
class Reader:
    """Lookups in memory, L1 and L2 for one cache."""

    settings: CacheSettings
    memory: MemoryLevel
    l1: Any
    l2: L2Gateway
    sweeper: Sweeper
    counters: Counters
    fault: Report
    costs: CostModel
    #: hands the refresher's batches to the background writer
    submit: Callable[[Callable[[], None]], None]
    #: hands it work that may run before entry writes queued earlier (exploring tries)
    submit_unordered: Callable[[Callable[[], None]], None]
    refresher: Refresher = field(init=False)
    explorer: Explorer = field(init=False)

    def __post_init__(self) -> None:  # settings read on every lookup, converted once
        self._secret = self.settings.secret
        self._max_age_ms = self.settings.l1_max_age_ms
        self._refresh_after_ms = (self._max_age_ms or 0) // 2
        self._clock_skew_ms = self.settings.clock_skew_ms
        #: digests whose memory copy a re-check dropped while L1 holds the confirmed entry: the
        #: next lookup reads L1 whatever the cost model says
        self._l1_hints: Set[str] = set()
        self.refresher = Refresher(self.l1, self.memory, self.l2, self.fetch, self.submit,
                                   self.counters, self.fault, self.read_l1_next)
        self.explorer = Explorer(self.l2, self.costs, self._try_l1, self.submit_unordered)

    def lookup(self, digest: str, names: Sequence[str], shape: Optional[Hashable] = None
               ) -> Optional[CachedResult]:
        """The cached result for ``digest`` if one is live and no name in its stamp was bumped.
        ``shape`` (the SQL text) is what the L2 cost estimates are kept per."""
        result, aged = self.local(digest, shape, names)
        if result is None:
            if self.costs.would_ask(L2, shape):
                if aged:
                    self.counters.incr("l1_rechecks")
                result = self.fetch(digest, names, shape)
                if result is not None:
                    self.counters.incr("l2_hits")
            else:
                self._skip(L2, digest, names, shape)
        self.counters.incr("hits" if result is not None else "misses")
        return result

    def read_l1_next(self, digest: str) -> None:
        """The next lookup of ``digest`` reads L1 (its memory copy was dropped, L1's kept)."""
        if len(self._l1_hints) >= _MAX_L1_HINTS:
            self._l1_hints.clear()
        self._l1_hints.add(digest)

    def _skip(self, level: int, digest: str, names: Sequence[str],
              shape: Optional[Hashable]) -> None:
        """A miss does not read ``level`` (it does not pay for ``shape``); on the level's
        exploring turn the background reads it instead (explore.py)."""
        self.counters.incr(_SKIPPED[level])
        if self.costs.explores(level, shape):
            self.explorer.explore(level, digest, names, shape)

    def local(self, digest: str, shape: Optional[Hashable] = None, names: Sequence[str] = ()
              ) -> Tuple[Optional[CachedResult], bool]:
        """This process's memory first, then the L1 directory when reading it pays for
        ``shape`` (None: always; ``names``: the stamp names, for an exploring try). Returns the
        result and whether an L1 entry was found too old to serve unchecked. Hits are counted
        by level."""
        try:
            now = now_ms()
            memo = self.memory.get(digest)
            if memo is not None:
                if self._valid(memo, now) and self._checked(digest, memo, now):
                    self.counters.incr("memory_hits")
                    return memo.value, False
                self.memory.discard(digest)
            hinted = digest in self._l1_hints
            if not hinted and not self.costs.would_ask(L1, shape):
                self._skip(L1, digest, names, shape)
                return None, False
            self._l1_hints.discard(digest)
            entry = self._read_l1(digest, shape, now)
            if entry is None:
                return None, False
            if not self._checked(digest, entry, now):
                return None, True
            result, _ = decode_entry(entry.value)
            self.memory.put(digest, entry.holding(result))
        except _L1_READ_FAULTS as exc:
            self.fault("l1_errors", "L1 read failed, counted as a miss", exc)
            return None, False
        self.counters.incr("l1_hits")
        return result, False

    def _read_l1(self, digest: str, shape: Optional[Hashable], now: int
                 ) -> Optional[Entry[bytes]]:
        """L1's entry for ``digest`` if it would be served (unexpired, stamp current); the
        read's time and outcome feed the estimates for ``shape``."""
        started = time.perf_counter()
        entry = self.l1.get(digest)
        elapsed_ms = (time.perf_counter() - started) * 1000
        served = entry is not None and self._valid(entry, now)
        self.costs.read(L1, shape, elapsed_ms, served)
        return entry if served else None

    def _try_l1(self, digest: str, shape: Optional[Hashable]) -> None:
        """An exploring try of L1 (explore.py): read and measured, not served."""
        try:
            self._read_l1(digest, shape, now_ms())
        except _L1_READ_FAULTS as exc:
            self.fault("l1_errors", "L1 read for an exploring try failed", exc)

    def probe(self, digest: str, names: Sequence[str], shape: Optional[Hashable]
              ) -> Dict[str, Any]:
        """What each level holds for ``digest`` and which would serve it now, changing nothing
        (but one L2 read): for ``explain``."""
        now = now_ms()
        levels = {"memory": self._describe(self.memory.get(digest), now),
                  "l1": self._describe(self.l1.get(digest), now)}
        raw = self.l2.read("L2 read for explain failed", self.l2.layout.entry_key(digest, names))
        decoded = self._decode_l2(digest, raw, now, names) if raw is not None else None
        levels["l2"] = {"holds": raw is not None, "valid": decoded is not None,
                        "expires_in_s": (decoded[1] - now) / 1000 if decoded else None}
        l1_asks = digest in self._l1_hints or self.costs.would_ask(L1, shape)
        asks = self.costs.would_ask(L2, shape)
        served_by = ("memory" if levels["memory"]["serves"]
                     else "l1" if l1_asks and levels["l1"]["serves"]
                     else "l2" if asks and decoded is not None else "database")
        return {"levels": levels, "served_by": served_by, "l1_asked_on_miss": l1_asks,
                "l2_asked_on_miss": asks,
                "costs": self.costs.estimate(shape) if shape is not None else None,
                "l1_ms": self.costs.l1_ms, "l2_ms": self.costs.l2_ms}

    def _describe(self, entry: Optional[Entry[Any]], now: int) -> Dict[str, Any]:
        """One level's entry: held, valid (unexpired, stamp current), checked how long ago, and
        whether it is served now (checked within ``l1_max_age``)."""
        if entry is None:
            return {"holds": False, "valid": False, "serves": False}
        valid = self._valid(entry, now)
        age_ms = now - entry.checked_at_ms
        return {"holds": True, "valid": valid, "expires_in_s": (entry.expires_at_ms - now) / 1000,
                "checked_s_ago": age_ms / 1000,
                "serves": valid and (self._max_age_ms is None or age_ms <= self._max_age_ms)}

    def keep(self, digest: str, entry: Entry[bytes], result: CachedResult) -> None:
        """Hold ``entry`` in L1 and its decoded ``result`` in this process's memory."""
        self.l1.set(digest, entry, entry.checked_at_ms)
        self.memory.put(digest, entry.holding(result))

    def live_expiry(self, digest: str, names: Sequence[str]) -> Optional[int]:
        """Expiry of the live entry under ``digest`` (L1, else L2), for keep_ttl; None if none.

        An entry whose stamp is out of date was invalidated: like a Redis DEL, it has no TTL left.
        """
        entry = self.l1.get(digest)
        if entry is not None:
            return entry.expires_at_ms if self.l1.is_current(entry.names, entry.tokens) else None
        raw = self.l2.read("L2 read for keep_ttl failed (the default TTL applies)",
                            self.l2.layout.entry_key(digest, names))
        try:
            return decode_entry(raw, self._secret, digest.encode())[1] if raw else None
        except CodecError:
            return None

    def _valid(self, entry: Entry[Any], now: int) -> bool:
        """Unexpired, and no name of its stamp bumped or distrusted."""
        return (entry.expires_at_ms > now and self.l1.is_current(entry.names, entry.tokens)
                and not self.sweeper.distrusts(entry.names))

    def _checked(self, digest: str, entry: Entry[Any], now: int) -> bool:
        """Checked against L2 within ``l1_max_age``; in the second half of that window, queued
        for a background re-check."""
        max_age = self._max_age_ms
        if max_age is None:
            return True
        age = now - entry.checked_at_ms
        if age > self._refresh_after_ms:
            if age > max_age:
                return False
            self.refresher.due(digest, now)
        return True

    def _decode_l2(self, digest: str, raw: bytes, now: int, names: Sequence[str]
                   ) -> Optional[Tuple[CachedResult, int]]:
        """A verified, unexpired L2 value, or None (counted) for a bad, expired or stale one.

        Stale: computed before this host last saw one of its names invalidated (allowing for
        clock skew). Another host's write that raced our invalidation can land in L2 after our
        sweep; this host (and any host that heard of the invalidation) never serves it.
        """
        try:
            result, expires_at_ms, created_at_ms = decode_entry_full(raw, self._secret,
                                                                     digest.encode())
        except SignatureError as exc:
            self.fault("bad_signatures", "L2 entry with a bad or missing signature rejected",
                        exc)
            return None
        except CodecError as exc:
            self.fault("codec_errors", "corrupt L2 entry rejected", exc)
            return None
        if expires_at_ms is None or expires_at_ms <= now:
            return None
        invalidated = self.l1.invalidated_at(names)
        if invalidated and (created_at_ms or 0) < invalidated + self._clock_skew_ms:
            self.counters.incr("l2_stale_rejected")
            return None
        return result, expires_at_ms

    def fetch(self, digest: str, names: Sequence[str], shape: Optional[Hashable] = None,
              at_ms: Optional[int] = None) -> Optional[CachedResult]:
        """The entry L2 holds, unless a sweep of one of ``names`` is pending; kept in L1 and
        memory. Its cost and outcome feed the estimates for ``shape``. ``at_ms``: the time it
        is checked as of, when earlier than now (a background re-check: its queuing time, on
        the querying thread's clock)."""
        try:
            if self.sweeper.pending_in_memory(names) or self.l1.any_pending(names):
                self.counters.incr("l2_skipped_pending")
                return None
            tokens = self.l1.tokens(names)  # before the read: a later bump kills the backfill
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 token read failed, counted as a miss", exc)
            return None
        raw, elapsed_ms = self.l2.timed_read("L2 read failed, counted as a miss",
                                             self.l2.layout.entry_key(digest, names))
        now = now_ms() if at_ms is None else at_ms
        try:
            decoded = self._decode_l2(digest, raw, now, names) if raw is not None else None
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 read failed, counted as a miss", exc)
            decoded = None
        if elapsed_ms is not None:
            self.costs.read(L2, shape, elapsed_ms, decoded is not None)
        if raw is None or decoded is None:
            return None
        result, expires_at_ms = decoded
        try:  # the backfill keeps the L2 entry's remaining lifetime
            self.keep(digest, Entry(tuple(names), tokens, expires_at_ms, now, raw), result)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 backfill failed", exc)
        return result
