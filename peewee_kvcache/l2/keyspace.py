"""One cache's keys in a KV namespace: listed, counted and deleted the same way by everyone.

The cache (stats, ``clear_all``, sweeps, through :class:`~.gateway.L2Gateway`, which degrades)
and the operator's maintenance commands (which raise) both come here. Every KV failure raises
``KVError``; long operations report progress per KV request.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence

from ..kv.base import KeyInfo, KVNamespace, chunked
from ..kv.limits import BULK_DELETE_MAX_ITEMS, LIST_MAX_LIMIT
from .layout import KINDS, KeyLayout

#: ``progress(what, done, total)``: ``total`` is None while listing (the size is unknown)
Progress = Callable[[str, int, Optional[int]], None]


def no_progress(what: str, done: int, total: Optional[int]) -> None:
    """The default progress callback: report nothing."""


class KeySpace:
    """The keys of ``layout``'s prefix in ``namespace``."""

    def __init__(self, namespace: KVNamespace, layout: KeyLayout):
        self.namespace = namespace
        self.layout = layout

    def keys(self, progress: Progress = no_progress) -> List[KeyInfo]:
        """Every key of the prefix, listed by kind (a bare prefix "a" would match "ab...") and
        page by page."""
        keys: List[KeyInfo] = []
        for kind in KINDS:
            cursor: Optional[str] = None
            while True:
                page = self.namespace.list(self.layout.prefix + kind, limit=LIST_MAX_LIMIT,
                                           cursor=cursor)
                keys.extend(page.keys)
                progress("listing keys", len(keys), None)
                if not page.cursor:
                    break
                cursor = page.cursor
        return keys

    def stale_keys(self, name: str, before_ms: int) -> List[str]:
        """The keys a sweep of ``name`` deletes: its entries and markers of results computed up
        to ``before_ms``, and the entries those markers point at."""
        listed = self.namespace.list_all(self.layout.name_prefix(name))
        return self.layout.keys_to_delete(listed, before_ms)

    def sweep(self, boundaries: Mapping[str, int]) -> List[str]:
        """One invalidation sweep of several names, each up to its boundary (unix ms), through
        the namespace's sweep (one request on the gateway Worker); the keys KV left behind."""
        prefixes: Dict[str, int] = {}
        for name, before_ms in boundaries.items():
            prefix = self.layout.name_prefix(name)
            prefixes[prefix] = max(before_ms, prefixes.get(prefix, before_ms))
        return self.namespace.sweep(prefixes, scope=self.layout.prefix)

    def delete(self, keys: Sequence[str], progress: Progress = no_progress) -> List[str]:
        """Bulk-delete ``keys`` in KV-sized requests; returns the keys KV left behind."""
        left: List[str] = []
        done = 0
        progress("deleting keys", done, len(keys))
        for chunk in chunked(keys, BULK_DELETE_MAX_ITEMS):
            left += self.namespace.bulk_delete(chunk)
            done += len(chunk)
            progress("deleting keys", done, len(keys))
        return left
