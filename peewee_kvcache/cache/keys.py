"""Cache keys: a 160-bit BLAKE2b hash of length-prefixed parts (keys never contain SQL,
parameters or data, only this hash)."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence, Tuple

from ..core.names import stamp_names, table_names_of, tag_digest_part, tag_list


def key_hash(*parts: bytes) -> "hashlib.blake2b":
    """Key hash state fed ``parts`` (see :func:`feed`)."""
    return feed(hashlib.blake2b(digest_size=20), *parts)


def feed(h: "hashlib.blake2b", *parts: bytes) -> "hashlib.blake2b":
    """Add length-prefixed ``parts``, so no two part lists hash the same bytes."""
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h


def digest_of(*parts: bytes) -> str:
    return key_hash(*parts).hexdigest()


def seed_key(key: str, tables: Iterable[Any], is_tag: bool, auto_invalidate: bool
             ) -> Tuple[str, Sequence[str]]:
    """The digest and stamp names of an entry of the seed's ``get``/``put`` API."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty str, got {key!r}")
    for name, flag in (("is_tag", is_tag), ("is_auto_invalidate", auto_invalidate)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    tags = tag_list([key] if is_tag else [])
    names = stamp_names(table_names_of(tables), tags, auto_invalidate)
    return digest_of(b"seed", key.encode(), tag_digest_part(tuple(tags), auto_invalidate)), names
