"""The benchmark's tables, data and queries, and the environment they run in: a PostgreSQL schema
of its own and a SQLite file, a local Cloudflare-compatible KV server as L2, and per backend a
cached and a plain Peewee database on the same tables."""
from __future__ import annotations

import contextlib
import datetime
import decimal
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import peewee
import psycopg2

from peewee_kvcache import (CachedPostgresqlDatabase, CachedSqliteDatabase, CloudflareKVCache,
                            CloudflareKVNamespace)
from peewee_kvcache.testing.kv_server import KVServer

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_DATABASE = "test"
BACKENDS = ("postgres", "sqlite")
SHAPES = ("select", "join")
SIZES = (1, 100, 1000)
N_ITEMS = 10_000
N_AUTHORS = 1_000
BOOKS_PER_AUTHOR = 3
REVIEWS_PER_BOOK = 3
TTL = 3600  # seconds: nothing expires during a run


class Base(peewee.Model):
    class Meta:
        database = None


class Item(Base):
    name = peewee.CharField(max_length=64)
    price = peewee.DecimalField(max_digits=10, decimal_places=2)
    created = peewee.DateTimeField()
    stock = peewee.IntegerField()


class Author(Base):
    name = peewee.CharField(max_length=64)


class Book(Base):
    author = peewee.ForeignKeyField(Author, backref="books")
    title = peewee.CharField(max_length=64)


class Review(Base):
    book = peewee.ForeignKeyField(Book, backref="reviews")
    stars = peewee.IntegerField()


class PageView(Base):
    """Write-heavy and read by no benchmark query: writes here invalidate nothing that is hot."""

    views = peewee.IntegerField()


MODELS = [Item, Author, Book, Review, PageView]


def select_query(lo: int, n: int) -> peewee.ModelSelect:
    """Single table, n rows. ``lo`` is 1 for every variant but the miss, which passes a fresh
    lo <= 0 (same rows, new key): a miss without invalidating, whose token bump would make the
    next hit re-read tokens and whose late re-sweeps would run in the background while timing."""
    return Item.select().where(Item.id.between(lo, n))


def join_query(lo: int, n: int) -> peewee.ModelSelect:
    """author ⋈ book ⋈ review grouped by author: n rows, each aggregating 9 reviews. LEFT OUTER
    joins, as Django's ``annotate`` over reverse relations writes them."""
    return (Author.select(Author.id, Author.name, peewee.fn.COUNT(Review.id).alias("n_reviews"),
                          peewee.fn.SUM(Review.stars).alias("stars"))
            .join(Book, peewee.JOIN.LEFT_OUTER).join(Review, peewee.JOIN.LEFT_OUTER)
            .where(Author.id.between(lo, n))
            .group_by(Author.id, Author.name))


QUERIES: Dict[str, Callable[[int, int], peewee.ModelSelect]] = {
    "select": select_query, "join": join_query}


@dataclass
class Backend:
    """One database: ``cached`` (peewee_kvcache) and ``plain`` (Peewee alone) on the same tables,
    and the Django ``DATABASES`` entry that reaches them too."""

    name: str
    cached: peewee.Database
    plain: peewee.Database
    cache: CloudflareKVCache
    django: Dict[str, Any]


@dataclass
class Environment:
    workdir: Path
    server: KVServer
    backends: List[Backend]

    def namespace(self) -> CloudflareKVNamespace:
        """A REST client of the local KV server; no request budget (it would throttle the run)."""
        return CloudflareKVNamespace(self.server.account_id, self.server.namespace_id,
                                     self.server.api_token, base_url=self.server.base_url,
                                     budget=None)

    def new_cache(self, name: str) -> CloudflareKVCache:
        """A cache with its own L1 directory, on the shared KV server. Every miss reads L1 and
        asks L2 (``l1_reads`` / ``l2_reads="always"``): this benchmark measures each level's own
        cost; when a miss should ask them is benchmarks/workload.py's subject."""
        return CloudflareKVCache(self.namespace(), l1_directory=str(self.workdir / f"l1-{name}"),
                                 l1_reads="always", l2_reads="always")


