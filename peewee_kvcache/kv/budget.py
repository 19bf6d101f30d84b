"""RequestBudget: the client-side token bucket that keeps a Cloudflare API token under its limit.

Cloudflare allows 1,200 REST requests per 5 minutes per token and locks the token out for 5
minutes past that, so requests are paid for here before they are sent.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

from ..core import forksafe
from ..core.config import check_number


class RequestBudget:
    """Thread-safe token bucket that never lets more than ``capacity`` requests through in any
    window of ``period`` seconds (Cloudflare locks a token out for 5 minutes past 1,200 / 5 min).

    The bucket holds at most ``burst`` tokens (default a sixth of ``capacity``) and refills at
    ``(capacity - burst) / period`` per second, so a full bucket plus a whole period of refill is
    exactly ``capacity``. Share one instance between namespaces that use the same API token.

    ``reserve`` tokens (default a quarter of ``burst``) are kept for work that must happen: a
    cache asks :meth:`spare` before optional requests (reads, re-checks, entry writes), so they
    can never starve the invalidation sweeps other hosts' freshness depends on.
    """

    def __init__(self, capacity: float = 1200, period: float = 300.0,
                 burst: Optional[float] = None, reserve: Optional[float] = None) -> None:
        check_number("capacity", capacity)
        check_number("period", period)
        burst = capacity / 6 if burst is None else check_number("burst", burst)
        if not 1 <= burst <= capacity:
            raise ValueError(f"burst must be between 1 and capacity={capacity!r}, got {burst!r}")
        reserve = burst / 4 if reserve is None else check_number("reserve", reserve,
                                                                   zero_ok=True)
        if reserve >= burst:
            raise ValueError(f"reserve must be below burst={burst!r}, got {reserve!r}")
        self.capacity = float(capacity)
        self.period = float(period)
        self.burst = float(burst)
        self.reserve = float(reserve)
        self._rate = (self.capacity - self.burst) / self.period
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")

    def __repr__(self) -> str:
        return (f"RequestBudget({self.capacity:g}, {self.period:g}, burst={self.burst:g}, "
                f"reserve={self.reserve:g})")

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if all are available; never blocks."""
        with self._lock:
            self._refill()
            if self._tokens < n:
                return False
            self._tokens -= n
            return True

    def spare(self, n: int = 1) -> bool:
        """Whether ``n`` optional requests leave the reserve untouched (nothing is taken)."""
        return self.remaining() - n >= self.reserve

    def remaining(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens
