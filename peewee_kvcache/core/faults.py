"""The one path of every degraded cache operation: logged and counted, never raised.

A fault in a level (L1 raising, KV unreachable, a corrupt or forged entry) turns into a miss or a
skipped store, so the caller goes on without the cache. Each one is logged at WARNING on the
``peewee_kvcache`` logger with the exception's type and message (its traceback too when DEBUG is
enabled) and counted in ``get_stats()``.
"""
from __future__ import annotations

import logging
from typing import Callable

from .stats import Counters

log = logging.getLogger("peewee_kvcache")

#: ``report(counter, what, exc)``: a :func:`report` bound to one cache's counters
Report = Callable[[str, str, BaseException], None]


def report(counters: Counters, counter: str, what: str, exc: BaseException) -> None:
    """Count ``exc`` under ``counter`` and log ``what`` failed, and why."""
    counters.incr(counter)
    log.warning("peewee_kvcache: %s (%s: %s)", what, type(exc).__name__, exc,
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
