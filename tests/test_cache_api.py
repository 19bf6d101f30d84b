"""The cache object itself: the seed's get/put/on_mutate API, manual invalidation, statistics,
clear_all, key hygiene and isolation, fault tolerance, the default cache, the pooled PostgreSQL
database and read-your-writes across processes sharing one L1."""
from __future__ import annotations

import logging
import multiprocessing
import re
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import peewee
import pytest
from freezegun import freeze_time

import peewee_kvcache.cache.stampede
import peewee_kvcache.cache.stores
from peewee_kvcache import (CacheConfig, CachedPooledPostgresqlDatabase, CachedPostgresqlDatabase,
                            CachedResult, CachedMySQLDatabase, CachedSqliteDatabase,
                            CloudflareKVCache, LocalKVNamespace)
from peewee_kvcache.core.codec import UnsupportedValue
from peewee_kvcache.core.names import EVERYTHING
from peewee_kvcache.core.stats import COUNTERS
from tests.conftest import MY, PG, open_database
from tests.models import ALL, Post, User

RESULT = CachedResult(("id", "name"), [(1, "alice"), (2, "bob")])
OTHER = CachedResult(("n",), [(42,)])
START = datetime(2031, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
HEX40 = "[0-9a-f]{40}"


def entry_keys(cache):
    return cache.l2_entry_keys()


def all_keys(cache, prefix=None):
    return [info.name for info in cache.namespace.list_all(cache.prefix if prefix is None
                                                           else prefix)]


# --- the seed's API -------------------------------------------------------------------------------

def test_put_then_get_returns_the_result_from_l1_and_from_l2(cache):
    assert cache.get("q1", ["user"]) is None
    assert cache.put("q1", RESULT, ["user"]) is True
    assert cache.get("q1", ["user"]) == RESULT
    assert cache.drain(10)
    cache.clear_local()
    l2_hits = cache.get_stats().l2_hits
    assert cache.get("q1", ["user"]) == RESULT
    assert cache.get_stats().l2_hits == l2_hits + 1


def test_get_needs_the_same_arguments_as_put(cache):
    cache.put("q1", RESULT, ["user"])
    assert cache.get("q2", ["user"]) is None                         # another key
    assert cache.get("q1", ["user"], is_tag=True) is None            # a tag entry is separate
    assert cache.get("q1", ["user"], is_auto_invalidate=False) is None
    assert cache.get("q1", ["user"]) == RESULT


@pytest.mark.parametrize("how", ["on_mutate", "invalidate"])
@pytest.mark.parametrize("tables", [["user"], "user", User, peewee.Table("user"), [User, "post"]],
                         ids=["list", "str", "model", "table", "mixed"])
def test_writes_to_a_table_drop_its_entries(cache, how, tables):
    cache.put("users", RESULT, [User])
    cache.put("posts_and_users", OTHER, ["post", "user"])
    cache.put("comments", OTHER, ["comment"])
    assert cache.drain(10)
    getattr(cache, how)(tables=tables)
    assert cache.get("users", [User]) is None
    assert cache.get("posts_and_users", ["post", "user"]) is None
    assert cache.get("comments", ["comment"]) == OTHER
    assert cache.drain(10)
    assert len(entry_keys(cache)) == 1                               # L2 swept too
    cache.clear_local()
    assert cache.get("users", [User]) is None
    assert cache.get("comments", ["comment"]) == OTHER


def test_tag_entries_are_dropped_by_their_tag(cache):
    cache.put("feed", RESULT, ["post"], is_tag=True)
    cache.put("other", OTHER, [], is_tag=True)
    assert cache.get("feed", ["post"], is_tag=True) == RESULT
    cache.invalidate(tags="feed")
    assert cache.get("feed", ["post"], is_tag=True) is None
    assert cache.get("other", [], is_tag=True) == OTHER
    cache.put("feed", RESULT, ["post"], is_tag=True)
    cache.on_mutate(tags=["feed"])
    assert cache.get("feed", ["post"], is_tag=True) is None
    cache.put("feed", RESULT, ["post"], is_tag=True)
    cache.on_mutate(tables=["post"])                                 # and by its tables
    assert cache.get("feed", ["post"], is_tag=True) is None
    assert cache.get("other", [], is_tag=True) == OTHER


def test_manual_entries_ignore_table_writes_but_not_their_tag(cache):
    cache.put("feed", RESULT, ["post"], is_tag=True, is_auto_invalidate=False)
    cache.on_mutate(tables=["post"])
    cache.invalidate_names([EVERYTHING])                            # a write of unknown tables
    assert cache.get("feed", ["post"], is_tag=True, is_auto_invalidate=False) == RESULT
    cache.on_mutate(tags="feed")
    assert cache.get("feed", ["post"], is_tag=True, is_auto_invalidate=False) is None


def test_put_honours_its_config(cache):
    with freeze_time(START) as clock:
        cache.put("q", RESULT, ["user"], config=CacheConfig(ex=5))
        clock.tick(4)
        assert cache.get("q", ["user"]) == RESULT
        clock.tick(2)
        assert cache.get("q", ["user"]) is None


@pytest.mark.parametrize("response", [None, [(1, "alice")], {"columns": ("id",), "rows": []},
                                      (("id",), [(1,)])], ids=repr)
def test_put_refuses_anything_but_a_cached_result(cache, response):
    with pytest.raises(TypeError, match=type(response).__name__):
        cache.put("q", response, ["user"])
    assert cache.get_stats().stores == 0


@pytest.mark.parametrize("key", ["", None, 42, b"q"], ids=repr)
def test_seed_key_must_be_a_non_empty_str(cache, key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        cache.put(key, RESULT, ["user"])
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        cache.get(key, ["user"])


# --- invalidate() arguments -----------------------------------------------------------------------

def test_invalidate_tables_and_tags_together(cache):
    cache.put("u", RESULT, [User])
    cache.put("p", RESULT, ["post"])
    cache.put("a", RESULT, ["comment"], is_tag=True)
    cache.put("b", RESULT, ["comment"], is_tag=True)
    cache.put("c", RESULT, ["comment"])
    cache.invalidate(tables=[User, "post"], tags=["a"])
    assert cache.get("u", [User]) is None
    assert cache.get("p", ["post"]) is None
    assert cache.get("a", ["comment"], is_tag=True) is None
    assert cache.get("b", ["comment"], is_tag=True) == RESULT
    assert cache.get("c", ["comment"]) == RESULT


def test_one_str_tag_is_one_tag_not_its_characters(cache):
    for key in ("one", "o", "n", "e"):
        cache.put(key, RESULT, [], is_tag=True)
    cache.invalidate(tags="one")
    assert cache.get("one", [], is_tag=True) is None
    assert [cache.get(k, [], is_tag=True) for k in ("o", "n", "e")] == [RESULT] * 3


def test_one_str_table_is_one_table_not_its_characters(cache):
    cache.put("u", RESULT, ["user"])
    cache.put("s", RESULT, ["s"])
    cache.invalidate(tables="user")
    assert cache.get("u", ["user"]) is None
    assert cache.get("s", ["s"]) == RESULT


def test_table_names_are_matched_case_insensitively_and_bare(cache):
    cache.put("u", RESULT, ["user"])
    cache.invalidate(tables=["USER"])
    assert cache.get("u", ["user"]) is None


def test_invalidate_with_nothing_does_nothing(cache):
    cache.put("u", RESULT, ["user"])
    before = cache.get_stats().invalidations
    cache.invalidate()
    cache.invalidate(tables=[], tags=[])
    assert cache.get_stats().invalidations == before
    assert cache.get("u", ["user"]) == RESULT


BAD_TABLES = [42, [42], [""], ["  "], [None], [3.5], [b"user"], ["user", 7]]


@pytest.mark.parametrize("tables", BAD_TABLES, ids=repr)
@pytest.mark.parametrize("method", ["invalidate", "on_mutate", "get", "put"])
def test_bad_table_argument_is_refused_naming_it(cache, tables, method):
    bad = tables if not isinstance(tables, list) else next(
        t for t in tables if not (isinstance(t, str) and t.strip()))
    calls = {
        "invalidate": lambda: cache.invalidate(tables=tables),
        "on_mutate": lambda: cache.on_mutate(tables=tables),
        "get": lambda: cache.get("q", tables),
        "put": lambda: cache.put("q", RESULT, tables),
    }
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        calls[method]()


@pytest.mark.parametrize("tags, error, shown", [
    ("", ValueError, ""), ([""], ValueError, ""), ([7], TypeError, 7), (7, TypeError, 7),
])
def test_bad_tag_argument_is_refused_naming_it(cache, tags, error, shown):
    with pytest.raises(error, match=re.escape(repr(shown))):
        cache.invalidate(tags=tags)


# --- statistics -----------------------------------------------------------------------------------


@pytest.fixture
def cache(make_cache):
    """These tests read each level in turn: every miss asks L2 (not only where it pays)."""
    return make_cache(l1_reads="always", l2_reads="always")

@pytest.fixture
def data(db, bind):
    bind(*ALL)
    alice = User.create(name="alice", score=1)
    Post.create(user=alice, title="hello")
    db.cache.drain(10)
    return db


def test_stats_count_keys_and_lookups(data):
    cache = data.cache
    base = cache.get_stats()
    assert (base.total_keys, base.table_keys, base.tag_keys) == (0, 0, 0)
    assert (base.hits, base.misses, base.memory_hits, base.l1_hits, base.l2_hits,
            base.stores) == (0, 0, 0, 0, 0, 0)

    join = Post.select(Post, User).join(User).with_cache()          # reads post and user
    tagged = User.select().with_cache(tag="feed")                   # reads user, tag feed
    assert [p.user.name for p in join.clone()] == ["alice"]
    assert [u.name for u in tagged.clone()] == ["alice"]
    assert cache.drain(10)
    stats = cache.get_stats()
    # 2 results; markers: post+user for the join, user for the tagged one; one tag marker
    assert (stats.total_keys, stats.table_keys, stats.tag_keys) == (2, 3, 1)
    assert (stats.hits, stats.misses, stats.stores, stats.l1_entries) == (0, 2, 2, 2)
    assert stats.l1_volume_bytes > 0 and stats.pending_l2_work == 0
    assert stats.hit_rate == 0.0

    list(join.clone())
    stats = cache.get_stats()
    assert (stats.hits, stats.misses, stats.memory_hits, stats.l1_hits, stats.l2_hits) == \
        (1, 2, 1, 0, 0)                                             # from process memory

    cache.clear_local()
    list(join.clone())                                              # from L2, backfilled
    list(join.clone())                                              # from memory again
    stats = cache.get_stats()
    assert (stats.hits, stats.misses, stats.memory_hits, stats.l1_hits, stats.l2_hits) == \
        (3, 2, 2, 0, 1)
    assert stats.hit_rate == pytest.approx(3 / 5)
    assert stats.total_keys == 2                                    # hits write nothing

    User.update(score=2).execute()                                  # both results read user
    assert cache.drain(10)
    stats = cache.get_stats()
    assert stats.total_keys == 0
    assert stats.invalidations >= 1

    data_dict = stats.as_dict()
    expected = set(COUNTERS) | {"total_keys", "table_keys", "tag_keys", "hit_rate", "l1_entries",
                                "l1_volume_bytes", "pending_l2_work"}
    assert expected <= set(data_dict)
    for name in expected - {"hit_rate"}:
        assert data_dict[name] == getattr(stats, name), name
    assert data_dict["hit_rate"] == stats.hit_rate


def test_stats_read_key_counts_from_l2_written_by_another_cache(make_cache):
    writer = make_cache("l1a")
    reader = make_cache("l1b")
    writer.put("q", RESULT, ["user", "post"])
    writer.put("t", RESULT, ["user"], is_tag=True)
    assert writer.drain(10)
    stats = reader.get_stats()
    assert (stats.total_keys, stats.table_keys, stats.tag_keys) == (2, 3, 1)
    assert stats.l1_entries == 0


# --- clear_all ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mine, theirs", [("a:", "b:"), ("tenant1", "tenant10"),
                                          ("app:", "app:v2:")])
