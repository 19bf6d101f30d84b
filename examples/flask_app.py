"""A small Flask application with peewee_kvcache.

Cached endpoints (``GET /authors``, ``GET /authors/<id>/books``, ``GET /books/per-author``), writes
(``POST /authors/<id>/books``, ``DELETE /books/<id>``) that invalidate what read ``flask_book``,
and ``GET /cache-stats`` with ``db.cache.get_stats()``. Connections follow Peewee's recommended
lifecycle for web apps: open in ``before_request``, close in ``teardown_request``.

Configuration (environment), as for every example (see common.py):
    DATABASE_URL   postgresql://..., mysql://... or sqlite:///...; default a temporary SQLite
                   file. Append ?options=-c%20search_path%3Dmyschema to run inside a schema
    PEEWEE_KVCACHE_KV, PEEWEE_KVCACHE_KV_DIR, PEEWEE_KVCACHE_L1_DIR, PEEWEE_KVCACHE_PREFIX
                   the cache, as the peewee-kvcache command line reads them; default
                   temporary directories

Run:
    python examples/flask_app.py                 # serves on http://127.0.0.1:5000
    python examples/flask_app.py --walkthrough   # calls every endpoint once, prints, exits
    gunicorn --preload -w 3 'flask_app:create_app()'   # from examples/, with DATABASE_URL set
                   (without it each process not forked from the first has its own SQLite file)

The script leaves the database as it found it: it drops the tables it created, and the
walkthrough deletes the book it adds. ``create_app()`` (gunicorn) creates the tables if missing
and seeds them once, as an application would; its temporary files go at exit.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import tempfile
from typing import Any, Optional

import peewee
from flask import Blueprint, Flask, abort, jsonify, request

from common import cache_from_env, database_from_url, example_database
from peewee_kvcache import CachedSqliteDatabase

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


MODELS = [Author, Book]


@api.get("/authors")
def authors() -> Any:
    query = Author.select(Author.id, Author.name).order_by(Author.name).with_cache(ex=TTL)
    return jsonify(list(query.dicts()))


@api.get("/authors/<int:author_id>/books")
def books(author_id: int) -> Any:
    rows = list(Book.select(Book.id, Book.title, Book.year).where(Book.author == author_id)
                .order_by(Book.year, Book.id).with_cache(ex=TTL).dicts())
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


@api.delete("/books/<int:book_id>")
def delete_book(book_id: int) -> Any:
    """Another write: the cached reads of ``flask_book`` are dropped again."""
    if not Book.delete().where(Book.id == book_id).execute():
        abort(404)
    return "", 204


@api.get("/cache-stats")
def cache_stats() -> Any:
    return jsonify(database.cache.get_stats().as_dict())


def _seed() -> None:
    """The tables, created if missing, and two authors with their books on an empty table."""
    database.create_tables(MODELS)
    if Author.select().exists():
        return
    with database.atomic():
        for name, titles in (("Ursula K. Le Guin", ["The Dispossessed", "Lathe of Heaven"]),
                             ("Stanisław Lem", ["Solaris"])):
            author = Author.create(name=name)
            for year, title in enumerate(titles, start=1971):
                Book.create(author=author, title=title, year=year)


def _table_exists(model: Any) -> bool:
    """Whether ``model``'s table exists where the connection looks: in PostgreSQL's search_path
    too, which ``Database.table_exists`` ignores (it looks in public)."""
    try:
        with database.atomic():  # a failed statement is rolled back with it
            list(model.select().limit(0))
        return True
    except peewee.DatabaseError:
        return False
    finally:
        database.close()


def _own_database() -> peewee.Database:
    """For ``create_app()`` without a database (gunicorn): $DATABASE_URL (else a temporary
    SQLite file) with the cache the PEEWEE_KVCACHE_* variables describe (else temporary
    directories). Closed and removed when the process that made it exits; its forked workers
    leave them alone."""
    tmp = tempfile.mkdtemp(prefix="peewee-kvcache-flask-")
    cache = cache_from_env(tmp)
    url = os.environ.get("DATABASE_URL")
    db = database_from_url(url, cache) if url else CachedSqliteDatabase(
        os.path.join(tmp, "flask.db"), cache=cache)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() != owner:
            return
        db.close()
        if hasattr(db, "stop_listener"):
            db.stop_listener()
        cache.close()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(remove)
    return db


def create_app(db: Optional[peewee.Database] = None) -> Flask:
    """The application on ``db`` (a cached database; by default see :func:`_own_database`),
    its tables created and seeded if need be."""
    database.initialize(db if db is not None else _own_database())
    with database:
        _seed()

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
    """Each endpoint once through Flask's test client, with the cache counters after it; the
    book it adds is deleted again."""
    client = app.test_client()

    def call(method: str, path: str, body: Any = None) -> Any:
        response = client.open(path, method=method, json=body)
        stats = client.get("/cache-stats").get_json()
        shown = json.dumps(response.get_json(), ensure_ascii=False)[:70] if response.is_json \
            else ""
        print(f"{method} {path} -> {response.status_code} {shown}")
        print(f"    cache: hits {stats['hits']} (memory {stats['memory_hits']}, L1 "
              f"{stats['l1_hits']}, L2 {stats['l2_hits']}), "
              f"misses {stats['misses']}, invalidations {stats['invalidations']}")
        return response.get_json() if response.is_json else None

    author_id = next(author["id"] for author in call("GET", "/authors")
                     if author["name"] == "Ursula K. Le Guin")
    call("GET", "/authors")
    call("GET", f"/authors/{author_id}/books")
    call("GET", f"/authors/{author_id}/books")
    added = call("POST", f"/authors/{author_id}/books", {"title": "The Word for World Is Forest",
                                                          "year": 1972})
    call("GET", f"/authors/{author_id}/books")
    call("GET", "/books/per-author")
    call("DELETE", f"/books/{added['id']}")
    call("GET", f"/authors/{author_id}/books")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--walkthrough", action="store_true",
                        help="call every endpoint once with Flask's test client, then exit")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    with example_database() as db:
        database.initialize(db)
        created = not _table_exists(Author)
        app = create_app(db)
        try:
            if args.walkthrough:
                walkthrough(app)
            else:
                app.run(port=args.port)
        finally:
            if created:  # leave the database as it was found
                with database:
                    database.drop_tables(MODELS)


if __name__ == "__main__":
    main()
