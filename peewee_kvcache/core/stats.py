"""Counters the cache keeps, and the snapshot ``get_stats()`` returns.

Counters are per process (cheap, lock-protected increments); ``total_keys`` / ``table_keys`` /
``tag_keys`` are read from L2 at snapshot time, so they are right for entries other hosts wrote.
The counter names are the :class:`CacheStats` fields marked as counters: declared once, there.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict

from . import forksafe


def _counter() -> Any:
    """A :class:`CacheStats` field whose value a :class:`Counters` keeps."""
    return field(metadata={"counter": True})


@dataclass(frozen=True)
class CacheStats:
    """What ``get_stats()`` reports; ``as_dict()`` for JSON.

    A hit is served from exactly one level: ``hits == memory_hits + l1_hits + l2_hits``."""

    total_keys: int
    table_keys: int
    tag_keys: int
    hits: int = _counter()
    misses: int = _counter()
    memory_hits: int = _counter()  # served from this process's memory
    l1_hits: int = _counter()  # served from the L1 directory (this host)
    l2_hits: int = _counter()
    stores: int = _counter()
    stores_refused: int = _counter()
    uncacheable: int = _counter()
    raw_sql_reads: int = _counter()  # SELECTs sent as SQL text (execute_sql, Model.raw): uncached
    bypassed_in_transaction: int = _counter()
    invalidations: int = _counter()
    l1_errors: int = _counter()
    l2_errors: int = _counter()
    codec_errors: int = _counter()
    bad_signatures: int = _counter()
    oversized: int = _counter()
    l2_skipped_pending: int = _counter()
    l2_budget_skipped: int = _counter()
    l2_circuit_open: int = _counter()
    l1_rechecks: int = _counter()  # entries older than l1_max_age asked of L2 on the query path
    l1_refreshes: int = _counter()  # entries re-confirmed against L2 in the background
    l1_refreshes_gone: int = _counter()  # ... found gone from L2 (swept elsewhere): not served
    l2_skipped_cost: int = _counter()  # misses sent straight to the DB: L2 would cost more
    l1_skipped_cost: int = _counter()  # memory misses that did not read L1: it would cost more
    remote_evictions: int = _counter()
    stampede_waits: int = _counter()
    l2_stale_rejected: int = _counter()
    l2_puts_dropped_late: int = _counter()
    l2_puts_unknown: int = _counter()
    l1_entries: int = 0
    l1_volume_bytes: int = 0
    pending_l2_work: int = 0
    outbox_jobs: int = 0
    l2_circuit: str = "closed"
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def as_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        data["hit_rate"] = self.hit_rate
        return data


#: the names a :class:`Counters` reports, in :class:`CacheStats` order
COUNTERS = tuple(f.name for f in fields(CacheStats) if f.metadata.get("counter"))


class Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")
        self._values: Counter = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return {name: self._values[name] for name in COUNTERS}

    def reset(self) -> None:
        with self._lock:
            self._values.clear()
