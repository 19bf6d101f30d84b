"""The seed's API: results stored and looked up by a caller-made key (``get``/``put``). Kept
apart from the query cache's own API (facade.py), which it shares the levels with."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from ..core.codec import CachedResult
from ..core.config import DEFAULT_CONFIG, CacheConfig
from .keys import seed_key
from .reads import Reader
from .stores import Storer


class SeedAPI:
    """Mixed into :class:`~.facade.CloudflareKVCache`, whose reader and storer it uses."""

    _reader: Reader
    _storer: Storer

    def get(self, key: str, tables: Iterable[Any] = (), is_tag: bool = False,
            is_auto_invalidate: bool = True) -> Optional[CachedResult]:
        """Look up a result stored with :meth:`put` under the same arguments."""
        digest, names = seed_key(key, tables, is_tag, is_auto_invalidate)
        return self._reader.lookup(digest, names)

    def put(self, hashed_query: str, response: CachedResult, tables: Iterable[Any] = (),
            is_tag: bool = False, config: Optional[CacheConfig] = None,
            is_auto_invalidate: bool = True) -> bool:
        """Store ``response`` under ``hashed_query`` (or under the tag ``hashed_query``)."""
        if not isinstance(response, CachedResult):
            raise TypeError(f"response must be a CachedResult, got {type(response).__name__}")
        if config is not None and not isinstance(config, CacheConfig):
            raise TypeError(f"config must be a CacheConfig or None, got {config!r}")
        digest, names = seed_key(hashed_query, tables, is_tag, is_auto_invalidate)
        tokens = self._storer.tokens(names)
        return tokens is not None and self._storer.store(digest, names, tokens, response,
                                                         config or DEFAULT_CONFIG)
