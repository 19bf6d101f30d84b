"""A DB-API-shaped cursor over a cached result: what Peewee's cursor wrappers consume."""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

from ..core.codec import CachedResult


class CachedCursor:
    """Serves ``description``, ``fetchone``/``fetchmany``/``fetchall``, iteration and
    ``rowcount``."""

    arraysize = 1
    lastrowid: Optional[int] = None

    def __init__(self, result: CachedResult):
        self.description: List[Tuple[Any, ...]] = [
            (name, None, None, None, None, None, None) for name in result.columns]
        self._rows = result.rows
        self._pos = 0
        self.rowcount = len(result.rows)

    def fetchone(self) -> Optional[tuple]:
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: Optional[int] = None) -> List[tuple]:
        end = self._pos + (size or self.arraysize)
        rows = self._rows[self._pos:end]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> List[tuple]:
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple]:
        while True:
            row = self.fetchone()
            if row is None:
                return
            yield row

    def close(self) -> None:
        self._pos = len(self._rows)
