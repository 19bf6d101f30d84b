"""CachedDatabase: a mixin that puts the cache between Peewee and the database driver.

Reads: ``execute(query)`` serves cacheable selects from the cache. Writes: every statement that
reaches ``execute_sql`` (query objects and raw SQL alike) is analysed, and the tables it changes
(plus the tables their cascading foreign keys change) are invalidated: right after the statement
in autocommit; inside a transaction at COMMIT (until then its reads of those tables bypass the
cache), before Peewee runs the user's after-commit callbacks.

Transaction and session state belong to the connection (see connection.py); one parser (sql/analysis.py)
decides what a statement does to them, however it is spelled or commented. Transaction state is
taken *before* COMMIT or ROLLBACK is sent, so a failure there can never leave state behind that
would swallow later invalidations or disable caching.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
import weakref
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import parse_qs

import peewee
from playhouse.pool import PooledDatabase, PooledPostgresqlDatabase

from ..core import forksafe

from . import notify

from ..cache.facade import CloudflareKVCache, feed, key_hash
from ..core.codec import CachedResult, UnsupportedValue, encode_params
from ..core.config import now_ms
from .cursor import CachedCursor
from ..core.names import EVERYTHING, stamp_names, tag_digest_part, write_names
from .notify import Listener
from .query import CacheOptions, find_options
from .connection import Memos, Session, Sessions, Transaction
from ..sql.analysis import OPAQUE, SqlInfo, analyze_sql, cascade_closure

log = logging.getLogger("peewee_kvcache")

_SECRET_PARAMS = frozenset({"password", "passwd"})
_DEFAULT_OPTIONS = CacheOptions()


def _close_elsewhere(cache: CloudflareKVCache) -> None:
    """Close a database's own cache once the database is collected. A collection can run on any
    thread, even inside a statement on an L1 connection that close() would close under it (a
    crash): the cache is closed on a thread of its own."""
    try:
        threading.Thread(target=cache.close, name="peewee-kvcache-close", daemon=True).start()
    except RuntimeError:  # interpreter shutdown: no new threads, and the process is ending
        pass


def _dialect(db: peewee.Database) -> str:
    if isinstance(db, peewee.PostgresqlDatabase):
        return "postgres"
    if isinstance(db, peewee.MySQLDatabase):
        return "mysql"
    return "sqlite"


def _sqlite_memory(database: Any, connect_params: Dict[str, Any]) -> str:
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


class CachedDatabase:
    """Mix into any Peewee database: ``class MyDB(CachedDatabase, peewee.PostgresqlDatabase)``.

    ``cache`` is a :class:`CloudflareKVCache`; ``None`` builds the default one (L1 and a local KV
    namespace in the per-user cache directory), which the database closes when it is collected.
    """

    def __init__(self, database: Any, *args: Any, cache: Optional[CloudflareKVCache] = None,
                 **kwargs: Any):
        if cache is not None and not isinstance(cache, CloudflareKVCache):
            raise TypeError(f"cache must be a CloudflareKVCache, got {type(cache).__name__}")
        if cache is None:
            cache = CloudflareKVCache()
            # not at exit: the writer's exit hook already bounds that drain (exit_timeout)
            weakref.finalize(self, _close_elsewhere, cache).atexit = False
        self.cache = cache
        cache.on_invalidate(self._kv_defer_to_commit)
        self._kv_dialect = _dialect(self)  # type: ignore[arg-type]
        super().__init__(database, *args, **kwargs)  # type: ignore[call-arg]

    def init(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().init(database, *args, **kwargs)  # type: ignore[misc]
        self._kv_identity: Optional[bytes] = None  # a re-init may point at another server
        memory = (_sqlite_memory(database, self.connect_params)  # type: ignore[attr-defined]
                  if self._kv_dialect == "sqlite" else "")
        self._kv_memory = memory + ":" + uuid.uuid4().hex if memory == "shared" else memory
        self._kv_sessions = Sessions(self._identity, per_connection=memory == "private",
                                     pooled=isinstance(self, PooledDatabase))

    def _sql_hash(self, current: Session, sql: str) -> "hashlib._Hash":
        """A hash already fed the connection's identity and ``sql``: a hit only hashes its
        params."""
        cached = current.hashes.get(sql)
        if cached is None:
            cached = key_hash(current.identity, sql.encode())
            Memos.remember(current.hashes, sql, cached)
        return cached.copy()

    def _identity(self) -> bytes:
        """Database, host, port, user, options (search_path...): the same SQL run by another
        role or against another schema must never share an entry. Passwords are left out. An
        in-memory SQLite database is only ever itself: its identity has a random part (per
        connection, see :class:`Sessions`, or per object for one shared by name)."""
        if self._kv_identity is None:
            params = sorted((k, repr(v)) for k, v in self.connect_params.items()  # type: ignore
                            if k not in _SECRET_PARAMS)
            database = self.database  # type: ignore[attr-defined]
            if self._kv_dialect == "sqlite" and database and not self._kv_memory:
                database = os.path.abspath(database)
            self._kv_identity = repr((self._kv_dialect, database, params,
                                      self._kv_memory)).encode()
        return self._kv_identity

    def _kv_session(self, connect: bool = False) -> Session:
        """The current connection's session. A connection not opened yet is fresh (its session
        empty) unless ``connect`` asks or :attr:`Sessions.needs_connection`: then it is opened,
        as the statement about to run would."""
        state = self._state  # type: ignore[attr-defined]
        current = getattr(state, "kv_session", None)
        conn = state.conn
        if current is not None and current.owns(conn):
            return current
        if conn is None:
            if not (connect or self._kv_sessions.needs_connection):
                return self._kv_sessions.detached()
            conn = self.connection()  # type: ignore[attr-defined]
        return self._kv_sessions.bind(state, conn)

    # -- reads ------------------------------------------------------------------------------
    def execute(self, query: Any, *args: Any, **context_options: Any) -> Any:
        ctx = self.get_sql_context(**context_options)  # type: ignore[attr-defined]
        sql, params = ctx.sql(query).query()
        if isinstance(query, peewee.SelectBase):
            options = find_options(query)
            if options is None and self.cache.strategy == "all":
                options = _DEFAULT_OPTIONS
            if options is not None and options.enabled:
                return self._cached_select(sql, params, options)
        return self.execute_sql(sql, params)

    def _cached_select(self, sql: str, params: Any, options: CacheOptions) -> Any:
        info = analyze_sql(sql, self._kv_dialect)
        if info.kind != "select" or not info.cacheable:
            if info.kind == "select":
                log.debug("peewee_kvcache: not caching: %s", info.reason)
                self.cache.counters.incr("uncacheable")
            return self.execute_sql(sql, params)
        current = self._kv_session()
        txn = current.txn
        names = stamp_names(info.read_tables, options.tags, options.auto_invalidate)
        if txn is not None and txn.bypasses(info.read_tables, names):
            self.cache.counters.incr("bypassed_in_transaction")
            return self._run(sql, params)
        try:
            digest = feed(self._sql_hash(current, sql), encode_params(params or ()),
                          tag_digest_part(options.tags, options.auto_invalidate)).hexdigest()
        except UnsupportedValue as exc:
            log.debug("peewee_kvcache: not caching: %s", exc)
            self.cache.counters.incr("uncacheable")
            return self._run(sql, params)
        self._on_cached_read()
        result = self.cache.read(digest, names, lambda: self._run(sql, params), options.config,
                                 txn)
        return CachedCursor(result) if isinstance(result, CachedResult) else result

    def _run(self, sql: str, params: Any) -> Any:
        """Send a statement already known to be a read, without analysing it again."""
        return super().execute_sql(sql, params)  # type: ignore[misc]

    # -- writes -----------------------------------------------------------------------------
    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        info = analyze_sql(sql, self._kv_dialect)
        if info.control or info.session:
            return self._execute_stateful(sql, params, info, *args, **kwargs)
        if not (info.written_tables or info.writes_unknown):
            return super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
        tables = cascade_closure(info.written_tables)
        current = self._kv_bound_session()
        txn = current.txn if current is not None else None
        if txn is not None:  # invalidated at COMMIT; until then reads of these bypass the cache
            txn.wrote(tables, info.writes_unknown)
            return super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
        names = write_names(tables, info.writes_unknown)
        try:
            return self.cache.write(names, lambda: super(CachedDatabase, self).execute_sql(
                sql, params, *args, **kwargs))
        finally:  # even a failed write may have changed rows (a server-side partial effect)
            self._broadcast(names)

    def _execute_stateful(self, sql: str, params: Any, info: SqlInfo, *args: Any,
                          **kwargs: Any) -> Any:
        """Transaction control and session changes, alone or in a batch with writes: each
        statement's effect applied in order, as :meth:`begin`, :meth:`commit` and the write path
        would. Transaction state is settled before the statement is sent; if it fails, a COMMIT
        or ROLLBACK still ended the transaction, and a BEGIN opened nothing."""
        current = self._kv_session(connect=True)
        before = txn = current.txn
        committed: List[str] = []  # names of the transactions it commits
        autocommitted: List[str] = []  # names it writes outside any transaction
        for step in info.steps or (info,):
            for action in step.control:
                if action == "begin" and txn is None:
                    txn = Transaction(self.cache.seq(), now_ms())  # both before BEGIN is sent
                elif action != "begin":
                    if txn is not None and action == "commit":
                        committed += txn.commit_names()
                    txn = None
            if step.written_tables or step.writes_unknown:
                tables = cascade_closure(step.written_tables)
                if txn is not None:
                    txn.wrote(tables, step.writes_unknown)
                else:
                    autocommitted += write_names(tables, step.writes_unknown)
            if step.session:
                self._kv_session_changed(current, step.session, sql, params, txn is not None)
        current.txn = txn

        def send() -> Any:
            self._broadcast(committed)  # inside the transaction: delivered with the commit
            return super(CachedDatabase, self).execute_sql(sql, params, *args, **kwargs)

        try:
            return self.cache.write(committed + autocommitted, send)
        except BaseException:
            ended = "commit" in info.control or "rollback" in info.control
            current.txn = None if ended else before
            raise
        finally:  # even a failed statement may have committed or written
            self._broadcast(autocommitted)

    def _kv_session_changed(self, current: Session, key: str, sql: str, params: Any,
                            in_transaction: bool) -> None:
        """A statement (with its parameters) set ``key``; inside a transaction a rollback may
        undo it (PostgreSQL), so it can't be keyed."""
        try:
            statement = sql.encode() + b"\x00" + encode_params(params or ())
        except UnsupportedValue:
            key, statement = OPAQUE, b""
        self._kv_sessions.changed(current, OPAQUE if in_transaction else key, statement)

    # -- transactions -----------------------------------------------------------------------
    def _kv_bound_session(self) -> Optional[Session]:
        """The current connection's session if it has one already (never connects): every
        transaction begins on a bound session."""
        state = getattr(self, "_state", None)  # None while Peewee's __init__ runs
        current = getattr(state, "kv_session", None)
        return current if current is not None and current.owns(state.conn) else None

    def _kv_defer_to_commit(self, names: Sequence[str]) -> None:
        """An invalidation made by hand while this thread's connection is in a transaction is
        made again at its COMMIT, as its writes are: another connection may re-cache the
        pre-commit rows meanwhile. Until then the transaction's reads of those names bypass the
        cache."""
        txn = self._kv_open_transaction()
        if txn is not None:
            txn.invalidated.update(names)

    def _kv_open_transaction(self) -> Optional[Transaction]:
        """The open transaction of the calling thread's connection, if any."""
        current = self._kv_bound_session()
        return current.txn if current is not None else None

    def _kv_end_transaction(self) -> List[str]:
        """End the connection's transaction; the names its COMMIT must invalidate."""
        current = self._kv_bound_session()
        txn = current.end() if current is not None else None
        return txn.commit_names() if txn is not None else []

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        baseline, began_ms = self.cache.seq(), now_ms()  # before BEGIN: no snapshot is older
        result = super().begin(*args, **kwargs)  # type: ignore[misc]
        self._kv_session(connect=True).begin(baseline, began_ms)
        return result

    def commit(self) -> Any:
        names = self._kv_end_transaction()

        def send() -> Any:
            self._broadcast(names)  # inside the transaction: delivered with the commit
            return super(CachedDatabase, self).commit()  # type: ignore[misc]

        return self.cache.write(names, send)  # a failed COMMIT invalidates too: always safe

    def rollback(self) -> Any:
        self._kv_end_transaction()  # nothing uncommitted was ever stored: nothing to invalidate
        return super().rollback()  # type: ignore[misc]

    def close(self) -> Any:
        current = self._kv_bound_session()
        closed = super().close()  # type: ignore[misc]
        if current is not None:  # a pooled connection keeps its session for its next user
            current.end()  # a connection closed mid-transaction rolled it back
            self._state.kv_session = None  # type: ignore[attr-defined]
        return closed

    def _broadcast(self, names: Sequence[str]) -> None:
        """Tell other hosts' L1s about a write; only PostgreSQL can (see notify.py)."""

    def _on_cached_read(self) -> None:
        """Hook before a lookup; PostgreSQL starts its NOTIFY listener here."""


