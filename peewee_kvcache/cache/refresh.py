"""Re-checks of this host's entries against L2, batched and off the query path.

Another host's invalidation deletes L2 entries but cannot reach this host's L1 (NOTIFY, where
there is one, can be lost), so an entry is served only within ``l1_max_age`` of its last check
against L2. Checking on the query path would make a hit wait for a far L2; instead an entry served
in the second half of that window is queued, and the background writer checks every queued entry
with one bulk read per 100 keys (metadata only matter). An entry found in L2 with the fingerprint
of this host's copy (the very entry) is confirmed as of when it was queued (before the bulk
read was sent, on the clock of the query that queued it, so a test's frozen clock and the writer
thread's never mix): no sweep up to then removed it, so none of its tables changed. Found as
another result (hosts' clocks cannot order two creation times): L2's entry is fetched and kept,
with the usual check against invalidations this host saw. Missing: swept (or expired)
elsewhere; this process stops serving it. A confirmed entry's memory copy is dropped rather than
re-stamped (it may be another result with the same tokens), and the next lookup reads L1's,
even where L1 reads do not pay otherwise (costs.py). An entry nobody re-checked in time
is a miss, as before: the bound is ``l1_max_age`` exactly.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

from ..core import forksafe
from ..core.faults import Report
from ..core.stats import Counters
from ..kv.base import chunked
from ..kv.limits import BULK_GET_MAX_KEYS
from ..l2.gateway import L2Gateway
from ..l2.layout import fingerprint, fingerprint_of
from ..levels.entry import Entry
from ..levels.l1 import L1_FAULTS
from ..levels.memory import MemoryLevel



@dataclass(eq=False)
class Refresher:
    """Queues entries due for a re-check and checks them in the background writer."""

    l1: Any
    memory: MemoryLevel
    l2: L2Gateway
    #: fetch and keep L2's entry (the reader's L2 read, off the query path): digest, names,
    #: shape, and the time it is checked as of
    fetch: Callable[[str, Tuple[str, ...], Optional[Hashable], Optional[int]], Any]
    #: hand work to the background writer
    submit: Callable[[Callable[[], None]], None]
    counters: Counters
    fault: Report
    #: tells the reader the next lookup of a digest reads L1 (its memory copy was dropped)
    read_l1_next: Callable[[str], None]
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
        entries: Dict[str, Tuple[Entry[bytes], str]] = {}
        for digest in due:
            try:
                entry = self.l1.get(digest)
            except L1_FAULTS as exc:  # this one is not confirmed: it ages into a miss
                self.fault("l1_errors", "L1 read for a re-check failed", exc)
                continue
            if entry is not None:
                entries[digest] = (entry, self.l2.layout.entry_key(digest, entry.names))
        found = self.l2.metadata("L2 re-check failed", [key for _, key in entries.values()])
        if found is None:
            return
        for digest, (entry, key) in entries.items():
            metadata = found.get(key)
            if metadata is None:
                self._drop(digest)
            elif fingerprint_of(metadata) == fingerprint(entry.value):  # this very entry
                self._confirm(digest, entry, due[digest])
            else:  # another one (hosts' clocks can't order two): keep L2's, checked as usual
                self.memory.discard(digest)
                self.fetch(digest, entry.names, None, due[digest])

    def _drop(self, digest: str) -> None:
        """Swept elsewhere (or expired): this host stops serving it at once."""
        self.memory.discard(digest)
        try:
            self.l1.discard(digest)
        except L1_FAULTS as exc:  # it still ages out within l1_max_age
            self.fault("l1_errors", "L1 delete after a re-check failed", exc)
        self.counters.incr("l1_refreshes_gone")

    def _confirm(self, digest: str, entry: Entry[bytes], checked_ms: int) -> None:
        """Mark ``entry`` checked at ``checked_ms`` in L1, unless it was replaced meanwhile.
        This process's memory copy is dropped, not re-stamped: it may be another result with
        the same tokens (this host saw no invalidation; L2 did), so the next hit reads L1."""
        try:
            current = self.l1.get(digest)
            if current is None or current.value != entry.value:
                return
            confirmed = Entry(entry.names, entry.tokens, entry.expires_at_ms, checked_ms,
                              entry.value)
            self.l1.set(digest, confirmed, checked_ms)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 write for a re-check failed", exc)
            return
        self.memory.discard(digest)
        self.read_l1_next(digest)
        self.counters.incr("l1_refreshes")
