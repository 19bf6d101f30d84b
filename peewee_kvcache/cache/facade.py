"""CloudflareKVCache: the query cache's three levels (process memory, the L1 diskcache directory
of this host, the L2 KV namespace) and its invalidation behind one object.

The object wires small parts together and delegates: reads.py (lookups), stampede.py (one query
per stampede), stores.py (storing, L2 writes), invalidations.py (around writes, by hand, from
other hosts), admin.py (stats, clearing, lifetime). Every operation degrades instead of raising:
a fault in a level is logged and counted (core/faults.py) and turned into a miss or a skipped
store, so the query falls back to the database. Bad *arguments* do raise, with the value named.
"""
from __future__ import annotations

import functools
import uuid
from typing import (Any, Callable, Hashable, Iterable, List, Optional, Sequence, Tuple,
                    TypeVar, Union)

from ..core.config import DEFAULT_CONFIG, CacheConfig
from ..core.faults import report
from ..core.names import table_name, table_names_of, tag_list, tag_name
from ..core.stats import CacheStats, Counters
from ..invalidation.outbox import Outbox, UnavailableOutbox
from ..invalidation.sweeper import Sweeper
from ..invalidation.writer import BackgroundWriter
from ..kv.base import KVNamespace
from ..kv.local import LocalKVNamespace
from ..l2.gateway import L2Gateway
from ..levels.l1 import L1_FAULTS, L1Store, UnavailableStore
from ..levels.memory import MemoryLevel
from .admin import Admin
from .costs import CostModel
from .seed import SeedAPI
from .invalidations import Invalidations, Listener
from .keys import digest_of
from .reads import Reader
from .settings import CacheSettings, default_directory
from .stampede import Stampede
from .stores import PutSender, Snapshot, Storer

T = TypeVar("T")


def _open_l1(settings: CacheSettings, counters: Counters) -> Tuple[Any, Any]:
    """This host's L1 store and outbox; when the directory is unusable, stand-ins whose every
    operation raises, so queries still work, uncached, and the faults are counted."""
    directory = settings.l1_directory or ""
    try:
        return (L1Store(directory, size_limit=settings.l1_size_limit),
                Outbox(directory, lease_ms=settings.outbox_lease_ms))
    except L1_FAULTS as exc:
        report(counters, "l1_errors", f"L1 directory {directory!r} unusable; caching disabled",
               exc)
        return (UnavailableStore(directory, exc, l1_id=uuid.uuid4().hex),
                UnavailableOutbox(directory, exc, lease_ms=settings.outbox_lease_ms))


