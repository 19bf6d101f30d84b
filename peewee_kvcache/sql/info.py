"""What one SQL text does, as far as caching and invalidation are concerned: :class:`SqlInfo`.

Every question the analysis answers ends here: the tables a statement reads and writes, whether a
SELECT may be cached, and what it does to its connection's transaction and session.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, List, Tuple


@dataclass(frozen=True)
class SqlInfo:
    """What one SQL text does, as far as caching and invalidation are concerned."""

    kind: str  # "select" | "write" | "ddl" | "transaction" | "other"
    read_tables: FrozenSet[str] = frozenset()
    written_tables: FrozenSet[str] = frozenset()
    writes_unknown: bool = False
    cacheable: bool = False
    reason: str = ""
    #: what it does to the connection's transaction, in order: "begin", "commit", "rollback"
    control: Tuple[str, ...] = ()
    #: what it sets in the connection's session ("" nothing, :data:`OPAQUE` unknowable): see
    #: :func:`.control.session_key`
    session: str = ""
    #: a batch's statements, in order (empty for one statement)
    steps: Tuple["SqlInfo", ...] = ()
    #: a SELECT's query shape: its text with IN lists of every length as one (see
    #: lexer.normal_form), what costs are measured per; "" until the database sets it
    shape: str = ""


#: a session change no other connection can be known to share (see :func:`.control.session_key`)
OPAQUE = "?"
_KIND_ORDER = ("other", "transaction", "select", "ddl", "write")


def unknown_write(reason: str) -> SqlInfo:
    return SqlInfo("write", writes_unknown=True, reason=reason)


def combine(infos: List[SqlInfo]) -> SqlInfo:
    """A batch does everything its statements do; it is never cached as a whole."""
    if not infos:
        return SqlInfo("other", reason="empty statement")
    return SqlInfo(
        kind=max((info.kind for info in infos), key=_KIND_ORDER.index),
        read_tables=frozenset().union(*(info.read_tables for info in infos)),
        written_tables=frozenset().union(*(info.written_tables for info in infos)),
        writes_unknown=any(info.writes_unknown for info in infos),
        reason="multiple statements",
        control=tuple(action for info in infos for action in info.control),
        session=next((info.session for info in infos if info.session), ""),
        steps=tuple(infos),
    )
