"""Expiry options with Redis' SET semantics (EX / PX / EXAT / PXAT / KEEPTTL), validated up front.

Validation happens when the option is given (``with_cache(ex=...)``), so a typo fails at the call
site with the bad value named, not later inside a cache write that must never raise.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

_EXPIRY_FIELDS = ("ex", "px", "exat", "pxat")


def now_ms() -> int:
    """Wall-clock milliseconds; ``time.time`` so freezegun and diskcache agree on "now"."""
    return int(time.time() * 1000)


_clock_gettime = getattr(time, "clock_gettime", None)  # not on Windows


def real_monotonic() -> float:
    """Seconds on a monotonic clock that test tools leave running. The writer thread measures
    how long a write waited; freezegun freezes ``time.monotonic`` in query threads but serves
    real time near ``threading`` frames, so that clock would differ between the two threads."""
    if _clock_gettime is not None:
        return _clock_gettime(time.CLOCK_MONOTONIC)
    return time.monotonic()


def check_number(name: str, value: Any, *, integer: bool = False, zero_ok: bool = False) -> Any:
    """``value`` if it is a finite int (or float, unless ``integer``) above zero (or at least zero
    with ``zero_ok``); otherwise TypeError / ValueError naming ``name`` and ``value``. Every
    numeric setting is checked here, so a bad one fails where it is given, never later inside a
    cache operation that must not raise."""
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0 \
            or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {kind} {'>=' if zero_ok else '>'} 0 (and finite), "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class CacheConfig:
    """How long one cached result lives.

    At most one of ``ex`` (seconds), ``px`` (milliseconds), ``exat`` (unix seconds) or ``pxat``
    (unix milliseconds); or ``keep_ttl=True`` to keep the remaining lifetime of the live entry being
    overwritten. With none given the cache's default TTL applies: no entry lives forever.
    """

    ex: Optional[int] = None
    px: Optional[int] = None
    exat: Optional[int] = None
    pxat: Optional[int] = None
    keep_ttl: bool = False

    def __post_init__(self) -> None:
        given = [name for name in _EXPIRY_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"only one of ex/px/exat/pxat may be given, got {', '.join(given)}")
        if not isinstance(self.keep_ttl, bool):
            raise TypeError(f"keep_ttl must be a bool, got {self.keep_ttl!r}")
        if self.keep_ttl and given:
            raise ValueError(f"keep_ttl=True cannot be combined with {given[0]}")
        for name in given:
            check_number(name, getattr(self, name), integer=True)
        if self.exat is not None and self.exat * 1000 <= now_ms():
            raise ValueError(f"exat={self.exat} is in the past")
        if self.pxat is not None and self.pxat <= now_ms():
            raise ValueError(f"pxat={self.pxat} is in the past")

    def expires_at_ms(self, now: int, default_ttl_ms: int,
                      existing_expires_at_ms: Optional[int] = None) -> int:
        """Absolute expiry in unix ms for an entry written at ``now`` (ms).

        ``existing_expires_at_ms`` is the expiry of the live entry being overwritten; it only
        matters for ``keep_ttl``, which falls back to the default TTL when there is none.
        """
        if self.ex is not None:
            return now + self.ex * 1000
        if self.px is not None:
            return now + self.px
        if self.exat is not None:
            return self.exat * 1000
        if self.pxat is not None:
            return self.pxat
        if self.keep_ttl and existing_expires_at_ms is not None and existing_expires_at_ms > now:
            return existing_expires_at_ms
        return now + default_ttl_ms


DEFAULT_CONFIG = CacheConfig()
