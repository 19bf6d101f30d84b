"""What the latency matrix cannot show: KV requests per cache operation (read from the local KV
server's own counters), invalidation latency by number of entries, and throughput of 8 reading
threads while 1 thread writes, with and without the cache."""
from __future__ import annotations

import functools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import peewee

from peewee_kvcache import CachedResult, CloudflareKVCache

from .timing import time_once
from .variants import L1_DISK, L1_HIT, L2_HIT, MISS, Cell, ours, prime
from .workload import (BOOKS_PER_AUTHOR, MODELS, N_AUTHORS, QUERIES, REVIEWS_PER_BOOK, TTL, Backend,
                       Environment, PageView, Review)

SEED_RESULT = CachedResult(("id",), [(1,)])
READERS = 8
HOT_QUERIES_PER_SHAPE = 10
HOT_ROWS = 10


@dataclass
class RequestRow:
    """KV requests that ``ops`` operations caused, by endpoint, and their median latency."""

    operation: str
    ops: int
    counts: Dict[str, int]
    latency_ms: float

    @property
    def per_op(self) -> float:
        return sum(self.counts.values()) / self.ops


@dataclass
class ThroughputRow:
    backend: str
    cached: bool
    target: str  # the table the writing thread updates
    seconds: float
    reads: int
    writes: int
    hits: int = 0
    faults: int = 0  # L1 and L2 errors the cache counted (each one answered from the database)
    kv_requests: int = 0
    drain_seconds: float = 0.0

    @property
    def hit_ratio(self) -> Optional[float]:
        """Share of reads served from the cache (a stampede follower served the leader's
        result counts as served; its lookup also counted a miss, so misses are not used)."""
        return self.hits / self.reads if self.cached and self.reads else None


