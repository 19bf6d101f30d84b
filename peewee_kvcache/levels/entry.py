"""A result as a level of this host holds it, with the stamp that says whether it is still valid.

The process memory and the L1 directory check an entry the same way (its tokens, expiry and
``l1_max_age``), so they hold one type: L1 keeps the encoded bytes, memory the decoded result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Tuple, TypeVar

V = TypeVar("V")
W = TypeVar("W")


@dataclass(frozen=True)
class Entry(Generic[V]):
    """``value`` stamped with the tokens of ``names`` it was computed under, its absolute expiry
    (unix ms), and when it was last known to match L2 (unix ms; see ``l1_max_age``)."""

    names: Tuple[str, ...]
    tokens: Tuple[int, ...]
    expires_at_ms: int
    checked_at_ms: int
    value: V

    def holding(self, value: W) -> "Entry[W]":
        """The same stamp on another value (an encoded entry's decoded result)."""
        return Entry(self.names, self.tokens, self.expires_at_ms, self.checked_at_ms, value)
