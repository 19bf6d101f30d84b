"""A circuit breaker that never serialises the calls it guards.

pybreaker holds its lock for the whole guarded call, so a query's KV read would
wait behind the background writer's slow bulk request. Here the lock only covers the state
change; the call runs outside it.

closed --(fail_max consecutive failures)--> open --(reset_timeout)--> half-open: one probe call
goes through (others are refused meanwhile); its success closes the circuit, its failure re-opens
it for another reset_timeout.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

from ..core import forksafe
from ..core.config import check_number

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitOpenError(Exception):
    """Refused without calling: the guarded service failed recently."""


class CircuitBreaker:
    """``ignore(exc)`` True means the exception says nothing about the service's health."""

    def __init__(self, fail_max: int = 5, reset_timeout: float = 5.0,
                 ignore: Callable[[BaseException], bool] = lambda exc: False):
        self.fail_max = check_number("fail_max", fail_max, integer=True)
        self.reset_timeout = float(check_number("reset_timeout", reset_timeout))
        self._ignore = ignore
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and time.monotonic() - self._opened_at >= self.reset_timeout:
                return HALF_OPEN
            return self._state

    def call(self, func: Callable[..., T], *args: Any) -> T:
        probe = self._admit()
        try:
            result = func(*args)
        except BaseException as exc:
            self._record("ignored" if self._ignore(exc) else "failure", probe)
            raise
        self._record("success", probe)
        return result

    def _admit(self) -> bool:
        """Let a call through (True if it is the half-open probe) or raise CircuitOpenError."""
        with self._lock:
            if self._state == CLOSED:
                return False
            if time.monotonic() - self._opened_at < self.reset_timeout or self._probing:
                raise CircuitOpenError("circuit open: the service failed recently")
            self._probing = True
            return True

    def _record(self, outcome: str, probe: bool) -> None:
        with self._lock:
            if probe:
                self._probing = False
            if outcome == "ignored":
                return
            if outcome == "success":
                if probe or self._state == CLOSED:
                    self._state, self._failures = CLOSED, 0
                return
            self._failures += 1
            if probe or self._failures >= self.fail_max:
                self._state, self._opened_at = OPEN, time.monotonic()
