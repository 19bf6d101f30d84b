"""What happens around one statement: a cacheable read goes through ``cache.read``, a write
through ``cache.write``, and transaction control and session changes update the connection's
state (connection.py) before they are sent.

The database's hooks (database.py) analyse the statement and resolve the connection's session;
these functions take both, plus ``send`` (the statement, sent by Peewee) and ``broadcast`` (which
makes ``send`` tell other hosts' L1s, see notify.py), and hand over to the cache. They never call
back into Peewee.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Sequence

from ..cache.facade import CloudflareKVCache
from ..core.codec import CachedResult, UnsupportedValue
from ..core.config import now_ms
from ..core.names import stamp_names, write_names
from ..sql.cascades import cascade_closure
from ..sql.info import SqlInfo
from .connection import Session, Sessions, Transaction
from .cursor import CachedCursor
from .keys import result_key
from .notify import AFTER, WITH, WITH_COMMIT, Send
from .query import CacheOptions

log = logging.getLogger("peewee_kvcache")

#: ``broadcast(names, send, where)``: ``send`` made to tell other hosts' L1s about ``names``
#: exactly when its statement's transaction commits (see notify.py for ``where``)
Broadcast = Callable[[Sequence[str], Send, str], Send]


def cacheable(cache: CloudflareKVCache, info: SqlInfo) -> bool:
    """Whether a SELECT to cache can be (a locking read or a volatile function can't: counted)."""
    if not info.cacheable:
        log.debug("peewee_kvcache: not caching: %s", info.reason)
        cache.counters.incr("uncacheable")
    return info.cacheable


def raw_read(cache: CloudflareKVCache) -> None:
    """A SELECT sent as SQL text (``execute_sql``, ``Model.raw()``): never cached (only query
    objects carry ``with_cache()``), but counted, so that it does not look like a lost hit."""
    log.debug("peewee_kvcache: not caching: raw SQL is not cached: use a query object with "
              "with_cache()")
    cache.counters.incr("raw_sql_reads")


def read(cache: CloudflareKVCache, session: Session, sql: str, params: Any, info: SqlInfo,
         options: CacheOptions, send: Send) -> Any:
    """A cacheable SELECT: from the cache, else ``send()``'s cursor (stored when the rules
    allow). A transaction's read of what it changed goes to the database."""
    txn = session.txn
    names = stamp_names(info.read_tables, options.tags, options.auto_invalidate)
    if txn is not None and txn.bypasses(info.read_tables, names):
        cache.counters.incr("bypassed_in_transaction")
        return send()
    try:
        key = result_key(session.identity, session.hashes, sql, params, options)
    except UnsupportedValue as exc:
        log.debug("peewee_kvcache: not caching: %s", exc)
        cache.counters.incr("uncacheable")
        return send()
    result = cache.read(key, names, send, options.config, txn, shape=info.shape or sql)
    return CachedCursor(result) if isinstance(result, CachedResult) else result


def write(cache: CloudflareKVCache, session: Optional[Session], info: SqlInfo, send: Send,
          broadcast: Broadcast) -> Any:
    """A statement that changes rows: in autocommit its tables (and those their cascading
    foreign keys change) are invalidated around it; inside a transaction at COMMIT, and until
    then its reads of those tables bypass the cache."""
    tables = cascade_closure(info.written_tables)
    txn = session.txn if session is not None else None
    if txn is not None:
        txn.wrote(tables, info.writes_unknown)
        return send()
    names = write_names(tables, info.writes_unknown)
    # a DML statement carries its notification; DDL and unknown writes may refuse to run in a
    # transaction block (CREATE INDEX CONCURRENTLY, CALL with COMMIT): theirs follows them
    where = WITH if info.kind == "write" and not info.writes_unknown else AFTER
    return cache.write(names, broadcast(names, send, where))


def stateful(cache: CloudflareKVCache, sessions: Sessions, session: Session, sql: str,
             params: Any, info: SqlInfo, send: Send, broadcast: Broadcast) -> Any:
    """Transaction control and session changes, alone or in a batch with writes: each
    statement's effect applied in order, as :func:`begin`, :func:`commit` and :func:`write`
    would. Transaction state is settled before the statement is sent; if it fails, a COMMIT or
    ROLLBACK still ended the transaction, and a BEGIN opened nothing."""
    before = txn = session.txn
    committed: List[str] = []  # names of the transactions it commits
    autocommitted: List[str] = []  # names it writes outside any transaction
    for step in info.steps or (info,):
        for action in step.control:
            verb, _, savepoint = action.partition(":")
            if verb in ("begin", "savepoint") and txn is None:  # both before BEGIN is sent
                txn = Transaction(cache.seq(), now_ms(), opened_by=savepoint or None)
            elif verb in ("savepoint", "release") and (txn is None
                                                       or txn.opened_by != savepoint):
                continue  # a savepoint inside the transaction: it goes on
            elif verb != "begin":  # commit, rollback, or the RELEASE that commits (SQLite)
                if txn is not None and verb in ("commit", "release"):
                    committed += txn.commit_names()
                txn = None
        if step.written_tables or step.writes_unknown:
            tables = cascade_closure(step.written_tables)
            if txn is not None:
                txn.wrote(tables, step.writes_unknown)
            else:
                autocommitted += write_names(tables, step.writes_unknown)
        if step.session:
            sessions.changed(session, step.session, sql, params, txn is not None)
    session.txn = txn
    # the writes it commits are announced inside the transaction that commits them; those made
    # outside any transaction (e.g. "COMMIT; UPDATE t") after the statement
    announced = broadcast(autocommitted, broadcast(committed, send, WITH_COMMIT), AFTER)
    try:
        return cache.write(committed + autocommitted, announced)
    except BaseException:
        ended = "commit" in info.control or "rollback" in info.control
        session.txn = None if ended else before
        raise


def commit(cache: CloudflareKVCache, session: Optional[Session], send: Send,
           broadcast: Broadcast) -> Any:
    """End the connection's transaction and send COMMIT, invalidating what it changed: a
    failed COMMIT invalidates too (always safe)."""
    names = end(session)
    return cache.write(names, broadcast(names, send, WITH_COMMIT))


def end(session: Optional[Session]) -> List[str]:
    """End the connection's transaction (taken before COMMIT or ROLLBACK is sent, so a failure
    there leaves nothing behind); the names its COMMIT must invalidate."""
    txn = session.end() if session is not None else None
    return txn.commit_names() if txn is not None else []

