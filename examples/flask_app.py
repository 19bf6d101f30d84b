"""A small Flask application on PostgreSQL with peewee_kvcache.

Cached endpoints (``GET /authors``, ``GET /authors/<id>/books``, ``GET /books/per-author``), a write
(``POST /authors/<id>/books``) that invalidates what read ``book``, and ``GET /cache-stats`` with
``db.cache.get_stats()``. Connections follow Peewee's recommended lifecycle for web apps: open in
``before_request``, close in ``teardown_request``.

Configuration (environment):
    DATABASE_URL   default postgresql://postgres@127.0.0.1:5432/test; append
                   ?options=-c%20search_path%3Dmyschema to run inside a schema
    PEEWEE_KVCACHE_KV, PEEWEE_KVCACHE_KV_DIR, PEEWEE_KVCACHE_L1_DIR, PEEWEE_KVCACHE_PREFIX
                   the cache, as the peewee-kvcache command line reads them

Run:
    python examples/flask_app.py                 # serves on http://127.0.0.1:5000
    python examples/flask_app.py --walkthrough   # calls every endpoint once, prints, exits
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional

import peewee
from flask import Blueprint, Flask, abort, jsonify, request
from playhouse.db_url import parse

from common import cache_from_env
from peewee_kvcache import CachedPostgresqlDatabase, CloudflareKVCache

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
TTL = 60

database = peewee.DatabaseProxy()  # bound in create_app, as Peewee recommends for app factories
api = Blueprint("api", __name__)


class BaseModel(peewee.Model):
    class Meta:
        database = database


class Author(BaseModel):
    name = peewee.CharField(max_length=64, unique=True)

    class Meta:
        table_name = "flask_author"


class Book(BaseModel):
    author = peewee.ForeignKeyField(Author, backref="books", on_delete="CASCADE")
    title = peewee.CharField(max_length=128)
    year = peewee.IntegerField()

    class Meta:
        table_name = "flask_book"


@api.get("/authors")
def authors() -> Any:
    query = Author.select(Author.id, Author.name).order_by(Author.name).with_cache(ex=TTL)
    return jsonify(list(query.dicts()))


@api.get("/authors/<int:author_id>/books")
def books(author_id: int) -> Any:
    rows = list(Book.select(Book.id, Book.title, Book.year).where(Book.author == author_id)
                .order_by(Book.year).with_cache(ex=TTL).dicts())
    return jsonify(rows)


@api.get("/books/per-author")
def books_per_author() -> Any:
    query = (Author.select(Author.name, peewee.fn.COUNT(Book.id).alias("books"))
             .join(Book, peewee.JOIN.LEFT_OUTER).group_by(Author.id, Author.name)
             .order_by(Author.name).with_cache(ex=TTL))
    return jsonify(list(query.dicts()))


@api.post("/authors/<int:author_id>/books")
def add_book(author_id: int) -> Any:
    """A write through the cached database: every cached read of ``flask_book`` is dropped."""
    body = request.get_json(silent=True) or {}
    if not isinstance(body.get("title"), str) or not isinstance(body.get("year"), int):
        abort(400, description='expected JSON {"title": str, "year": int}')
    if not Author.select().where(Author.id == author_id).exists():
        abort(404)
    book = Book.create(author=author_id, title=body["title"], year=body["year"])
    return jsonify({"id": book.id, "title": book.title, "year": book.year}), 201


@api.get("/cache-stats")
def cache_stats() -> Any:
    return jsonify(database.cache.get_stats().as_dict())


def create_app(database_url: Optional[str] = None,
               cache: Optional[CloudflareKVCache] = None) -> Flask:
    """The application, its database from ``database_url`` (else $DATABASE_URL, else the local
    PostgreSQL) and ``cache`` (else the one the PEEWEE_KVCACHE_* variables describe)."""
    params = parse(database_url or os.environ.get("DATABASE_URL") or DEFAULT_URL,
                   unquote_password=True)
    database.initialize(CachedPostgresqlDatabase(params.pop("database"),
                                                 cache=cache or cache_from_env(), **params))
    with database:
        database.create_tables([Author, Book])
        if not Author.select().exists():
            for name, titles in (("Ursula K. Le Guin", ["The Dispossessed", "Lathe of Heaven"]),
                                 ("Stanisław Lem", ["Solaris"])):
                author = Author.create(name=name)
                for year, title in enumerate(titles, start=1971):
                    Book.create(author=author, title=title, year=year)

    app = Flask(__name__)
    app.register_blueprint(api)

    @app.before_request
    def _db_connect() -> None:
        database.connect()

    @app.teardown_request
    def _db_close(exc: Optional[BaseException]) -> None:
        if not database.is_closed():
            database.close()

    return app


def walkthrough(app: Flask) -> None:
    """Each endpoint once through Flask's test client, with the cache counters after it."""
    client = app.test_client()

    def call(method: str, path: str, body: Any = None) -> Any:
        response = client.open(path, method=method, json=body)
        stats = client.get("/cache-stats").get_json()
        print(f"{method} {path} -> {response.status_code} "
              f"{json.dumps(response.get_json(), ensure_ascii=False)[:70]}")
        print(f"    cache: hits {stats['hits']} (memory {stats['memory_hits']}, L1 "
              f"{stats['l1_hits']}, L2 {stats['l2_hits']}), "
              f"misses {stats['misses']}, invalidations {stats['invalidations']}")
        return response.get_json()

    author_id = call("GET", "/authors")[0]["id"]
    call("GET", "/authors")
    call("GET", f"/authors/{author_id}/books")
    call("GET", f"/authors/{author_id}/books")
    call("POST", f"/authors/{author_id}/books", {"title": "The Word for World Is Forest",
                                                  "year": 1972})
    call("GET", f"/authors/{author_id}/books")
    call("GET", "/books/per-author")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walkthrough", action="store_true",
                        help="call every endpoint once with Flask's test client, then exit")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    app = create_app()
    try:
        if args.walkthrough:
            walkthrough(app)
        else:
            app.run(port=args.port)
    finally:
        database.stop_listener()
        database.cache.close()


if __name__ == "__main__":
    main()
