"""``with_cache()`` on every Peewee select, carried through Peewee's query cloning.

Options live in the query's ``__dict__`` (``_kvcache``), which ``Node.clone`` copies, so every
chained call keeps them. ``count()`` and ``exists()`` wrap the query in a new ``Select``;
:func:`find_options` looks through such wrappers so those helpers inherit the options too.

Importing the package runs :func:`install`, which adds the method to ``peewee.SelectBase``;
:func:`uninstall` puts back exactly what was there before (normally nothing).

How a type checker sees it: Peewee 4 ships stubs in which ``SelectBase`` has no ``with_cache``,
so ``query.with_cache(...)`` is an unknown attribute to mypy or pyright (and ``Any`` with
Peewee 3, which has no stubs). The same function called as ``with_cache(query, ...)`` (importable
from ``peewee_kvcache``) is fully typed and returns the query's own type (``ModelSelect[User]``
for ``User.select()``).
"""
from __future__ import annotations

import functools
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Tuple, TypeVar, Union

import peewee

from ..cache.facade import CloudflareKVCache
from ..core.config import CacheConfig
from ..core.names import tag_list


@dataclass(frozen=True)
class CacheOptions:
    """What ``with_cache`` asked for; ``enabled=False`` opts a query out even under strategy all."""

    enabled: bool = True
    config: CacheConfig = CacheConfig()
    tags: Tuple[str, ...] = ()
    auto_invalidate: bool = True


S = TypeVar("S", bound=peewee.SelectBase)

DISABLED = CacheOptions(enabled=False)
_DEFAULT = CacheOptions()


@functools.lru_cache(maxsize=1024, typed=True)
def _memo_options(enabled: bool, ex: Optional[int], px: Optional[int], keep_ttl: bool,
                  tag: Any, auto_invalidate: bool, config: Optional[CacheConfig]) -> CacheOptions:
    return _make_options(enabled, ex, px, None, None, keep_ttl, tag, auto_invalidate, config)


def _make_options(enabled: bool, ex: Optional[int], px: Optional[int], exat: Optional[int],
                  pxat: Optional[int], keep_ttl: bool, tag: Union[str, Iterable[str], None],
                  auto_invalidate: bool, config: Optional[CacheConfig]) -> CacheOptions:
    if not isinstance(enabled, bool):
        raise TypeError(f"with_cache(enabled) must be a bool, got {enabled!r}")
    if not isinstance(auto_invalidate, bool):
        raise TypeError(f"auto_invalidate must be a bool, got {auto_invalidate!r}")
    if not enabled:
        return DISABLED
    if config is None:
        config = CacheConfig(ex=ex, px=px, exat=exat, pxat=pxat, keep_ttl=keep_ttl)
    elif not isinstance(config, CacheConfig):
        raise TypeError(f"config must be a CacheConfig, got {config!r}")
    elif any(v is not None for v in (ex, px, exat, pxat)) or keep_ttl:
        raise ValueError("give either config= or ex/px/exat/pxat/keep_ttl, not both")
    return CacheOptions(True, config, tuple(tag_list(tag)), auto_invalidate)


def with_cache(self: S, enabled: bool = True, *, ex: Optional[int] = None,
               px: Optional[int] = None, exat: Optional[int] = None, pxat: Optional[int] = None,
               keep_ttl: bool = False, tag: Union[str, Iterable[str], None] = None,
               auto_invalidate: bool = True, config: Optional[CacheConfig] = None) -> S:
    """A copy of this query whose result is cached (``ex``/``px``/``exat``/``pxat``/``keep_ttl``,
    ``tag``, ``auto_invalidate``); ``with_cache(False)`` never caches it. A method of every select
    once installed, and a typed function: ``with_cache(query, ex=30)`` (see the module's
    docstring).

    Bad values raise here, naming the value. Validation is memoised for the common calls:
    queries are rebuilt on every request, and validating the same ``with_cache(ex=30)`` each time
    would cost more than the cache hit itself. Absolute expiries (exat/pxat) are checked against
    the clock every time.
    """
    options = None
    if exat is None and pxat is None:
        key_tag = tuple(tag) if isinstance(tag, list) else tag
        try:
            options = _memo_options(enabled, ex, px, keep_ttl, key_tag, auto_invalidate, config)
        except TypeError as exc:
            if "unhashable" not in str(exc):
                raise
    if options is None:
        options = _make_options(enabled, ex, px, exat, pxat, keep_ttl, tag, auto_invalidate,
                                config)
    if options.enabled:
        _warn_if_uncached(self._database)
    clone = self.clone()  # Peewee's chaining: every call returns a new query
    clone._kvcache = options  # type: ignore[attr-defined]
    return clone


