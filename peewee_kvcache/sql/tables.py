"""The one way every table is named: in stamps, invalidations, cascades and both readers of a
statement (parsed.py for raw SQL, orm/tree.py for Peewee's query objects).

Names are compared bare and lowercase: an extra match only costs a cache miss, a missed one serves
stale rows. Nothing here imports sqlglot.
"""
from __future__ import annotations

from typing import FrozenSet, List, Optional

_OPEN_QUOTES = {'"': '"', "`": "`", "[": "]"}


def table_key(identifier: str) -> str:
    """How a table is named everywhere (stamps, invalidation, cascades): its identifier exactly
    as Peewee's ``table_name`` and the SQL parser give it (unquoted, unqualified), lower-cased."""
    return identifier.lower()


def table_names_in(reference: str) -> FrozenSet[str]:
    """The tables a user-written name may mean: the text as one identifier (a table may be
    called ``my.table`` or ``we"ird``) and, read as a SQL reference (quotes, a schema qualifier),
    its last part. Invalidating both costs at most a needless miss; missing one serves stale rows.
    """
    text = reference.strip()
    last = _last_part(text)
    return frozenset({table_key(text)} | ({table_key(last)} if last else set()))


def _last_part(reference: str) -> Optional[str]:
    """The last name of a dotted, possibly quoted SQL reference; None if a quote is left open."""
    current: List[str] = []
    quote, i = "", 0
    while i < len(reference):
        char = reference[i]
        if quote and char == quote and reference[i + 1:i + 2] == quote:  # doubled = literal quote
            current.append(char)
            i += 1
        elif quote and char == quote:
            quote = ""
        elif quote:
            current.append(char)
        elif char in _OPEN_QUOTES:
            quote = _OPEN_QUOTES[char]
        elif char == ".":
            current = []
        else:
            current.append(char)
        i += 1
    return None if quote else "".join(current).strip()
