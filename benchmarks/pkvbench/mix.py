"""The workload benchmark's operations: what one host of an application does, drawn from a seeded
random source, so every variant (no cache, embedded L2, REST L2 at each distance) replays exactly
the same sequence and the ideal cache can be computed from it.

The mix, as fractions of operations: point lookups of an item by id; batch lookups of items (an
IN list whose length is drawn per operation, so new SQL texts keep appearing, as they do in
applications); a 10-row join+aggregate (author ⋈ book ⋈ review); a heavy aggregate over 600
authors' reviews; autocommit UPDATEs of one row (of ``item`` or ``review``, which hot queries
read, or of a page-view counter no query reads). Every key is drawn with Zipf-like popularity
(rank r weighs 1/r^s), the same ranks on every host: popular keys are popular everywhere.
"""
from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

import peewee

from peewee_kvcache import with_cache

from .workload import (BOOKS_PER_AUTHOR, N_AUTHORS, N_ITEMS, REVIEWS_PER_BOOK, TTL, Author, Book,
                       Item, PageView, Review, join_query)

READ_KINDS = ("point", "batch", "join", "heavy")
KINDS = READ_KINDS + ("write",)
#: the tables each read depends on: a write to one of them invalidates it
READS: Dict[str, Tuple[str, ...]] = {"point": ("item",), "batch": ("item",),
                                     "join": ("author", "book", "review"),
                                     "heavy": ("author", "book", "review")}
JOIN_ROWS = 10  # authors per join+aggregate, one block of the Zipf ranking
HEAVY_AUTHORS = 600  # authors per heavy aggregate (5,400 reviews)
HEAVY_VARIANTS = 8  # distinct heavy aggregates (overlapping author windows)
HEAVY_STEP = 25  # authors between two windows' starts
N_REVIEWS = N_AUTHORS * BOOKS_PER_AUTHOR * REVIEWS_PER_BOOK


@dataclass(frozen=True)
class Mix:
    """Fractions of each kind of operation (they sum to 1), the Zipf exponent, the range of
    batch lengths, and where writes go (table, fraction of writes)."""

    point: float = 0.50
    batch: float = 0.05
    join: float = 0.30
    heavy: float = 0.10
    write: float = 0.05
    zipf_s: float = 1.1
    batch_lengths: Tuple[int, int] = (2, 40)
    write_targets: Tuple[Tuple[str, float], ...] = (("item", 0.3), ("review", 0.2),
                                                    ("pageview", 0.5))

    def __post_init__(self) -> None:
        fractions = [getattr(self, kind) for kind in KINDS]
        if min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"Mix fractions must be >= 0 and sum to 1, got {fractions}")
        if abs(sum(share for _, share in self.write_targets) - 1) > 1e-9:
            raise ValueError(f"Mix write_targets must sum to 1, got {self.write_targets}")


@dataclass(frozen=True)
class Op:
    """One operation. ``args``: point (id,), batch (ids...), join (first author id,), heavy
    (first author id,), write (row id, new value). ``target``: the table a write changes."""

    kind: str
    args: Tuple[int, ...]
    target: str = ""

    @property
    def key(self) -> Tuple[str, Tuple[int, ...]]:
        """What identifies a read's result (a cache keyed on SQL + parameters sees the same)."""
        return self.kind, self.args

    @property
    def reads(self) -> Tuple[str, ...]:
        return READS.get(self.kind, ())


def pick(cumulative: List[float], rng: random.Random) -> int:
    """An index drawn with the weights whose running sums are ``cumulative``."""
    point = rng.random() * cumulative[-1]
    return min(bisect.bisect_right(cumulative, point), len(cumulative) - 1)


class Zipf:
    """Ranks 1..n, rank r drawn with weight 1/r^s."""

    def __init__(self, n: int, s: float) -> None:
        self._cumulative = list(itertools.accumulate(1.0 / rank ** s for rank in range(1, n + 1)))

    def draw(self, rng: random.Random) -> int:
        return pick(self._cumulative, rng) + 1


def sequence(seed: int, n: int, mix: Mix = Mix()) -> List[Op]:
    """``n`` operations drawn from ``mix`` with ``random.Random(seed)``: the same every time."""
    rng = random.Random(seed)
    items, reviews = Zipf(N_ITEMS, mix.zipf_s), Zipf(N_REVIEWS, mix.zipf_s)
    blocks = Zipf(N_AUTHORS // JOIN_ROWS, mix.zipf_s)
    windows = Zipf(HEAVY_VARIANTS, mix.zipf_s)
    kinds = list(itertools.accumulate(getattr(mix, kind) for kind in KINDS))
    targets = list(itertools.accumulate(share for _, share in mix.write_targets))

    def batch() -> Tuple[int, ...]:
        length = rng.randint(*mix.batch_lengths)
        ids: Set[int] = set()
        while len(ids) < length:
            ids.add(items.draw(rng))
        return tuple(sorted(ids))

    def write() -> Op:
        target = mix.write_targets[pick(targets, rng)][0]
        row = {"item": items, "review": reviews}.get(target)
        return Op("write", (row.draw(rng) if row else 1, rng.randint(1, 5)), target)

    draw = {"point": lambda: Op("point", (items.draw(rng),)),
            "batch": lambda: Op("batch", batch()),
            "join": lambda: Op("join", (1 + JOIN_ROWS * (blocks.draw(rng) - 1),)),
            "heavy": lambda: Op("heavy", (1 + HEAVY_STEP * (windows.draw(rng) - 1),)),
            "write": write}
    return [draw[KINDS[pick(kinds, rng)]]() for _ in range(n)]


#: a host's warm-up, outside every sequence: a read (no sequence reads the page-view table) and
#: a write of the page-view counter
WARM_UP = (Op("pageview", (1,)), Op("write", (1, 1), "pageview"))


def heavy_query(lo: int) -> peewee.ModelSelect:
    """The 20 best-rated of ``HEAVY_AUTHORS`` authors: 5,400 reviews joined and aggregated."""
    average = peewee.fn.AVG(Review.stars)
    return (Author.select(Author.id, Author.name, peewee.fn.COUNT(Review.id).alias("n_reviews"),
                          average.alias("stars"))
            .join(Book).join(Review)
            .where(Author.id.between(lo, lo + HEAVY_AUTHORS - 1))
            .group_by(Author.id, Author.name).order_by(average.desc(), Author.id).limit(20))


def query(op: Op) -> peewee.Query:
    """The Peewee query of ``op``, on the models' bound database."""
    first = op.args[0]
    if op.kind == "point":
        return Item.select().where(Item.id == first)
    if op.kind == "batch":
        return Item.select().where(Item.id.in_(list(op.args)))
    if op.kind == "join":
        return join_query(first, first + JOIN_ROWS - 1)
    if op.kind == "heavy":
        return heavy_query(first)
    if op.kind == "pageview":
        return PageView.select().where(PageView.id == first)
    if op.target == "item":
        return Item.update(stock=Item.stock + 1).where(Item.id == first)
    if op.target == "review":
        return Review.update(stars=op.args[1]).where(Review.id == first)
    return PageView.update(views=PageView.views + 1).where(PageView.id == 1)


def execute(op: Op, cached: bool) -> object:
    """Run ``op`` as an application would: a read through ``with_cache`` when ``cached``, its
    rows materialised; a write executed (autocommit)."""
    built = query(op)
    if op.kind == "write":
        return built.execute()
    return list(with_cache(built, ex=TTL) if cached else built)
