"""peewee_kvcache: a query-result cache for Peewee in three levels (process memory, an L1
diskcache directory per host, an L2 Workers KV namespace shared by every host).

Importing the package adds ``with_cache()`` to every Peewee select (``orm.query.uninstall()``
takes it away again); ``with_cache(query, ...)`` is the same, typed for type checkers.
"""
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__  # re-exported
from .cache.facade import CloudflareKVCache
from .core.codec import CachedResult
from .core.config import CacheConfig
from .core.stats import CacheStats
from .kv.budget import RequestBudget
from .kv.local import LocalKVNamespace
from .orm.database import (CachedDatabase, CachedMySQLDatabase, CachedPooledPostgresqlDatabase,
                           CachedPostgresqlDatabase, CachedSqliteDatabase)
from .orm.query import install as _install
from .orm.query import with_cache

if TYPE_CHECKING:
    from .kv.cloudflare import CloudflareKVNamespace
    from .kv.worker import CloudflareWorkerKVNamespace

_install()


def __getattr__(name: str) -> Any:
    """``CloudflareKVNamespace`` and ``CloudflareWorkerKVNamespace`` are imported when first asked
    for: they load requests and urllib3 (some 50 ms), which an application on the local KV never
    needs."""
    if name == "CloudflareKVNamespace":
        from .kv.cloudflare import CloudflareKVNamespace
        return CloudflareKVNamespace
    if name == "CloudflareWorkerKVNamespace":
        from .kv.worker import CloudflareWorkerKVNamespace
        return CloudflareWorkerKVNamespace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CachedDatabase", "CachedPostgresqlDatabase", "CachedPooledPostgresqlDatabase",
    "CachedSqliteDatabase", "CachedMySQLDatabase", "CloudflareKVCache", "LocalKVNamespace",
    "CloudflareKVNamespace", "CloudflareWorkerKVNamespace", "RequestBudget",
    "CacheConfig", "CachedResult", "CacheStats", "with_cache",
]
