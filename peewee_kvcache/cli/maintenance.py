"""Operator maintenance of one cache's L2 keys: counting, clearing and repairing the layout.

The cache's own methods degrade (a KV fault becomes a miss and a counter) because they run on a
query's path. An operator or a script needs the opposite: here every KV failure raises
``KVError``, and long scans report progress per listed page so a command line can show it.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence
from urllib.parse import unquote

from ..core.names import TABLE, TAG
from ..l2 import layout
from ..kv.base import KeyInfo, KVError, KVNamespace, chunked
from ..kv.limits import BULK_DELETE_MAX_ITEMS, LIST_MAX_LIMIT

if TYPE_CHECKING:
    from ..cache.facade import CloudflareKVCache

#: ``progress(what, done, total)``: ``total`` is None while listing (the size is unknown)
Progress = Callable[[str, int, Optional[int]], None]


def _no_progress(what: str, done: int, total: Optional[int]) -> None:
    """The default progress callback: report nothing."""


@dataclass(frozen=True)
class KeyCounts:
    """L2 key counts of one prefix; the first three as ``CacheStats`` reports them."""

    total_keys: int
    table_keys: int
    tag_keys: int
    markers: int
    by_table: Dict[str, int] = field(default_factory=dict)
    by_tag: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RebuildReport:
    """What ``rebuild_index`` found: dangling markers removed, and recent ones left alone."""

    entries: int
    markers: int
    dangling_removed: int
    dangling_recent_kept: int


def _name_of(key: str, kind_prefix: str) -> str:
    """The table or tag a ``{prefix}t:{name}:{hash}`` key belongs to (names are %-encoded)."""
    return unquote(key[len(kind_prefix):].rsplit(":", 1)[0])


class Maintenance:
    """Scans and repairs the L2 keys of ``prefix`` in ``namespace``.

    ``grace_s``: a marker whose query started less than this long before a scan may point at an
    entry the listing cannot show yet (KV's list lags writes by up to its propagation delay, and
    a queued write may land up to the cache's ``max_put_delay`` after its query started), so it
    is never taken for dangling.
    """

    def __init__(self, namespace: KVNamespace, prefix: str, *, grace_s: float = 10.0,
                 progress: Progress = _no_progress) -> None:
        self.namespace = namespace
        self.prefix = prefix
        self.grace_ms = int(grace_s * 1000)
        self.progress = progress

    @classmethod
    def for_cache(cls, cache: CloudflareKVCache, progress: Progress = _no_progress
                  ) -> Maintenance:
        """Maintenance of ``cache``'s prefix, with the grace its namespace and writer need."""
        return cls(cache.namespace, cache.prefix, progress=progress,
                   grace_s=cache.propagation_delay + cache.max_put_delay_ms / 1000)

    def scan(self) -> List[KeyInfo]:
        """Every key of the prefix, listed by kind (a bare prefix "a" would match "ab...") and
        page by page; raises KVError when a page cannot be listed."""
        keys: List[KeyInfo] = []
        for kind in layout.KINDS:
            cursor: Optional[str] = None
            while True:
                page = self.namespace.list(self.prefix + kind, limit=LIST_MAX_LIMIT,
                                           cursor=cursor)
                keys.extend(page.keys)
                self.progress("listing keys", len(keys), None)
                if not page.cursor:
                    break
                cursor = page.cursor
        return keys

    def count(self) -> KeyCounts:
        """Entries, index keys and markers of the prefix, and keys per table and per tag."""
        keys = self.scan()
        table_prefix, tag_prefix = self.prefix + TABLE, self.prefix + TAG
        by_table: Counter = Counter()
        by_tag: Counter = Counter()
        markers = 0
        for info in keys:
            markers += layout.marker_target(info) is not None
            if info.name.startswith(table_prefix):
                by_table[_name_of(info.name, table_prefix)] += 1
            elif info.name.startswith(tag_prefix):
                by_tag[_name_of(info.name, tag_prefix)] += 1
        return KeyCounts(total_keys=len(keys) - markers, table_keys=sum(by_table.values()),
                         tag_keys=sum(by_tag.values()), markers=markers,
                         by_table=dict(sorted(by_table.items())),
                         by_tag=dict(sorted(by_tag.items())))

    def delete(self, keys: Sequence[str]) -> int:
        """Bulk-delete ``keys`` in KV-sized chunks; KVError if any key was left behind."""
        done = 0
        self.progress("deleting keys", done, len(keys))
        for chunk in chunked(keys, BULK_DELETE_MAX_ITEMS):
            failed = self.namespace.bulk_delete(chunk)
            if failed:
                raise KVError(f"KV left {len(failed)} of {len(chunk)} keys undeleted "
                              f"(first: {failed[0]!r})")
            done += len(chunk)
            self.progress("deleting keys", done, len(keys))
        return done

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
        entries = {info.name for info in keys if layout.marker_target(info) is None}
        dangling: List[str] = []
        recent = 0
        for info in keys:
            target = layout.marker_target(info)
            if target is None or target in entries:
                continue
            created = info.metadata.get("c") if isinstance(info.metadata, dict) else None
            if isinstance(created, int) and created > started_ms - self.grace_ms:
                recent += 1
            else:
                dangling.append(info.name)
        if dangling:
            self.delete(dangling)
        return RebuildReport(entries=len(entries), markers=len(keys) - len(entries),
                             dangling_removed=len(dangling), dangling_recent_kept=recent)
