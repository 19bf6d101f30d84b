"""CloudflareKVCache: the two levels (L1 diskcache, L2 KV namespace) behind one object.

Every public method degrades instead of raising: a fault in either level is logged through the
``peewee_kvcache`` logger, counted, and turned into a miss (or a skipped store), so the query falls
back to the database. Bad *arguments* do raise, with the bad value named.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import weakref
from typing import (Any, Callable, Iterable, List, Optional, Protocol, Sequence, Tuple, TypeVar,
                    Union)

import platformdirs

from ..l2 import layout
from ..l2.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpenError
from ..core import forksafe
from ..core.codec import (CachedResult, CodecError, SignatureError, UnsupportedValue, decode_entry,
                    decode_entry_full, encode_entry)
from ..core.config import DEFAULT_CONFIG, CacheConfig, check_number, now_ms, real_monotonic
from ..l2.layout import KeyLayout
from ..kv.base import KeyInfo, KVError, KVNamespace, KVOutcomeUnknown, KVPair
from ..kv.cloudflare import BudgetExhausted
from ..kv.limits import MAX_VALUE_BYTES, MIN_EXPIRATION_TTL
from ..kv.local import LocalKVNamespace
from ..levels.l1 import L1Entry, L1Store, Unavailable
from ..levels.memory import MemoryEntry, MemoryLevel
from ..invalidation.outbox import Job, Outbox
from ..core.names import EVERYTHING, TABLE, TAG, stamp_names, table_name, tag_name, table_names_of, tag_digest_part, tag_list
from ..core.stats import CacheStats, Counters
from ..invalidation.sweeper import Sweeper
from ..invalidation.writer import BackgroundWriter, PutTask

log = logging.getLogger("peewee_kvcache")

STRATEGIES = ("explicit", "all")
T = TypeVar("T")


def _not_a_kv_fault(exc: BaseException) -> bool:
    """Exceptions the circuit breaker ignores: our own request refused (4xx but 429) or the
    budget guard, which say nothing about KV's health."""
    if isinstance(exc, BudgetExhausted):
        return True
    return (isinstance(exc, KVError) and exc.status is not None and 400 <= exc.status < 500
            and exc.status != 429)


def default_directory(kind: str) -> str:
    """Per-user cache directory, so the one-line swap needs no path."""
    return os.path.join(platformdirs.user_cache_dir("peewee_kvcache"), kind)


def key_hash(*parts: bytes) -> "hashlib._Hash":
    """Key hash state: 160-bit BLAKE2b fed length-prefixed ``parts`` (keys never contain SQL,
    parameters or data, only this hash)."""
    return feed(hashlib.blake2b(digest_size=20), *parts)


def feed(h: "hashlib._Hash", *parts: bytes) -> "hashlib._Hash":
    """Add length-prefixed ``parts``, so no two part lists hash the same bytes."""
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h


def digest_of(*parts: bytes) -> str:
    return key_hash(*parts).hexdigest()


class Snapshot(Protocol):
    """What a read needs of the transaction it runs in (the Peewee layer's ``Transaction``)."""

    began_ms: int

    def may_store(self, tokens: Sequence[int]) -> bool:
        """Whether a result read under ``tokens`` may be stored."""


