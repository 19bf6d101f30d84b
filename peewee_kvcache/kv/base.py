"""The namespace interface both L2 backends implement (embedded file store and Cloudflare REST).

It mirrors Cloudflare Workers KV's own operations so the cache code is written once against KV's
real semantics (absolute expirations, metadata, prefix listing with cursors, bulk calls).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

from .budget import RequestBudget
from .sweep import doomed_keys


class KVError(Exception):
    """A namespace operation failed; ``code`` is Cloudflare's error code where one applies."""

    def __init__(self, message: str, code: Optional[int] = None, status: Optional[int] = None):
        super().__init__(message)
        self.code = code
        self.status = status


class KVOutcomeUnknown(KVError):
    """A write was sent but its answer never came (or was a server error): it may have been
    applied, or may still be applied later. The caller must assume it lands late."""


class BudgetExhausted(KVError):
    """The client-side request budget is spent; nothing was sent, so the caller should skip L2
    for now. Defined here, beside the other outcomes, so callers need not import a backend."""


@dataclass(frozen=True)
class KVPair:
    """One value to write; ``expiration`` is absolute unix seconds, ``expiration_ttl`` relative."""

    key: str
    value: bytes
    expiration: Optional[int] = None
    expiration_ttl: Optional[int] = None
    metadata: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class KeyInfo:
    """A listed key, as KV's ``list`` returns it."""

    name: str
    expiration: Optional[int] = None
    metadata: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class ListPage:
    """One page of a prefix listing; ``cursor`` is empty/None on the last page."""

    keys: List[KeyInfo] = field(default_factory=list)
    cursor: Optional[str] = None


@dataclass(frozen=True)
class ValueWithMetadata:
    value: bytes
    metadata: Optional[Mapping[str, Any]] = None
    expiration: Optional[int] = None


class KVNamespace(abc.ABC):
    """Operations of one Workers KV namespace. Keys are str, values bytes."""

    #: seconds until a write is visible everywhere (and in ``list``): 0 for a local store
    propagation_delay: float = 0.0

    @abc.abstractmethod
    def get(self, key: str) -> Optional[bytes]:
        """The value, or None when the key is missing or expired."""

    @abc.abstractmethod
    def get_with_metadata(self, key: str) -> Optional[ValueWithMetadata]:
        """Value plus metadata and expiration, or None when missing."""

    @abc.abstractmethod
    def put(self, key: str, value: bytes, *, expiration: Optional[int] = None,
            expiration_ttl: Optional[int] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> None:
        """Write one value (replacing value, expiry and metadata together)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""

    @abc.abstractmethod
    def bulk_put(self, pairs: Sequence[KVPair]) -> List[str]:
        """Write many pairs (chunked to KV's bulk limit); returns the keys that were NOT written."""

    @abc.abstractmethod
    def bulk_delete(self, keys: Sequence[str]) -> List[str]:
        """Delete many keys (chunked to KV's bulk limit); returns the keys that were NOT deleted."""

    @abc.abstractmethod
    def bulk_get(self, keys: Sequence[str]) -> Dict[str, Optional[bytes]]:
        """Read many keys; missing ones map to None."""

    def bulk_metadata(self, keys: Sequence[str]) -> Dict[str, Optional[Mapping[str, Any]]]:
        """Which of ``keys`` exist, each with its metadata (``{}`` when it has none; None when
        missing): many entries re-checked in as few requests as the backend allows. This
        default asks key by key; backends with a bulk read override it."""
        found: Dict[str, Optional[Mapping[str, Any]]] = {}
        for key in keys:
            value = self.get_with_metadata(key)
            found[key] = None if value is None else dict(value.metadata or {})
        return found

    @property
    def budget(self) -> Optional[RequestBudget]:
        """The request budget calls are paid from; None: unlimited (a local store)."""
        return None

    @abc.abstractmethod
    def list(self, prefix: str = "", limit: int = 1000, cursor: Optional[str] = None) -> ListPage:
        """One page of keys starting with ``prefix``, in lexicographic order."""

    def list_all(self, prefix: str = "", limit: int = 1000) -> Iterator[KeyInfo]:
        """Every key under ``prefix``, following cursors until the last page."""
        cursor: Optional[str] = None
        while True:
            page = self.list(prefix, limit=limit, cursor=cursor)
            yield from page.keys
            if not page.cursor:
                return
            cursor = page.cursor

    def sweep(self, prefixes: Mapping[str, int], *, scope: str) -> List[str]:
        """Invalidate: delete, under each prefix, the keys of results computed up to its
        boundary (unix ms) and the entries their markers point at within ``scope`` (the rule of
        :mod:`.sweep`); returns the keys that were NOT deleted. This default lists every prefix
        and bulk-deletes what it condemns in one call; a backend that can do both server-side
        (the KV gateway Worker) overrides it with one request."""
        doomed: List[str] = []
        for prefix, before_ms in prefixes.items():
            doomed.extend(doomed_keys(self.list_all(prefix), before_ms, scope))
        return self.bulk_delete(sorted(set(doomed))) if doomed else []

    def close(self) -> None:  # noqa: B027 - optional for backends: the default holds nothing
        """Release resources (connections, files); the default holds none."""


def chunked(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    """Split ``items`` into lists of at most ``size``."""
    batch: List[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
