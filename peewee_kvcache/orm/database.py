"""CachedDatabase: a mixin that puts the cache between Peewee and the database driver.

Like playhouse's ``ReconnectMixin`` it only overrides hooks, each calling ``super()``: Peewee's own
``execute`` builds the SQL and calls ``execute_sql``, where every statement (query objects and raw
SQL alike) is analysed and routed (statements.py). ``execute(query)`` remembers its query object
(and, for a select to cache, its options) for the duration of Peewee's ``execute``: a SQL text
met for the first time is then read from the query's tree (tree.py) instead of parsed
(sql/analysis.py, for raw SQL), and every text's analysis is memoised (sql/memo.py). Reads: a
select to cache goes through ``cache.read``. Writes: the tables a statement changes (plus those
its cascading foreign keys change) are invalidated: right after it in autocommit; inside a
transaction at COMMIT (until then its reads of those tables bypass the cache), before Peewee runs
the user's after-commit callbacks.

Transaction and session state belong to the connection (connection.py); result keys are made in
keys.py; PostgreSQL's cross-host NOTIFY lives in notify.py.
"""
from __future__ import annotations

import contextvars
import functools
import threading
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import peewee
from playhouse.pool import PooledDatabase, PooledPostgresqlDatabase

from ..cache.facade import CloudflareKVCache
from ..core.config import now_ms
from ..sql import memo
from ..sql.lexer import normal_form
from ..sql.info import SqlInfo
from . import statements
from .connection import Session, Sessions, Transaction
from .explain import Explanation, Probe, explain
from .keys import Keys, dialect_of
from .notify import NotifyInline, PostgresNotifications
from .query import CacheOptions, options_for
from .tree import analyze_query

#: the database, query object and cache options (None: not a select to cache) of the ``execute()``
#: running in this thread (or task); taken by that database's next ``execute_sql``, its statement
_EXECUTING: "contextvars.ContextVar[Optional[Tuple[Any, Any, Optional[CacheOptions]]]]" = (
    contextvars.ContextVar("peewee_kvcache_executing", default=None))


def _close_elsewhere(cache: CloudflareKVCache) -> None:
    """Close a database's own cache once the database is collected. A collection can run on any
    thread, even inside a statement on an L1 connection that close() would close under it (a
    crash): the cache is closed on a thread of its own."""
    try:
        threading.Thread(target=cache.close, name="peewee-kvcache-close", daemon=True).start()
    except RuntimeError:  # interpreter shutdown: no new threads, and the process is ending
        pass


if TYPE_CHECKING:  # a mixin: type-checked as the Peewee database it is mixed into
    _Database = peewee.Database
else:
    _Database = object


