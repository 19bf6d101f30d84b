"""The cache's only way to L2: circuit breakers, the request budget and fault handling.

L2 is an optimisation, so nothing here raises: a call that fails is logged and counted (through
the one fault path) and answered as "nothing", and the caller goes on as if L2 were empty.

Two breakers, each counting only its own calls: a successful background write says nothing about
whether a read answers within the query path's short timeout, and reads failing must not hold
back the sweeps other hosts' freshness depends on. A refusal of our own request (a 4xx other than
429) or of the request budget says nothing about KV's health: breakers ignore it.

Optional requests (query-path reads, re-checks, entry writes) are sent only while the request
budget has more than its reserve left (:meth:`RequestBudget.spare`): the invalidation sweeps,
which other hosts' freshness depends on, can always be paid for.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from ..core.faults import Report
from ..core.stats import Counters
from ..kv.base import BudgetExhausted, KeyInfo, KVError, KVNamespace, KVOutcomeUnknown, KVPair
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
        return self.timed_read(what, key)[0]

    def timed_read(self, what: str, key: str) -> Tuple[Optional[bytes], Optional[float]]:
        """:meth:`read`, plus how long KV took (ms; a fault's time too), or None when nothing
        was sent (circuit open, budget spent or kept for sweeps): what a read costs."""
        started = time.perf_counter()
        sent, value = self._guarded(self._read_breaker, what, self._namespace.get, key,
                                    optional=True)
        return value, None if sent is None else (time.perf_counter() - started) * 1000

    def metadata(self, what: str, keys: Sequence[str]
                 ) -> Optional[Dict[str, Optional[Mapping[str, Any]]]]:
        """Which of ``keys`` exist, with their metadata (a batched re-check, off the query
        path); None on a fault or when not sent."""
        return self._guarded(self._breaker, what, self._namespace.bulk_metadata, keys,
                             optional=True)[1]

    def call(self, what: str, call: Callable[..., T], *args: Any) -> Tuple[Optional[bool],
                                                                             Optional[T]]:
        """One L2 call of background work or an operation, through the other breaker: (True,
        its result), (False, None) after logging and counting the fault as ``what``, or
        (None, None) when it was not sent (counted: circuit open, budget spent)."""
        return self._guarded(self._breaker, what, call, *args)

    def _guarded(self, breaker: CircuitBreaker, what: str, call: Callable[..., T], *args: Any,
                 optional: bool = False) -> Tuple[Optional[bool], Optional[T]]:
        budget = self._namespace.budget
        if optional and budget is not None and not budget.spare():
            self._counters.incr("l2_budget_skipped")
            return None, None
        try:
            return True, breaker.call(call, *args)
        except BudgetExhausted:
            self._counters.incr("l2_budget_skipped")
        except CircuitOpenError:
            self._counters.incr("l2_circuit_open")
        except L2_FAULTS as exc:
            self._fault("l2_errors", what, exc)
            return False, None
        return None, None

    def put(self, pairs: Sequence[KVPair], unknown: Callable[[], None]) -> bool:
        """Bulk-write ``pairs``; False when the call failed. A write whose outcome is unknown (it
        may still land, late) calls ``unknown()`` first; keys KV refused are a fault."""
        ok, left = self._guarded(self._breaker, "L2 bulk write failed", self._bulk_put, pairs,
                                 unknown, optional=True)
        if ok and left:
            self._partial("L2 bulk write", left)
        return bool(ok)

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
        return bool(ok) and not left

    def sweep(self, boundaries: Mapping[str, int]) -> bool:
        """Invalidate each name's L2 keys of results computed up to its boundary (unix ms), in
        one namespace call; True when KV deleted them all. (The fault is named after the
        listing, the part that fails first.)"""
        ok, left = self.call("L2 invalidation listing failed", self.keyspace.sweep, boundaries)
        if ok and left:
            self._partial("L2 invalidation sweep", left)
        return bool(ok) and not left

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
