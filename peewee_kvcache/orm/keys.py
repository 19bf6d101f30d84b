"""A cached query's key: the database's identity, the connection's session, the SQL, its params.

The same SQL run by another role, against another schema or after ``SET search_path`` must never
share an entry, so every key is made with the connection's identity (see connection.py for the
session part). A hit pays only for hashing its parameters: the hash state already fed the
identity and the SQL text is memoised per identity.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Dict, Optional
from urllib.parse import parse_qs

import peewee

from ..cache.keys import feed, key_hash
from ..core.codec import encode_params
from ..core.names import tag_digest_part
from .query import CacheOptions

_SECRET_PARAMS = frozenset({"password", "passwd"})
_MAX_MEMOS = 64
_MAX_MEMO_ENTRIES = 4096


def dialect_of(db: peewee.Database) -> str:
    """The SQL dialect the analysis reads ``db``'s statements in."""
    if isinstance(db, peewee.PostgresqlDatabase):
        return "postgres"
    if isinstance(db, peewee.MySQLDatabase):
        return "mysql"
    return "sqlite"


def sqlite_memory(database: Any, connect_params: Dict[str, Any]) -> str:
    """"private" when each connection opens a database of its own (``:memory:``, a
    ``file::memory:`` or ``mode=memory`` URI), "shared" for one shared by name within this
    process (``cache=shared``, ``vfs=memdb``), "" for a file."""
    if not isinstance(database, str):
        return ""
    if database == ":memory:":
        return "private"
    if not (connect_params.get("uri") and database.startswith("file:")):
        return ""
    path, _, query = database[len("file:"):].partition("?")
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    if options.get("vfs") == "memdb":
        return "shared"
    if path != ":memory:" and options.get("mode") != "memory":
        return ""
    return "shared" if options.get("cache") == "shared" else "private"


class Memos:
    """Per identity, SQL text → key hash state fed that identity and the SQL (the hit path then
    hashes only the parameters); shared by the sessions with that identity."""

    def __init__(self) -> None:
        self._memos: Dict[bytes, Dict[str, Any]] = {}

    def get(self, identity: bytes) -> Dict[str, Any]:
        memo = self._memos.get(identity)
        if memo is None:
            if len(self._memos) >= _MAX_MEMOS:
                self._memos.clear()
            memo = self._memos[identity] = {}
        return memo


class Keys:
    """Result keys of one database object (as configured by ``init()``)."""

    def __init__(self, dialect: str, database: Any, connect_params: Dict[str, Any]):
        self._dialect = dialect
        self._database = database
        self._connect_params = connect_params
        memory = sqlite_memory(database, connect_params) if dialect == "sqlite" else ""
        #: an in-memory SQLite database is only ever itself: a random part for one shared by
        #: name; "private" (a database per connection) gets one per connection (see Sessions)
        self.memory = memory + ":" + uuid.uuid4().hex if memory == "shared" else memory
        self._identity: Optional[bytes] = None

    def identity(self) -> bytes:
        """Dialect, database, host, port, user, options (search_path...); passwords left out."""
        if self._identity is None:
            params = sorted((k, repr(v)) for k, v in self._connect_params.items()
                            if k not in _SECRET_PARAMS)
            database = self._database
            if self._dialect == "sqlite" and database and not self.memory:
                database = os.path.abspath(database)
            self._identity = repr((self._dialect, database, params, self.memory)).encode()
        return self._identity


def result_key(identity: bytes, memo: Dict[str, Any], sql: str, params: Any,
               options: CacheOptions) -> str:
    """The key of ``sql`` with ``params`` on a connection with ``identity`` (``memo``: that
    identity's, see :class:`Memos`), under ``options``'s tags. Raises
    :class:`~..core.codec.UnsupportedValue` for a parameter the codec can't encode."""
    return feed(_sql_hash(identity, memo, sql), encode_params(params or ()),
                tag_digest_part(options.tags, options.auto_invalidate)).hexdigest()


def _sql_hash(identity: bytes, memo: Dict[str, Any], sql: str) -> "hashlib.blake2b":
    """A hash already fed ``identity`` and ``sql``: a hit only hashes its params."""
    cached = memo.get(sql)
    if cached is None:
        if len(memo) >= _MAX_MEMO_ENTRIES:
            memo.clear()
        cached = memo[sql] = key_hash(identity, sql.encode())
    return cached.copy()
