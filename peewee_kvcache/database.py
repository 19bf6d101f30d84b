"""CachedDatabase: a mixin that puts the cache between Peewee and the database driver.

Reads: ``execute(query)`` serves cacheable selects from the cache. Writes: every statement that
reaches ``execute_sql`` (query objects and raw SQL alike) is analysed, and the tables it changes
(plus the tables their cascading foreign keys change) are invalidated: right after the statement
in autocommit; inside a transaction at COMMIT (until then its reads of those tables bypass the
cache), before Peewee runs the user's after-commit callbacks.

Transaction state is per thread (as Peewee's connection state is) and is taken *before* COMMIT or
ROLLBACK is sent, so a failure there can never leave state behind that would swallow later
invalidations or disable caching.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from . import forksafe, notify
from .cache import CloudflareKVCache, feed, key_hash
from .codec import CachedResult, UnsupportedValue, encode_params
from .config import now_ms
from .cursor import CachedCursor
from .index import table_name
from .names import EVERYTHING, stamp_names, tag_digest_part
from .notify import Listener
from .query import CacheOptions, find_options
from .tables import analyze_sql, cascade_closure

log = logging.getLogger("peewee_kvcache")

_SECRET_PARAMS = frozenset({"password", "passwd"})
_DEFAULT_OPTIONS = CacheOptions()


@dataclass
class _Txn:
    """One open transaction on this thread: its baseline token counter and what it wrote."""

    baseline: Optional[int]
    written: Set[str] = field(default_factory=set)
    everything: bool = False


def _names(tables: Iterable[str], everything: bool) -> List[str]:
    """Token names a write invalidates."""
    return ([EVERYTHING] if everything else []) + [table_name(t) for t in tables]


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
        self._kv_local = threading.local()
        self._kv_identity: Optional[bytes] = None
        self._kv_sql_hashes: Dict[str, Any] = {}
        self._kv_dialect = _dialect(self)  # type: ignore[arg-type]
        super().__init__(database, *args, **kwargs)  # type: ignore[call-arg]

    def init(self, database: Any, *args: Any, **kwargs: Any) -> None:
        self._kv_identity = None  # a re-init may point at another server
        self._kv_sql_hashes = {}
        super().init(database, *args, **kwargs)  # type: ignore[misc]

    def _sql_hash(self, sql: str) -> "hashlib._Hash":
        """A hash already fed the database identity and ``sql``: a hit only hashes its params."""
        cached = self._kv_sql_hashes.get(sql)
        if cached is None:
            if len(self._kv_sql_hashes) >= 4096:
                self._kv_sql_hashes.clear()
            cached = key_hash(self._identity(), sql.encode())
            self._kv_sql_hashes[sql] = cached
        return cached.copy()

    def _identity(self) -> bytes:
        """Database, host, port, user, options (search_path...): the same SQL run by another
        role or against another schema must never share an entry. Passwords are left out."""
        if self._kv_identity is None:
            params = sorted((k, repr(v)) for k, v in self.connect_params.items()  # type: ignore
                            if k not in _SECRET_PARAMS)
            database = self.database  # type: ignore[attr-defined]
            if self._kv_dialect == "sqlite" and database and database != ":memory:":
                database = os.path.abspath(database)
            self._kv_identity = repr((self._kv_dialect, database, params)).encode()
        return self._kv_identity

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
        txn = self._kv_txn()
        if txn is not None and (txn.everything or txn.written & info.read_tables):
            self.cache.counters.incr("bypassed_in_transaction")
            return self._run(sql, params)
        try:
            digest = feed(self._sql_hash(sql), encode_params(params or ()),
                          tag_digest_part(options.tags, options.auto_invalidate)).hexdigest()
        except UnsupportedValue as exc:
            log.debug("peewee_kvcache: not caching: %s", exc)
            self.cache.counters.incr("uncacheable")
            return self._run(sql, params)
        names = stamp_names(info.read_tables, options.tags, options.auto_invalidate)
        self._on_cached_read()
        result = self.cache.lookup(digest, names)
        if result is not None:
            return CachedCursor(result)
        leader = txn is not None or self.cache.lead_fill(digest)  # one query per stampede
        if not leader:
            result = self.cache.await_fill(digest)
            if result is not None:
                return CachedCursor(result)
        try:
            return self._fill(digest, names, sql, params, options, txn)
        finally:
            if txn is None and leader:
                self.cache.end_fill(digest)

    def _fill(self, digest: str, names: List[str], sql: str, params: Any,
              options: CacheOptions, txn: Optional[_Txn]) -> Any:
        """Run the query and store its result (when the rules allow)."""
        started_ms = now_ms()
        tokens = self.cache.tokens(names)  # before the query: see l1.py on the store race
        cursor = self._run(sql, params)
        if tokens is None or not self._may_store(txn, tokens):
            return cursor
        result = CachedResult(tuple(d[0] for d in cursor.description), cursor.fetchall())
        cursor.close()
        self.cache.store(digest, names, tokens, result, options.config, started_ms)
        return CachedCursor(result)

    @staticmethod
    def _may_store(txn: Optional[_Txn], tokens: Any) -> bool:
        """Outside a transaction always; inside one only before it wrote, and only if no name was
        bumped since BEGIN (a REPEATABLE READ snapshot may predate that write's commit)."""
        if txn is None:
            return True
        if txn.written or txn.everything or txn.baseline is None:
            return False
        return all(token <= txn.baseline for token in tokens)

    def _run(self, sql: str, params: Any) -> Any:
        """Send a statement already known to be a read, without analysing it again."""
        return super().execute_sql(sql, params)  # type: ignore[misc]

    # -- writes -----------------------------------------------------------------------------
    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        info = analyze_sql(sql, self._kv_dialect)
        if info.kind == "transaction":
            cursor = super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
            self._on_transaction_statement(sql)
            return cursor
        if not (info.written_tables or info.writes_unknown):
            return super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
        tables = cascade_closure(info.written_tables)
        txn = self._kv_txn()
        if txn is not None:  # invalidated at COMMIT; until then reads of these bypass the cache
            txn.written |= tables
            txn.everything |= info.writes_unknown
            return super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
        names = _names(tables, info.writes_unknown)
        job = self.cache.prepare_invalidation(names)
        try:
            return super().execute_sql(sql, params, *args, **kwargs)  # type: ignore[misc]
        finally:  # even a failed write may have changed rows (a server-side partial effect)
            if job is not None:
                self.cache.complete_invalidation(job)
                self._broadcast(job.names)

    # -- transactions -----------------------------------------------------------------------
    def _kv_txn(self) -> Optional[_Txn]:
        return getattr(self._kv_local, "txn", None)

    def _start_txn(self) -> None:
        if self._kv_txn() is None:
            self._kv_local.txn = _Txn(self.cache.seq())

    def _take_txn(self) -> Optional[_Txn]:
        txn = self._kv_txn()
        self._kv_local.txn = None
        return txn

    @staticmethod
    def _txn_names(txn: Optional[_Txn]) -> List[str]:
        return _names(txn.written, txn.everything) if txn is not None else []

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        result = super().begin(*args, **kwargs)  # type: ignore[misc]
        self._start_txn()
        return result

    def commit(self) -> Any:
        job = self.cache.prepare_invalidation(self._txn_names(self._take_txn()))
        if job is not None:
            self._broadcast(job.names)  # inside the transaction: delivered with the commit
        try:
            return super().commit()  # type: ignore[misc]
        finally:  # a failed COMMIT invalidates too: re-invalidating is always safe
            if job is not None:
                self.cache.complete_invalidation(job)

    def rollback(self) -> Any:
        self._take_txn()  # nothing uncommitted was ever stored, so nothing to invalidate
        return super().rollback()  # type: ignore[misc]

    def close(self) -> Any:
        closed = super().close()  # type: ignore[misc]
        self._take_txn()  # a connection closed mid-transaction rolled it back
        return closed

    def _broadcast(self, names: Sequence[str]) -> None:
        """Tell other hosts' L1s about a write; only PostgreSQL can (see notify.py)."""

    def _on_cached_read(self) -> None:
        """Hook before a lookup; PostgreSQL starts its NOTIFY listener here."""

    def _on_transaction_statement(self, sql: str) -> None:
        """Raw BEGIN / COMMIT / ROLLBACK sent through ``execute_sql`` count like the methods."""
        words = sql.strip().rstrip(";").upper().split()
        if not words:
            return
        if words[0] in ("BEGIN", "START"):
            self._start_txn()
        elif words[0] in ("COMMIT", "END"):
            names = self._txn_names(self._take_txn())
            self.cache.invalidate_names(names)
            self._broadcast(names)
        elif words[0] == "ROLLBACK" and "TO" not in words:
            self._take_txn()


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
