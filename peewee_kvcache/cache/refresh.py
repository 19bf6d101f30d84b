"""Re-checks of this host's entries against L2, batched and off the query path.

Another host's invalidation deletes L2 entries but cannot reach this host's L1 (NOTIFY, where
there is one, can be lost), so an entry is served only within ``l1_max_age`` of its last check
against L2. Checking on the query path would make a hit wait for a far L2; instead an entry served
in the second half of that window is queued, and the background writer checks every queued entry
with one bulk read per 100 keys (metadata only matter). An entry found in L2, written by a query
that started no later than this host's copy's, is confirmed as of when it was queued (before the
bulk read was sent, on the clock of the query that queued it, so a test's frozen clock and the
writer thread's never mix): no sweep up to then removed it, so none of its tables changed.
Found newer: the newer entry is fetched and kept. Missing: swept (or expired) elsewhere; this
process stops serving it. An entry nobody re-checked in time is a miss, as before: the bound is
``l1_max_age`` exactly.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from ..core import forksafe
from ..core.codec import CodecError, created_at
from ..core.faults import Report
from ..core.stats import Counters
from ..kv.base import chunked
from ..kv.limits import BULK_GET_MAX_KEYS
from ..l2.gateway import L2Gateway
from ..l2.layout import created_ms
from ..levels.entry import Entry
from ..levels.l1 import L1_FAULTS
from ..levels.memory import MemoryLevel

#: the faults a re-check meets in L1 (an unreadable entry is simply not confirmed)
_FAULTS = L1_FAULTS + (CodecError,)


@dataclass(eq=False)
class Refresher:
    """Queues entries due for a re-check and checks them in the background writer."""

    l1: Any
    memory: MemoryLevel
    l2: L2Gateway
    #: fetch and keep a newer L2 entry (the reader's L2 read, off the query path)
    fetch: Callable[[str, Tuple[str, ...]], Any]
    #: hand work to the background writer
    submit: Callable[[Callable[[], None]], None]
    counters: Counters
    fault: Report
    #: digest -> when it was queued (unix ms, the querying thread's clock)
    _due: Dict[str, int] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        forksafe.renew_locks(self, "_lock")
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """The parent checks what it queued; a check in flight at fork never reaches the child
        (the writer's queue is the parent's), so nothing may stay marked queued here."""
        self._due = {}

    def due(self, digest: str, now_ms: int) -> None:
        """Queue ``digest`` at ``now_ms`` (called on the hit path: a dict lookup when already
        queued)."""
        if digest in self._due:
            return
        with self._lock:
            first = not self._due
            self._due.setdefault(digest, now_ms)
        if first:
            self.submit(self.run)

    def run(self) -> None:
        """Check every queued entry, 100 keys per bulk read (the background writer's task)."""
        with self._lock:
            due, self._due = self._due, {}
        for chunk in chunked(due.items(), BULK_GET_MAX_KEYS):
            self._check(dict(chunk))

    def _check(self, due: Dict[str, int]) -> None:
        entries: Dict[str, Tuple[Entry[bytes], Optional[int], str]] = {}
        try:
            for digest in due:
                entry = self.l1.get(digest)
                if entry is not None:
                    key = self.l2.layout.entry_key(digest, entry.names)
                    entries[digest] = (entry, created_at(entry.value), key)
        except _FAULTS as exc:
            self.fault("l1_errors", "L1 read for a re-check failed", exc)
            return
        found = self.l2.metadata("L2 re-check failed", [key for _, _, key in entries.values()])
        if found is None:
            return
        for digest, (entry, created, key) in entries.items():
            metadata = found.get(key)
            if metadata is None:
                self._drop(digest)
                continue
            theirs = created_ms(metadata)
            if created is not None and theirs is not None and theirs > created:
                self.fetch(digest, entry.names)  # a newer result: keep that one
            else:
                self._confirm(digest, entry, due[digest])

    def _drop(self, digest: str) -> None:
        """Swept elsewhere (or expired): this host stops serving it at once."""
        self.memory.discard(digest)
        try:
            self.l1.discard(digest)
        except L1_FAULTS as exc:  # it still ages out within l1_max_age
            self.fault("l1_errors", "L1 delete after a re-check failed", exc)
        self.counters.incr("l1_refreshes_gone")

    def _confirm(self, digest: str, entry: Entry[bytes], checked_ms: int) -> None:
        """Mark ``entry`` checked at ``checked_ms``, in L1 and in memory, unless it was replaced
        meanwhile."""
        try:
            current = self.l1.get(digest)
            if current is None or current.value != entry.value:
                return
            confirmed = Entry(entry.names, entry.tokens, entry.expires_at_ms, checked_ms,
                              entry.value)
            self.l1.set(digest, confirmed, checked_ms)
        except _FAULTS as exc:
            self.fault("l1_errors", "L1 write for a re-check failed", exc)
            return
        held = self.memory.get(digest)
        if held is not None and held.tokens == entry.tokens:
            self.memory.put(digest, confirmed.holding(held.value))
        self.counters.incr("l1_refreshes")
