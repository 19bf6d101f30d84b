"""The rule of an invalidation sweep: which listed keys it deletes.

It lives in the kv layer, once, because two places apply it: :meth:`KVNamespace.sweep`'s default
(list, then bulk-delete from Python) and the KV gateway Worker, which lists and deletes
server-side (``worker/src/sweep.js`` implements the same rule; the contract tests run both).

A listed key is deleted when its metadata ``c`` (unix ms when its query started) is missing or
at most the sweep's boundary for that prefix: a result computed later saw the write and is fresh.
With it goes the key its metadata ``e`` names (a marker points at its entry, stored under another
prefix), but only inside ``scope``, so metadata can never make a sweep delete another cache's keys.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Protocol


class Listed(Protocol):
    """A listed key (``KeyInfo`` is one), as far as the rule needs it."""

    @property
    def name(self) -> str: ...

    @property
    def metadata(self) -> Optional[Mapping[str, Any]]: ...


def created_ms(metadata: Optional[Mapping[str, Any]]) -> Optional[int]:
    """When the query of an entry or marker started (unix ms), from its metadata; None if
    unknown."""
    created = metadata.get("c") if isinstance(metadata, Mapping) else None
    return created if isinstance(created, int) and not isinstance(created, bool) else None


def target_of(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The entry key a marker's metadata points at; None for an entry itself."""
    target = metadata.get("e") if isinstance(metadata, Mapping) else None
    return target if isinstance(target, str) else None


def doomed_keys(listed: Iterable[Listed], before_ms: int, scope: str) -> List[str]:
    """The keys a sweep with boundary ``before_ms`` deletes among ``listed`` (the rule above),
    in listing order, a marker's target right after it."""
    keys: List[str] = []
    for info in listed:
        created = created_ms(info.metadata)
        if created is not None and created > before_ms:
            continue
        keys.append(info.name)
        target = target_of(info.metadata)
        if target is not None and target.startswith(scope):
            keys.append(target)
    return keys
