"""The variants of one cell that involve Peewee: the plain query, our cache's four paths (memory,
L1 directory, L2, miss), the floors any query-result cache must pay, and what a user would
hand-roll instead."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import diskcache
from dogpile.cache.region import CacheRegion

from peewee_kvcache.core.codec import decode_entry
from peewee_kvcache.orm.cursor import CachedCursor

from .timing import Variant
from .workload import QUERIES, TTL, Backend

UNCACHED, L1_HIT, L1_DISK, L2_HIT, MISS = "uncached", "L1 hit", "L1 disk hit", "L2 hit", "miss"
FLOOR, FLOOR_SQL, MEM_FLOOR_SQL = "floor", "floor+SQL", "mem floor+SQL"
DOGPILE, MEMOIZE = "dogpile mem", "diskcache memo"


# Fresh lower bounds (0, -1, -2, ...) for misses, unique across the whole run: ids start at 1, so
# every one returns the same rows under a key never seen before.
_FRESH_LO = itertools.count(0, -1)


class BenchmarkInvalid(AssertionError):
    """A variant did not do what it claims (an "L1 hit" that missed): the numbers would lie."""


@dataclass(frozen=True)
class Cell:
    backend: str
    shape: str
    size: int


def check_rows(variants: List[Variant], size: int) -> None:
    """Run each variant once, untimed: all must return the cell's rows, or nothing compares."""
    for variant in variants:
        variant.before()
        rows = variant.op()
        variant.after()
        if not isinstance(rows, list) or len(rows) != size:
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise BenchmarkInvalid(f"{variant.name}: expected {size} rows, got {got}")


def expecting(cache_counters: Callable[[], Dict[str, int]], variant: Variant,
              deltas: Dict[str, int]) -> Variant:
    """``variant`` with a check, outside the timed region, that each operation moved the cache's
    counters by exactly ``deltas`` (one L1 hit, one L2 hit, one miss and one store...)."""
    seen: Dict[str, int] = {}

    def before() -> None:
        variant.before()
        seen.update(cache_counters())

    def after() -> None:
        variant.after()
        now = cache_counters()
        moved = {name: now[name] - seen[name] for name in deltas}
        if moved != deltas:
            raise BenchmarkInvalid(f"{variant.name}: cache counters moved by {moved}, "
                                   f"expected {deltas}")

    return Variant(variant.name, variant.op, before, after)


def ours(backend: Backend, cell: Cell, checked: bool = True) -> List[Variant]:
    """Plain Peewee, and the same query through the cache. L1 hit: the steady state, served from
    the process's memory level in front of the L1 directory when the result is there; L1 disk
    hit: that memory emptied first, so the L1 directory (diskcache) serves it; L2 hit: both local
    copies emptied first; miss: query + store. ``checked=False`` leaves out the counter checks
    (for the profiler, whose loop runs the hooks)."""
    build, n, cache = QUERIES[cell.shape], cell.size, backend.cache
    miss_lo = [0]
    counters = cache.counters.snapshot

    def check(variant: Variant, deltas: Dict[str, int]) -> Variant:
        return expecting(counters, variant, deltas) if checked else variant

    def cached(lo: int = 1) -> list:
        return list(build(lo, n).with_cache(ex=TTL).execute(backend.cached))

    def next_miss() -> None:
        miss_lo[0] = next(_FRESH_LO)

    return [
        Variant(UNCACHED, lambda: list(build(1, n).execute(backend.plain))),
        check(Variant(L1_HIT, cached), {"memory_hits": 1, "l1_hits": 0, "l2_hits": 0}),
        check(Variant(L1_DISK, cached, before=cache._memory.clear),
              {"memory_hits": 0, "l1_hits": 1, "l2_hits": 0}),
        check(Variant(L2_HIT, cached, before=cache.clear_local),
              {"memory_hits": 0, "l1_hits": 0, "l2_hits": 1}),
        check(Variant(MISS, lambda: cached(miss_lo[0]), before=next_miss,
                      after=lambda: _drained(cache.drain)), {"misses": 1, "stores": 1}),
    ]


def _drained(drain: Callable[[float], bool]) -> None:
    """The miss's background L2 write, sent outside the timed region. The pause first lets the
    writer thread reach its linger wait: ``BackgroundWriter.drain()`` called before that loses its
    wake-up and waits out the whole 0.2 s linger, which would cost wall time and rounds."""
    time.sleep(0.002)
    if not drain(30):
        raise BenchmarkInvalid("background L2 writes did not finish within 30 s")


def prime(backend: Backend, cell: Cell) -> None:
    """Run the cell's cached query once: afterwards its entry is in L1 and in L2."""
    list(QUERIES[cell.shape](1, cell.size).with_cache(ex=TTL).execute(backend.cached))
    _drained(backend.cache.drain)


def stored_payload(backend: Backend, cell: Cell) -> bytes:
    """The codec bytes our cache stored for the cell's query, found as the one L1 key a fresh
    miss adds (so the floor decodes exactly what the L1 hit decodes); also in L2 on return."""
    entries = backend.cache.l1.entries
    before = set(entries.iterkeys())
    prime(backend, cell)
    added = [key for key in set(entries.iterkeys()) - before if not key.startswith("fill:")]
    if len(added) != 1:
        raise BenchmarkInvalid(f"{cell}: expected the first run to store one L1 entry, "
                               f"found {len(added)}")
    return backend.cache.l1.get(added[0]).value


def floors(backend: Backend, cell: Cell, store: diskcache.Cache) -> List[Variant]:
    """The least a hit can cost: a bare diskcache get of the stored bytes, the codec's decode,
    and Peewee's own row materialisation over a cursor of those rows (what Peewee does on our
    hit); then the same plus generating the SQL, which a cache keyed on SQL must also pay; and
    the floor of a hit from process memory: SQL generation and materialisation of rows decoded
    once, up front."""
    build, n = QUERIES[cell.shape], cell.size
    key = f"{cell.backend}:{cell.shape}:{n}"
    payload = stored_payload(backend, cell)
    store.set(key, payload)
    decoded, _ = decode_entry(payload)
    sql_context = backend.plain.get_sql_context

    def floor() -> list:
        query = build(1, n)
        result, _ = decode_entry(store.get(key))
        return list(query._get_cursor_wrapper(CachedCursor(result)))

    def floor_sql() -> list:
        query = build(1, n)
        sql_context().sql(query).query()
        result, _ = decode_entry(store.get(key))
        return list(query._get_cursor_wrapper(CachedCursor(result)))

    def memory_floor_sql() -> list:
        query = build(1, n)
        sql_context().sql(query).query()
        return list(query._get_cursor_wrapper(CachedCursor(decoded)))

    return [Variant(FLOOR, floor), Variant(FLOOR_SQL, floor_sql),
            Variant(MEM_FLOOR_SQL, memory_floor_sql)]


def hand_rolled(backend: Backend, cell: Cell, region: CacheRegion,
                memo: diskcache.Cache) -> List[Variant]:
    """What a user writes instead: a memoised function returning ``list(query.dicts())``, in
    dogpile.cache's memory backend (same process only) and in diskcache (shared like our L1)."""
    build, n = QUERIES[cell.shape], cell.size
    name = f"{cell.backend}.{cell.shape}"

    def run(size: int) -> list:
        return list(build(1, size).dicts().execute(backend.plain))

    in_memory = region.cache_on_arguments(namespace=name)(run)
    on_disk = memo.memoize(name=name, expire=TTL)(run)
    return [Variant(DOGPILE, lambda: in_memory(n)), Variant(MEMOIZE, lambda: on_disk(n))]
