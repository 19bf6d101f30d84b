"""peewee_kvcache: a two-level query-result cache for Peewee (diskcache L1, Workers KV L2).

Importing the package adds ``with_cache()`` to every Peewee select.
"""
from .cache.facade import CloudflareKVCache
from .core.codec import CachedResult
from .core.config import CacheConfig
from .orm.database import (CachedDatabase, CachedMySQLDatabase, CachedPooledPostgresqlDatabase,
                       CachedPostgresqlDatabase, CachedSqliteDatabase)
from .kv.cloudflare import CloudflareKVNamespace, RequestBudget
from .kv.local import LocalKVNamespace
from .orm.query import install as _install
from .core.stats import CacheStats

_install()

__all__ = [
    "CachedDatabase", "CachedPostgresqlDatabase", "CachedPooledPostgresqlDatabase",
    "CachedSqliteDatabase", "CachedMySQLDatabase", "CloudflareKVCache", "LocalKVNamespace",
    "CloudflareKVNamespace", "RequestBudget",
    "CacheConfig", "CachedResult", "CacheStats",
]
__version__ = "0.1.0"