def test_clear_all_empties_this_prefix_only(make_cache, mine, theirs):
    a = make_cache(prefix=mine)
    b = make_cache("l1b", prefix=theirs)
    for cache in (a, b):
        cache.put("q", RESULT, ["user", "post"])
        cache.put("t", OTHER, ["user"], is_tag=True)
    assert a.drain(10) and b.drain(10)
    theirs_before = sorted(all_keys(b))
    assert len(theirs_before) == 4  # q under t:post + marker t:user; t under g:t + marker t:user
    a.put("late", RESULT, ["user"])                                 # still queued: cleared too
    a.clear_all()
    assert a.get("q", ["user", "post"]) is None
    assert a.get("late", ["user"]) is None
    assert a.l1.stats()["l1_entries"] == 0
    assert [k for k in all_keys(a) if not k.startswith(theirs)] == []
    assert sorted(all_keys(b)) == theirs_before
    assert b.get("q", ["user", "post"]) == RESULT
    b.clear_local()
    assert b.get("t", ["user"], is_tag=True) == OTHER              # from L2: still there
    a.put("q", RESULT, ["user", "post"])                            # usable afterwards
    assert a.get("q", ["user", "post"]) == RESULT


# --- keys -----------------------------------------------------------------------------------------

def test_keys_hold_no_sql_parameters_or_data(data):
    cache = data.cache
    secret = "s3cr3t-param-value"
    User.create(name=secret, score=7)
    list(User.select().where(User.name == secret).with_cache())
    list(Post.select(Post, User).join(User).where(User.score == 7).with_cache(tag="feed"))
    assert cache.drain(10)
    keys = all_keys(cache, "")
    assert len(keys) == 1 + 3  # one entry per table/tag name: the first holds the result
    entries = cache.l2_entry_keys()
    assert len(entries) == 2
    key_shape = re.compile(rf"^pkv:(t:(user|post)|g:feed):({HEX40})$")
    digests = {k.rsplit(":", 1)[1] for k in entries}
    for key in keys:
        assert key_shape.match(key), key
        assert key.rsplit(":", 1)[1] in digests, key                # markers point at entries
        for leak in (secret, "select", "where", "7", "alice", '"'):
            assert leak not in key.lower().replace(key.rsplit(":", 1)[1], ""), (leak, key)