class CachedDatabase(_Database):
    """Mix into any Peewee database: ``class MyDB(CachedDatabase, peewee.PostgresqlDatabase)``.

    ``cache`` is a :class:`CloudflareKVCache`; ``None`` builds the default one (L1 and a local KV
    namespace in the per-user cache directory), which the database closes when it is collected.
    """

    _state: Any  # Peewee's connection state (per thread, or shared with thread_safe=False)

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
        self._kv_dialect = dialect_of(self)
        self._kv_texts = memo.texts(self._kv_dialect)
        super().__init__(database, *args, **kwargs)

    def init(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().init(database, *args, **kwargs)
        keys = Keys(self._kv_dialect, database, self.connect_params)
        self._kv_sessions = Sessions(keys.identity, per_connection=keys.memory == "private",
                                     pooled=isinstance(self, PooledDatabase))

    def execute(self, query: Any, *args: Any, **context_options: Any) -> Any:
        token = _EXECUTING.set((self, query, options_for(query, self.cache.strategy)))
        try:
            return super().execute(query, *args, **context_options)
        finally:
            _EXECUTING.reset(token)

    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        executing = _EXECUTING.get()
        if executing is not None:
            if executing[0] is self:
                _EXECUTING.set(None)  # one statement per execute(): a later one is not its query's
            else:
                executing = None
        info = self._kv_texts.get(sql)
        if info is None:
            info = self._kv_analyze(sql, executing[1] if executing is not None else None)
        if executing is not None and executing[2] is not None and info.kind == "select":
            if statements.cacheable(self.cache, info):
                self._kv_before_read()
                return statements.read(self.cache, self._kv_session(), sql, params, info,
                                       executing[2],
                                       functools.partial(self._run, sql, params, *args, **kwargs))
        elif info.kind == "select" and (executing is None
                                        or not isinstance(executing[1], peewee.SelectBase)):
            statements.raw_read(self.cache)  # execute_sql() or Model.raw(): never cached
        send = functools.partial(super().execute_sql, sql, params, *args,
                                 **kwargs)
        if info.control or info.session:
            return statements.stateful(self.cache, self._kv_sessions, self._kv_session(True), sql,
                                       params, info, send, self._kv_broadcast)
        if info.written_tables or info.writes_unknown:
            return statements.write(self.cache, Sessions.bound(self._state),
                                    info, send, self._kv_broadcast)
        return send()

    def _kv_analyze(self, sql: str, query: Any) -> SqlInfo:
        """What a SQL text met for the first time does: read from the tree of the query object
        it was rendered from (no parse), else (raw SQL, a node the walk can't vouch for) parsed;
        memoised either way."""
        info = analyze_query(query, sql) if query is not None else None
        if info is None:
            info = memo.parse(sql, self._kv_dialect)
        if info.kind == "select":  # a lookup by 3 ids costs about what one by 4 ids does
            info = replace(info, shape=normal_form(sql))
        return memo.remember(self._kv_texts, sql, info)

    def _run(self, sql: str, params: Any, *args: Any, **kwargs: Any) -> Any:
        """Send a statement already known to be a read, without analysing it again."""
        return super().execute_sql(sql, params, *args, **kwargs)

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        baseline, began_ms = self.cache.seq(), now_ms()  # before BEGIN: no snapshot is older
        result = super().begin(*args, **kwargs)
        self._kv_session(True).begin(baseline, began_ms)
        return result

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        send = functools.partial(super().commit, *args, **kwargs)
        return statements.commit(self.cache, Sessions.bound(self._state),
                                 send, self._kv_broadcast)

    def rollback(self, *args: Any, **kwargs: Any) -> Any:
        statements.end(Sessions.bound(self._state))
        return super().rollback(*args, **kwargs)  # nothing was stored

    def close(self, *args: Any, **kwargs: Any) -> Any:
        session = Sessions.bound(self._state)
        closed = super().close(*args, **kwargs)
        Sessions.closed(self._state, session)
        return closed

    def _kv_session(self, connect: bool = False) -> Session:
        """The current connection's session (see :meth:`Sessions.current`)."""
        return self._kv_sessions.current(self._state, self.connection,
                                         connect)

    def _kv_open_transaction(self) -> Optional[Transaction]:
        """The open transaction of the calling thread's connection, if any."""
        session = Sessions.bound(getattr(self, "_state", None))
        return session.txn if session is not None else None

    def _kv_defer_to_commit(self, names: Sequence[str]) -> None:
        """An invalidation made by hand while this thread's connection is in a transaction is
        made again at its COMMIT, as its writes are: another connection may re-cache the
        pre-commit rows meanwhile. Until then the transaction's reads of those names bypass the
        cache."""
        txn = self._kv_open_transaction()
        if txn is not None:
            txn.invalidated.update(names)

    def explain_cache(self, query: Any, params: Sequence[Any] = (), as_query: bool = False
                      ) -> Explanation:
        """Why ``query`` (a query object, or a SQL string run here) is or isn't cached, and
        what each level holds for it: ``db.cache.explain(query, db)`` (see explain.py)."""
        return self.cache.explain(query, self, params=params, as_query=as_query)

    def _kv_explain(self, query: Any, probe: Probe, **options: Any) -> Explanation:
        """The Peewee layer's half of :meth:`CloudflareKVCache.explain` (see explain.py)."""
        return explain(self, query, probe, **options)

    def _kv_broadcast(self, names: Sequence[str], send: statements.Send,
                      where: str) -> statements.Send:
        """``send``, made to tell other hosts' L1s about ``names`` when its statement's
        transaction commits; only PostgreSQL can (see notify.py)."""
        return send

    def _kv_before_read(self) -> None:
        """Hook before a lookup; PostgreSQL starts its NOTIFY listener here."""


class CachedSqliteDatabase(CachedDatabase, peewee.SqliteDatabase):
    """SQLite with the cache."""


class CachedPostgresqlDatabase(PostgresNotifications, CachedDatabase, NotifyInline,
                               peewee.PostgresqlDatabase):
    """PostgreSQL with the cache."""


class CachedPooledPostgresqlDatabase(PostgresNotifications, CachedDatabase, NotifyInline,
                                     PooledPostgresqlDatabase):
    """Pooled PostgreSQL with the cache."""


class CachedMySQLDatabase(CachedDatabase, peewee.MySQLDatabase):
    """MySQL / MariaDB with the cache."""
