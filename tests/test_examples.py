"""The examples: the Flask app through Flask's test client against the real PostgreSQL, and every
example script as a subprocess (SQLite by default, and PostgreSQL in the session's schema),
leaving no tables, rows or cache files behind."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import peewee
import pytest

from tests.conftest import local_hits

# runs in the full tox environment (py311): see tox.ini
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPTS = {"strategy_all.py": "stock again", "tags.py": "homepage: rebuilt with three",
           "manual_invalidation.py": "balance: fresh from the database"}


def pg_url(schema: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}"


def run_example(script: str, tmp_path: Path, database_url: Optional[str] = None,
                *args: str, cache_dirs: bool = True) -> subprocess.CompletedProcess:
    """Run ``script`` with a clean environment: the cache in ``tmp_path`` (``cache_dirs``) or
    unset (the example's own temporary directories, under ``tmp_path``/tmp), and the per-user
    cache directory (where a cache without directories would write) inside ``tmp_path``/home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLOUDFLARE_", "PEEWEE_KVCACHE_", "DATABASE_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),
               TMPDIR=str(tmp_path / "tmp"))
    if cache_dirs:
        env["PEEWEE_KVCACHE_KV_DIR"] = str(tmp_path / "kv")
        env["PEEWEE_KVCACHE_L1_DIR"] = str(tmp_path / "l1")
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_on_sqlite(script, tmp_path):
    """Without DATABASE_URL or cache directories: temporary ones, removed afterwards."""
    result = run_example(script, tmp_path, cache_dirs=False)
    assert result.returncode == 0, result.stderr
    assert SCRIPTS[script] in result.stdout
    assert "hits +1" in result.stdout and "invalidations +1" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]  # no per-user cache directory
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_on_postgresql(script, tmp_path, pg_schema):
    result = run_example(script, tmp_path, pg_url(pg_schema))
    assert result.returncode == 0, result.stderr
    assert SCRIPTS[script] in result.stdout


@pytest.fixture
def flask_app(pg_schema, make_cache, monkeypatch) -> Iterator[Tuple[Any, Any]]:
    """The example's module and a test client of its app, inside the session's schema."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("flask_app")
    common = importlib.import_module("common")
    app = module.create_app(common.database_from_url(pg_url(pg_schema), make_cache()))
    yield module, app.test_client()
    module.database.drop_tables([module.Author, module.Book])
    module.database.close()
    module.database.stop_listener()


def stats_of(client: Any) -> Dict[str, Any]:
    response = client.get("/cache-stats")
    assert response.status_code == 200
    return response.get_json()


def test_flask_cached_endpoint_hits_l1(flask_app):
    module, client = flask_app
    before = stats_of(client)
    first = client.get("/authors")
    assert first.status_code == 200 and len(first.get_json()) == 2
    assert client.get("/authors").get_json() == first.get_json()
    after = stats_of(client)
    assert after["misses"] - before["misses"] == 1
    assert local_hits(after) - local_hits(before) == 1
    assert module.database.is_closed()  # teardown_request closed the request's connection


def test_flask_write_endpoint_invalidates(flask_app):
    module, client = flask_app
    author_id = client.get("/authors").get_json()[0]["id"]
    books = client.get(f"/authors/{author_id}/books").get_json()
    assert client.get(f"/authors/{author_id}/books").get_json() == books
    before = stats_of(client)
    created = client.post(f"/authors/{author_id}/books", json={"title": "New", "year": 2001})
    assert created.status_code == 201
    after_write = stats_of(client)
    assert after_write["invalidations"] - before["invalidations"] == 1
    fresh = client.get(f"/authors/{author_id}/books").get_json()
    assert fresh == books + [{"id": created.get_json()["id"], "title": "New", "year": 2001}]
    client.get("/authors")  # it read flask_author only: the write left it cached
    after = stats_of(client)
    assert after["misses"] - after_write["misses"] == 1
    assert local_hits(after) - local_hits(after_write) == 1
    per_author = {row["name"]: row["books"] for row in
                  client.get("/books/per-author").get_json()}
    assert sum(per_author.values()) == 4


def test_flask_write_endpoint_validates(flask_app):
    _, client = flask_app
    assert client.post("/authors/1/books", json={"title": 3}).status_code == 400
    assert client.post("/authors/999999/books",
                       json={"title": "x", "year": 1}).status_code == 404


WALKTHROUGH = ["GET /authors -> 200", "GET /authors -> 200", "GET /authors/1/books -> 200",
               "GET /authors/1/books -> 200", "POST /authors/1/books -> 201",
               "GET /authors/1/books -> 200", "GET /books/per-author -> 200",
               "DELETE /books/4 -> 204", "GET /authors/1/books -> 200"]


def walkthrough_calls(stdout: str) -> list:
    return [line.split(" [")[0].split(" {")[0].strip() for line in stdout.splitlines()
            if " -> " in line]


def pg_tables(schema: str) -> list:
    db = peewee.PostgresqlDatabase("test", host="127.0.0.1", port=5432, user="postgres")
    try:
        return sorted(t for t in db.get_tables(schema=schema) if t.startswith("flask_"))
    finally:
        db.close()


def test_flask_walkthrough_on_a_temporary_sqlite_file(tmp_path):
    """No DATABASE_URL and no cache directories: a temporary SQLite file and temporary cache
    directories, like every example; nothing written to the per-user cache directory."""
    result = run_example("flask_app.py", tmp_path, None, "--walkthrough", cache_dirs=False)
    assert result.returncode == 0, result.stderr
    assert walkthrough_calls(result.stdout) == WALKTHROUGH
    assert "(memory 1, L1 0, L2 0)" in result.stdout
    assert not (tmp_path / "home").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]  # and its temporary files are gone:
    assert list((tmp_path / "tmp").iterdir()) == []


def test_flask_walkthrough_script_leaves_postgresql_as_it_found_it(tmp_path, pg_schema):
    """Run twice on the same database: the same calls and rows each time (the book it adds is
    deleted again), and no flask_* tables left afterwards."""
    outputs = []
    for _ in range(2):
        result = run_example("flask_app.py", tmp_path, pg_url(pg_schema), "--walkthrough")
        assert result.returncode == 0, result.stderr
        assert pg_tables(pg_schema) == []
        outputs.append(result.stdout)
    assert walkthrough_calls(outputs[0]) == walkthrough_calls(outputs[1]) == WALKTHROUGH
    assert "(memory 1, L1 0, L2 0)" in outputs[0]


def test_flask_walkthrough_keeps_tables_it_did_not_create(tmp_path, pg_schema, make_cache,
                                                         monkeypatch):
    """An application's existing tables stay, with exactly their rows."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("flask_app")
    common = importlib.import_module("common")
    module.create_app(common.database_from_url(pg_url(pg_schema), make_cache()))
    try:
        result = run_example("flask_app.py", tmp_path, pg_url(pg_schema), "--walkthrough")
        assert result.returncode == 0, result.stderr
        assert pg_tables(pg_schema) == ["flask_author", "flask_book"]
        with module.database:
            assert [(b.author_id, b.title) for b in module.Book.select().order_by(module.Book.id)] \
                == [(1, "The Dispossessed"), (1, "Lathe of Heaven"), (2, "Solaris")]
    finally:
        module.database.drop_tables([module.Author, module.Book])
        module.database.close()
        module.database.stop_listener()
