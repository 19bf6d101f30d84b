"""The in-process level in front of L1: decoded results of this process, validated like L1 entries.

A hit served from here skips diskcache and decoding entirely; it is checked against the same
token stamp, expiry and ``l1_max_age`` as an L1 entry, so it is exactly as fresh. Only results
whose values are all immutable are kept: rows are shared by every caller, and a caller mutating a
JSON dict from one result must not change what the next caller gets.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from itertools import chain
from typing import Optional

from ..core import forksafe
from ..core.codec import CachedResult
from .entry import Entry

_MUTABLE = (list, dict, set, bytearray)


def shareable(result: CachedResult, max_rows: int) -> bool:
    """Small enough, and no value a caller could mutate in place (checked per distinct type:
    a row's few types, not its every value, go through ``issubclass``)."""
    return len(result.rows) <= max_rows and not any(
        issubclass(tp, _MUTABLE) for tp in set(map(type, chain.from_iterable(result.rows))))


class MemoryLevel:
    """A thread-safe LRU of at most ``max_entries`` results of at most ``max_rows`` rows each."""

    def __init__(self, max_entries: int = 1000, max_rows: int = 10_000):
        self.max_entries = max_entries
        self.max_rows = max_rows
        self._entries: "OrderedDict[str, Entry[CachedResult]]" = OrderedDict()
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")  # entries stay: they are checked like L1's

    def get(self, digest: str) -> Optional[Entry[CachedResult]]:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
            return entry

    def put(self, digest: str, entry: Entry[CachedResult]) -> None:
        if not self.max_entries or not shareable(entry.value, self.max_rows):
            return
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, digest: str) -> None:
        with self._lock:
            self._entries.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