@contextmanager
def second_database(backend: str, request, tmp_path, cache) -> Iterator[peewee.Database]:
    """A second database whose tables have the same names as the first one's."""
    if backend == "sqlite":
        other = CachedSqliteDatabase(str(tmp_path / "other.db"), cache=cache)
        yield other
        other.close()
    elif backend == "postgres":
        import psycopg2
        schema = request.getfixturevalue("pg_schema") + "_b"
        admin = psycopg2.connect(dbname="test", **PG)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        other = CachedPostgresqlDatabase("test", cache=cache, options=f"-c search_path={schema}",
                                         **PG)
        try:
            yield other
        finally:
            other.close()
            with admin.cursor() as cur:
                cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
            admin.close()
    else:
        import pymysql
        name = request.getfixturevalue("mysql_database") + "_b"
        admin = pymysql.connect(**MY, autocommit=True)
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        other = CachedMySQLDatabase(name, cache=cache, **MY)
        try:
            yield other
        finally:
            other.close()
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE `{name}`")
            admin.close()


def test_databases_sharing_namespace_and_l1_never_see_each_others_results(
        db, bind, backend, make_cache, request, tmp_path):
    bind(User)
    User.create(name="alice")
    # the same L1 directory and namespace
    other_cache = make_cache(l1_reads="always", l2_reads="always")
    assert other_cache.l1.directory == db.cache.l1.directory
    with second_database(backend, request, tmp_path, other_cache) as other:
        with other.bind_ctx([User], bind_refs=False, bind_backrefs=False):
            other.drop_tables([User], safe=True)
            other.create_tables([User])
            User.create(name="bob")
        assert db.cache.drain(10) and other_cache.drain(10)  # the writes' sweeps are done

        def read(database):
            with database.bind_ctx([User], bind_refs=False, bind_backrefs=False):
                return [u.name for u in User.select().order_by(User.id).with_cache()]

        for _ in range(2):                                          # miss, then L1
            assert read(db) == ["alice"]
            assert read(other) == ["bob"]
        assert db.cache.drain(10) and other_cache.drain(10)
        assert len(entry_keys(db.cache)) == 2
        db.cache.clear_local()                                      # the shared L1 directory
        other_cache.clear_local()                                   # and each process memory
        assert read(other) == ["bob"]                               # from L2
        assert read(db) == ["alice"]
        assert db.cache.get_stats().l2_hits + other_cache.get_stats().l2_hits == 2


