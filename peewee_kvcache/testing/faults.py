"""Fault injection: the misbehaviours a KVServer can act out, and the queue they wait in."""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, List, Optional, Tuple

from .routes import ENDPOINTS

FAULT_KINDS = ("latency", "status", "rate_limit", "timeout", "drop", "malformed")


@dataclasses.dataclass
class Fault:
    """A misbehaviour to inject; ``endpoint`` None hits every endpoint, ``times`` None never ends.

    latency: sleep ``delay``, then serve. status: answer ``status`` with an error envelope.
    rate_limit: 429, code 971, ``Retry-After: retry_after``. timeout: sleep ``delay`` without
    answering, then close. drop: close without a response. malformed: 200 with the body cut in
    half (JSON that does not parse; for ``get`` a value shorter than its Content-Length).
    """

    kind: str
    endpoint: Optional[str] = None
    times: Optional[int] = None
    status: int = 500
    delay: float = 0.0
    retry_after: int = 1

    def __post_init__(self) -> None:
        def whole(value: Any, low: int, high: int) -> bool:
            return type(value) is int and low <= value <= high

        problems = [
            (self.kind not in FAULT_KINDS, f"kind must be one of {FAULT_KINDS}"),
            (self.endpoint not in (None, *ENDPOINTS), f"endpoint must be None or in {ENDPOINTS}"),
            (self.times is not None and not whole(self.times, 1, 10**9), "times must be >= 1"),
            (not whole(self.status, 400, 599), "status must be an HTTP error status"),
            (type(self.delay) not in (int, float) or not 0 <= self.delay <= 3600,
             "delay must be 0-3600 seconds"),
            (not whole(self.retry_after, 0, 86400), "retry_after must be 0-86400 seconds"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(f"Fault {message}")

    @property
    def sleeps(self) -> bool:
        """Whether the request waits ``delay`` first."""
        return self.kind in ("latency", "timeout")

    @property
    def serves(self) -> bool:
        """Whether the request then runs (its answer cut short for ``malformed``)."""
        return self.kind in ("latency", "malformed")

    def cut(self, endpoint: Optional[str], body: bytes) -> Tuple[bytes, int]:
        """A malformed answer: half of ``body`` and the Content-Length to declare. For ``get``
        that is more than is sent (the connection then closes), else a complete response whose
        JSON stops halfway."""
        half = body[:len(body) // 2]
        return half, len(body) + 1 if endpoint == "get" else len(half)


class FaultQueue:
    """Injected faults, oldest first, shared by the server's request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: List[Fault] = []

    def add(self, fault: Fault) -> None:
        """Add a copy of ``fault`` (its ``times`` counts down here)."""
        if not isinstance(fault, Fault):
            raise TypeError("inject() takes a Fault")
        with self._lock:
            self._faults.append(dataclasses.replace(fault))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, endpoint: str) -> Optional[Fault]:
        """The oldest fault matching this request, if any, spending one of its ``times``."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in (None, endpoint):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None
