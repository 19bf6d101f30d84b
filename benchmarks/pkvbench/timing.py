"""Round-robin timing: every variant of a cell runs once per round, in a rotating order, so all of
them share the machine's conditions (CPU frequency, background threads, PostgreSQL's caches)
instead of each getting its own quiet or noisy minute."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence


def _nothing() -> None:
    """Default for untimed hooks."""


@dataclass
class Variant:
    """One way of answering the cell's query. Only ``op`` is timed; ``before`` and ``after`` set
    up and check the state it needs (empty L1, fresh key, drained background writes)."""

    name: str
    op: Callable[[], object]
    before: Callable[[], None] = _nothing
    after: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Budget:
    """How long to measure one cell: at least ``min_rounds``, then until ``seconds`` passed."""

    seconds: float
    min_rounds: int
    max_rounds: int
    warmup_rounds: int


@dataclass
class Series:
    """Per-operation latencies of one variant, in microseconds."""

    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def time_once(variant: Variant) -> float:
    """One operation, in microseconds, hooks excluded."""
    variant.before()
    start = time.perf_counter_ns()
    variant.op()
    elapsed = time.perf_counter_ns() - start
    variant.after()
    return elapsed / 1000.0


def _rotated(variants: Sequence[Variant], shift: int) -> List[Variant]:
    """The round's order: a rotation, so no variant always follows the same neighbour."""
    shift %= len(variants)
    return list(variants[shift:]) + list(variants[:shift])


def measure(variants: Sequence[Variant], budget: Budget) -> Dict[str, Series]:
    """Warm every variant up, then time them round-robin within ``budget``."""
    for _ in range(budget.warmup_rounds):
        for variant in variants:
            time_once(variant)
    series = {variant.name: Series() for variant in variants}
    deadline = time.monotonic() + budget.seconds
    rounds = 0
    while rounds < budget.max_rounds and (rounds < budget.min_rounds
                                          or time.monotonic() < deadline):
        for variant in _rotated(variants, rounds):
            series[variant.name].samples.append(time_once(variant))
        rounds += 1
    return series