class Thing(peewee.Model):
    val = peewee.CharField(max_length=16, null=True)


LOOKALIKES = [None, "None", 0, False, ""]


def test_lookalike_parameters_get_their_own_entries(db, bind):
    bind(Thing)
    for value in (None, "None", "0", "False", ""):
        Thing.create(val=value)
    cache = db.cache

    def by_value(value, cached=True):
        query = Thing.select(Thing.id, Thing.val).where(Thing.val == value).order_by(Thing.id)
        return list(query.tuples().with_cache(cached))

    def echo(value, cached=True):
        query = Thing.select(peewee.Value(value).alias("v")).where(Thing.id == 1)
        return [(v, type(v).__name__) for (v,) in query.tuples().with_cache(cached)]

    for run in (by_value, echo):
        expected = {repr(v): run(v, cached=False) for v in LOOKALIKES}
        if run is by_value:                       # five different rows, one each
            assert sorted(r for rows in expected.values() for r in rows) == \
                [(i, v) for i, v in enumerate([None, "None", "0", "False", ""], 1)]
        stores = cache.get_stats().stores
        for value in LOOKALIKES:
            assert run(value) == expected[repr(value)], value           # miss
        assert cache.get_stats().stores == stores + len(LOOKALIKES)     # one entry each
        for value in LOOKALIKES:
            assert run(value) == expected[repr(value)], value           # L1
        assert cache.drain(10)
        cache.clear_local()
        for value in reversed(LOOKALIKES):
            assert run(value) == expected[repr(value)], value           # L2
    assert len(entry_keys(cache)) == 2 * len(LOOKALIKES)