class CachedSqliteDatabase(CachedDatabase, peewee.SqliteDatabase):
    """SQLite with the cache."""


class PostgresNotifications:
    """Cross-host L1 eviction for PostgreSQL: ``pg_notify`` inside the writing transaction and a
    LISTEN thread per database object. ``notify=False`` turns both off."""

    def __init__(self, database: Any, *args: Any, notify: bool = True, **kwargs: Any):
        if not isinstance(notify, bool):
            raise TypeError(f"notify must be a bool, got {notify!r}")
        self._kv_notify = notify
        self._kv_listener: Optional[Listener] = None
        self._kv_listener_lock = threading.Lock()  # one LISTEN thread, however many readers
        forksafe.renew_locks(self, "_kv_listener_lock")
        super().__init__(database, *args, **kwargs)  # type: ignore[call-arg]

    def _broadcast(self, names: Sequence[str]) -> None:
        if not (self._kv_notify and names):
            return
        try:
            self._run("SELECT pg_notify(%s, %s)",  # type: ignore[attr-defined]
                      (self.cache.channel,  # type: ignore[attr-defined]
                       notify.payload(self.cache.origin, names, EVERYTHING)))  # type: ignore
        except Exception:  # l1_max_age still bounds other hosts' staleness
            log.warning("peewee_kvcache: NOTIFY failed", exc_info=log.isEnabledFor(logging.DEBUG))

    def _on_cached_read(self) -> None:
        listener = self._kv_listener
        if self._kv_notify and (listener is None or listener.needs_start):  # e.g. after fork
            self.start_listener()

    def start_listener(self) -> Listener:
        """Start (once per process) the thread that evicts this host's L1 entries on other
        hosts' writes."""
        with self._kv_listener_lock:
            if self._kv_listener is None:
                import psycopg2
                params = dict(self.connect_params)  # type: ignore[attr-defined]
                database = self.database  # type: ignore[attr-defined]
                cache = self.cache  # type: ignore[attr-defined]
                self._kv_listener = Listener(lambda: psycopg2.connect(dbname=database, **params),
                                             cache.channel, cache.origin, cache.evict_local)
                weakref.finalize(self, self._kv_listener.request_stop)  # its connection too
            self._kv_listener.start()
            return self._kv_listener

    def stop_listener(self) -> None:
        if self._kv_listener is not None:
            self._kv_listener.stop()


class CachedPostgresqlDatabase(PostgresNotifications, CachedDatabase, peewee.PostgresqlDatabase):
    """PostgreSQL with the cache."""


class CachedPooledPostgresqlDatabase(PostgresNotifications, CachedDatabase,
                                     PooledPostgresqlDatabase):
    """Pooled PostgreSQL with the cache."""


class CachedMySQLDatabase(CachedDatabase, peewee.MySQLDatabase):
    """MySQL / MariaDB with the cache."""