def _item_rows() -> List[Dict[str, Any]]:
    start = datetime.datetime(2024, 1, 1)
    return [{"id": i, "name": f"item {i}", "price": decimal.Decimal(f"{i % 1000}.99"),
             "created": start + datetime.timedelta(minutes=i), "stock": i % 50}
            for i in range(1, N_ITEMS + 1)]


def _library_rows() -> Dict[peewee.ModelBase, List[Dict[str, Any]]]:
    authors = [{"id": a, "name": f"author {a}"} for a in range(1, N_AUTHORS + 1)]
    books = [{"id": b, "author": (b - 1) // BOOKS_PER_AUTHOR + 1, "title": f"book {b}"}
             for b in range(1, N_AUTHORS * BOOKS_PER_AUTHOR + 1)]
    reviews = [{"id": r, "book": (r - 1) // REVIEWS_PER_BOOK + 1, "stars": r % 5 + 1}
               for r in range(1, len(books) * REVIEWS_PER_BOOK + 1)]
    return {Author: authors, Book: books, Review: reviews, PageView: [{"id": 1, "views": 0}]}


def seed(db: peewee.Database) -> None:
    """Create and fill the tables through the plain database (the cache is empty anyway)."""
    with db.bind_ctx(MODELS):
        db.create_tables(MODELS)
        with db.atomic():
            for model, rows in [(Item, _item_rows()), *_library_rows().items()]:
                for batch in peewee.chunked(rows, 500):
                    model.insert_many(batch).execute()
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("ANALYZE item, author, book, review, pageview")


def _pg_admin(sql: str) -> None:
    conn = psycopg2.connect(dbname=PG_DATABASE, **PG)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextlib.contextmanager
def pg_schema(name: str) -> Iterator[str]:
    """A schema of this run's own, dropped afterwards whatever happens."""
    _pg_admin(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        _pg_admin(f'DROP SCHEMA "{name}" CASCADE')


def _postgres(stack: contextlib.ExitStack, env: Environment, schema: str) -> Backend:
    options = f"-c search_path={schema}"
    cache = stack.enter_context(contextlib.closing(env.new_cache("postgres")))
    cached = CachedPostgresqlDatabase(PG_DATABASE, cache=cache, options=options, **PG)
    plain = peewee.PostgresqlDatabase(PG_DATABASE, options=options, **PG)
    stack.callback(cached.stop_listener)
    django = {"ENGINE": "django.db.backends.postgresql", "NAME": PG_DATABASE,
              "USER": PG["user"], "HOST": PG["host"], "PORT": str(PG["port"]),
              "OPTIONS": {"options": options}}
    return Backend("postgres", cached, plain, cache, django)


def _sqlite(stack: contextlib.ExitStack, env: Environment) -> Backend:
    path = str(env.workdir / "bench.db")
    pragmas = {"journal_mode": "wal", "busy_timeout": 10_000}
    cache = stack.enter_context(contextlib.closing(env.new_cache("sqlite")))
    cached = CachedSqliteDatabase(path, cache=cache, pragmas=pragmas)
    plain = peewee.SqliteDatabase(path, pragmas=pragmas)
    django = {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    return Backend("sqlite", cached, plain, cache, django)


@contextlib.contextmanager
def open_environment(backends: Sequence[str], schema: str) -> Iterator[Environment]:
    """Everything the run needs, torn down in reverse order (schema dropped, files removed)."""
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="pkv-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        server = stack.enter_context(KVServer(workdir / "kv-server"))
        env = Environment(workdir, server, [])
        for name in backends:
            if name == "postgres":
                backend = _postgres(stack, env, stack.enter_context(pg_schema(schema)))
            else:
                backend = _sqlite(stack, env)
            stack.callback(backend.plain.close)
            stack.callback(backend.cached.close)
            seed(backend.plain)
            env.backends.append(backend)
        yield env


def server_version(backend: Backend) -> str:
    """What the database reports about itself, for the results' machine facts."""
    if backend.name == "postgres":
        return backend.plain.execute_sql("SHOW server_version").fetchone()[0]
    return backend.plain.execute_sql("SELECT sqlite_version()").fetchone()[0]

