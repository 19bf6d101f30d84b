"""The cache's settings: every constructor argument checked where it is given, kept in one frozen
object, so a bad value fails at construction with its name, never inside a cache operation."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional, Union

import platformdirs

from ..core.config import check_number
from ..kv.base import KVNamespace

STRATEGIES = ("explicit", "all")
#: ``l1_reads`` / ``l2_reads``: ask a level on every miss, or only where it pays (costs.py)
LEVEL_READS = ("auto", "always")


def default_directory(kind: str) -> str:
    """Per-user cache directory, so the one-line swap needs no path."""
    return os.path.join(platformdirs.user_cache_dir("peewee_kvcache"), kind)


@dataclass(frozen=True)
class CacheSettings:
    """``CloudflareKVCache``'s keyword arguments, validated (durations in seconds, as given; the
    ``*_ms`` properties convert). :meth:`resolved` fills in the defaults that depend on the
    namespace and the user's cache directory."""

    l1_directory: Optional[str]
    strategy: str
    default_ttl: int
    prefix: str
    secret: Optional[bytes] = field(repr=False)
    l1_size_limit: int
    breaker_fail_max: int
    breaker_reset_timeout: float
    propagation_delay: Optional[float]
    outbox_lease: float
    l1_max_age: Optional[float]
    stampede_wait: float
    max_put_delay: float
    clock_skew: float
    memory_entries: int
    exit_timeout: float
    l2_reads: str = "auto"
    l1_reads: str = "auto"

    @classmethod
    def check(cls, *, l1_directory: Union[str, "os.PathLike[str]", None],
              secret: Union[str, bytes, None], **values: object) -> "CacheSettings":
        """Settings from the constructor's keyword arguments, or TypeError / ValueError naming
        the first bad one."""
        if l1_directory is not None and not isinstance(l1_directory, (str, os.PathLike)):
            raise TypeError(f"l1_directory must be a path or None, got {l1_directory!r}")
        if l1_directory is not None and not os.fspath(l1_directory):
            raise ValueError(f"l1_directory must not be empty, got {l1_directory!r}")
        if secret is not None and not isinstance(secret, (str, bytes)):
            raise TypeError(f"secret must be str or bytes, got {type(secret).__name__}")
        if secret is not None and not secret:
            raise ValueError("secret must not be empty (an empty key signs nothing)")
        return cls(l1_directory=None if l1_directory is None else os.fspath(l1_directory),
                   secret=secret.encode() if isinstance(secret, str) else secret,
                   **values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("l1_reads", "l2_reads"):
            if getattr(self, name) not in LEVEL_READS:
                raise ValueError(f"{name} must be one of {LEVEL_READS}, got "
                                 f"{getattr(self, name)!r}")
        check_number("default_ttl", self.default_ttl, integer=True)
        prefix = self.prefix
        if not isinstance(prefix, str) or not prefix or len(prefix.encode()) > 64:
            raise ValueError(f"prefix must be a non-empty str of at most 64 bytes, got {prefix!r}")
        for name in ("l1_max_age", "propagation_delay"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), zero_ok=name == "propagation_delay")
        for name in ("l1_size_limit", "breaker_fail_max", "memory_entries"):
            check_number(name, getattr(self, name), integer=True,
                         zero_ok=name == "memory_entries")
        for name in ("breaker_reset_timeout", "outbox_lease", "max_put_delay"):
            check_number(name, getattr(self, name))
        for name in ("stampede_wait", "clock_skew", "exit_timeout"):
            check_number(name, getattr(self, name), zero_ok=True)

    def resolved(self, namespace: KVNamespace) -> "CacheSettings":
        """These settings with the L1 directory and propagation delay defaults filled in."""
        return replace(
            self, l1_directory=self.l1_directory or default_directory("l1"),
            propagation_delay=(namespace.propagation_delay if self.propagation_delay is None
                               else self.propagation_delay))

    @property
    def default_ttl_ms(self) -> int:
        return self.default_ttl * 1000

    @property
    def l1_max_age_ms(self) -> Optional[int]:
        return None if self.l1_max_age is None else int(self.l1_max_age * 1000)

    @property
    def outbox_lease_ms(self) -> int:
        return int(self.outbox_lease * 1000)

    @property
    def max_put_delay_ms(self) -> int:
        return int(self.max_put_delay * 1000)

    @property
    def clock_skew_ms(self) -> int:
        return int(self.clock_skew * 1000)

    @property
    def resweep_after_ms(self) -> int:
        """From a write to its late re-sweep: ``propagation_delay + max_put_delay``."""
        return int((self.propagation_delay or 0) * 1000) + self.max_put_delay_ms