# --- faults never fail a query -------------------------------------------------------------------

FAULTS = {
    "l1.get": (lambda c: c.l1, "get", "l1_errors"),
    "l1.tokens": (lambda c: c.l1, "tokens", "l1_errors"),
    "l1.entries.set": (lambda c: c.l1.entries, "set", "l1_errors"),
    "namespace.get": (lambda c: c.namespace, "get", "l2_errors"),
    "namespace.bulk_put": (lambda c: c.namespace, "bulk_put", "l2_errors"),
    "namespace.list_all": (lambda c: c.namespace, "list_all", "l2_errors"),
}


def warnings_logged(caplog):
    return [r for r in caplog.records
            if r.name == "peewee_kvcache" and r.levelno == logging.WARNING]


def cached_names():
    return sorted(u.name for u in User.select().with_cache())


def db_names():
    return sorted(u.name for u in User.select().with_cache(False))


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failing_level_never_fails_a_query(db, bind, fault, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="peewee_kvcache")
    bind(User)
    User.create(name="alice")
    cache = db.cache
    owner, attribute, counter = FAULTS[fault]
    calls = []

    def boom(*args, **kwargs):
        calls.append(args)
        raise OSError(f"injected {fault} failure")

    monkeypatch.setattr(owner(cache), attribute, boom)
    assert cached_names() == db_names() == ["alice"]
    assert cache.drain(10)
    assert cached_names() == ["alice"]
    User.create(name="bob")                                         # invalidation path
    assert cache.drain(10)
    assert cached_names() == db_names() == ["alice", "bob"]
    assert cache.drain(10)
    cache.clear_local()
    assert cached_names() == ["alice", "bob"]
    assert cache.drain(10)
    assert calls, "the fault was never exercised"
    assert cache.counters.snapshot()[counter] >= 1
    assert warnings_logged(caplog), "a degraded operation must be logged"


