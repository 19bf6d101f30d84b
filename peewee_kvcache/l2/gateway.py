"""The cache's only way to L2: circuit breakers, the request budget and fault handling.

L2 is an optimisation, so nothing here raises: a call that fails is logged and counted (through
the one fault path) and answered as "nothing", and the caller goes on as if L2 were empty.

Two breakers, each counting only its own calls: a successful background write says nothing about
whether a read answers within the query path's short timeout, and reads failing must not hold
back the sweeps other hosts' freshness depends on. A refusal of our own request (a 4xx other than
429) or of the request budget says nothing about KV's health: breakers ignore it.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from ..core.faults import Report
from ..core.stats import Counters
from ..kv.base import KeyInfo, KVError, KVNamespace, KVOutcomeUnknown, KVPair
from ..kv.cloudflare import BudgetExhausted
from .breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpenError
from .keyspace import KeySpace
from .layout import KeyCounts, KeyLayout

T = TypeVar("T")

#: what a namespace raises when KV fails (backends wrap their transport's errors in KVError)
L2_FAULTS = (KVError, OSError)


def not_a_kv_fault(exc: BaseException) -> bool:
    """Exceptions the circuit breakers ignore: our own request refused (4xx but 429) or the
    budget guard, which say nothing about KV's health."""
    if isinstance(exc, BudgetExhausted):
        return True
    return (isinstance(exc, KVError) and exc.status is not None and 400 <= exc.status < 500
            and exc.status != 429)


class L2Gateway:
    """Guarded calls to one cache's keys in ``namespace`` (see the module docstring)."""

    def __init__(self, namespace: KVNamespace, prefix: str, *, fail_max: int,
                 reset_timeout: float, counters: Counters, fault: Report):
        self.layout = KeyLayout(prefix)
        self.keyspace = KeySpace(namespace, self.layout)
        self._namespace = namespace
        self._counters = counters
        self._fault = fault
        self._read_breaker = CircuitBreaker(fail_max, reset_timeout, not_a_kv_fault)
        self._breaker = CircuitBreaker(fail_max, reset_timeout, not_a_kv_fault)

    @property
    def circuit(self) -> str:
        """The worse of the two breakers' states."""
        states = (self._read_breaker.state, self._breaker.state)
        return next(state for state in (OPEN, HALF_OPEN, CLOSED) if state in states)

    def read(self, what: str, key: str) -> Optional[bytes]:
        """A query-path GET through the read breaker; None when missing or on a fault."""
        return self._guarded(self._read_breaker, what, self._namespace.get, key)[1]

    def call(self, what: str, call: Callable[..., T], *args: Any) -> Tuple[bool, Optional[T]]:
        """One L2 call of background work or an operation, through the other breaker: (True,
        its result), or (False, None) after logging and counting the fault as ``what``."""
        return self._guarded(self._breaker, what, call, *args)

    def _guarded(self, breaker: CircuitBreaker, what: str, call: Callable[..., T],
                 *args: Any) -> Tuple[bool, Optional[T]]:
        try:
            return True, breaker.call(call, *args)
        except BudgetExhausted:
            self._counters.incr("l2_budget_skipped")
        except CircuitOpenError:
            self._counters.incr("l2_circuit_open")
        except L2_FAULTS as exc:
            self._fault("l2_errors", what, exc)
        return False, None

    def put(self, pairs: Sequence[KVPair], unknown: Callable[[], None]) -> bool:
        """Bulk-write ``pairs``; False when the call failed. A write whose outcome is unknown (it
        may still land, late) calls ``unknown()`` first; keys KV refused are a fault."""
        ok, left = self.call("L2 bulk write failed", self._bulk_put, pairs, unknown)
        if ok and left:
            self._partial("L2 bulk write", left)
        return ok

    def _bulk_put(self, pairs: Sequence[KVPair], unknown: Callable[[], None]) -> List[str]:
        try:
            return self._namespace.bulk_put(pairs)
        except KVOutcomeUnknown:
            unknown()
            raise

    def delete(self, keys: Sequence[str]) -> bool:
        """Bulk-delete ``keys``; True when KV accepted them all."""
        ok, left = self.call("L2 bulk delete failed", self.keyspace.delete, keys)
        if ok and left:
            self._partial("L2 bulk delete", left)
        return ok and not left

    def _partial(self, what: str, left: Sequence[str]) -> None:
        """Some keys of a bulk call KV did not take (the call itself went through)."""
        self._fault("l2_errors", f"{what} left {len(left)} keys",
                    KVError(f"KV refused {left[0]!r} and {len(left) - 1} more"))

    def listing(self, what: str) -> Optional[List[KeyInfo]]:
        """Every key of this cache, or None when L2 can't be listed."""
        return self.call(what, self.keyspace.keys)[1]

    def counts(self) -> Optional[KeyCounts]:
        """Key counts of this cache (see :meth:`KeyLayout.count`), or None on a fault."""
        infos = self.listing("L2 listing for stats failed")
        return None if infos is None else self.layout.count(infos)
