"""Shared fixtures: a fresh cache per test and real databases, each test run in its own schema.

PostgreSQL and MariaDB tests use the real servers. Every pytest session works in a schema (PG) or
database (MariaDB) of its own, so tox environments can run in parallel against one server. A
missing server fails the test in CI (CI=true) and skips it, with the reason, elsewhere.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable, Iterator, List, Type

import freezegun
import freezegun.config
import peewee
import pytest

from peewee_kvcache import (CachedMySQLDatabase, CachedPostgresqlDatabase, CachedSqliteDatabase,
                            CloudflareKVCache, LocalKVNamespace)

# freezegun serves real time to code running near ``threading`` frames: the cache's background
# writer would then compute KV expirations on another clock than the test. Frozen for all threads.
freezegun.configure(default_ignore_list=[
    name for name in freezegun.config.DEFAULT_IGNORE_LIST if name != "threading"])

PG = dict(host="127.0.0.1", port=5432, user="postgres")
MY = dict(host="127.0.0.1", port=3306, user="root", password="")
RUN_ID = f"pkv_{os.getpid()}_{uuid.uuid4().hex[:6]}"
BACKENDS = ["sqlite", "postgres", "mysql"]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def local_hits(stats: Any) -> int:
    """Hits served on this host (process memory or the L1 directory), from a ``CacheStats`` or a
    counters snapshot."""
    values = stats if isinstance(stats, dict) else stats.as_dict()
    return values["memory_hits"] + values["l1_hits"]


def service_missing(name: str, exc: Exception) -> None:
    message = f"{name} is not reachable: {exc}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run every service-backed test)")
    pytest.skip(message)


def _model_tables() -> set:
    """The table names of every Peewee model defined so far (the tests' own, once collected)."""
    names, pending = set(), list(peewee.Model.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        names.add(model._meta.table_name)
    return names


def _refuse_shadowing_tables(cursor: Any) -> None:
    """Peewee 3's ``create_tables`` looks for existing tables in ``public`` whatever the
    search_path, so a leftover ``public.item`` makes it skip creating the tests' ``item`` in
    the run's schema and every test of it fails with "relation does not exist". Say so at once."""
    if int(peewee.__version__.split(".")[0]) >= 4:
        return
    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    shadowing = sorted({row[0] for row in cursor.fetchall()} & _model_tables())
    if shadowing:
        pytest.fail(f"database 'test' has tables in its public schema that Peewee 3 takes for "
                    f"the tests' own: {shadowing}; drop them (the tests work in a schema of "
                    f"their own)")


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    import psycopg2
    try:
        conn = psycopg2.connect(dbname="test", **PG)
    except Exception as exc:  # noqa: BLE001 - any connect failure means "service missing"
        service_missing("PostgreSQL", exc)
    conn.autocommit = True
    with conn.cursor() as cur:
        _refuse_shadowing_tables(cur)
        cur.execute(f'CREATE SCHEMA "{RUN_ID}"')
    yield RUN_ID
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA "{RUN_ID}" CASCADE')
    conn.close()


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[str]:
    import pymysql
    try:
        conn = pymysql.connect(**MY, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        service_missing("MariaDB", exc)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{RUN_ID}`")
    yield RUN_ID
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{RUN_ID}`")
    conn.close()


#: the SECRET of the session's gateway Worker (test-only; never a real one)
WORKERD_SECRET = "session-gateway-test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def workerd_gateway() -> Iterator[Any]:
    """The KV gateway Worker in workerd, started once for the session (about 2 s); a test empties
    it (``clear()``) before use. Missing Node.js or Miniflare fails the test under CI."""
    from peewee_kvcache.testing.workerd import start_for_tests
    gateway = start_for_tests({"SECRET": WORKERD_SECRET})
    yield gateway
    gateway.stop()


@pytest.fixture
def http_sent() -> Iterator[List[str]]:
    """Every HTTP request this process sends through ``requests`` (any thread), as
    "METHOD path": counted where they leave, not by trusting the code that sends."""
    from peewee_kvcache.testing.workerd import SentRequests
    with SentRequests() as counter:
        yield counter.sent


@pytest.fixture
def make_cache(tmp_path) -> Iterator[Callable[..., CloudflareKVCache]]:
    """Caches sharing one local KV namespace; each call gets its own L1 unless told otherwise."""
    made: List[CloudflareKVCache] = []
    namespace = LocalKVNamespace(tmp_path / "kv")

    def make(l1: str = "l1", **kwargs) -> CloudflareKVCache:
        kwargs.setdefault("namespace", namespace)
        cache = CloudflareKVCache(l1_directory=str(tmp_path / l1), **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make_cache) -> CloudflareKVCache:
    return make_cache()


def open_database(backend: str, cache: CloudflareKVCache, request, tmp_path) -> peewee.Database:
    if backend == "sqlite":
        return CachedSqliteDatabase(str(tmp_path / "app.db"), cache=cache,
                                    pragmas={"foreign_keys": 1})
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return CachedPostgresqlDatabase("test", cache=cache, options=f"-c search_path={schema}",
                                        **PG)
    database = request.getfixturevalue("mysql_database")
    return CachedMySQLDatabase(database, cache=cache, **MY)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db(backend, cache, request, tmp_path) -> Iterator[peewee.Database]:
    database = open_database(backend, cache, request, tmp_path)
    yield database
    if not database.is_closed():
        database.close()
    if hasattr(database, "stop_listener"):
        database.stop_listener()


@pytest.fixture
def bind(db) -> Iterator[Callable[..., None]]:
    """Bind models to ``db`` and create their tables; drop them afterwards."""
    bound: List[Type[peewee.Model]] = []

    def do(*models: Type[peewee.Model]) -> None:
        db.bind(models, bind_refs=False, bind_backrefs=False)
        db.drop_tables(models, safe=True)
        db.create_tables(models)
        bound.extend(models)

    yield do
    if bound:
        db.drop_tables(bound, safe=True)
