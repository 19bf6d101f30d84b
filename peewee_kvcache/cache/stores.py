"""The write side of caching a result: stamped before the query, kept on this host at once, sent
to L2 by the background writer, and undone there when it turned stale or late on the way.

A result is stamped with its names' tokens read *before* the query ran (see levels/l1.py on the
store race) and stored only while they are unchanged. L2 writes are queued: the writer thread
sends them in bulk (:class:`PutSender`) and deletes each entry whose tokens moved meanwhile, or
whose write landed more than ``max_put_delay`` after its query started.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, List, Optional, Protocol, Sequence, Tuple

from ..core.codec import (CachedResult, CodecError, UnsupportedValue, always_encodes,
                          encode_entry)
from ..core.config import DEFAULT_CONFIG, CacheConfig, now_ms, real_monotonic
from ..core.faults import Report
from ..core.stats import Counters
from ..invalidation.sweeper import Sweeper
from ..invalidation.writer import BackgroundWriter, PutTask
from ..kv.base import KVPair
from ..kv.limits import MAX_VALUE_BYTES, MIN_EXPIRATION_TTL
from ..l2.gateway import L2Gateway
from ..l2.layout import KeyLayout
from ..levels.entry import Entry
from ..levels.l1 import L1_FAULTS
from .costs import CostModel
from .reads import Reader
from .settings import CacheSettings

log = logging.getLogger("peewee_kvcache")


class Snapshot(Protocol):
    """What a read needs of the transaction it runs in (the Peewee layer's ``Transaction``)."""

    began_ms: int

    def may_store(self, tokens: Sequence[int]) -> bool:
        """Whether a result read under ``tokens`` may be stored."""


@dataclass(eq=False)
class Storer:
    """Runs queries whose results may be cached, and stores those results."""

    settings: CacheSettings
    l1: Any
    layout: KeyLayout
    reader: Reader
    sweeper: Sweeper
    writer: BackgroundWriter
    counters: Counters
    fault: Report
    costs: CostModel

    def seq(self) -> Optional[int]:
        """The token counter (a transaction's baseline); None on fault."""
        return self._l1_read(self.l1.seq)

    def tokens(self, names: Sequence[str]) -> Optional[Tuple[int, ...]]:
        """Tokens to stamp a result with; read them *before* running the query. None on fault."""
        return self._l1_read(self.l1.tokens, names)

    def _l1_read(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 token read failed", exc)
            return None

    def fill(self, key: str, names: Sequence[str], run: Callable[[], Any], config: CacheConfig,
             snapshot: Optional[Snapshot], shape: Optional[Hashable] = None,
             defer_l1: bool = False) -> Any:
        """What ``run()`` returns (a DB-API cursor), or its rows as a CachedResult once stored.

        ``snapshot``: the open transaction the query runs in. Its result is stamped with the
        transaction's start (a REPEATABLE READ snapshot predates the query, maybe another host's
        commit) and stored only if the transaction allows. The database's time (rows fetched)
        is measured for ``shape``'s cost estimate. ``defer_l1``: see :meth:`store`."""
        started_ms = snapshot.began_ms if snapshot is not None else now_ms()
        tokens = self.tokens(names)
        started = time.perf_counter()
        cursor = run()
        if tokens is None or (snapshot is not None and not snapshot.may_store(tokens)):
            return cursor
        result = CachedResult(tuple(d[0] for d in cursor.description), cursor.fetchall())
        self.costs.db_ran(shape, (time.perf_counter() - started) * 1000)
        cursor.close()
        self.store(key, names, tokens, result, config, started_ms, defer_l1)
        return result

    def store(self, digest: str, names: Sequence[str], tokens: Sequence[int],
              result: CachedResult, config: CacheConfig = DEFAULT_CONFIG,
              started_ms: Optional[int] = None, defer_l1: bool = False) -> bool:
        """Store ``result`` under ``digest`` unless a name was bumped since ``tokens`` were read.
        ``started_ms``: when the query started (read before the tokens); defaults to now.
        ``defer_l1``: this process's memory holds the result at once, and the background writer
        writes it to L1 with its L2 write (an L1 write costs as much as a cheap query; the
        stamp keeps a late one from ever serving an invalidated result). The writer then also
        encodes it, when no value could be refused (encoding costs a tenth of a point lookup)."""
        settings = self.settings
        try:
            if not self.l1.is_current(names, tokens) or self.sweeper.distrusts(names):
                self.counters.incr("stores_refused")
                return False
            now = now_ms()
            existing = self.reader.live_expiry(digest, names) if config.keep_ttl else None
            expires_at = config.expires_at_ms(now, settings.default_ttl_ms, existing)
            started = now if started_ms is None else started_ms
            payload = _Payload(functools.partial(
                encode_entry, result, expires_at, settings.secret, digest.encode(), started),
                functools.partial(self._refused, digest))
            if not (defer_l1 and always_encodes(result)):
                payload.data = payload.encode()
        except UnsupportedValue as exc:
            log.info("peewee_kvcache: result not cached: %s", exc)
            self.counters.incr("uncacheable")
            return False
        except L1_FAULTS as exc:
            self.fault("l1_errors", "preparing a store failed, the result is not stored", exc)
            return False
        entry = Entry(tuple(names), tuple(tokens), expires_at, now, result)
        oversized = payload.oversized()
        defer_l1 = defer_l1 and not oversized  # an oversized entry is not sent: no writer task
        self.reader.memory.put(digest, entry)
        if not defer_l1:
            self._keep_l1(digest, entry, payload)
        self.counters.incr("stores")
        if oversized:
            self.counters.incr("oversized")  # stays in L1 only
            return True
        # KV's expiry is sent relative, measured here on the query's clock: the writer thread
        # may see another "now" (freezegun serves it real time), and an absolute expiration
        # from a frozen clock is refused. KV needs ≥ 60 s; the true expiry is inside the entry.
        ttl_s = max(math.ceil((expires_at - now) / 1000), MIN_EXPIRATION_TTL)
        # the write must land within max_put_delay of the query's start (see PutSender)
        deadline = real_monotonic() + (settings.max_put_delay_ms - (now - started)) / 1000
        self.writer.submit(PutTask(
            max(1, len(names) - 1),
            functools.partial(self._pairs, digest, payload, names, ttl_s, started),
            lambda: self._still_current(names, tokens), started, tuple(names), deadline,
            functools.partial(self._keep_l1, digest, entry, payload) if defer_l1 else None))
        return True

    def _pairs(self, digest: str, payload: "_Payload", names: Sequence[str], ttl_s: int,
               started: int) -> List[KVPair]:
        """On the writer thread: the KV pairs of an entry, none if its encoding was refused or
        is over KV's value limit (then it stays in L1)."""
        data = payload.get()
        if data is None:
            return []
        if payload.oversized():
            self.counters.incr("oversized")
            return []
        return self.layout.entry_pairs(digest, data, names, ttl_s, started)

    def _keep_l1(self, digest: str, entry: Entry[CachedResult], payload: "_Payload") -> None:
        data = payload.get()
        if data is None:
            return
        try:
            self.l1.set(digest, entry.holding(data), entry.checked_at_ms)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 write failed", exc)

    def _refused(self, digest: str, exc: CodecError) -> None:
        """A deferred encoding refused (for :func:`always_encodes` results, only a value over
        4 GiB could be): not cached, and dropped from memory."""
        log.info("peewee_kvcache: result not cached: %s", exc)
        self.counters.incr("uncacheable")
        self.reader.memory.discard(digest)

    def _still_current(self, names: Sequence[str], tokens: Sequence[int]) -> bool:
        try:
            return self.l1.is_current(names, tokens)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 token read failed, the L2 write is dropped", exc)
            return False


@dataclass(eq=False)
class _Payload:
    """A stored result's bytes: made on the query's thread, or, deferred, once on the writer's,
    where a refusal of the codec is handed to ``refused``."""

    encode: Callable[[], bytes]
    refused: Callable[[CodecError], None]
    data: Optional[bytes] = None
    failed: bool = False

    def get(self) -> Optional[bytes]:
        if self.data is None and not self.failed:
            try:
                self.data = self.encode()
            except CodecError as exc:
                self.failed = True
                self.refused(exc)
        return self.data

    def oversized(self) -> bool:
        """Made, and over KV's value limit."""
        return self.data is not None and len(self.data) > MAX_VALUE_BYTES


@dataclass(eq=False)
class PutSender:
    """The writer thread's side of storing: one bulk write per batch of queued entries."""

    l2: L2Gateway
    sweeper: Sweeper
    counters: Counters

    def send(self, tasks: List[PutTask]) -> None:
        """One bulk write; then undo any entry whose tokens moved meanwhile, or whose write
        landed more than ``max_put_delay`` after its query started.

        The re-check after the write closes the race with an invalidation that listed markers
        before this write landed: either the invalidation's bump is visible here, or it happened
        after the write and its sweep sees the markers. The time check keeps the promise the
        re-sweep relies on: no entry computed before a write lands after that write's re-sweep.
        """
        now = real_monotonic()
        late = [task for task in tasks if now > task.deadline]
        if late:  # a late write could land after a re-sweep meant to catch it
            self.counters.incr("l2_puts_dropped_late", len(late))
        valid = [task for task in tasks if task.still_valid()]
        for task in valid:
            if task.keep_local is not None:
                task.keep_local()
        live = [(task, task.build()) for task in valid if task not in late]
        pairs = [pair for _, task_pairs in live for pair in task_pairs]
        if not pairs or not self.l2.put(pairs, lambda: self._unknown([t for t, _ in live])):
            return
        done = real_monotonic()  # a write that landed too late may have missed the re-sweep
        stale = [pair.key for task, task_pairs in live
                 if done > task.deadline or not task.still_valid() for pair in task_pairs]
        if stale:
            self.l2.delete(stale)

    def _unknown(self, tasks: List[PutTask]) -> None:
        """A write whose outcome is unknown may land after every sweep meant to remove it: its
        names are swept once more when it can no longer land."""
        self.counters.incr("l2_puts_unknown")
        self.sweeper.sweep_late_write({name for task in tasks for name in task.names},
                                       max(task.started_ms for task in tasks))
