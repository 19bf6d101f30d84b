"""What a KVServer counts and limits about the requests it receives."""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Deque, Dict, Optional, Tuple

from .routes import ENDPOINTS


class EndpointCounts:
    """Requests received per endpoint, whatever their outcome (faulted and refused too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(ENDPOINTS, 0)

    def add(self, endpoint: str) -> None:
        with self._lock:
            self._counts[endpoint] += 1

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(ENDPOINTS, 0)


class RateLimit:
    """At most ``requests`` per ``per_seconds`` in a sliding window, as Cloudflare counts them;
    None lets everything through."""

    def __init__(self, limit: Optional[Tuple[int, float]]) -> None:
        if limit is not None and (int(limit[0]) < 1 or float(limit[1]) <= 0):
            raise ValueError("rate_limit must be (requests >= 1, per_seconds > 0)")
        self.limit = limit
        self._lock = threading.Lock()
        self._window: Deque[float] = deque()

    def admit(self) -> Optional[int]:
        """None if the request fits (and is charged), else the Retry-After seconds to answer."""
        if self.limit is None:
            return None
        allowed, per = int(self.limit[0]), float(self.limit[1])
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0] <= now - per:
                self._window.popleft()
            if len(self._window) >= allowed:
                return max(1, math.ceil(self._window[0] + per - now))
            self._window.append(now)
        return None

    def clear(self) -> None:
        with self._lock:
            self._window.clear()