class _NoDatabase:
    """Stands for "no database bound" among the databases already warned about."""


_NO_DATABASE = _NoDatabase()
_warned: "weakref.WeakSet[Any]" = weakref.WeakSet()
_warn_lock = threading.Lock()


def _warn_if_uncached(database: Any) -> None:
    """Warn once per database object: the user believes this query is cached, and it never is
    (a plain Peewee database, or none bound). An uninitialised ``DatabaseProxy`` can't tell yet."""
    if isinstance(database, peewee.Proxy):
        database = database.obj
        if database is None:
            return
    if isinstance(getattr(database, "cache", None), CloudflareKVCache):
        return
    key = _NO_DATABASE if database is None else database
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    problem = ("the query has no database" if database is None else
               f"{type(database).__name__}({getattr(database, 'database', None)!r}) has no cache")
    warnings.warn(f"with_cache() does nothing here: {problem}; use a Cached*Database (e.g. "
                  f"CachedSqliteDatabase) to cache queries", UserWarning, stacklevel=3)


def find_options(query: Any, depth: int = 0) -> Optional[CacheOptions]:
    """The query's options, or those of the select it wraps (``count()``, ``exists()``,
    compounds)."""
    options = query.__dict__.get("_kvcache")
    if options is not None or depth > 3:
        return options
    inner: list = []
    if isinstance(query, peewee.CompoundSelectQuery):
        inner = [query.lhs, query.rhs]
    elif isinstance(query, peewee.Select):
        inner = list(query._from_list or ())
        for column in query._returning or ():
            inner.extend(getattr(column, "arguments", ()) or ())
    for node in inner:
        if isinstance(node, peewee.SelectBase):
            found = find_options(node, depth + 1)
            if found is not None:
                return found
    return None


def options_for(query: Any, strategy: str) -> Optional[CacheOptions]:
    """The options ``query`` is cached with, or None when it isn't a select to cache (no
    ``with_cache()`` under strategy "explicit", or ``with_cache(False)``)."""
    if not isinstance(query, peewee.SelectBase):
        return None
    options = find_options(query)
    if options is None and strategy == "all":
        options = _DEFAULT
    return options if options is not None and options.enabled else None


_ABSENT = object()
#: what :func:`install` replaced on ``SelectBase`` (``_ABSENT``: nothing), while installed. Kept
#: here rather than on the method's ``__wrapped__`` (django-cachalot's way): there is normally no
#: original, and a ``__wrapped__`` would make ``inspect.signature`` describe that original.
_replaced: List[Any] = []


def install() -> None:
    """Make ``with_cache`` a method of every select (the package's import does it); installing
    twice changes nothing."""
    current = vars(peewee.SelectBase).get("with_cache", _ABSENT)
    if current is with_cache:
        return
    _replaced[:] = [current]
    peewee.SelectBase.with_cache = with_cache  # type: ignore[attr-defined]


def uninstall() -> None:
    """Remove the method, restoring exactly what :func:`install` replaced; nothing happens when
    it isn't installed (or was replaced by someone else since, whose attribute stays)."""
    if vars(peewee.SelectBase).get("with_cache", _ABSENT) is not with_cache:
        return
    previous = _replaced.pop()
    if previous is _ABSENT:
        del peewee.SelectBase.with_cache  # type: ignore[attr-defined]
    else:
        peewee.SelectBase.with_cache = previous  # type: ignore[attr-defined]