def test_a_failed_l2_invalidation_never_serves_the_stale_entry_later(db, bind, monkeypatch):
    """A sweep that fails leaves the old entry in KV; this host refuses L2 for the name while the
    pending flag lives (600 s), but once it lapses the stale entry must still not be served."""
    bind(User)
    User.create(name="alice")
    cache = db.cache
    with freeze_time(START) as clock:
        query = User.select(User.name).tuples().with_cache(ex=3600)
        assert list(query.clone()) == [("alice",)]
        assert cache.drain(10)
        real_list_all = cache.namespace.list_all

        def failing_list_all(*args, **kwargs):
            raise OSError("KV unreachable")

        monkeypatch.setattr(cache.namespace, "list_all", failing_list_all)
        User.update(name="bob").execute()
        assert cache.drain(10)
        monkeypatch.setattr(cache.namespace, "list_all", real_list_all)  # KV is back
        clock.tick(601)
        assert list(query.clone()) == [("bob",)]


def test_corrupt_l2_entry_is_a_miss(data, caplog):
    caplog.set_level(logging.WARNING, logger="peewee_kvcache")
    cache = data.cache
    assert cached_names() == ["alice"]
    assert cache.drain(10)
    (key,) = entry_keys(cache)
    cache.clear_local()
    cache.namespace.put(key, b"garbage", expiration_ttl=60)
    peewee.Database.execute_sql(data, "UPDATE %s SET name = 'carol'" % (   # behind the cache
        '`user`' if isinstance(data, peewee.MySQLDatabase) else '"user"'))
    before = cache.counters.snapshot()
    assert cached_names() == ["carol"]                              # from the database
    after = cache.counters.snapshot()
    assert after["codec_errors"] == before["codec_errors"] + 1
    assert after["misses"] == before["misses"] + 1
    assert after["l2_hits"] == before["l2_hits"]
    assert any("rejected" in r.getMessage() for r in warnings_logged(caplog))
    assert cache.drain(10)
    cache.clear_local()
    assert cached_names() == ["carol"]                              # rewritten, readable again
    assert cache.counters.snapshot()["l2_hits"] == after["l2_hits"] + 1


@pytest.mark.parametrize("writer_secret", ["one", None], ids=["other-secret", "unsigned"])
def test_entry_not_signed_with_our_secret_is_a_miss(make_cache, tmp_path, writer_secret, caplog):
    caplog.set_level(logging.WARNING, logger="peewee_kvcache")
    path = str(tmp_path / "shared.db")
    writer = CachedSqliteDatabase(path, cache=make_cache("l1a", secret=writer_secret))
    reader = CachedSqliteDatabase(path, cache=make_cache("l1b", secret="two"))
    writer.bind([User], bind_refs=False, bind_backrefs=False)
    writer.create_tables([User])
    User.create(name="alice")
    assert cached_names() == ["alice"]
    assert writer.cache.drain(10)
    assert len(entry_keys(writer.cache)) == 1
    peewee.Database.execute_sql(writer, "UPDATE \"user\" SET name = 'forged-stale'")
    with reader.bind_ctx([User], bind_refs=False, bind_backrefs=False):
        assert cached_names() == ["forged-stale"]                   # the entry was not trusted
    stats = reader.cache.counters.snapshot()
    assert stats["bad_signatures"] == 1
    assert stats["l2_hits"] == 0 and stats["hits"] == 0
    assert warnings_logged(caplog)
    writer.close()
    reader.close()


