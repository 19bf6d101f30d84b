"""Key layout of the shared level: an entry lives under the index prefix of its first table.

KV allows one write per key per second and has no atomic read-modify-write, so a per-table list
value would lose entries when two hosts append at once. Instead every (name, entry) pair is its own
key under a prefix that ``list`` scans. To halve KV writes and deletes (the scarcest part of
Cloudflare's plans), the entry itself is stored under its *first* name; each further name gets a
small marker key whose metadata points at the entry. A table is invalidated by listing its prefix
and bulk-deleting what it finds plus the entries its markers point at. Any host, even one started
later with an empty L1, finds everything from KV alone.

Layout under the cache's ``prefix``::

    {prefix}t:{table}:{hash}    the entry (first name is this table), or a marker {"e": entry key}
    {prefix}g:{tag}:{hash}      the same for tags
    {prefix}e:{hash}            an entry that depends on no table or tag (auto_invalidate=False)

Names are percent-encoded so that ``:`` inside a tag can never make one prefix match another name.
Which listed keys a sweep deletes is the kv layer's rule (:mod:`peewee_kvcache.kv.sweep`), shared
with the KV gateway Worker that applies it server-side.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence
from urllib.parse import unquote

from ..core.names import EVERYTHING, TABLE, TAG
from ..kv.base import KeyInfo, KVPair
from ..kv.sweep import created_ms as created_ms  # re-exported: the layout's readers use it
from ..kv.sweep import doomed_keys, target_of

ENTRY = "e:"
KINDS = (ENTRY, TABLE, TAG)
MARKER_VALUE = b"1"


def _indexed(names: Iterable[str]) -> List[str]:
    return [name for name in names if name != EVERYTHING]


def marker_target(info: KeyInfo) -> Optional[str]:
    """The entry key a listed marker points at; None when the listed key is an entry itself."""
    return target_of(info.metadata)


def fingerprint(value: bytes) -> str:
    """A short hash of an entry's bytes, kept in its metadata: a re-check tells this very entry
    from another result under the same key (hosts' clocks can't order their creation times)
    without reading the value."""
    return hashlib.blake2b(value, digest_size=8).hexdigest()


def fingerprint_of(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The fingerprint a listed or read entry's metadata carries; None if none."""
    found = metadata.get("f") if isinstance(metadata, Mapping) else None
    return found if isinstance(found, str) else None


@dataclass(frozen=True)
class KeyCounts:
    """L2 key counts of one prefix; the first three as ``CacheStats`` reports them."""

    total_keys: int
    table_keys: int
    tag_keys: int
    markers: int
    by_table: Dict[str, int] = field(default_factory=dict)
    by_tag: Dict[str, int] = field(default_factory=dict)


class KeyLayout:
    """Builds and reads the L2 keys of one cache prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def name_prefix(self, name: str) -> str:
        """Where ``name``'s entries and markers are listed; ``*`` means every table's."""
        return self.prefix + (TABLE if name == EVERYTHING else name + ":")

    def entry_key(self, digest: str, names: Sequence[str]) -> str:
        indexed = _indexed(names)
        return self.name_prefix(indexed[0]) + digest if indexed else self.prefix + ENTRY + digest

    def entry_pairs(self, digest: str, value: bytes, names: Sequence[str],
                    expiration_ttl: int, created_ms: int) -> List[KVPair]:
        """The entry under its first name plus one marker per further name, expiring together
        (``expiration_ttl`` seconds after KV stores them).
        Metadata ``c`` (when the query started) lets a sweep keep results computed after it;
        ``f`` (:func:`fingerprint`) lets a re-check confirm the entry it holds."""
        key = self.entry_key(digest, names)
        pairs = [KVPair(key, value, expiration_ttl=expiration_ttl,
                        metadata={"c": created_ms, "f": fingerprint(value)})]
        pairs.extend(KVPair(self.name_prefix(name) + digest, MARKER_VALUE,
                            expiration_ttl=expiration_ttl, metadata={"e": key, "c": created_ms})
                     for name in _indexed(names)[1:])
        return pairs

    def keys_to_delete(self, infos: Iterable[KeyInfo], before_ms: int) -> List[str]:
        """Listed keys of results computed up to ``before_ms`` (or of unknown age), plus the
        entries their markers point at (the kv layer's sweep rule, scoped to this prefix)."""
        return doomed_keys(infos, before_ms, self.prefix)

    def count(self, infos: Iterable[KeyInfo]) -> KeyCounts:
        """Entries, index keys and markers among this prefix's listed keys, and the keys per
        table and per tag."""
        table_prefix, tag_prefix = self.prefix + TABLE, self.prefix + TAG
        by_table: Counter = Counter()
        by_tag: Counter = Counter()
        keys = markers = 0
        for info in infos:
            keys += 1
            markers += marker_target(info) is not None
            if info.name.startswith(table_prefix):
                by_table[_name_of(info.name, table_prefix)] += 1
            elif info.name.startswith(tag_prefix):
                by_tag[_name_of(info.name, tag_prefix)] += 1
        return KeyCounts(total_keys=keys - markers, table_keys=sum(by_table.values()),
                         tag_keys=sum(by_tag.values()), markers=markers,
                         by_table=dict(sorted(by_table.items())),
                         by_tag=dict(sorted(by_tag.items())))


def _name_of(key: str, kind_prefix: str) -> str:
    """The table or tag a ``{prefix}t:{name}:{hash}`` key belongs to (names are %-encoded)."""
    return unquote(key[len(kind_prefix):].rsplit(":", 1)[0])
