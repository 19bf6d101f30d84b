"""What the cache tracks about one DB-API connection: its open transaction and its session.

Both belong to the connection, not to the thread. With ``thread_safe=False`` threads share one
connection and so one transaction: a read on any of them must see that the transaction wrote. A
pooled connection keeps its ``SET search_path`` when another thread takes it from the pool.

The session part keeps result keys apart when statements such as ``SET search_path``, ``SET
ROLE`` or ``USE db`` make the same SQL mean something else. Each connection carries an identity
(the database's, plus the session statements it ran) that feeds every key made on it; a hit pays
nothing more than before, as the key hash prefix is memoised per identity. Statements are kept by
what they set (``SqlInfo.session``), last one per setting, in order, so connections that ran
the same ``SET search_path TO tenant2`` share entries, and a pooled connection switching between
tenants reuses each tenant's entries instead of growing a new identity per request. A
statement whose effect can't be keyed (an expression, a variable, a transaction that may roll it
back) gives the connection an identity of its own until it is closed: never shared, never wrong.
"""
from __future__ import annotations

import threading
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set

from ..core import forksafe
from ..core.codec import UnsupportedValue, encode_params
from ..core.names import write_names
from ..sql.info import OPAQUE
from .keys import Memos


@dataclass
class Transaction:
    """An open transaction: when it began and what it changed (invalidated again at COMMIT)."""

    baseline: Optional[int]  # token counter before BEGIN: a later bump may be a newer commit
    began_ms: int  # wall clock before BEGIN: no snapshot the transaction reads is older
    written: Set[str] = field(default_factory=set)
    everything: bool = False
    #: token names invalidated by hand inside it: a reader may re-cache pre-commit rows meanwhile
    invalidated: Set[str] = field(default_factory=set)
    #: the SQLite savepoint that opened it (its RELEASE commits), if a savepoint did
    opened_by: Optional[str] = None

    def wrote(self, tables: FrozenSet[str], everything: bool) -> None:
        self.written |= tables
        self.everything |= everything

    def bypasses(self, tables: FrozenSet[str], names: Sequence[str]) -> bool:
        """Whether a read must go to the database: it may see this transaction's own changes."""
        return (self.everything or not self.written.isdisjoint(tables)
                or not self.invalidated.isdisjoint(names))

    def may_store(self, tokens: Sequence[int]) -> bool:
        """Only before it changed anything, and only if no name was bumped since BEGIN (a
        REPEATABLE READ snapshot may predate that write's commit)."""
        if self.written or self.everything or self.invalidated or self.baseline is None:
            return False
        return all(token <= self.baseline for token in tokens)

    def commit_names(self) -> List[str]:
        """Token names its COMMIT invalidates."""
        return write_names(self.written, self.everything) + sorted(self.invalidated)


class Session:
    """One connection: its open transaction and the identity its result keys are made with."""

    def __init__(self, conn: Any, base: bytes, memos: "Memos"):
        self._conn = _reference(conn)
        self._base = base
        self._memos = memos
        self._settings: Dict[str, bytes] = {}
        self.txn: Optional[Transaction] = None
        self.identity = base
        self.hashes = memos.get(base)

    def owns(self, conn: Any) -> bool:
        return conn is not None and self._conn() is conn

    def begin(self, baseline: Optional[int], began_ms: int) -> None:
        if self.txn is None:
            self.txn = Transaction(baseline, began_ms)

    def end(self) -> Optional[Transaction]:
        txn, self.txn = self.txn, None
        return txn

    def changed(self, key: str, statement: bytes) -> None:
        """Record a statement that changed the session: ``key`` says what it set (the last
        statement of each key counts), :data:`OPAQUE` that nobody can know: from then on the
        identity is this connection's alone."""
        if key == OPAQUE:
            self._settings.clear()
            key, statement = OPAQUE, uuid.uuid4().bytes
        self._settings.pop(key, None)
        self._settings[key] = statement
        self.identity = self._base + b"\x00" + repr(list(self._settings.items())).encode()
        self.hashes = self._memos.get(self.identity)