def test_unencodable_result_is_served_but_not_stored(data, monkeypatch):
    """Refused on the query's thread, or (a result of plain types, whose encoding the writer
    makes) on the writer's: served all the same, never in L1 or L2, its memory copy dropped."""
    cache = data.cache

    def refuse(*args, **kwargs):
        raise UnsupportedValue("cannot cache a value of type Weird")

    monkeypatch.setattr(peewee_kvcache.cache.stores, "encode_entry", refuse)
    assert cached_names() == ["alice"]
    assert cache.drain(10)
    assert cached_names() == ["alice"]
    assert cache.drain(10)
    stats = cache.get_stats()
    assert stats.uncacheable == 2
    assert (stats.hits, stats.misses) == (0, 2)
    assert stats.l1_entries == 0 and stats.total_keys == 0
    assert stats.l1_errors == 0 and stats.l2_errors == 0


def test_a_plain_result_is_encoded_by_the_writer_and_served_from_memory_meanwhile(
        data, monkeypatch):
    """A miss of plain values (ints, strings...) does not wait for its encoding: memory serves
    it at once, the writer thread encodes it for L1 and L2. (The first miss of a shape is
    guarded against a stampede, which needs its L1 entry at once: its own thread encodes it.)"""
    cache = data.cache
    encode = peewee_kvcache.cache.stores.encode_entry
    threads = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return encode(*args, **kwargs)

    def names_scoring(at_least):
        return [u.name for u in User.select().where(User.score >= at_least).with_cache()]

    monkeypatch.setattr(peewee_kvcache.cache.stampede, "GUARD_MIN_DB_MS", 1000.0)  # cheap here

    assert names_scoring(0) == ["alice"]                        # the shape's first miss
    assert cache.drain(10)
    monkeypatch.setattr(peewee_kvcache.cache.stores, "encode_entry", recording)
    assert names_scoring(-1) == ["alice"]                       # a cheap shape's miss: deferred
    assert names_scoring(-1) == ["alice"]
    stats = cache.get_stats()
    assert (stats.stores, stats.memory_hits) == (2, 1)
    assert cache.drain(10)
    assert threads and threading.current_thread() not in threads
    stats = cache.get_stats()
    assert stats.l1_entries == 2 and stats.uncacheable == 0
    cache.clear_local()                                         # L2 holds what the writer made
    assert names_scoring(-1) == ["alice"] and cache.get_stats().l2_hits == 1


def test_driver_type_the_codec_cannot_encode_is_served_uncached(make_cache, request, tmp_path):
    """psycopg2 returns ranges as NumericRange objects, which the codec refuses."""
    cache = make_cache()
    db = open_database("postgres", cache, request, tmp_path)
    try:
        query = peewee.Select(columns=[peewee.fn.int4range(1, 5).alias("r")]).bind(db)
        rows = list(query.tuples().with_cache())
        assert type(rows[0][0]).__name__ == "NumericRange"
        assert (rows[0][0].lower, rows[0][0].upper) == (1, 5)
        assert list(query.tuples().with_cache()) == rows
        stats = cache.get_stats()
        assert stats.uncacheable == 2 and stats.stores == 0 and stats.hits == 0
    finally:
        db.close()


# --- the default cache and other database classes -------------------------------------------------

