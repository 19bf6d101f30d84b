"""LocalKVNamespace: Workers KV's semantics in one SQLite file, for a single host and for tests.

Processes and threads may share one directory: SQLite in WAL mode lets readers run beside a writer;
writers take the write lock up front (BEGIN IMMEDIATE) so they queue on the busy timeout instead of
failing on a lock upgrade; each thread (and each forked process) gets its own connection, which only
that thread uses and which is never closed while a statement runs on it.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..core.sqlite import ThreadConnection, ThreadConnections, use_wal
from . import codes, limits
from .base import KVError, KVNamespace, KeyInfo, KVPair, ListPage, ValueWithMetadata, chunked

# Keys are stored as their UTF-8 bytes so SQLite's memcmp order is KV's byte order and a prefix
# range is a plain index range.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL,"
    " expiration INTEGER, metadata TEXT)",
    "CREATE INDEX IF NOT EXISTS kv_expiration ON kv (expiration) WHERE expiration IS NOT NULL",
)
_LIVE = "(expiration IS NULL OR expiration > ?)"
_UPSERT = "INSERT OR REPLACE INTO kv (key, value, expiration, metadata) VALUES (?, ?, ?, ?)"


def _metadata(text: Optional[str]) -> Optional[Mapping[str, Any]]:
    return None if text is None else json.loads(text)


def _prefix_end(prefix: bytes) -> Optional[bytes]:
    """Smallest byte string above every key starting with ``prefix`` (UTF-8 never has 0xFF)."""
    return prefix[:-1] + bytes([prefix[-1] + 1]) if prefix else None


def _encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def _decode_cursor(cursor: Any) -> bytes:
    """The last key of the previous page; anything we did not issue is rejected like KV does."""
    try:
        key: Optional[bytes] = base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (AttributeError, UnicodeEncodeError, binascii.Error):  # not a str, not base64
        key = None
    if key is None or _encode_cursor(key) != cursor:
        raise KVError("Invalid list cursor.", codes.ERR_INVALID_CURSOR, 400)
    return key


@contextmanager
def _store_errors() -> Iterator[None]:
    """Surface SQLite failures (e.g. a lock held past the busy timeout) as KVError, like KV's."""
    try:
        yield
    except sqlite3.Error as exc:
        raise KVError(f"local KV store failed: {exc}") from exc


