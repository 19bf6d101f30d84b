"""Operator maintenance of one cache's L2 keys: counting, clearing and repairing the layout.

The cache's own methods degrade (a KV fault becomes a miss and a counter) because they run on a
query's path. An operator or a script needs the opposite: here every KV failure raises
``KVError``, and long scans report progress per listed page so a command line can show it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

from ..cache.facade import CloudflareKVCache
from ..kv.base import KeyInfo, KVError, KVNamespace
from ..l2.keyspace import KeySpace, Progress, no_progress
from ..l2.layout import KeyCounts, KeyLayout, created_ms, marker_target


@dataclass(frozen=True)
class RebuildReport:
    """What ``rebuild_index`` found: dangling markers removed, and recent ones left alone."""

    entries: int
    markers: int
    dangling_removed: int
    dangling_recent_kept: int


class Maintenance:
    """Scans and repairs the L2 keys of ``prefix`` in ``namespace``.

    ``grace_s``: a marker whose query started less than this long before a scan may point at an
    entry the listing cannot show yet (KV's list lags writes by up to its propagation delay, and
    a queued write may land up to the cache's ``max_put_delay`` after its query started), so it
    is never taken for dangling.
    """

    def __init__(self, namespace: KVNamespace, prefix: str, *, grace_s: float = 10.0,
                 progress: Progress = no_progress) -> None:
        self.keyspace = KeySpace(namespace, KeyLayout(prefix))
        self.grace_ms = int(grace_s * 1000)
        self.progress = progress

    @classmethod
    def for_cache(cls, cache: CloudflareKVCache, progress: Progress = no_progress
                  ) -> Maintenance:
        """Maintenance of ``cache``'s prefix, with the grace its namespace and writer need."""
        return cls(cache.namespace, cache.prefix, progress=progress,
                   grace_s=cache.settings.resweep_after_ms / 1000)

    def scan(self) -> List[KeyInfo]:
        """Every key of the prefix; raises KVError when a page cannot be listed."""
        return self.keyspace.keys(self.progress)

    def count(self) -> KeyCounts:
        """Entries, index keys and markers of the prefix, and keys per table and per tag."""
        return self.keyspace.layout.count(self.scan())

    def stale_keys(self, names: Sequence[str]) -> Dict[str, List[str]]:
        """For each token name (``t:table``, ``g:tag``), the keys a sweep of it would delete now:
        its entries and markers, and the entries its markers point at (the cache's own rule)."""
        now_ms = int(time.time() * 1000)
        return {name: self.keyspace.stale_keys(name, now_ms) for name in names}

    def delete(self, keys: Sequence[str]) -> int:
        """Bulk-delete ``keys``; KVError if any key was left behind."""
        left = self.keyspace.delete(keys, self.progress)
        if left:
            raise KVError(f"KV left {len(left)} of {len(keys)} keys undeleted "
                          f"(first: {left[0]!r})")
        return len(keys)

    def rebuild_index(self) -> RebuildReport:
        """Re-read the prefix's whole index from KV and delete the dangling markers: markers
        whose entry key no longer exists (deleted by hand, lost to a partial bulk delete, or
        pointing outside the prefix). They cost nothing to readers but a delete at each
        invalidation, and they expire with the entry they pointed at.

        KV has no transactions: an entry re-stored under the same key between this scan and the
        delete loses that marker, so run this while the marked tables are quiet, not in a loop.
        """
        started_ms = int(time.time() * 1000)
        keys = self.scan()
        entries = {info.name for info in keys if marker_target(info) is None}
        dangling: List[str] = []
        recent = 0
        for info in keys:
            target = marker_target(info)
            if target is None or target in entries:
                continue
            created = created_ms(info.metadata)
            if created is not None and created > started_ms - self.grace_ms:
                recent += 1
            else:
                dangling.append(info.name)
        if dangling:
            self.delete(dangling)
        return RebuildReport(entries=len(entries), markers=len(keys) - len(entries),
                             dangling_removed=len(dangling), dangling_recent_kept=recent)
