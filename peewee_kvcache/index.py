"""Key layout of the shared level: entries plus one small marker key per (table or tag, entry).

KV allows one write per key per second and has no atomic read-modify-write, so a per-table list
value would lose entries when two hosts append at once. Instead every entry gets one marker per
name, written in the same bulk request and expiring with it; a table is invalidated by listing its
marker prefix and bulk-deleting markers and entries. Any host, even one started later with an empty
L1, can find everything from KV alone.

Layout under the cache's ``prefix``::

    {prefix}e:{hash}               the encoded result
    {prefix}t:{table}:{hash}       marker: entry {hash} read {table}
    {prefix}g:{tag}:{hash}         marker: entry {hash} carries {tag}

Names are percent-encoded so that ``:`` inside a tag can never make one prefix match another name.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple
from urllib.parse import quote

from .kv.base import KVPair

ENTRY = "e:"
TABLE = "t:"
TAG = "g:"
MARKER_VALUE = b"1"


def encode_name(name: str) -> str:
    return quote(name, safe="")


def table_name(table: str) -> str:
    """The token/marker name of a table (tables and tags share the L1 token space)."""
    return TABLE + encode_name(table)


def tag_name(tag: str) -> str:
    return TAG + encode_name(tag)


class KeyLayout:
    """Builds and parses the L2 keys of one cache prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def entry_key(self, digest: str) -> str:
        return self.prefix + ENTRY + digest

    def marker_prefix(self, name: str) -> str:
        """``name`` is a token name from :func:`table_name` / :func:`tag_name`."""
        return self.prefix + name + ":"

    def entry_pairs(self, digest: str, value: bytes, names: Iterable[str],
                    expiration: int) -> List[KVPair]:
        """The entry plus its markers, all expiring together (absolute unix seconds)."""
        pairs = [KVPair(self.entry_key(digest), value, expiration=expiration)]
        pairs.extend(KVPair(self.marker_prefix(name) + digest, MARKER_VALUE, expiration=expiration)
                     for name in names)
        return pairs

    def keys_for_marker(self, marker_key: str) -> Tuple[str, str]:
        """(marker key, entry key) for a listed marker."""
        return marker_key, self.entry_key(marker_key.rsplit(":", 1)[1])
