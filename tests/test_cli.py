"""The ``peewee-kvcache`` command line, always through its real entry point in a subprocess
(``python -m peewee_kvcache``), against caches populated beforehand with the library itself."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import peewee
import pytest

from peewee_kvcache import (CachedSqliteDatabase, CloudflareKVCache, CloudflareKVNamespace,
                            LocalKVNamespace)
from peewee_kvcache.kv.base import KVNamespace, KVPair
from peewee_kvcache.testing.kv_server import KVServer
from peewee_kvcache.cli.maintenance import Maintenance

# runs in the full tox environment (py311): see tox.ini
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOKEN = "cli-test-token-4Kq"
CF_ENV = {"CLOUDFLARE_ACCOUNT_ID": "acc", "CLOUDFLARE_KV_NAMESPACE_ID": "ns",
          "CLOUDFLARE_API_TOKEN": TOKEN}


def cli_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """A clean cache configuration (no inherited CLOUDFLARE_* or PEEWEE_KVCACHE_* variables)
    plus ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CLOUDFLARE_", "PEEWEE_KVCACHE_"))}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**clean, **(env or {})}


def run_cli(*args: str, env: Optional[Dict[str, str]] = None, stdin: str = "",
            timeout: float = 120, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run the command line in a clean environment (see :func:`cli_env`)."""
    return subprocess.run([sys.executable, "-m", "peewee_kvcache", *args], env=cli_env(env),
                          input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def run_json(*args: str, env: Optional[Dict[str, str]] = None) -> dict:
    result = run_cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Author(peewee.Model):
    name = peewee.CharField()

    class Meta:
        database = None
        table_name = "author"


class Book(peewee.Model):
    author = peewee.ForeignKeyField(Author)
    title = peewee.CharField()

    class Meta:
        database = None
        table_name = "book"


@pytest.fixture
def env(tmp_path) -> Dict[str, str]:
    """The cache's directories, given to the command line the way an operator would."""
    return {"PEEWEE_KVCACHE_KV_DIR": str(tmp_path / "kv"),
            "PEEWEE_KVCACHE_L1_DIR": str(tmp_path / "l1")}


def open_cache(env: Dict[str, str], namespace: Optional[KVNamespace] = None,
               prefix: str = "pkv:") -> CloudflareKVCache:
    return CloudflareKVCache(namespace or LocalKVNamespace(env["PEEWEE_KVCACHE_KV_DIR"]),
                             l1_directory=env["PEEWEE_KVCACHE_L1_DIR"], prefix=prefix)


def populate(tmp_path: Path, cache: CloudflareKVCache) -> Dict[str, int]:
    """Cache 3 author queries, a tagged join and a doubly tagged book query; the cache's own
    ``get_stats()`` afterwards (before it is closed)."""
    db = CachedSqliteDatabase(str(tmp_path / f"app-{cache.prefix.strip(':')}.db"), cache=cache)
    db.bind([Author, Book])
    db.create_tables([Author, Book])
    Book.create(author=Author.create(name="ada"), title="notes")
    for i in range(3):
        list(Author.select().where(Author.id > i).with_cache(ex=300))
    list(Author.select().join(Book).with_cache(ex=300, tag="home"))
    list(Book.select().with_cache(ex=300, tag=["home", "extra"]))
    cache.drain()
    stats = cache.get_stats().as_dict()
    db.close()
    return stats


def author_and_book_hits(env: Dict[str, str], tmp_path: Path) -> Dict[str, int]:
    """Re-run one author and one book query of ``populate`` with a fresh cache object on the same
    directories: which were still cached (L1 or L2) and which went to the database."""
    cache = open_cache(env)
    try:
        db = CachedSqliteDatabase(str(tmp_path / "app-pkv.db"), cache=cache)
        db.bind([Author, Book])
        list(Author.select().where(Author.id > 0).with_cache(ex=300))
        author = cache.counters.snapshot()
        list(Book.select().with_cache(ex=300, tag=["home", "extra"]))
        book = cache.counters.snapshot()
        db.close()
        return {"author_hits": author["hits"], "book_hits": book["hits"] - author["hits"]}
    finally:
        cache.close()


@pytest.fixture
def populated(tmp_path, env) -> Dict[str, int]:
    cache = open_cache(env)
    try:
        return populate(tmp_path, cache)
    finally:
        cache.close()


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def json_error(result: subprocess.CompletedProcess, code: int) -> Dict[str, object]:
    """Under --json a failure is one JSON document on stdout (and its line on stderr, the last
    one: clear's question comes before it)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == code and line == f"{error['command']}: {error['message']}"
    return error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["demo"], ["stats"], ["invalidate"], ["clear"],
                                     ["index"], ["index", "rebuild"], ["serve-kv"]])
def test_help_has_a_description_and_an_example(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    usage, description = result.stdout.split("\n\n")[:2]
    assert usage.startswith("usage: peewee-kvcache")
    assert len(description.split()) >= 12  # a paragraph, not a label
    example = result.stdout.split("example")[-1]
    assert "\nexample" in result.stdout and "  peewee-kvcache " in example


def test_no_command_is_a_usage_error():
    assert run_cli().returncode == 2


# --- demo ---------------------------------------------------------------------------------------

def test_demo_prints_hits_misses_and_timings(env):
    result = run_cli("demo", env=env)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())  # rich wraps lines to the terminal's width
    for text in ("hit", "miss", "L1", "L2", "database", "invalidations +1", "Time per read",
                 "rolled back", "get_stats()", "memory hit", "inside the transaction",
                 "after ROLLBACK", "outbox_jobs", "pending_l2_work",
                 # why a first read costs more than the query
                 "A query's first read costs more than the query alone: its tables are read "
                 "from Peewee's query tree",
                 # the closing notes fit the backend: SQLite is no network database
                 "SQLite runs inside this process, so there is no network round trip to save",
                 "after drain() these are the second sweeps every write gets 10 s after its "
                 "first"):
        assert text in out, text
    assert "network database" not in out and "round trip to the database server" not in out


def test_demo_json_is_consistent(env):
    started = time.monotonic()
    report = run_json("demo", env=env)
    assert time.monotonic() - started < 30
    assert report["backend"] == "sqlite" and report["resweep_after_s"] == 10
    totals = report["totals"]
    assert totals["memory_hits"] >= 1 and totals["l2_hits"] >= 1
    assert totals["invalidations"] >= 1 and totals["misses"] >= 1
    assert totals["hits"] == totals["memory_hits"] + totals["l1_hits"] + totals["l2_hits"]
    for name, total in totals.items():
        assert total == sum(step["counters"][name] for step in report["steps"]), name
        if name in report["final_stats"]:
            assert report["final_stats"][name] == total, name
    for step in report["steps"]:  # every read's levels agree with the counters it moved
        runs, counters = step["runs"], step["counters"]
        if runs:
            assert sum(r["served_by"] == "memory" for r in runs) == counters["memory_hits"]
            assert sum(r["l1"] == "hit" for r in runs) == counters["l1_hits"]
            assert sum(r["l2"] == "hit" for r in runs) == counters["l2_hits"]
            assert sum(r["l2"] == "not asked" for r in runs) == counters["l2_skipped_cost"]
            assert sum(r["served_by"] == "database" for r in runs) == counters["misses"]
    by_title = {step["title"]: step for step in report["steps"]}
    # the very first read asks L2 (its speed is unknown); the join, a query never run here,
    # goes to the database, which measures it
    assert [(r["l2"], r["served_by"]) for r in by_title["First reads"]["runs"]] == \
        [("miss", "database"), ("not asked", "database")]
    assert {r["served_by"] for r in by_title["Same reads again"]["runs"]} == {"memory"}
    assert by_title["Write: a new review"]["counters"]["invalidations"] == 1
    after_write = [r["served_by"] for r in by_title["Reads after the write"]["runs"]]
    assert after_write == ["database", "memory", "memory"]
    rollback = by_title["Transaction rolled back"]
    assert rollback["counters"]["invalidations"] == 0
    assert [(r["when"], r["rows"]) for r in rollback["runs"]] == [
        ("inside the transaction", 0), ("inside the transaction", 6), ("after ROLLBACK", 5)]
    assert rollback["runs"][-1]["served_by"] == "memory"
    emptied = by_title["L1 emptied (a new host, a restart)"]["runs"]
    # the join costs the database far more than an L2 read: L2 serves it; the 1-table lookup
    # costs about what L2 does: L2 serves it or, where it does not pay, is not asked
    assert [r["served_by"] for r in emptied] == ["L2", emptied[1]["served_by"], "memory"]
    assert (emptied[1]["l2"], emptied[1]["served_by"]) in [("hit", "L2"),
                                                           ("not asked", "database")]
    for timings in report["timings_ms"].values():
        assert timings["database"] > 0 and timings["memory"] > 0
        assert timings["l2"] is None or timings["l2"] > 0
    assert report["timings_ms"]["top-rated authors (join of 3, AVG)"]["l2"] > 0
    final = report["final_stats"]  # the writes' second sweeps wait; nothing else does
    assert final["outbox_jobs"] >= 2 and final["pending_l2_work"] == 0
    # the demo dropped its tables, which swept its keys from the namespace it was given
    assert run_json("stats", env=env)["total_keys"] == 0


def test_demo_on_postgresql(pg_schema, env):
    url = (f"postgresql://postgres:secret-pw@127.0.0.1:5432/test?options=-c%20search_path%3D"
           f"{pg_schema}")
    result = run_cli("demo", "--json", "--database", url, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["database"] == "postgresql://postgres@127.0.0.1:5432/test"
    assert "secret-pw" not in result.stdout + result.stderr
    assert report["totals"]["l2_hits"] >= 1
    db = peewee.PostgresqlDatabase("test", host="127.0.0.1", port=5432, user="postgres")
    assert not [t for t in db.get_tables(schema=pg_schema) if t.startswith("pkv_demo_")]
    db.close()


def test_demo_on_sqlite_urls(tmp_path, env):
    """What the help shows: sqlite:///relative/path from the current directory (so
    sqlite:///tmp/x.db is ./tmp/x.db), sqlite:////absolute/path; a missing directory is a usage
    error naming both readings."""
    (tmp_path / "tmp").mkdir()
    help_text = " ".join(run_cli("demo", "--help").stdout.split())
    assert "sqlite:///relative/path.db or sqlite:////absolute/path.db" in help_text
    relative = run_cli("demo", "--json", "--database", "sqlite:///tmp/x.db", env=env,
                       cwd=tmp_path)
    assert relative.returncode == 0, relative.stderr
    assert json.loads(relative.stdout)["database"] == "sqlite:///tmp/x.db"
    assert (tmp_path / "tmp" / "x.db").is_file()
    absolute = tmp_path / "abs.db"
    result = run_cli("demo", "--json", "--database", f"sqlite:///{absolute}", env=env)
    assert result.returncode == 0, result.stderr
    assert absolute.is_file()
    db = peewee.SqliteDatabase(str(absolute))
    assert db.get_tables() == []  # the demo dropped its tables
    db.close()
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    line = one_line_error(run_cli("demo", "--database", "sqlite:///tmp/x.db", env=env,
                                  cwd=elsewhere), 2)
    assert line == (f"peewee-kvcache demo: --database sqlite:///tmp/x.db: no directory "
                    f"{elsewhere}/tmp for the SQLite file 'tmp/x.db' (sqlite:///relative/path "
                    "is read from the current directory, sqlite:////absolute/path from /); "
                    "for /tmp/x.db write sqlite:////tmp/x.db")


def test_demo_database_errors(env):
    line = one_line_error(run_cli("demo", "--database", "oracle://db/x", env=env), 2)
    assert "unsupported scheme 'oracle'" in line
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    assert "cannot connect to" in one_line_error(run_cli("demo", "--database", closed, env=env), 1)


# --- stats --------------------------------------------------------------------------------------

def test_stats_json_matches_the_cache(populated, env):
    stats = run_json("stats", env=env)
    for name in ("total_keys", "table_keys", "tag_keys", "l1_entries"):
        assert stats[name] == populated[name], name
    assert stats["total_keys"] == 5 and stats["markers"] == 4
    assert stats["by_table"] == {"author": 4, "book": 2}
    assert stats["by_tag"] == {"extra": 1, "home": 2}
    assert stats["prefix"] == "pkv:" and stats["l1_directory"] == env["PEEWEE_KVCACHE_L1_DIR"]


def test_stats_human_output(populated, env):
    result = run_cli("stats", env=env)
    assert result.returncode == 0, result.stderr
    for text in ("total_keys", "author", "book", "home", "get_stats()"):
        assert text in result.stdout


def test_flags_override_the_environment(tmp_path, env):
    cache = open_cache(env, prefix="app1:")
    try:
        populated = populate(tmp_path, cache)
    finally:
        cache.close()
    flags = ["--kv", "local", "--kv-dir", env["PEEWEE_KVCACHE_KV_DIR"],
             "--l1-dir", env["PEEWEE_KVCACHE_L1_DIR"]]
    elsewhere = {"PEEWEE_KVCACHE_KV": "cloudflare", "PEEWEE_KVCACHE_KV_DIR": str(tmp_path / "x"),
                 "PEEWEE_KVCACHE_L1_DIR": str(tmp_path / "y"), "PEEWEE_KVCACHE_PREFIX": "zz:"}
    stats = run_json("stats", *flags, "--prefix", "app1:", env=elsewhere)
    assert stats["total_keys"] == populated["total_keys"] == 5
    assert run_json("stats", *flags, env=elsewhere)["total_keys"] == 0  # prefix zz:
    assert run_json("stats", env={**env, "PEEWEE_KVCACHE_PREFIX": "app1:"})["total_keys"] == 5


def test_configuration_errors_exit_2(tmp_path, env, populated):
    line = one_line_error(run_cli("stats", env={**env, "PEEWEE_KVCACHE_KV_DIR":
                                                str(tmp_path / "typo")}), 2)
    assert "no local KV namespace at" in line and "typo" in line
    assert "PEEWEE_KVCACHE_KV" in one_line_error(
        run_cli("stats", env={**env, "PEEWEE_KVCACHE_KV": "redis"}), 2)
    assert "prefix" in one_line_error(run_cli("stats", "--prefix", "p" * 65, env=env), 2)
    assert run_cli("stats", "--kv", "redis", env=env).returncode == 2


# --- invalidate ---------------------------------------------------------------------------------

def test_invalidate_table_removes_its_entries(populated, env, tmp_path):
    assert author_and_book_hits(env, tmp_path) == {"author_hits": 1, "book_hits": 1}
    report = run_json("invalidate", "--table", "Author", env=env)
    # the 3 author queries and the join, whose entry lives under its first table
    assert report == {"tables": ["author"], "tags": [], "l2_swept": True, "l2_keys_deleted": 4,
                      "l2_keys_by_name": {"table author": 4}, "warnings": []}
    cache = open_cache(env)
    try:
        keys = cache.l2_entry_keys()
    finally:
        cache.close()
    assert keys and not [k for k in keys if k.startswith("pkv:t:author:")]
    stats = run_json("stats", env=env)
    assert "author" not in stats["by_table"] and stats["total_keys"] == 1  # the book query's
    assert author_and_book_hits(env, tmp_path) == {"author_hits": 0, "book_hits": 1}


def test_invalidate_tag_and_human_output(populated, env):
    result = run_cli("invalidate", "--tag", "extra", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Invalidated tag extra: L1 tokens renewed, 2 L2 keys "
                                    "deleted from local KV namespace")  # marker and entry
    assert result.stderr == ""
    assert run_json("stats", env=env)["total_keys"] == populated["total_keys"] - 1


def test_invalidate_a_name_nothing_depends_on_warns(populated, env):
    """The CLI knows no models: a name under which L2 holds nothing (a typo, a model's class
    name instead of its table's) is reported, and the exit code stays 0 (it was done)."""
    result = run_cli("invalidate", "--table", "no_such_table", "--table", "book", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "peewee-kvcache invalidate: warning: no cached entries in L2 depend on table "
        "no_such_table (is it the table's name in the database, as in Meta.table_name?)"]
    # the book query, the join's marker under book and the join it points at
    assert "Invalidated table no_such_table, table book: L1 tokens renewed, 3 L2 keys " \
        "deleted" in result.stdout
    report = run_json("invalidate", "--tag", "nothing", "--table", "author", env=env)
    assert report["l2_keys_by_name"] == {"table author": 3, "tag nothing": 0}
    assert report["l2_keys_deleted"] == 3
    assert report["warnings"] == ["no cached entries in L2 carry tag nothing"]
    assert run_json("stats", env=env)["total_keys"] == 0


def test_invalidate_needs_a_table_or_a_tag(env, populated):
    assert "--table or --tag" in one_line_error(run_cli("invalidate", env=env), 2)
    assert "tag" in one_line_error(run_cli("invalidate", "--tag", " ", env=env), 2)


# --- clear --------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["n\n", "", "nope\n"])
def test_clear_declined_keeps_everything(populated, env, answer):
    result = run_cli("clear", env=env, stdin=answer)
    assert result.returncode == 1
    assert "[y/N]" in result.stderr and "nothing was deleted" in result.stderr
    assert "9 L2 keys" in result.stderr  # 5 results and 4 markers
    stats = run_json("stats", env=env)
    assert (stats["total_keys"], stats["l1_entries"]) == (5, populated["l1_entries"])


def test_clear_yes_empties_only_its_prefix(tmp_path, env):
    for prefix in ("pkv:", "other:"):
        cache = open_cache(env, prefix=prefix)
        try:
            populate(tmp_path, cache)
        finally:
            cache.close()
    assert run_json("clear", "--yes", env=env) == {"deleted_keys": 9, "l1_cleared": True}
    stats = run_json("stats", env=env)
    assert (stats["total_keys"], stats["markers"], stats["l1_entries"]) == (0, 0, 0)
    assert run_json("stats", "--prefix", "other:", env=env)["total_keys"] == 5


def test_clear_confirmed_on_stdin(populated, env):
    result = run_cli("clear", env=env, stdin="YES\n")
    assert result.returncode == 0, result.stderr
    assert "Deleted 9 L2 keys" in result.stdout
    assert run_json("stats", env=env)["total_keys"] == 0


# --- index rebuild ------------------------------------------------------------------------------

def test_index_rebuild_removes_planted_dangling_markers(populated, env):
    namespace = LocalKVNamespace(env["PEEWEE_KVCACHE_KV_DIR"])
    now_ms = int(time.time() * 1000)
    old = now_ms - 3_600_000
    planted = {"pkv:t:book:" + "a" * 40: {"e": "pkv:t:author:" + "f" * 40, "c": old},
               "pkv:g:home:" + "b" * 40: {"e": "pkv:t:author:" + "e" * 40, "c": old},
               "pkv:g:home:" + "c" * 40: {"e": "elsewhere:t:x:" + "d" * 40}}  # unknown age
    recent = {"pkv:g:extra:" + "d" * 40: {"e": "pkv:t:book:" + "9" * 40, "c": now_ms}}
    for key, metadata in {**planted, **recent}.items():
        namespace.put(key, b"1", expiration_ttl=3600, metadata=metadata)
    before = {info.name for info in namespace.list_all("pkv:")}
    report = run_json("index", "rebuild", env=env)
    assert report == {"entries": 5, "markers": 8, "dangling_removed": 3,
                      "dangling_recent_kept": 1}
    after = {info.name for info in namespace.list_all("pkv:")}
    assert after == before - set(planted)
    again = run_json("index", "rebuild", env=env)
    assert (again["dangling_removed"], again["markers"]) == (0, 5)
    human = run_cli("index", "rebuild", env=env)
    assert human.returncode == 0 and "dangling_removed" in human.stdout
    namespace.close()


def test_index_rebuild_and_clear_page_through_thousands_of_keys(populated, env):
    namespace = LocalKVNamespace(env["PEEWEE_KVCACHE_KV_DIR"])
    old = int(time.time() * 1000) - 3_600_000
    namespace.bulk_put([KVPair(f"pkv:t:ghost:{i:040x}", b"1", expiration_ttl=3600,
                               metadata={"e": f"pkv:t:gone:{i:040x}", "c": old})
                        for i in range(2_100)])
    pages = []
    counts = Maintenance(namespace, "pkv:", progress=lambda *call: pages.append(call)).count()
    assert counts.markers == 2_104 and counts.by_table["ghost"] == 2_100
    assert [done for _, done, _ in pages] == [0, 1000, 2000, 2106, 2109]  # per page, e: t: g:
    assert run_json("index", "rebuild", env=env)["dangling_removed"] == 2_100
    assert run_json("stats", env=env)["markers"] == 4
    namespace.bulk_put([KVPair(f"pkv:e:{i:040x}", b"x", expiration_ttl=3600)
                        for i in range(1_500)])
    assert run_json("clear", "--yes", env=env)["deleted_keys"] == 1_509
    assert not list(namespace.list_all("pkv:"))
    namespace.close()


# --- errors under --json ---------------------------------------------------------------------

def test_json_errors_are_json_on_stdout(tmp_path, env, populated):
    usage = json_error(run_cli("stats", "--json", "--bogus", env=env), 2)
    assert usage == {"command": "peewee-kvcache", "exit_code": 2,
                     "message": "error: unrecognized arguments: --bogus"}
    config = json_error(run_cli("stats", "--json", env={**env, "PEEWEE_KVCACHE_KV_DIR":
                                                        str(tmp_path / "typo")}), 2)
    assert config["command"] == "peewee-kvcache stats"
    assert config["message"].startswith("no local KV namespace at")
    declined = json_error(run_cli("clear", "--json", env=env, stdin="n\n"), 1)
    assert declined["message"] == "aborted: nothing was deleted"
    cf = {**CF_ENV, **env, "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{free_port()}/client/v4"}
    unreachable = json_error(run_cli("index", "rebuild", "--json", "--kv", "cloudflare",
                                     env=cf), 1)
    assert unreachable["command"] == "peewee-kvcache index rebuild"
    assert unreachable["message"].startswith("KV error: ") and TOKEN not in unreachable["message"]


def test_without_json_a_usage_error_shows_the_usage(env):
    result = run_cli("stats", "--bogus", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: peewee-kvcache")
    assert result.stderr.splitlines()[-1] == \
        "peewee-kvcache: error: unrecognized arguments: --bogus"


# --- serve-kv -----------------------------------------------------------------------------------

@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_serve_kv_bad_port_is_a_usage_error(tmp_path, port):
    result = run_cli("serve-kv", "--data", str(tmp_path / "kv"), "--port", port)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "usage: peewee-kvcache serve-kv" in result.stderr
    assert result.stderr.splitlines()[-1] == ("peewee-kvcache serve-kv: error: argument --port: "
                                              f"expected a port from 0 to 65535, not '{port}'")
    error = json_error(run_cli("serve-kv", "--json", "--data", str(tmp_path), "--port", port), 2)
    assert error["command"] == "peewee-kvcache serve-kv" and "--port" in error["message"]


def test_serve_kv_takes_json_and_verbose(tmp_path):
    """--json: one line once listening (a script reads it while the server runs); -v: request
    lines on stderr, the token never."""
    server = subprocess.Popen([sys.executable, "-m", "peewee_kvcache", "serve-kv", "--port", "0",
                               "--data", str(tmp_path / "kv"), "--json", "-v"],
                              env=cli_env({"PEEWEE_KVCACHE_SERVER_TOKEN": TOKEN}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        assert set(info) == {"base_url", "admin_url", "account_id", "namespace_id", "data"}
        kv = CloudflareKVNamespace(info["account_id"], info["namespace_id"], TOKEN,
                                   base_url=info["base_url"])
        kv.put("k", b"v", expiration_ttl=3600)
        assert kv.get("k") == b"v"
        kv.close()
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert stdout == ""
    assert "peewee_kvcache.testing.handler: 127.0.0.1 \"PUT /client/v4/accounts/" in stderr
    assert TOKEN not in stderr


# --- Cloudflare ---------------------------------------------------------------------------------

@pytest.mark.parametrize("present", [[], ["CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_KV_NAMESPACE_ID"]])
def test_cloudflare_without_credentials_exits_2(env, present):
    line = one_line_error(run_cli("stats", "--kv", "cloudflare",
                                  env={**env, **{k: CF_ENV[k] for k in present}}), 2)
    assert "CLOUDFLARE_API_TOKEN" in line
    for variable in CF_ENV:
        assert (variable in line) == (variable not in present)


@pytest.fixture
def kv_server(tmp_path) -> Iterator[KVServer]:
    with KVServer(tmp_path / "server", api_token=TOKEN, account_id="acc",
                  namespace_id="ns") as server:
        yield server


def test_cloudflare_against_a_kv_server(kv_server, tmp_path, env):
    namespace = CloudflareKVNamespace("acc", "ns", TOKEN, base_url=kv_server.base_url)
    cache = open_cache(env, namespace=namespace)
    try:
        populated = populate(tmp_path, cache)
    finally:
        cache.close()
    cf = {**CF_ENV, "CLOUDFLARE_API_BASE_URL": kv_server.base_url,
          "PEEWEE_KVCACHE_KV": "cloudflare", "PEEWEE_KVCACHE_L1_DIR": env["PEEWEE_KVCACHE_L1_DIR"]}
    result = run_cli("stats", "--json", env=cf)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    for name in ("total_keys", "table_keys", "tag_keys"):
        assert stats[name] == populated[name], name
    assert "Cloudflare KV namespace ns" in stats["kv"]
    swept = run_cli("invalidate", "--table", "book", env=cf)
    assert swept.returncode == 0, swept.stderr
    assert run_json("stats", env=cf)["by_table"] == {"author": 3}
    for output in (result.stdout, result.stderr, swept.stdout, swept.stderr):
        assert TOKEN not in output


@pytest.mark.parametrize("command", [["stats"], ["invalidate", "--table", "author"],
                                     ["clear", "--yes"], ["index", "rebuild"],
                                     ["demo"]])
def test_kv_unreachable_is_one_line_and_exit_1(env, command):
    cf = {**CF_ENV, **env, "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{free_port()}/client/v4"}
    line = one_line_error(run_cli(*command, "--kv", "cloudflare", env=cf), 1)
    assert line.startswith(f"peewee-kvcache {' '.join(command[:1 + (command[0] == 'index')])}:")
    assert TOKEN not in line


def test_a_cache_fault_in_a_command_names_its_exception_and_no_query(env):
    """-v shows the fault with the exception's type and message; a command runs no query, so
    nothing says it is "serving from the database"."""
    cf = {**CF_ENV, **env, "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{free_port()}/client/v4"}
    result = run_cli("invalidate", "--table", "author", "--kv", "cloudflare", "-v", env=cf)
    assert result.returncode == 1, result.stderr
    assert "\npeewee_kvcache: L2 invalidation listing failed (KVError: GET /keys failed" \
        in result.stderr
    assert "peewee_kvcache: peewee_kvcache:" not in result.stderr  # the logger's name once
    assert "database" not in result.stderr.lower()


# --- the KV gateway Worker --------------------------------------------------------------------

WORKER_VARIABLES = ("PEEWEE_KVCACHE_WORKER_URL", "PEEWEE_KVCACHE_WORKER_SECRET")


@pytest.mark.parametrize("present", [[], ["PEEWEE_KVCACHE_WORKER_URL"]])
def test_worker_without_configuration_exits_2(env, present):
    given = {name: "https://gateway.example" for name in present}
    line = one_line_error(run_cli("stats", "--kv", "worker", env={**env, **given}), 2)
    assert line.startswith("peewee-kvcache stats: --kv worker: missing environment")
    for variable in WORKER_VARIABLES:
        assert (variable in line) == (variable not in present)


def test_worker_against_the_gateway_in_workerd(workerd_gateway, tmp_path, env):
    """Every command that takes --kv, against the real Worker: stats and index rebuild see what
    a cache stored through the gateway, invalidate sweeps it, clear empties it; the secret is
    never printed."""
    from tests.conftest import WORKERD_SECRET
    workerd_gateway.clear()
    cache = open_cache(env, namespace=workerd_gateway.namespace())
    try:
        populated = populate(tmp_path, cache)
    finally:
        cache.close()
    gw = {"PEEWEE_KVCACHE_KV": "worker", "PEEWEE_KVCACHE_WORKER_URL": workerd_gateway.url,
          "PEEWEE_KVCACHE_WORKER_SECRET": WORKERD_SECRET,
          "PEEWEE_KVCACHE_L1_DIR": env["PEEWEE_KVCACHE_L1_DIR"]}
    outputs = []

    def run(*args: str) -> dict:
        result = run_cli(*args, "--json", env=gw)
        outputs.extend([result.stdout, result.stderr])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    stats = run("stats")
    for name in ("total_keys", "table_keys", "tag_keys"):
        assert stats[name] == populated[name], name
    assert stats["kv"] == f"KV gateway Worker at {workerd_gateway.url}"
    assert run("index", "rebuild")["dangling_removed"] == 0
    assert run("invalidate", "--table", "book")["l2_keys_by_name"] == {"table book": 3}
    assert run("stats")["by_table"] == {"author": 3}
    namespace = workerd_gateway.namespace()
    left = len(list(namespace.list_all("pkv:")))      # the 3 author entries, markers, tags'
    assert left >= 3 and run("clear", "--yes")["deleted_keys"] == left
    assert list(namespace.list_all()) == []
    namespace.close()
    assert all(WORKERD_SECRET not in output for output in outputs)


def test_worker_with_a_wrong_secret_says_so_and_exits_1(workerd_gateway, env):
    """The README's check of a deployment: a wrong secret is one line naming the signature."""
    wrong = "w" * 40
    gw = {**env, "PEEWEE_KVCACHE_WORKER_URL": workerd_gateway.url,
          "PEEWEE_KVCACHE_WORKER_SECRET": wrong}
    line = one_line_error(run_cli("stats", "--kv", "worker", env=gw), 1)
    assert line == "peewee-kvcache stats: KV error: invalid request signature"


def test_worker_unreachable_is_one_line_and_exit_1(env):
    """With a URL configured the demo uses it, as every command does: it starts nothing."""
    gw = {**env, "PEEWEE_KVCACHE_WORKER_URL": f"http://127.0.0.1:{free_port()}",
          "PEEWEE_KVCACHE_WORKER_SECRET": "s" * 40}
    for command in ("stats", "demo"):
        line = one_line_error(run_cli(command, "--kv", "worker", env=gw), 1)
        assert line.startswith(f"peewee-kvcache {command}: KV error:") and "s" * 40 not in line


def test_demo_kv_worker_without_a_url_runs_the_worker_in_local_workerd(env):
    report = run_json("demo", "--kv", "worker", env=env)
    assert report["kv"].startswith("KV gateway Worker at http://127.0.0.1:")
    assert report["kv"].endswith("(the project's Worker in local workerd, for this demo)")
    first_reads = next(step for step in report["steps"] if step["title"] == "First reads")
    assert first_reads["runs"][0]["l2"] == "miss"     # the first read asks L2: the Worker answers
    final = report["final_stats"]                     # stored there, no L2 call failed
    assert final["table_keys"] >= 1 and final["l2_errors"] == final["l2_circuit_open"] == 0


def test_demo_kv_worker_without_a_url_or_node_exits_2(env, tmp_path):
    line = one_line_error(run_cli("demo", "--kv", "worker", env={**env, "PATH": str(tmp_path)}),
                          2)
    for text in (*WORKER_VARIABLES, "node is not on PATH", "npm ci --prefix worker"):
        assert text in line, text


# --- explain ---------------------------------------------------------------------------------

def test_explain_a_cached_query_and_an_uncacheable_one(env, tmp_path):
    """The SQL an application's query object sends, explained against that application's
    directories and database: where it is held, its key, what would serve it."""
    cache = open_cache(env)
    populate(tmp_path, cache)
    db = CachedSqliteDatabase(str(tmp_path / "app-pkv.db"), cache=cache)
    with db.bind_ctx([Author]):
        query = Author.select().where(Author.id > 0).with_cache(ex=300)
        sql, params = query.sql()
        expected = db.cache.explain(query)
    db.close()
    cache.close()
    database = f"sqlite:///{tmp_path / 'app-pkv.db'}"  # four slashes: an absolute path
    args = ["explain", sql, *(arg for p in params for arg in ("--param", str(p))),
            "--database", database]
    text = run_cli(*args, env=env)
    assert text.returncode == 0, text.stderr
    assert "tables:     author" in text.stdout and "cacheable:  yes" in text.stdout
    assert f"key:        {expected.key}" in text.stdout
    assert "l1:         holds it" in text.stdout and "served by:  l1" in text.stdout
    data = run_json(*args, env=env)
    assert data["key"] == expected.key and data["served_by"] == "l1"
    assert data["levels"]["l2"]["holds"] and data["tables"] == ["author"]
    volatile = run_json("explain", "SELECT random() FROM author", "--database", database,
                        env=env)
    assert not volatile["cacheable"] and volatile["reason"].startswith("volatile function")
    raw = run_json("explain", sql, "--raw", "--database", database, env=env)
    assert not raw["cacheable"] and raw["reason"].startswith("raw SQL is not cached")