class CloudflareKVCache(SeedAPI):
    """A query-result cache: process memory and an L1 diskcache directory on this host, L2 a
    (Cloudflare or local) KV namespace shared by every host.

    ``strategy="explicit"`` caches only ``with_cache()`` queries; ``"all"`` every cacheable SELECT.
    ``default_ttl`` (seconds) applies when a query gives no expiry. ``secret`` signs entries
    (HMAC-SHA256) so a forged L2 value is a miss. ``prefix`` scopes every L2 key of this cache.
    ``exit_timeout`` (seconds) bounds how long :meth:`close` and interpreter exit wait for queued
    L2 work, so an unreachable KV cannot hold a process; invalidation sweeps left over stay in
    the durable outbox. ``l2_reads="auto"`` asks L2 before the database only for query shapes
    where, by this process's measurements, it pays; ``"always"`` asks on every miss;
    ``l1_reads`` the same for the L1 directory after a miss in memory. The other
    arguments are described in the README's Configuration table.

    Attributes: ``settings`` (the validated arguments), ``namespace``, ``prefix``, ``strategy``,
    ``counters``; ``l1`` and ``outbox`` are this host's stores, for operator tools.
    """

    def __init__(self, namespace: Optional[KVNamespace] = None, *,
                 l1_directory: Optional[str] = None, strategy: str = "explicit",
                 default_ttl: int = 300, prefix: str = "pkv:",
                 secret: Union[str, bytes, None] = None, l1_size_limit: int = 1 << 30,
                 breaker_fail_max: int = 5, breaker_reset_timeout: float = 5.0,
                 propagation_delay: Optional[float] = None, outbox_lease: float = 30.0,
                 l1_max_age: Optional[float] = 5.0, stampede_wait: float = 5.0,
                 max_put_delay: float = 10.0, clock_skew: float = 0.0,
                 memory_entries: int = 1000, exit_timeout: float = 1.0, l2_reads: str = "auto",
                 l1_reads: str = "auto"):
        settings = CacheSettings.check(
            l1_directory=l1_directory, strategy=strategy, default_ttl=default_ttl, prefix=prefix,
            secret=secret, l1_size_limit=l1_size_limit, breaker_fail_max=breaker_fail_max,
            breaker_reset_timeout=breaker_reset_timeout, propagation_delay=propagation_delay,
            outbox_lease=outbox_lease, l1_max_age=l1_max_age, stampede_wait=stampede_wait,
            max_put_delay=max_put_delay, clock_skew=clock_skew, memory_entries=memory_entries,
            exit_timeout=exit_timeout, l2_reads=l2_reads, l1_reads=l1_reads)
        if namespace is not None and not isinstance(namespace, KVNamespace):
            raise TypeError(f"namespace must be a KVNamespace (CloudflareKVNamespace or "
                            f"LocalKVNamespace) or None, got {namespace!r}")
        self.namespace = namespace if namespace is not None else LocalKVNamespace(
            default_directory("kv"))
        self.settings = settings = settings.resolved(self.namespace)
        self.strategy, self.prefix = settings.strategy, settings.prefix
        self.counters = counters = Counters()
        fault = functools.partial(report, counters)
        self.l1, self.outbox = _open_l1(settings, counters)
        memory = self._memory = MemoryLevel(settings.memory_entries)
        l2 = self._l2 = L2Gateway(self.namespace, settings.prefix,
                                  fail_max=settings.breaker_fail_max,
                                  reset_timeout=settings.breaker_reset_timeout,
                                  counters=counters, fault=fault)
        sweeper = self._sweeper = Sweeper(self.outbox, self.l1, l2, fault=fault,
                                          resweep_after_ms=settings.resweep_after_ms,
                                          clock_skew_ms=settings.clock_skew_ms)
        writer = self._writer = BackgroundWriter(PutSender(l2, sweeper, counters).send,
                                                 sweeper.run_due,
                                                 exit_timeout=float(settings.exit_timeout))
        costs = CostModel(always_l1=settings.l1_reads == "always",
                          always_l2=settings.l2_reads == "always")
        reader = self._reader = Reader(settings, memory, self.l1, l2, sweeper, counters, fault,
                                       costs, writer.submit, writer.submit_unordered)
        self._storer = Storer(settings, self.l1, l2.layout, reader, sweeper, writer, counters,
                              fault, costs)
        self._stampede = Stampede(float(settings.stampede_wait), self.l1, reader, counters,
                                  fault, costs)
        self._invalidations = Invalidations(self.l1, sweeper, writer, counters, fault)
        self._admin = Admin(self.namespace, self.l1, self.outbox, memory, l2, writer, counters,
                            fault)
        if self._admin.outbox_jobs() > 0:
            writer.start()  # sweeps an earlier process left unfinished

    def __repr__(self) -> str:
        return (f"CloudflareKVCache(namespace={self.namespace!r}, l1={self.l1.directory!r}, "
                f"strategy={self.strategy!r}, prefix={self.prefix!r}, "
                f"signed={self.settings.secret is not None})")

    # -- what the Peewee layer calls -------------------------------------------------------
    def read(self, key: str, names: Sequence[str], run: Callable[[], Any],
             config: CacheConfig = DEFAULT_CONFIG, snapshot: Optional[Snapshot] = None,
             shape: Optional[Hashable] = None) -> Any:
        """The cached result for ``key`` (a :class:`CachedResult`), or else what ``run()``
        returns (a DB-API cursor): stored, and returned as a CachedResult, when the rules allow.

        ``snapshot``: the open transaction the read runs in (see :meth:`Storer.fill`); followers
        of a stampede don't wait for it (its view is its own). ``shape`` (the SQL text): what
        the database's and L2's costs are measured per, to ask L2 only where it pays."""
        result = self._reader.lookup(key, names, shape)
        if result is not None:
            return result
        locked = False  # one query per stampede, where a stampede would cost much
        guarded = snapshot is None and self._stampede.guards(shape)
        if guarded:
            locked = self._stampede.lead(key)
            if not locked:
                result = self._stampede.await_result(key)
                if result is not None:
                    return result
        try:  # followers wait for the result in L1: a guarded one is written there at once
            return self._storer.fill(key, names, run, config, snapshot, shape,
                                     defer_l1=not guarded)
        finally:
            if locked:
                self._stampede.end(key)

    def write(self, names: Sequence[str], run: Callable[[], T]) -> T:
        """Run a statement that changes ``names`` (an autocommit write, or a COMMIT): its L2
        sweep is recorded durably before, the tokens bumped and the sweep sent after."""
        return self._invalidations.around(names, run)

    def explain(self, query: Any, database: Any = None, **options: Any) -> Any:
        """Why ``query`` is or isn't cached: its tables and tags, whether it can be cached and
        why not, its key, what each level holds and which would serve it now (``str()`` for
        people, ``.as_dict()`` for scripts). ``query``: a Peewee select bound to a database
        using this cache, or a SQL string with that ``database`` (``options``: ``params``, and
        ``as_query=True`` for the text of a query object rather than raw SQL). Nothing runs; L2
        is read once."""
        database = database if database is not None else getattr(query, "_database", None)
        explain = getattr(database, "_kv_explain", None)
        if explain is None or getattr(database, "cache", None) is not self:
            raise TypeError(f"query must be bound to a database using this cache (or that "
                            f"database given), got {type(query).__name__} and {database!r}")
        return explain(query, self._reader.probe, **options)

    def seq(self) -> Optional[int]:
        """The token counter (a transaction's baseline); None on fault."""
        return self._storer.seq()

    def on_invalidate(self, listener: Listener) -> None:
        """Call ``listener(names)`` (a bound method, held weakly) at every invalidation made
        through :meth:`invalidate_names`: the Peewee layer repeats those made inside a
        transaction at its COMMIT."""
        self._invalidations.on_invalidate(listener)

    def invalidate_names(self, names: Sequence[str]) -> None:
        """Invalidate now: record the sweep, bump the tokens, sweep L2 in the background; inside
        a transaction of the calling thread's connection, again at its COMMIT."""
        self._invalidations.now(names)

    def evict_local(self, names: Sequence[str]) -> None:
        """Another host's write, heard through NOTIFY: drop this host's L1 entries only."""
        self._invalidations.evict_local(names)

    @property
    def channel(self) -> str:
        """The NOTIFY channel of every cache sharing this namespace and prefix."""
        return "pkv_" + digest_of(self.prefix.encode(), repr(self.namespace).encode())[:24]

    @property
    def origin(self) -> str:
        """Who sends a notification: processes sharing one L1 directory share its tokens."""
        return self.l1.l1_id

    # -- the public API ---------------------------------------------------------------------
    def invalidate(self, tables: Iterable[Any] = (), tags: Union[str, Iterable[str], None] = None
                   ) -> None:
        """Drop every cached result that read one of ``tables`` or carries one of ``tags``.

        Tables may be Peewee models, ``Table`` objects or names; ``tags`` one str or several.
        """
        names = [table_name(t) for t in table_names_of(tables)]
        names += [tag_name(g) for g in tag_list(tags)]
        self.invalidate_names(names)

    def on_mutate(self, tables: Iterable[Any] = (), tags: Union[str, Iterable[str], None] = None
                  ) -> None:
        """The seed's name for :meth:`invalidate`."""
        self.invalidate(tables, tags)

    def get_stats(self) -> CacheStats:
        """Counters of this process plus key counts read from L2 (right across hosts)."""
        return self._admin.stats()

    def l2_entry_keys(self) -> List[str]:
        """Keys of the results stored in L2 (markers left out); [] when L2 can't be listed."""
        return self._admin.entry_keys()

    def clear_local(self) -> None:
        """Forget this host's copies (process memory and the L1 directory), as a new host would
        start; L2 and the invalidation tokens stay."""
        self._admin.clear_local()

    def clear_all(self) -> None:
        """Empty every level for this cache's prefix (other prefixes in the namespace stay)."""
        self._admin.clear_all()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued L2 write and invalidation was sent; False on timeout."""
        return self._admin.drain(timeout)

    def close(self) -> None:
        """Release files and connections. Queued L2 work gets at most ``exit_timeout`` seconds;
        what is left is dropped (its sweeps stay in the durable outbox for the next process)."""
        self._admin.close()
