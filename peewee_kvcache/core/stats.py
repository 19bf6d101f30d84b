"""Counters the cache keeps, and the snapshot ``get_stats()`` returns.

Counters are per process (cheap, lock-protected increments); ``total_keys`` / ``table_keys`` /
``tag_keys`` are read from L2 at snapshot time, so they are right for entries other hosts wrote.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Dict

from . import forksafe

COUNTERS = (
    "hits", "misses", "l1_hits", "l2_hits", "stores", "stores_refused", "uncacheable",
    "bypassed_in_transaction", "invalidations", "l1_errors", "l2_errors", "codec_errors",
    "bad_signatures", "oversized", "l2_skipped_pending", "l2_budget_skipped", "l2_circuit_open",
    "l1_rechecks", "remote_evictions", "stampede_waits", "l2_stale_rejected",
    "l2_puts_dropped_late", "l2_puts_unknown",
)


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


@dataclass(frozen=True)
class CacheStats:
    """What ``get_stats()`` reports; ``as_dict()`` for JSON."""

    total_keys: int
    table_keys: int
    tag_keys: int
    hits: int
    misses: int
    l1_hits: int
    l2_hits: int
    stores: int
    stores_refused: int
    uncacheable: int
    bypassed_in_transaction: int
    invalidations: int
    l1_errors: int
    l2_errors: int
    codec_errors: int
    bad_signatures: int
    oversized: int
    l2_skipped_pending: int
    l2_budget_skipped: int
    l2_circuit_open: int
    l1_rechecks: int
    remote_evictions: int
    stampede_waits: int
    l2_stale_rejected: int
    l2_puts_dropped_late: int
    l2_puts_unknown: int
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
