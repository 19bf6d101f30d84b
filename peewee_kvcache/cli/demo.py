"""The workload behind ``peewee-kvcache demo``: authors, books and reviews, read and written.

A new user should see within a minute of ``pip install`` what the cache does: which level served
each read (from the cache's own counters, not assumed), what a write drops and what it leaves, that
a rolled-back transaction changes nothing in the cache, that L2 serves a host whose L1 is empty,
and what caching saves, measured. The demo owns its tables (``pkv_demo_*``) and drops them after.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import peewee

from ..cache.facade import CloudflareKVCache
from ..orm.query import with_cache

TTL = 120
ROUNDS = 15


class _Model(peewee.Model):
    class Meta:
        database = None


class Author(_Model):
    id = peewee.AutoField()
    name = peewee.CharField(max_length=64)
    country = peewee.CharField(max_length=2)

    class Meta:
        table_name = "pkv_demo_author"


class Book(_Model):
    id = peewee.AutoField()
    author = peewee.ForeignKeyField(Author, backref="books", on_delete="CASCADE")
    title = peewee.CharField(max_length=128)
    year = peewee.IntegerField()

    class Meta:
        table_name = "pkv_demo_book"


class Review(_Model):
    id = peewee.AutoField()
    book = peewee.ForeignKeyField(Book, backref="reviews", on_delete="CASCADE")
    stars = peewee.IntegerField()

    class Meta:
        table_name = "pkv_demo_review"


MODELS = [Author, Book, Review]
AUTHORS_IN_FRANCE = "authors in France (1 table)"
TOP_AUTHORS = "top-rated authors (join of 3, AVG)"
QUERIES: Dict[str, Callable[[], peewee.SelectBase]] = {
    AUTHORS_IN_FRANCE: lambda: (Author.select(Author.id, Author.name)
                                .where(Author.country == "FR").order_by(Author.name)),
    TOP_AUTHORS: lambda: (Author.select(Author.name, peewee.fn.COUNT(Review.id).alias("reviews"),
                                        peewee.fn.AVG(Review.stars).alias("stars"))
                          .join(Book).join(Review).group_by(Author.id, Author.name)
                          .order_by(peewee.SQL("stars").desc(), Author.name).limit(5)),
}
#: the counters each step reports as deltas
SHOWN = ("hits", "misses", "memory_hits", "l1_hits", "l2_hits", "stores", "invalidations",
         "bypassed_in_transaction", "l1_rechecks", "l1_skipped_cost", "l2_skipped_cost")
STEP_COUNT = 8
#: QueryRun.l1 / .l2 of a miss that did not ask that level: for its query shape, asking costs
#: more than it saves
NOT_ASKED = "not asked"
INSIDE = "inside the transaction"
AFTER_ROLLBACK = "after ROLLBACK"


@dataclass(frozen=True)
class QueryRun:
    """One read: what each level answered (``hit``, ``miss``, ``not asked``, or ``-``
    when a nearer level answered). ``when``: where it ran, in a step that says so."""

    query: str
    l1: str
    l2: str
    served_by: str
    ms: float
    rows: int
    when: str = ""


@dataclass
class Step:
    title: str
    note: str
    runs: List[QueryRun] = field(default_factory=list)
    counters: Dict[str, int] = field(default_factory=dict)


@dataclass
class DemoReport:
    """What the demo did. ``backend``: sqlite, postgresql or mysql. ``timings_ms``: per query,
    the median ms of a database read, a memory hit and an L2 hit (None: L2 was never asked, as
    the database answers that query faster). ``resweep_after_s``: when a write's second L2 sweep
    runs after its first (what ``outbox_jobs`` holds once the first sweeps are done)."""

    database: str
    backend: str
    kv: str
    steps: List[Step]
    timings_ms: Dict[str, Dict[str, Optional[float]]]
    totals: Dict[str, int]
    final_stats: Dict[str, Any]
    resweep_after_s: float
    seconds: float

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _levels(delta: Dict[str, int]) -> Tuple[str, str, str]:
    """(L1, L2, served by) of one read, from the counter deltas it caused."""
    if delta["memory_hits"]:  # this process's memory answered: L1 was not asked
        return "-", "-", "memory"
    if delta["l1_hits"]:
        return "hit", "-", "L1"
    if delta["l1_rechecks"]:  # an L1 entry older than l1_max_age, confirmed in L2
        return "re-checked", "hit", "L1"
    if delta["l2_hits"]:
        return "miss", "hit", "L2"
    if delta["bypassed_in_transaction"]:
        return "-", "-", "database (transaction wrote a table it reads)"
    l1 = NOT_ASKED if delta["l1_skipped_cost"] else "miss"
    return l1, NOT_ASKED if delta["l2_skipped_cost"] else "miss", "database"


def _backend(db: peewee.Database) -> str:
    for backend, cls in (("sqlite", peewee.SqliteDatabase),
                         ("postgresql", peewee.PostgresqlDatabase),
                         ("mysql", peewee.MySQLDatabase)):
        if isinstance(db, cls):
            return backend
    return type(db).__name__


def _median(runs: List[QueryRun], served_by: str) -> Optional[float]:
    """Median ms of the reads ``served_by`` answered; None when it answered none."""
    times = [run.ms for run in runs if run.served_by == served_by]
    return round(statistics.median(times), 3) if times else None


class _Rollback(Exception):
    """Leaves an atomic block, which rolls its transaction back."""


class Demo:
    """Runs the workload on ``db`` (a Cached*Database); ``on_step(step, number)`` sees each
    finished step (numbered from 1)."""

    def __init__(self, db: peewee.Database,
                 on_step: Callable[[Step, int], None] = lambda step, number: None,
                 rounds: int = ROUNDS) -> None:
        self.db = db
        self.cache: CloudflareKVCache = db.cache  # type: ignore[attr-defined]
        self.on_step = on_step
        self.rounds = rounds
        self.steps: List[Step] = []
        self.timings_ms: Dict[str, Dict[str, Optional[float]]] = {}

    def _counters(self) -> Dict[str, int]:
        return self.cache.counters.snapshot()

    def read(self, name: str, cached: bool = True, when: str = "") -> QueryRun:
        query = with_cache(QUERIES[name](), ex=TTL) if cached else with_cache(QUERIES[name](),
                                                                             False)
        before = self._counters()
        started = time.perf_counter()
        rows = list(query.dicts())
        ms = (time.perf_counter() - started) * 1000
        after = self._counters()
        l1, l2, served_by = _levels({k: after[k] - before[k] for k in SHOWN})
        return QueryRun(name, l1, l2, served_by, round(ms, 3), len(rows), when)

    def step(self, title: str, note: str, body: Callable[[], List[QueryRun]]) -> Step:
        before = self._counters()
        runs = body()
        after = self._counters()
        step = Step(title, note, runs, {k: after[k] - before[k] for k in SHOWN})
        self.steps.append(step)
        self.on_step(step, len(self.steps))
        return step

    def seed(self) -> None:
        """Tables and rows (deterministic), in one transaction so they cost one invalidation."""
        rng = random.Random(7)
        self.db.bind(MODELS)
        self.db.drop_tables(MODELS, safe=True)
        self.db.create_tables(MODELS)
        countries = ["FR", "DE", "JP", "BR", "US", "NG"]
        with self.db.atomic():
            Author.insert_many([(f"Author {i:02d}", countries[i % len(countries)])
                                for i in range(36)], fields=[Author.name, Author.country]).execute()
            author_ids = [a.id for a in Author.select(Author.id)]
            Book.insert_many([(a, f"Book {a}-{j}", 1950 + rng.randrange(75))
                              for a in author_ids for j in range(10)],
                             fields=[Book.author, Book.title, Book.year]).execute()
            rows = [(b.id, rng.randint(1, 5)) for b in Book.select(Book.id) for _ in range(30)]
            for batch in peewee.chunked(rows, 1000):
                Review.insert_many(batch, fields=[Review.book, Review.stars]).execute()
        self.cache.drain()
        self.cache.counters.reset()  # the report covers the workload, not the set-up

    def write(self) -> List[QueryRun]:
        Review.create(book=Book.select(Book.id).order_by(Book.id).limit(1).scalar(), stars=1)
        self.cache.drain()  # the L2 sweep is done before the next reads start
        return []

    def rolled_back(self) -> List[QueryRun]:
        runs = []
        try:
            with self.db.atomic():
                Review.delete().execute()
                runs.append(self.read(TOP_AUTHORS, when=INSIDE))
                runs.append(self.read(AUTHORS_IN_FRANCE, when=INSIDE))
                raise _Rollback
        except _Rollback:
            pass
        runs.append(self.read(TOP_AUTHORS, when=AFTER_ROLLBACK))
        return runs

    def l1_emptied(self) -> List[QueryRun]:
        self.cache.drain()  # queued L2 writes land first
        self.cache.clear_local()
        return [self.read(TOP_AUTHORS), self.read(AUTHORS_IN_FRANCE), self.read(TOP_AUTHORS)]

    def time_reads(self) -> List[QueryRun]:
        """Median milliseconds per read: database only, memory hit, L2 hit (this host's copies
        forgotten before each; the reads L2 did not serve, as it did not pay, are left out)."""
        result: Dict[str, Dict[str, Optional[float]]] = {}
        for name in QUERIES:
            database = [self.read(name, cached=False) for _ in range(self.rounds)]
            self.read(name)
            memory = [self.read(name) for _ in range(self.rounds)]
            l2 = []
            for _ in range(self.rounds):
                self.cache.clear_local()
                l2.append(self.read(name))
            result[name] = {"database": _median(database, "database"),
                            "memory": _median(memory, "memory"), "l2": _median(l2, "L2")}
        self.timings_ms = result
        return []

    def run(self, database: str, kv: str) -> DemoReport:
        started = time.perf_counter()
        try:
            return self._run(database, kv, started)
        finally:
            self.db.drop_tables(MODELS, safe=True)  # also sweeps the demo's L2 keys
            self.cache.drain()

    def _run(self, database: str, kv: str, started: float) -> DemoReport:
        both = list(QUERIES)
        self.seed()
        self.step("Set up", "3 tables, 36 authors, 360 books, 10,800 reviews; counters reset",
                  lambda: [])
        self.step("First reads", "nothing cached yet: the database answers and the result is "
                  "stored. A query's first read costs more than the query alone: its tables are "
                  "read from Peewee's query tree, the lock that keeps other processes from "
                  "running it too is taken (its cost is not known yet), and the result is "
                  "encoded and stored (memory and L1 now, L2 in the background). L2 is asked "
                  "only where it pays: a query never run here goes to the database, which "
                  "measures it; only the very first read, before L2's speed is known, asks L2",
                  lambda: [self.read(q) for q in both])
        self.step("Same reads again", "served on this host (process memory, else L1): no "
                  "database round trip",
                  lambda: [self.read(q) for q in both])
        self.step("Write: a new review", "INSERT INTO pkv_demo_review invalidates every cached "
                  "result that read pkv_demo_review (L1 tokens bumped, L2 keys swept)", self.write)
        self.step("Reads after the write", "the join read pkv_demo_review: miss, then hit; the "
                  "authors query did not: still a hit",
                  lambda: [self.read(TOP_AUTHORS), self.read(AUTHORS_IN_FRANCE),
                           self.read(TOP_AUTHORS)])
        self.step("Transaction rolled back", f"{INSIDE}, after DELETE FROM pkv_demo_review: "
                  "the join reads a table the transaction wrote, so the database answers (0 "
                  "rows) and nothing is stored; the authors query still hits. "
                  f"{AFTER_ROLLBACK}: nothing was invalidated, the cache serves the original "
                  "rows", self.rolled_back)
        self.step("L1 emptied (a new host, a restart)", "L2 serves what this host lost where "
                  "asking it pays (L2 answers faster than the database, as measured so far); "
                  f"L2 '{NOT_ASKED}': the database answers that query faster. Either way the "
                  "result is kept here: the next read is served on this host again",
                  self.l1_emptied)
        self.step("Timing", f"median of {self.rounds} reads each: database only "
                  "(with_cache(False)), memory hit, L2 hit (this host's copies forgotten "
                  "before each)", self.time_reads)
        totals = {name: sum(step.counters[name] for step in self.steps) for name in SHOWN}
        self.cache.drain()
        return DemoReport(database, _backend(self.db), kv, self.steps, self.timings_ms, totals,
                          self.cache.get_stats().as_dict(),
                          self.cache.settings.resweep_after_ms / 1000,
                          round(time.perf_counter() - started, 2))
