"""What a cached result depends on: table and tag names, validated and normalised in one place."""
from __future__ import annotations

import functools

from typing import Any, FrozenSet, Iterable, List, Tuple, Union
from urllib.parse import quote

import peewee

from ..sql.tables import table_key, table_names_in

#: token-name prefixes: tables and tags share one token space (L1) and one key space (L2)
TABLE = "t:"
TAG = "g:"
#: the token every auto-invalidated entry carries; bumped by a write whose tables are unknown
EVERYTHING = "*"


def encode_name(name: str) -> str:
    """Percent-encoded, so ``:`` inside a tag can never make one prefix match another name."""
    return quote(name, safe="")


def table_name(table: str) -> str:
    """The token/marker name of a table."""
    return TABLE + encode_name(table)


def tag_name(tag: str) -> str:
    return TAG + encode_name(tag)

MAX_TAG_BYTES = 128


def table_names_of(tables: Iterable[Any]) -> List[str]:
    """Table names (as the SQL parser reports them) from models, ``Table`` objects or strings (one,
    or a collection). A model or ``Table`` names its table exactly; a string may also be a quoted
    or schema-qualified reference, and then counts both ways (see ``table_names_in``)."""
    if tables is None:
        return []
    if isinstance(tables, (str, peewee.Table)) or _is_model(tables):
        tables = [tables]
    elif not isinstance(tables, (list, tuple, set, frozenset)):
        raise ValueError(f"tables must be a model, a Table, a name or a list of them, "
                         f"got {tables!r}")
    names: List[str] = []
    for table in tables:
        if _is_model(table):
            names.append(table_key(table._meta.table_name))
        elif isinstance(table, peewee.Table):
            names.append(table_key(table.__name__))
        elif isinstance(table, str) and table.strip():
            names.extend(sorted(table_names_in(table)))
        else:
            raise ValueError(f"not a table: {table!r} (give a model, a Table or a table name)")
    return names


def write_names(tables: Iterable[str], everything: bool) -> List[str]:
    """Token names a write of ``tables`` invalidates (``everything``: its tables are unknown)."""
    return ([EVERYTHING] if everything else []) + [table_name(t) for t in tables]


def tag_list(tags: Union[str, Iterable[str], None]) -> List[str]:
    """Tags as a list; one str is one tag. Empty, non-str or oversized tags are refused."""
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    elif not isinstance(tags, (list, tuple, set, frozenset)):
        raise TypeError(f"tags must be a str or a list of str, got {tags!r}")
    result = []
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"tag must be a str, got {tag!r} ({type(tag).__name__})")
        if not tag.strip():
            raise ValueError(f"tag must not be empty, got {tag!r}")
        if len(tag.encode()) > MAX_TAG_BYTES:
            raise ValueError(f"tag longer than {MAX_TAG_BYTES} bytes: {tag[:40]!r}...")
        result.append(tag)
    return result


def stamp_names(tables: Iterable[str], tags: Iterable[str], auto_invalidate: bool
                ) -> Tuple[str, ...]:
    """Token names an entry is stamped with, in a stable order.

    Auto-invalidated entries depend on their tables and on :data:`EVERYTHING`; an entry with
    ``auto_invalidate=False`` depends only on its tags (and its TTL).
    """
    return _stamp_names(frozenset(tables), frozenset(tags), auto_invalidate)


@functools.lru_cache(maxsize=4096)
def _stamp_names(tables: FrozenSet[str], tags: FrozenSet[str], auto_invalidate: bool
                 ) -> Tuple[str, ...]:
    """Memoised: the hit path asks for the same few stamps over and over."""
    names = [tag_name(tag) for tag in sorted(tags)]
    if auto_invalidate:
        names = [EVERYTHING] + [table_name(t) for t in sorted(tables)] + names
    return tuple(names)


@functools.lru_cache(maxsize=4096)
def tag_digest_part(tags: Tuple[str, ...], auto_invalidate: bool) -> bytes:
    """Bytes mixed into a result key so entries with different tags/auto flags never collide."""
    flag = "\x01auto" if auto_invalidate else "\x01manual"
    return ("\x00".join(sorted(set(tags))) + flag).encode()


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, peewee.Model)

