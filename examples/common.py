"""What every example shares: a database and a cache configured from the environment.

``DATABASE_URL`` picks the database (``postgresql://user@host:port/db``, ``mysql://...``,
``sqlite:///relative/path`` or ``sqlite:////absolute/path``; add
``?options=-c%20search_path%3Dmyschema`` to work in a PostgreSQL schema); without it, a temporary
SQLite file. The cache reads the variables the ``peewee-kvcache`` command
line reads (``PEEWEE_KVCACHE_KV``, ``PEEWEE_KVCACHE_KV_DIR``, ``PEEWEE_KVCACHE_L1_DIR``,
``PEEWEE_KVCACHE_PREFIX``), so ``peewee-kvcache stats`` inspects what an example cached.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import peewee
from playhouse.db_url import parse

from peewee_kvcache import (CachedMySQLDatabase, CachedPostgresqlDatabase, CachedSqliteDatabase,
                            CloudflareKVCache, CloudflareKVNamespace, LocalKVNamespace)

DATABASE_CLASSES = {"postgresql": CachedPostgresqlDatabase, "postgres": CachedPostgresqlDatabase,
                    "mysql": CachedMySQLDatabase, "sqlite": CachedSqliteDatabase}


def cache_from_env(default_dir: Optional[str] = None, **options: Any) -> CloudflareKVCache:
    """The cache the PEEWEE_KVCACHE_* variables describe; unset directories fall back to
    ``default_dir`` (when given) or to the per-user cache directory the CLI also defaults to."""
    if os.environ.get("PEEWEE_KVCACHE_KV") == "cloudflare":
        namespace: Any = CloudflareKVNamespace.from_env()  # CLOUDFLARE_* variables
    else:
        kv_dir = os.environ.get("PEEWEE_KVCACHE_KV_DIR") or (
            default_dir and os.path.join(default_dir, "kv"))
        namespace = LocalKVNamespace(kv_dir) if kv_dir else None
    l1_dir = os.environ.get("PEEWEE_KVCACHE_L1_DIR") or (
        default_dir and os.path.join(default_dir, "l1"))
    return CloudflareKVCache(namespace, l1_directory=l1_dir,
                             prefix=os.environ.get("PEEWEE_KVCACHE_PREFIX", "pkv:"), **options)


def database_from_url(url: str, cache: CloudflareKVCache) -> peewee.Database:
    """A cached database for ``url``, parsed the way ``playhouse.db_url`` parses it."""
    scheme = url.split(":", 1)[0]
    if scheme not in DATABASE_CLASSES:
        raise SystemExit(f"DATABASE_URL: unsupported scheme {scheme!r} "
                         f"(use one of {', '.join(DATABASE_CLASSES)})")
    params = parse(url, unquote_password=True)
    return DATABASE_CLASSES[scheme](params.pop("database"), cache=cache, **params)


@contextmanager
def example_database(**cache_options: Any) -> Iterator[peewee.Database]:
    """A cached database for one example run; closed (and temporary files removed) after."""
    with tempfile.TemporaryDirectory(prefix="peewee-kvcache-example-") as tmp:
        cache = cache_from_env(tmp, **cache_options)
        url = os.environ.get("DATABASE_URL")
        db = (database_from_url(url, cache) if url else
              CachedSqliteDatabase(os.path.join(tmp, "example.db"), cache=cache))
        try:
            yield db
        finally:
            db.close()
            if hasattr(db, "stop_listener"):
                db.stop_listener()
            cache.close()


def show(db: peewee.Database, label: str, run: Callable[[], Any]) -> Any:
    """Run ``run``, then print its result and what the cache did (``get_stats()`` deltas)."""
    before = db.cache.get_stats()  # type: ignore[attr-defined]
    result = run()
    after = db.cache.get_stats()  # type: ignore[attr-defined]
    moved = ", ".join(f"{name} +{getattr(after, name) - getattr(before, name)}"
                      for name in ("hits", "misses", "invalidations"))
    print(f"{label:<46} {result!r:<34} {moved}")
    return result