def test_default_cache_lives_in_the_per_user_cache_dir(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    db = CachedSqliteDatabase(str(tmp_path / "app.db"))
    try:
        cache = db.cache
        assert isinstance(cache, CloudflareKVCache)
        assert cache.l1.directory == str(xdg / "peewee_kvcache" / "l1")
        assert isinstance(cache.namespace, LocalKVNamespace)
        assert cache.namespace.directory == str(xdg / "peewee_kvcache" / "kv")
        db.bind([User], bind_refs=False, bind_backrefs=False)
        db.create_tables([User])
        User.create(name="alice")
        assert cached_names() == ["alice"]
        assert cached_names() == ["alice"]
        assert cache.get_stats().memory_hits == 1
        User.create(name="bob")
        assert cached_names() == ["alice", "bob"]
        assert cache.drain(10)
        assert cache.get_stats().total_keys == 1
        assert (xdg / "peewee_kvcache" / "kv" / "kv.sqlite3").exists()
    finally:
        db.close()
        db.cache.close()


def test_pooled_postgresql_end_to_end(make_cache, pg_schema):
    # its last read checks L2's answer, not its cost
    cache = make_cache(l1_reads="always", l2_reads="always")
    db = CachedPooledPostgresqlDatabase("test", cache=cache, max_connections=4,
                                        options=f"-c search_path={pg_schema}", **PG)
    db.bind([User], bind_refs=False, bind_backrefs=False)
    db.drop_tables([User], safe=True)
    db.create_tables([User])
    try:
        User.create(name="alice", score=1)

        def state():
            return sorted((u.name, u.score) for u in User.select().with_cache())

        assert state() == [("alice", 1)]
        assert state() == [("alice", 1)]
        assert cache.get_stats().memory_hits == 1
        db.close()                                                  # back to the pool
        assert state() == [("alice", 1)]
        assert cache.get_stats().memory_hits == 2
        User.create(name="bob")
        assert state() == [("alice", 1), ("bob", 0)]
        with db.atomic():
            User.update(score=5).where(User.name == "alice").execute()
        assert state() == [("alice", 5), ("bob", 0)]
        assert cache.drain(10)
        cache.clear_local()
        assert state() == [("alice", 5), ("bob", 0)]
        assert cache.get_stats().l2_hits == 1
    finally:
        db.drop_tables([User], safe=True)
        db.close_all()


# --- processes sharing one L1 ---------------------------------------------------------------------

def _write_in_another_process(db_path: str, l1_dir: str, kv_dir: str, name: str) -> None:
    cache = CloudflareKVCache(LocalKVNamespace(kv_dir), l1_directory=l1_dir)
    db = CachedSqliteDatabase(db_path, cache=cache)
    db.bind([User], bind_refs=False, bind_backrefs=False)
    User.create(name=name)
    db.close()
    cache.close()


def test_read_your_writes_across_processes_sharing_one_l1(make_cache, tmp_path):
    cache = make_cache()
    path = str(tmp_path / "mp.db")
    db = CachedSqliteDatabase(path, cache=cache)
    db.bind([User], bind_refs=False, bind_backrefs=False)
    db.create_tables([User])
    User.create(name="alice")
    try:
        assert cached_names() == ["alice"]
        assert cached_names() == ["alice"]
        assert cache.get_stats().memory_hits == 1                   # A serves it from its cache
        assert cache.drain(10)
        ctx = multiprocessing.get_context("spawn")
        writer = ctx.Process(target=_write_in_another_process,
                             args=(path, str(tmp_path / "l1"), str(tmp_path / "kv"), "bob"))
        writer.start()
        writer.join(60)
        assert writer.exitcode == 0
        assert cached_names() == ["alice", "bob"]                   # at once, no TTL involved
        cache.clear_local()
        assert cached_names() == ["alice", "bob"]                   # and L2 holds no stale copy
    finally:
        db.close()