class Sessions:
    """The sessions of one database object, found from Peewee's connection state (per thread,
    or shared with ``thread_safe=False``) and, for a pooled connection, from the connection.

    ``base`` gives the database's identity; ``per_connection``: each connection is a database
    of its own (SQLite ``:memory:``), so its identity gets a random part; ``pooled``: a
    connection may come back from the pool with the session a statement gave it.
    """

    def __init__(self, base: Callable[[], bytes], per_connection: bool, pooled: bool):
        self._base = base
        self._per_connection = per_connection
        self._pooled = pooled
        self._changed = False
        self._by_conn: "weakref.WeakKeyDictionary[Any, Session]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")
        self.memos = Memos()
        self._detached: Optional[Session] = None

    @property
    def needs_connection(self) -> bool:
        """Whether a connection not opened yet can't be taken for a fresh one: it will be a new
        database, or maybe a pooled connection whose session a statement changed."""
        return self._per_connection or (self._pooled and self._changed)

    def changed(self, session: Session, key: str, sql: str, params: Any,
                in_transaction: bool) -> None:
        """``session`` ran ``sql`` with ``params``, which set ``key`` (see
        :meth:`Session.changed`); inside a transaction a rollback may undo it (PostgreSQL), so
        it can't be keyed."""
        self._changed = True
        try:
            statement = sql.encode() + b"\x00" + encode_params(params or ())
        except UnsupportedValue:
            key, statement = OPAQUE, b""
        session.changed(OPAQUE if in_transaction else key, statement)

    def current(self, state: Any, open_connection: Callable[[], Any],
                connect: bool = False) -> Session:
        """The session of the connection on Peewee's ``state``. A connection not opened yet is
        fresh (its session empty) unless ``connect`` asks or :attr:`needs_connection`: then
        ``open_connection()`` opens it, as the statement about to run would."""
        current = getattr(state, "kv_session", None)
        conn = state.conn
        if current is not None and current.owns(conn):
            return current
        if conn is None:
            if not (connect or self.needs_connection):
                return self.detached()
            conn = open_connection()
        return self.bind(state, conn)

    @staticmethod
    def bound(state: Any) -> Optional[Session]:
        """The session of the connection on ``state`` if it has one already (never connects):
        every transaction begins on a bound session. ``state`` is None while Peewee's
        ``__init__`` runs."""
        current = getattr(state, "kv_session", None)
        return current if current is not None and current.owns(state.conn) else None

    @staticmethod
    def closed(state: Any, session: Optional[Session]) -> None:
        """The connection of ``session`` was closed: a transaction it had was rolled back. A
        pooled connection keeps its session for its next user (found again through ``bind``)."""
        if session is not None:
            session.end()
            state.kv_session = None

    def detached(self) -> Session:
        """The session of a connection not opened yet: nothing changed, no transaction."""
        if self._detached is None:
            self._detached = Session(None, self._base(), self.memos)
        return self._detached

    def bind(self, state: Any, conn: Any) -> Session:
        """The session of ``conn`` (created on first use), remembered on Peewee's ``state``."""
        with self._lock:
            session = getattr(state, "kv_session", None)
            if session is None or not session.owns(conn):
                session = self._find(conn)
                state.kv_session = session
            return session

    def _find(self, conn: Any) -> Session:
        try:
            session = self._by_conn.get(conn)
        except TypeError:  # not weakly referable (sqlite3): it lives on Peewee's state only
            session = None
        if session is None:
            base = self._base()
            if self._per_connection:
                base += b"\x00conn:" + uuid.uuid4().hex.encode()
            session = Session(conn, base, self.memos)
            try:
                self._by_conn[conn] = session
            except TypeError:
                pass
        return session


def _reference(conn: Any) -> Callable[[], Any]:
    """A weak reference where the driver allows one: a pooled connection's session must not
    keep it alive once the pool drops it."""
    try:
        return weakref.ref(conn)
    except TypeError:
        return lambda: conn