class CloudflareKVCache:
    """A query-result cache: L1 diskcache on this host, L2 a (Cloudflare or local) KV namespace.

    ``strategy="explicit"`` caches only ``with_cache()`` queries; ``"all"`` every cacheable SELECT.
    ``default_ttl`` (seconds) applies when a query gives no expiry. ``secret`` signs entries
    (HMAC-SHA256) so a forged L2 value is a miss. ``prefix`` scopes every L2 key of this cache.
    ``exit_timeout`` (seconds) bounds how long :meth:`close` and interpreter exit wait for queued
    L2 work, so an unreachable KV cannot hold a process; invalidation sweeps left over stay in
    the durable outbox.
    """

    def __init__(self, namespace: Optional[KVNamespace] = None, *, l1_directory: Optional[str] = None,
                 strategy: str = "explicit", default_ttl: int = 300, prefix: str = "pkv:",
                 secret: Union[str, bytes, None] = None, l1_size_limit: int = 1 << 30,
                 breaker_fail_max: int = 5, breaker_reset_timeout: float = 5.0,
                 propagation_delay: Optional[float] = None, outbox_lease: float = 30.0,
                 l1_max_age: Optional[float] = 5.0, stampede_wait: float = 5.0,
                 max_put_delay: float = 10.0, clock_skew: float = 0.0,
                 memory_entries: int = 1000, exit_timeout: float = 1.0):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        check_number("default_ttl", default_ttl, integer=True)
        if not isinstance(prefix, str) or not prefix or len(prefix.encode()) > 64:
            raise ValueError(f"prefix must be a non-empty str of at most 64 bytes, got {prefix!r}")
        if secret is not None and not isinstance(secret, (str, bytes)):
            raise TypeError(f"secret must be str or bytes, got {type(secret).__name__}")
        if secret is not None and not secret:
            raise ValueError("secret must not be empty (an empty key signs nothing)")
        if namespace is not None and not isinstance(namespace, KVNamespace):
            raise TypeError(f"namespace must be a KVNamespace (CloudflareKVNamespace or "
                            f"LocalKVNamespace) or None, got {namespace!r}")
        if l1_directory is not None and not isinstance(l1_directory, (str, os.PathLike)):
            raise TypeError(f"l1_directory must be a path or None, got {l1_directory!r}")
        if l1_directory is not None and not os.fspath(l1_directory):
            raise ValueError(f"l1_directory must not be empty, got {l1_directory!r}")
        for name, value in (("l1_max_age", l1_max_age), ("propagation_delay", propagation_delay)):
            if value is not None:
                check_number(name, value, zero_ok=name == "propagation_delay")
        check_number("l1_size_limit", l1_size_limit, integer=True)
        check_number("breaker_fail_max", breaker_fail_max, integer=True)
        check_number("breaker_reset_timeout", breaker_reset_timeout)
        check_number("outbox_lease", outbox_lease)
        check_number("stampede_wait", stampede_wait, zero_ok=True)
        check_number("max_put_delay", max_put_delay)
        check_number("clock_skew", clock_skew, zero_ok=True)
        check_number("memory_entries", memory_entries, integer=True, zero_ok=True)
        check_number("exit_timeout", exit_timeout, zero_ok=True)
        self.stampede_wait = float(stampede_wait)
        self.max_put_delay_ms = int(max_put_delay * 1000)
        self.clock_skew_ms = int(clock_skew * 1000)
        self.strategy = strategy
        self.l1_max_age_ms = None if l1_max_age is None else int(l1_max_age * 1000)
        self.default_ttl_ms = default_ttl * 1000
        self.prefix = prefix
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.namespace = namespace if namespace is not None else LocalKVNamespace(
            default_directory("kv"))
        l1_directory = os.fspath(l1_directory) if l1_directory is not None else \
            default_directory("l1")
        try:
            self.l1: Any = L1Store(l1_directory, size_limit=l1_size_limit)
            self.outbox: Any = Outbox(l1_directory, lease_ms=int(outbox_lease * 1000))
        except Exception as exc:  # queries must still work: uncached, and counted
            log.warning("peewee_kvcache: L1 directory %r unusable (%s); caching disabled",
                        l1_directory, exc)
            self.l1 = self.outbox = Unavailable(l1_directory, exc, int(outbox_lease * 1000))
        self.layout = KeyLayout(prefix)
        self.memory = MemoryLevel(memory_entries)
        self._listeners: List["weakref.WeakMethod[Callable[[Sequence[str]], None]]"] = []
        self._listeners_lock = threading.Lock()
        forksafe.renew_locks(self, "_listeners_lock")
        self.counters = Counters()
        # Two breakers: a successful background write says nothing about whether a read answers
        # within the query path's short timeout, and reads failing must not hold back the
        # sweeps other hosts' freshness depends on. Each counts only its own calls.
        self.read_breaker = CircuitBreaker(breaker_fail_max, breaker_reset_timeout,
                                           _not_a_kv_fault)  # query-path reads
        self.breaker = CircuitBreaker(breaker_fail_max, breaker_reset_timeout,
                                      _not_a_kv_fault)  # background work and operations
        self.propagation_delay = (self.namespace.propagation_delay if propagation_delay is None
                                  else propagation_delay)
        self.sweeper = Sweeper(self)
        self.writer = BackgroundWriter(self._send_puts, self.sweeper.run_due,
                                       exit_timeout=float(exit_timeout))
        if self._outbox_len() > 0:
            self.writer.start()  # sweeps an earlier process left unfinished

    def __repr__(self) -> str:
        return (f"CloudflareKVCache(namespace={self.namespace!r}, l1={self.l1.directory!r}, "
                f"strategy={self.strategy!r}, prefix={self.prefix!r}, "
                f"signed={self._secret is not None})")

    # -- what the Peewee layer calls -------------------------------------------------------
    def read(self, key: str, names: Sequence[str], run: Callable[[], Any],
             config: CacheConfig = DEFAULT_CONFIG, snapshot: Optional[Snapshot] = None) -> Any:
        """The cached result for ``key`` (a :class:`CachedResult`), or else what ``run()``
        returns (a DB-API cursor): stored, and returned as a CachedResult, when the rules allow.

        ``snapshot``: the open transaction the read runs in. Its result is stamped with the
        transaction's start (a REPEATABLE READ snapshot predates the query, maybe another host's
        commit) and stored only if the transaction allows; followers of a stampede don't wait for
        it (its view is its own)."""
        result = self.lookup(key, names)
        if result is not None:
            return result
        leader = snapshot is not None or self.lead_fill(key)  # one query per stampede
        if not leader:
            result = self.await_fill(key)
            if result is not None:
                return result
        try:
            return self._fill(key, names, run, config, snapshot)
        finally:
            if snapshot is None and leader:
                self.end_fill(key)

    def _fill(self, key: str, names: Sequence[str], run: Callable[[], Any], config: CacheConfig,
              snapshot: Optional[Snapshot]) -> Any:
        started_ms = snapshot.began_ms if snapshot is not None else now_ms()
        tokens = self.tokens(names)  # before the query: see levels/l1.py on the store race
        cursor = run()
        if tokens is None or (snapshot is not None and not snapshot.may_store(tokens)):
            return cursor
        result = CachedResult(tuple(d[0] for d in cursor.description), cursor.fetchall())
        cursor.close()
        self.store(key, names, tokens, result, config, started_ms)
        return result

    def write(self, names: Sequence[str], run: Callable[[], T]) -> T:
        """Run a statement that changes ``names`` (an autocommit write, or a COMMIT): its L2
        sweep is recorded durably before, the tokens bumped and the sweep sent after — also
        when it fails, as a failed statement may still have changed rows."""
        job = self.prepare_invalidation(names)
        try:
            return run()
        finally:
            if job is not None:
                self.complete_invalidation(job)

    # -- the read path ----------------------------------------------------------------------
    def lookup(self, digest: str, names: Sequence[str]) -> Optional[CachedResult]:
        """The cached result for ``digest`` if one is live and no name in its stamp was bumped.
        At most one L2 read: an L1 entry's re-check already asked L2 for this key."""
        result, asked_l2 = self._lookup_l1(digest)
        if result is None and not asked_l2:
            result = self._lookup_l2(digest, names)
        self.counters.incr("hits" if result is not None else "misses")
        return result

    def _lookup_l1(self, digest: str) -> Tuple[Optional[CachedResult], bool]:
        """This process's memory first, then the L1 directory; both checked the same way.
        Returns the result and whether L2 was asked (to re-check an old L1 entry)."""
        asked_l2 = False
        try:
            now = now_ms()
            memo = self.memory.get(digest)
            if memo is not None:
                if self._usable(memo.names, memo.tokens, memo.expires_at_ms, memo.checked_at_ms,
                                now):
                    self.counters.incr("memory_hits")
                    return memo.result, False
                self.memory.discard(digest)
            entry = self.l1.get(digest)
            if entry is None or not self._usable(entry.names, entry.tokens, entry.expires_at_ms,
                                                 now, now):
                return None, False
            if self.l1_max_age_ms is not None and \
                    now - entry.checked_at_ms > self.l1_max_age_ms:
                asked_l2 = True
                return self._recheck(digest, entry, now), True
            result, _ = decode_entry(entry.payload)
            self._remember(digest, entry, result)
        except Exception:
            self.fault("l1_errors", "L1 read failed")
            return None, asked_l2
        self.counters.incr("l1_hits")
        return result, False

    def _usable(self, names: Sequence[str], tokens: Sequence[int], expires_at_ms: int,
                checked_at_ms: int, now: int) -> bool:
        """Unexpired, no name bumped or distrusted, and checked against L2 recently enough."""
        return (expires_at_ms > now and self.l1.is_current(names, tokens)
                and not self.sweeper.distrusts(names)
                and (self.l1_max_age_ms is None or now - checked_at_ms <= self.l1_max_age_ms))

    def _remember(self, digest: str, entry: L1Entry, result: CachedResult) -> None:
        self.memory.put(digest, MemoryEntry(entry.names, entry.tokens, entry.expires_at_ms,
                                            entry.checked_at_ms, result))

    def _recheck(self, digest: str, entry: L1Entry, now: int) -> Optional[CachedResult]:
        """An L1 entry older than ``l1_max_age`` is served only if L2 still holds it: another
        host's invalidation deletes L2 entries but cannot reach this host's L1. If L2 holds a
        different (newer) result, that one is served; if L2 can't be asked, the DB is."""
        self.counters.incr("l1_rechecks")
        ok, raw = self.read_l2("L2 read for an L1 recheck failed",
                               self.layout.entry_key(digest, entry.names))
        if not ok or raw is None:
            return None
        if raw != entry.payload:
            result = self._decode_l2(digest, raw, now, entry.names)
            if result is None:
                return None
            result, expires_at_ms = result
            entry = L1Entry(entry.names, entry.tokens, expires_at_ms, raw, now)
        else:
            result = decode_entry(raw)[0]
            entry = L1Entry(entry.names, entry.tokens, entry.expires_at_ms, raw, now)
        self.l1.set(digest, entry, now)
        self._remember(digest, entry, result)
        self.counters.incr("l2_hits")
        return result

    def _decode_l2(self, digest: str, raw: bytes, now: int, names: Sequence[str]
                   ) -> Optional[Tuple[CachedResult, int]]:
        """A verified, unexpired L2 value, or None (counted) for a bad, expired or stale one.

        Stale: computed before this host last saw one of its names invalidated (allowing for
        clock skew). Another host's write that raced our invalidation can land in L2 after our
        sweep; this host (and any host that heard of the invalidation) never serves it.
        """
        try:
            result, expires_at_ms, created_at_ms = decode_entry_full(raw, self._secret,
                                                                     digest.encode())
        except SignatureError:
            self.fault("bad_signatures", "L2 entry with a bad or missing signature rejected")
            return None
        except CodecError:
            self.fault("codec_errors", "corrupt L2 entry rejected")
            return None
        if expires_at_ms is None or expires_at_ms <= now:
            return None
        invalidated = self.l1.invalidated_at(names)
        if invalidated and (created_at_ms or 0) < invalidated + self.clock_skew_ms:
            self.counters.incr("l2_stale_rejected")
            return None
        return result, expires_at_ms

    def _lookup_l2(self, digest: str, names: Sequence[str]) -> Optional[CachedResult]:
        try:
            if self.sweeper.pending_in_memory(names) or self.l1.any_pending(names):
                self.counters.incr("l2_skipped_pending")
                return None
            tokens = self.l1.tokens(names)  # before the read: a later bump kills the backfill
        except Exception:
            self.fault("l1_errors", "L1 token read failed")
            return None
        ok, raw = self.read_l2("L2 read failed", self.layout.entry_key(digest, names))
        if raw is None:
            return None
        now = now_ms()
        try:
            decoded = self._decode_l2(digest, raw, now, names)
        except Exception:
            self.fault("l1_errors", "L1 read failed")
            return None
        if decoded is None:
            return None
        result, expires_at_ms = decoded
        self.counters.incr("l2_hits")
        try:  # backfill keeps the L2 entry's remaining lifetime
            entry = L1Entry(tuple(names), tokens, expires_at_ms, raw, now)
            self.l1.set(digest, entry, now)
            self._remember(digest, entry, result)
        except Exception:
            self.fault("l1_errors", "L1 backfill failed")
        return result

    # -- stampede protection ----------------------------------------------------------------
    def lead_fill(self, digest: str) -> bool:
        """Claim the right to run the query for ``digest`` (across threads and processes
        sharing L1). True for the leader — and when L1 can't coordinate, so nobody waits."""
        if not self.stampede_wait:
            return True
        try:
            return bool(self.l1.entries.add("fill:" + digest, 1, expire=self.stampede_wait))
        except Exception:
            self.fault("l1_errors", "L1 fill lock failed")
            return True

    def end_fill(self, digest: str) -> None:
        try:
            self.l1.entries.delete("fill:" + digest)
        except Exception:
            self.fault("l1_errors", "L1 fill unlock failed")

    def await_fill(self, digest: str) -> Optional[CachedResult]:
        """A follower waits for the leader's result in L1, at most ``stampede_wait`` seconds;
        None when the leader finished without a cacheable result or took too long."""
        self.counters.incr("stampede_waits")
        deadline = time.monotonic() + self.stampede_wait
        delay = 0.002
        while True:
            try:
                leader_done = self.l1.entries.get("fill:" + digest) is None
            except Exception:
                return None
            result, _ = self._lookup_l1(digest)
            if result is not None:
                self.counters.incr("hits")
                return result
            if leader_done or time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- the write path ---------------------------------------------------------------------
    def tokens(self, names: Sequence[str]) -> Optional[Tuple[int, ...]]:
        """Tokens to stamp a result with; read them *before* running the query. None on fault."""
        try:
            return self.l1.tokens(names)
        except Exception:
            self.fault("l1_errors", "L1 token read failed")
            return None

    def seq(self) -> Optional[int]:
        """The token counter (a transaction's baseline); None on fault."""
        try:
            return self.l1.seq()
        except Exception:
            self.fault("l1_errors", "L1 token read failed")
            return None

    def store(self, digest: str, names: Sequence[str], tokens: Sequence[int],
              result: CachedResult, config: CacheConfig = DEFAULT_CONFIG,
              started_ms: Optional[int] = None) -> bool:
        """Store ``result`` under ``digest`` unless a name was bumped since ``tokens`` were read.
        ``started_ms``: when the query started (read before the tokens); defaults to now."""
        try:
            if not self.l1.is_current(names, tokens) or self.sweeper.distrusts(names):
                self.counters.incr("stores_refused")
                return False
            now = now_ms()
            existing = self._live_expiry(digest, names) if config.keep_ttl else None
            expires_at = config.expires_at_ms(now, self.default_ttl_ms, existing)
            started = now if started_ms is None else started_ms
            payload = encode_entry(result, expires_at, self._secret, digest.encode(), started)
        except UnsupportedValue as exc:
            log.info("peewee_kvcache: result not cached: %s", exc)
            self.counters.incr("uncacheable")
            return False
        except Exception:
            self.fault("l1_errors", "preparing a store failed")
            return False
        try:
            entry = L1Entry(tuple(names), tuple(tokens), expires_at, payload, now)
            self.l1.set(digest, entry, now)
            self._remember(digest, entry, result)
        except Exception:
            self.fault("l1_errors", "L1 write failed")
        self.counters.incr("stores")
        if len(payload) > MAX_VALUE_BYTES:
            self.counters.incr("oversized")  # stays in L1 only
            return True
        # KV's expiry is sent relative, measured here on the query's clock: the writer thread
        # may see another "now" (freezegun serves it real time), and an absolute expiration
        # from a frozen clock is refused. KV needs ≥ 60 s; the true expiry is inside the entry.
        ttl_s = max(math.ceil((expires_at - now) / 1000), MIN_EXPIRATION_TTL)
        # the write must land within max_put_delay of the query's start (see _send_puts)
        deadline = real_monotonic() + (self.max_put_delay_ms - (now - started)) / 1000
        self.writer.submit(PutTask(
            max(1, len(names) - 1),
            lambda: self.layout.entry_pairs(digest, payload, names, ttl_s, started),
            lambda: self._still_current(names, tokens), started, tuple(names), deadline))
        return True

    def _live_expiry(self, digest: str, names: Sequence[str]) -> Optional[int]:
        """Expiry of the live entry under ``digest`` (L1, else L2), for keep_ttl; None if none.

        An entry whose stamp is out of date was invalidated: like a Redis DEL, it has no TTL left.
        """
        entry = self.l1.get(digest)
        if entry is not None:
            return entry.expires_at_ms if self.l1.is_current(entry.names, entry.tokens) else None
        ok, raw = self.read_l2("L2 read for keep_ttl failed",
                               self.layout.entry_key(digest, names))
        try:
            return decode_entry(raw, self._secret, digest.encode())[1] if raw else None
        except CodecError:
            return None

    def _still_current(self, names: Sequence[str], tokens: Sequence[int]) -> bool:
        try:
            return self.l1.is_current(names, tokens)
        except Exception:
            self.fault("l1_errors", "L1 token read failed")
            return False

    def _send_puts(self, tasks: List[PutTask]) -> None:
        """Writer thread: one bulk write; then undo any entry whose tokens moved meanwhile, or
        whose write landed more than ``max_put_delay`` after its query started.

        The re-check after the write closes the race with an invalidation that listed markers
        before this write landed: either the invalidation's bump is visible here, or it happened
        after the write and its sweep sees the markers. The time check keeps the promise the
        re-sweep relies on: no entry computed before a write lands after that write's re-sweep.
        """
        now = real_monotonic()
        late = [task for task in tasks if now > task.deadline]
        if late:  # a late write could land after a re-sweep meant to catch it
            self.counters.incr("l2_puts_dropped_late", len(late))
        live = [(task, task.build()) for task in tasks
                if task not in late and task.still_valid()]
        pairs = [pair for _, task_pairs in live for pair in task_pairs]
        if not pairs:
            return
        ok, failed = self.call_l2("L2 bulk write failed", self._bulk_put,
                                  [task for task, _ in live], pairs)
        if not ok:
            return
        if failed:
            self.fault("l2_errors", f"L2 bulk write left {len(failed)} keys unwritten")
        done = real_monotonic()  # a write that landed too late may have missed the re-sweep
        stale = [pair.key for task, task_pairs in live
                 if done > task.deadline or not task.still_valid() for pair in task_pairs]
        if stale:
            self.delete_keys(stale)

    def _bulk_put(self, tasks: List[PutTask], pairs: List[KVPair]) -> List[str]:
        """``bulk_put``; a write whose outcome is unknown may land after every sweep meant to
        remove it, so its names are swept once more when it can no longer land."""
        try:
            return self.namespace.bulk_put(pairs)
        except KVOutcomeUnknown:
            self.counters.incr("l2_puts_unknown")
            self.sweeper.sweep_late_write({name for task in tasks for name in task.names},
                                          max(task.started_ms for task in tasks))
            raise

    def read_l2(self, what: str, key: str) -> Tuple[bool, Optional[bytes]]:
        """A query-path GET, through the read breaker (see :meth:`call_l2`)."""
        return self._guarded(self.read_breaker, what, self.namespace.get, key)

    def call_l2(self, what: str, call: Callable[..., T], *args: Any) -> Tuple[bool, Optional[T]]:
        """One L2 call (background work, operations) through the circuit breaker: (True, result),
        or (False, None) after logging and counting the fault. Nothing is raised: L2 is an
        optimisation."""
        return self._guarded(self.breaker, what, call, *args)

    def _guarded(self, breaker: CircuitBreaker, what: str, call: Callable[..., T],
                 *args: Any) -> Tuple[bool, Optional[T]]:
        try:
            return True, breaker.call(call, *args)
        except BudgetExhausted:
            self.counters.incr("l2_budget_skipped")
        except CircuitOpenError:
            self.counters.incr("l2_circuit_open")
        except Exception:
            self.fault("l2_errors", what)
        return False, None

    # -- invalidation -----------------------------------------------------------------------
    def invalidate(self, tables: Iterable[Any] = (), tags: Union[str, Iterable[str], None] = None
                   ) -> None:
        """Drop every cached result that read one of ``tables`` or carries one of ``tags``.

        Tables may be Peewee models, ``Table`` objects or names; ``tags`` one str or several.
        """
        names = [table_name(t) for t in table_names_of(tables)]
        names += [tag_name(g) for g in tag_list(tags)]
        self.invalidate_names(names)

    @property
    def channel(self) -> str:
        """The NOTIFY channel of every cache sharing this namespace and prefix."""
        return "pkv_" + digest_of(self.prefix.encode(), repr(self.namespace).encode())[:24]

    @property
    def origin(self) -> str:
        """Who sends a notification: processes sharing one L1 directory share its tokens."""
        return getattr(self.l1, "l1_id", "")

    def evict_local(self, names: Sequence[str]) -> None:
        """Another host's write, heard through NOTIFY: drop this host's L1 entries only (that
        host sweeps L2)."""
        try:
            self.l1.bump(names, now_ms())
            self.counters.incr("remote_evictions")
        except Exception:
            self.fault("l1_errors", "L1 eviction for a remote write failed")

    def invalidate_everything(self) -> None:
        """After a write whose tables are unknown: every auto-invalidated result goes."""
        self.invalidate_names([EVERYTHING])

    def on_invalidate(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call ``listener(names)`` (a bound method, held weakly) at every invalidation made
        through :meth:`invalidate_names`: the Peewee layer repeats those made inside a
        transaction at its COMMIT."""
        with self._listeners_lock:
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            self._listeners.append(weakref.WeakMethod(listener))  # type: ignore[arg-type]

    def _invalidation_listeners(self) -> List[Callable[[Sequence[str]], None]]:
        with self._listeners_lock:
            return [fn for fn in (ref() for ref in self._listeners) if fn is not None]

    def invalidate_names(self, names: Sequence[str]) -> None:
        """Invalidate now: record the sweep, bump the tokens, sweep L2 in the background; inside
        a transaction of the calling thread's connection, again at its COMMIT."""
        for listener in self._invalidation_listeners():
            listener(names)
        job = self.prepare_invalidation(names)
        if job is not None:
            self.complete_invalidation(job)

    def prepare_invalidation(self, names: Sequence[str]) -> Optional[Job]:
        """Record the L2 sweep before the write commits (see :class:`Sweeper`)."""
        return self.sweeper.prepare(names)

    def complete_invalidation(self, job: Job) -> None:
        """After the write: new tokens at once, the L2 sweep in the background."""
        self.counters.incr("invalidations")
        self.sweeper.complete(job)

    def list_keys(self, prefix: str) -> List[KeyInfo]:
        """Every L2 key under ``prefix`` (raises; wrap in :meth:`call_l2`)."""
        return list(self.namespace.list_all(prefix))

    def delete_keys(self, keys: Sequence[str]) -> bool:
        """Bulk-delete L2 keys; True when KV accepted them all (faults counted, not raised)."""
        ok, failed = self.call_l2("L2 bulk delete failed", self.namespace.bulk_delete, keys)
        if ok and failed:
            self.fault("l2_errors", f"L2 bulk delete left {len(failed)} keys")
        return ok and not failed

    # -- the seed's API ---------------------------------------------------------------------
    def get(self, key: str, tables: Iterable[Any] = (), is_tag: bool = False,
            is_auto_invalidate: bool = True) -> Optional[CachedResult]:
        """Look up a result stored with :meth:`put` under the same arguments."""
        digest, names = self._seed_key(key, tables, is_tag, is_auto_invalidate)
        return self.lookup(digest, names)

    def put(self, hashed_query: str, response: CachedResult, tables: Iterable[Any] = (),
            is_tag: bool = False, config: Optional[CacheConfig] = None,
            is_auto_invalidate: bool = True) -> bool:
        """Store ``response`` under ``hashed_query`` (or under the tag ``hashed_query``)."""
        if not isinstance(response, CachedResult):
            raise TypeError(f"response must be a CachedResult, got {type(response).__name__}")
        if config is not None and not isinstance(config, CacheConfig):
            raise TypeError(f"config must be a CacheConfig or None, got {config!r}")
        digest, names = self._seed_key(hashed_query, tables, is_tag, is_auto_invalidate)
        tokens = self.tokens(names)
        return tokens is not None and self.store(digest, names, tokens, response,
                                                 config or DEFAULT_CONFIG)

    def on_mutate(self, tables: Iterable[Any] = (), tags: Union[str, Iterable[str], None] = None
                  ) -> None:
        """The seed's name for :meth:`invalidate`."""
        self.invalidate(tables, tags)

    def _seed_key(self, key: str, tables: Iterable[Any], is_tag: bool,
                  auto: bool) -> Tuple[str, List[str]]:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str, got {key!r}")
        for name, flag in (("is_tag", is_tag), ("is_auto_invalidate", auto)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        tags = tag_list([key] if is_tag else [])
        names = stamp_names(table_names_of(tables), tags, auto)
        return digest_of(b"seed", key.encode(), tag_digest_part(tuple(tags), auto)), names

    # -- operations -------------------------------------------------------------------------
    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued L2 write and invalidation was sent; False on timeout."""
        if timeout is not None:
            check_number("timeout", timeout, zero_ok=True)
        return self.writer.drain(timeout)

    def get_stats(self) -> CacheStats:
        """Counters of this process plus key counts read from L2 (right across hosts):
        ``total_keys`` results, ``table_keys`` / ``tag_keys`` index keys under t: / g:."""
        table_prefix, tag_prefix = self.prefix + TABLE, self.prefix + TAG
        ok, infos = self.call_l2("L2 listing for stats failed", self._list_own)
        counts = {"total_keys": -1, "table_keys": -1, "tag_keys": -1}
        if ok and infos is not None:
            counts = {"total_keys": sum(1 for i in infos if layout.marker_target(i) is None),
                      "table_keys": sum(1 for i in infos if i.name.startswith(table_prefix)),
                      "tag_keys": sum(1 for i in infos if i.name.startswith(tag_prefix))}
        try:
            l1 = self.l1.stats()
        except Exception:
            self.fault("l1_errors", "L1 stats failed")
            l1 = {}
        return CacheStats(**counts, **self.counters.snapshot(), **l1,
                          pending_l2_work=self.writer.pending(),
                          outbox_jobs=self._outbox_len(), l2_circuit=self._circuit())

    def _circuit(self) -> str:
        """The worse of the two breakers' states."""
        states = (self.read_breaker.state, self.breaker.state)
        return next(state for state in (OPEN, HALF_OPEN, CLOSED) if state in states)

    def _outbox_len(self) -> int:
        try:
            return len(self.outbox)
        except Exception:
            self.fault("l1_errors", "reading the invalidation outbox failed")
            return -1

    def clear_local(self) -> None:
        """Forget this host's copies (process memory and the L1 directory), as a new host would
        start; L2 and the invalidation tokens stay."""
        self.memory.clear()
        try:
            self.l1.entries.clear()
        except Exception:
            self.fault("l1_errors", "L1 clear failed")

    def clear_all(self) -> None:
        """Empty both levels for this cache's prefix (other prefixes in the namespace stay)."""
        self.drain(30)
        self.memory.clear()
        try:
            self.l1.clear()
        except Exception:
            self.fault("l1_errors", "L1 clear failed")
        ok, infos = self.call_l2("L2 listing for clear failed", self._list_own)
        if infos:
            self.delete_keys([info.name for info in infos])

    def _list_own(self) -> List[KeyInfo]:
        """Every L2 key of this cache, listed by kind: a bare prefix "a" would match "ab..."."""
        return [info for kind in layout.KINDS for info in self.namespace.list_all(self.prefix + kind)]

    def l2_entry_keys(self) -> List[str]:
        """Keys of the results stored in L2 (markers left out); [] when L2 can't be listed."""
        ok, infos = self.call_l2("L2 listing failed", self._list_own)
        return [i.name for i in infos or () if layout.marker_target(i) is None]

    def close(self) -> None:
        """Release files and connections. Queued L2 work gets at most ``exit_timeout`` seconds;
        what is left is dropped (its sweeps stay in the durable outbox for the next process)."""
        self.writer.close()
        self.outbox.close()
        self.l1.close()
        self.namespace.close()

    def fault(self, counter: str, what: str) -> None:
        """Log a degraded operation (with traceback at debug level) and count it."""
        self.counters.incr(counter)
        log.warning("peewee_kvcache: %s; serving from the database", what,
                    exc_info=log.isEnabledFor(logging.DEBUG))