def _counted(env: Environment, operation: str, ops: int, run: Callable[[], float]
             ) -> RequestRow:
    """Run ``run`` (one operation, returning its latency in µs) ``ops`` times, counting the
    requests the KV server received meanwhile."""
    env.server.reset_counts()
    latencies = sorted(run() for _ in range(ops))
    counts = {k: v for k, v in env.server.counts().items() if v}
    return RequestRow(operation, ops, counts, latencies[len(latencies) // 2] / 1000.0)


def kv_requests(env: Environment, backend: Backend, ops: int) -> List[RequestRow]:
    """Requests per hit (memory, L1 directory, L2) and miss of the 1-row single-table query: the
    same variants, with the same checks, as in the latency matrix. L2 first: it leaves the entry
    in L1 and in memory."""
    cell = Cell(backend.name, "select", 1)
    variants = {v.name: v for v in ours(backend, cell)}
    with backend.cached.bind_ctx(MODELS):
        prime(backend, cell)
        return [_counted(env, label, ops, lambda v=variants[name]: time_once(v))
                for name, label in [(L2_HIT, "L2 hit (local copies emptied)"),
                                    (L1_HIT, "L1 hit (memory)"),
                                    (L1_DISK, "L1 disk hit (memory emptied)"),
                                    (MISS, "miss (query + store)")]]


def _invalidate_and_drain(cache: CloudflareKVCache, table: str) -> float:
    """One invalidation until its L2 sweep is done, in µs."""
    start = time.perf_counter_ns()
    cache.invalidate(tables=[table])
    cache.drain(300)
    return (time.perf_counter_ns() - start) / 1000.0


def invalidation(env: Environment, sizes: List[int]) -> List[RequestRow]:
    """``cache.invalidate(tables=[t]) + drain()`` for a table with k entries stored through the
    seed API, once per k, on a cache of its own (its L1 and sweeps stay out of the rest)."""
    cache = env.new_cache("invalidation")
    rows = []
    try:
        for k in sizes:
            table = f"bench_inv_{k}"
            for i in range(k):
                cache.put(f"{table}:{i}", SEED_RESULT, [table])
            cache.drain(300)
            label = f"invalidate {k:,} entr{'y' if k == 1 else 'ies'}"
            rows.append(_counted(env, label, 1,
                                 functools.partial(_invalidate_and_drain, cache, table)))
    finally:
        cache.close()
    return rows


def _hot_reads(cached: bool) -> List[Callable[[], list]]:
    """The hot set: 10 single-table and 10 join queries of 10 rows each."""
    def read(shape: str, lo: int) -> Callable[[], list]:
        def run() -> list:
            query = QUERIES[shape](lo, lo + HOT_ROWS - 1)
            return list(query.with_cache(ex=TTL) if cached else query)
        return run

    return [read(shape, 1 + i * HOT_ROWS) for shape in ("select", "join")
            for i in range(HOT_QUERIES_PER_SHAPE)]


WRITE_TARGETS = ("review", "pageview")


def _write(target: str, rng: random.Random) -> None:
    """One autocommit UPDATE. A review: every join query of the hot set read that table, so half
    the hot set is invalidated by each write. The page-view counter: read by no query."""
    if target == "review":
        review_id = rng.randint(1, N_AUTHORS * BOOKS_PER_AUTHOR * REVIEWS_PER_BOOK)
        Review.update(stars=rng.randint(1, 5)).where(Review.id == review_id).execute()
    else:
        PageView.update(views=PageView.views + 1).where(PageView.id == 1).execute()


@dataclass
class _Worker:
    """A thread doing ``step`` until ``stop`` is set, counting its operations; it closes its own
    connection at the end (Peewee connections are per thread)."""

    db: peewee.Database
    stop: threading.Event
    step: Callable[[int], None]
    done: int = 0
    error: Optional[BaseException] = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step(self.done)
                self.done += 1
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc
        finally:
            self.db.close()


def _run_workers(workers: List[_Worker], stop: threading.Event, seconds: float) -> float:
    """Run the threads for ``seconds``; a failure in any of them fails the benchmark."""
    start = time.perf_counter()
    for worker in workers:
        worker.thread.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.thread.join()
    elapsed = time.perf_counter() - start
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise RuntimeError(f"a throughput thread failed: {errors[0]!r}") from errors[0]
    return elapsed


def _throughput_once(env: Environment, backend: Backend, cached: bool, target: str,
                     seconds: float) -> ThroughputRow:
    db = backend.cached if cached else backend.plain
    reads = _hot_reads(cached)
    rng = random.Random(42)
    stop = threading.Event()
    with db.bind_ctx(MODELS):
        readers = [_Worker(db, stop, lambda i, k=k: reads[(i + k) % len(reads)]())
                   for k in range(READERS)]
        writer = _Worker(db, stop, lambda i: _write(target, rng))
        before = backend.cache.counters.snapshot()
        env.server.reset_counts()
        elapsed = _run_workers(readers + [writer], stop, seconds)
        after = backend.cache.counters.snapshot()
        kv = sum(env.server.counts().values())
        drain_start = time.perf_counter()
        backend.cache.drain(600)
    moved = {name: after[name] - before[name] for name in ("hits", "l1_errors", "l2_errors")}
    return ThroughputRow(backend.name, cached, target, elapsed, sum(w.done for w in readers),
                         writer.done, moved["hits"], moved["l1_errors"] + moved["l2_errors"],
                         kv, time.perf_counter() - drain_start if cached else 0.0)


def throughput(env: Environment, backend: Backend, seconds: float) -> List[ThroughputRow]:
    """Per write target: Peewee alone, then the cache (warmed by one pass over the hot set)."""
    rows = []
    for target in WRITE_TARGETS:
        rows.append(_throughput_once(env, backend, False, target, seconds))
        with backend.cached.bind_ctx(MODELS):
            for read in _hot_reads(True):
                read()
        backend.cache.drain(60)
        rows.append(_throughput_once(env, backend, True, target, seconds))
    return rows