class LocalKVNamespace(KVNamespace):
    """A KV namespace kept in ``<directory>/kv.sqlite3``; every KV limit is enforced."""

    def __init__(self, directory: Union[str, "os.PathLike[str]"], *,
                 busy_timeout: float = 30.0) -> None:
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._path = os.path.join(self.directory, "kv.sqlite3")
        self._busy_timeout = busy_timeout
        self._connections = ThreadConnections(self._connect, ThreadConnection,
                                              lambda: KVError(f"{self!r} is closed"))
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def __repr__(self) -> str:
        return f"LocalKVNamespace({self.directory!r})"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            use_wal(conn, self._busy_timeout)  # a new file opened by several processes at once
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held against :meth:`close` for the block."""
        handle = self._connections.get()
        try:
            with handle.lock:
                if handle.closed:  # close() took it between the lookup and the lock
                    raise KVError(f"{self!r} is closed")
                yield handle.conn
        finally:
            if self._connections.closed:  # close() may have found it busy: left to this thread
                handle.close_if_idle()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; it also purges expired entries, so expiry needs no sweeper."""
        with _store_errors(), self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("DELETE FROM kv WHERE expiration <= ?", (time.time(),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any]) -> List[tuple]:
        with _store_errors(), self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def get(self, key: str) -> Optional[bytes]:
        found = self.get_with_metadata(key)
        return None if found is None else found.value

    def get_with_metadata(self, key: str) -> Optional[ValueWithMetadata]:
        rows = self._read(f"SELECT value, metadata, expiration FROM kv WHERE key = ? AND {_LIVE}",
                          (limits.validate_key(key), time.time()))
        if not rows:
            return None
        value, metadata, expiration = rows[0]
        return ValueWithMetadata(value, _metadata(metadata), expiration)

    def put(self, key: str, value: bytes, *, expiration: Optional[int] = None,
            expiration_ttl: Optional[int] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> None:
        checked = limits.validate_put(key, value, expiration=expiration,
                                      expiration_ttl=expiration_ttl, metadata=metadata,
                                      now=time.time())
        with self._write() as conn:
            conn.execute(_UPSERT, checked)

    def delete(self, key: str) -> None:
        self.bulk_delete([key])

    def bulk_put(self, pairs: Sequence[KVPair]) -> List[str]:
        """All pairs are checked before any is written, so one bad pair writes nothing."""
        now = time.time()
        rows = [limits.validate_put(p.key, p.value, expiration=p.expiration,
                                    expiration_ttl=p.expiration_ttl, metadata=p.metadata, now=now)
                for p in pairs]
        for chunk in chunked(rows, limits.BULK_WRITE_MAX_ITEMS):
            with self._write() as conn:
                conn.executemany(_UPSERT, chunk)
        return []

    def bulk_delete(self, keys: Sequence[str]) -> List[str]:
        encoded = [(limits.validate_key(key),) for key in keys]
        for chunk in chunked(encoded, limits.BULK_DELETE_MAX_ITEMS):
            with self._write() as conn:
                conn.executemany("DELETE FROM kv WHERE key = ?", chunk)
        return []

    def bulk_get(self, keys: Sequence[str]) -> Dict[str, Optional[bytes]]:
        found = dict(self._select_many("value", keys))
        return {key: found.get(key) for key in keys}

    def bulk_metadata(self, keys: Sequence[str]) -> Dict[str, Optional[Mapping[str, Any]]]:
        found = {key: dict(_metadata(metadata) or {})
                 for key, metadata in self._select_many("metadata", keys)}
        return {key: found.get(key) for key in keys}

    def _select_many(self, column: str, keys: Sequence[str]) -> Iterator[Tuple[str, Any]]:
        """(key, ``column``) of the live ones among ``keys``, read in groups of KV's
        per-request maximum (which also keeps SQL parameters few)."""
        encoded = {limits.validate_key(key): key for key in keys}
        for chunk in chunked(encoded, limits.BULK_GET_MAX_KEYS):
            marks = ",".join("?" * len(chunk))
            for key, value in self._read(
                    f"SELECT key, {column} FROM kv WHERE key IN ({marks}) AND {_LIVE}",
                    (*chunk, time.time())):
                yield encoded[key], value

    def list(self, prefix: str = "", limit: int = 1000, cursor: Optional[str] = None) -> ListPage:
        lower = limits.validate_prefix(prefix)
        count = limits.validate_list_limit(limit)
        sql = f"SELECT key, expiration, metadata FROM kv WHERE key >= ? AND {_LIVE}"
        params: List[Any] = [lower, time.time()]
        upper = _prefix_end(lower)
        if upper is not None:
            sql += " AND key < ?"
            params.append(upper)
        if cursor:
            sql += " AND key > ?"
            params.append(_decode_cursor(cursor))
        rows = self._read(sql + " ORDER BY key LIMIT ?", (*params, count + 1))
        keys = [KeyInfo(key.decode("utf-8"), expiration, _metadata(metadata))
                for key, expiration, metadata in rows[:count]]
        return ListPage(keys, _encode_cursor(rows[count - 1][0]) if len(rows) > count else None)

    def clear(self) -> None:
        """Drop every entry (tests and the server's reset)."""
        with self._write() as conn:
            conn.execute("DELETE FROM kv")

    def close(self) -> None:
        """Close this process's connections: idle ones now, busy ones by their threads when
        their statement ends. Later calls raise KVError."""
        self._connections.close()
