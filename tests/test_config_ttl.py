"""Expiry follows Redis' SET options (EX / PX / EXAT / PXAT / KEEPTTL): validated at the call site
with the bad value named, and honoured to the millisecond by both cache levels, through a real
database. Time is frozen (freezegun), so every boundary is exact."""
from __future__ import annotations

import itertools
import re
from datetime import datetime, timezone

import freezegun
import freezegun.config
import peewee
import pytest
from freezegun import freeze_time

from peewee_kvcache import CacheConfig, CachedResult, CachedSqliteDatabase, CloudflareKVCache
from peewee_kvcache.core.codec import decode_entry
from tests.conftest import local_hits
from tests.models import User

# In the future on purpose: the background writer thread may see the real clock (freezegun ignores
# frames under ``threading``), and KV refuses expirations that lie before its "now".
START = datetime(2031, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
START_TS = int(START.timestamp())
START_MS = START_TS * 1000


def named(value) -> str:
    """A regex matching the repr of ``value`` in an error message."""
    return re.escape(repr(value))


# --- validation: CacheConfig ----------------------------------------------------------------------

FIELDS = ["ex", "px", "exat", "pxat"]
BAD_VALUES = [
    (-1, ValueError), (0, ValueError), (-10**12, ValueError),
    (1.5, TypeError), (5.0, TypeError), (True, TypeError), (False, TypeError), ("5", TypeError),
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value, error", BAD_VALUES, ids=repr)
def test_bad_expiry_value_is_refused_naming_it(field, value, error):
    with pytest.raises(error, match=named(value)) as info:
        CacheConfig(**{field: value})
    assert field in str(info.value)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value, error", BAD_VALUES, ids=repr)
def test_with_cache_refuses_bad_expiry_value_at_the_call_site(field, value, error):
    with pytest.raises(error, match=named(value)):
        User.select().with_cache(**{field: value})


@pytest.mark.parametrize("first, second", list(itertools.combinations(FIELDS, 2)))
def test_at_most_one_expiry_option(first, second):
    values = {"ex": 10, "px": 10_000, "exat": 4_000_000_000, "pxat": 4_000_000_000_000}
    with pytest.raises(ValueError) as info:
        CacheConfig(**{first: values[first], second: values[second]})
    assert first in str(info.value) and second in str(info.value)
    with pytest.raises(ValueError):
        User.select().with_cache(**{first: values[first], second: values[second]})


@pytest.mark.parametrize("field", FIELDS)
def test_keep_ttl_cannot_be_combined_with_an_expiry(field):
    value = {"ex": 10, "px": 10_000, "exat": 4_000_000_000, "pxat": 4_000_000_000_000}[field]
    with pytest.raises(ValueError, match=field):
        CacheConfig(keep_ttl=True, **{field: value})
    with pytest.raises(ValueError, match=field):
        User.select().with_cache(keep_ttl=True, **{field: value})


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_keep_ttl_must_be_a_bool(value):
    with pytest.raises(TypeError, match=named(value)):
        CacheConfig(keep_ttl=value)


def test_each_single_option_and_none_are_accepted():
    with freeze_time(START):
        for kwargs in ({"ex": 1}, {"px": 1}, {"exat": START_TS + 1}, {"pxat": START_MS + 1},
                       {"keep_ttl": True}, {}):
            config = CacheConfig(**kwargs)
            assert config.expires_at_ms(0, 7, None) == (7 if kwargs in ({}, {"keep_ttl": True})
                                                        else config.expires_at_ms(0, 8, None))
            assert User.select().with_cache(**kwargs)._kvcache.config == config


@pytest.mark.parametrize("field, value", [
    ("exat", START_TS - 1), ("exat", START_TS), ("exat", 1),
    ("pxat", START_MS - 1), ("pxat", START_MS), ("pxat", 1),
])
def test_absolute_expiry_in_the_past_is_refused(field, value):
    with freeze_time(START):
        with pytest.raises(ValueError, match=str(value)):
            CacheConfig(**{field: value})
        with pytest.raises(ValueError, match=str(value)):
            User.select().with_cache(**{field: value})
        future = START_TS + 1 if field == "exat" else START_MS + 1
        assert getattr(CacheConfig(**{field: future}), field) == future   # one unit later is fine


@pytest.mark.parametrize("keyword", ["ttl", "expire", "timeout", "tags", "keepttl"])
def test_unknown_with_cache_keyword_is_named(keyword):
    with pytest.raises(TypeError, match=keyword):
        User.select().with_cache(**{keyword: 5})


@pytest.mark.parametrize("tag, error, shown", [
    ("", ValueError, ""),
    ("   ", ValueError, "   "),
    ([""], ValueError, ""),
    (["ok", ""], ValueError, ""),
    ([1], TypeError, 1),
    (["ok", None], TypeError, None),
    (["ok", b"raw"], TypeError, b"raw"),
    (123, TypeError, 123),
    (b"feed", TypeError, b"feed"),
])
def test_bad_tag_is_refused_naming_it(tag, error, shown):
    with pytest.raises(error, match=named(shown)):
        User.select().with_cache(tag=tag)


def test_oversized_tag_is_refused():
    with pytest.raises(ValueError, match="128 bytes"):
        User.select().with_cache(tag="x" * 129)
    User.select().with_cache(tag="x" * 128)


def test_config_together_with_an_expiry_is_refused():
    config = CacheConfig(ex=5)
    for kwargs in ({"ex": 5}, {"px": 5}, {"exat": 4_000_000_000}, {"pxat": 4_000_000_000_000},
                   {"keep_ttl": True}):
        with pytest.raises(ValueError, match="config"):
            User.select().with_cache(config=config, **kwargs)
    assert User.select().with_cache(config=config)._kvcache.config == config


@pytest.mark.parametrize("config", [{"ex": 5}, 5, "ex=5"])
def test_config_must_be_a_cache_config(config):
    with pytest.raises(TypeError, match=named(config)):
        User.select().with_cache(config=config)


@pytest.mark.parametrize("kwargs, error, shown", [
    ({"strategy": "sometimes"}, ValueError, "sometimes"),
    ({"strategy": None}, ValueError, None),
    ({"strategy": "ALL"}, ValueError, "ALL"),
    ({"default_ttl": 0}, ValueError, 0),
    ({"default_ttl": -5}, ValueError, -5),
    ({"default_ttl": 1.5}, TypeError, 1.5),
    ({"default_ttl": "300"}, TypeError, "300"),
    ({"default_ttl": True}, TypeError, True),
    ({"default_ttl": None}, TypeError, None),
    ({"prefix": ""}, ValueError, ""),
    ({"prefix": None}, ValueError, None),
    ({"prefix": 5}, ValueError, 5),
    ({"prefix": "p" * 65}, ValueError, "p" * 65),
])
def test_bad_cache_arguments_are_refused_naming_the_value(tmp_path, kwargs, error, shown):
    with pytest.raises(error, match=named(shown)):
        CloudflareKVCache(l1_directory=str(tmp_path / "l1"), **kwargs)


@pytest.mark.parametrize("value", [0, -5, 1.5, "300"])
def test_bad_default_ttl_error_names_default_ttl(tmp_path, value):
    """The user passed ``default_ttl``; an error about ``ex`` would point at the wrong argument."""
    with pytest.raises((TypeError, ValueError), match="default_ttl"):
        CloudflareKVCache(l1_directory=str(tmp_path / "l1"), default_ttl=value)


@pytest.mark.parametrize("secret", ["", b""], ids=["str", "bytes"])
def test_empty_secret_is_refused_up_front(tmp_path, secret):
    """An empty signing secret cannot sign anything: refuse it when the cache is built rather
    than accept it and then fail (as an "L1 error") on every single store."""
    with pytest.raises(ValueError, match="secret"):
        CloudflareKVCache(l1_directory=str(tmp_path / "l1"), secret=secret)


# --- expiry through a real database ---------------------------------------------------------------

@pytest.fixture
def open_sqlite(make_cache, tmp_path):
    """A CachedSqliteDatabase with User bound and one row ("alice"); cache kwargs pass through."""
    opened = []

    def open_(**cache_kwargs) -> CachedSqliteDatabase:
        cache_kwargs.setdefault("l1_max_age", None)  # these tests are about TTLs, not rechecks
        cache_kwargs.setdefault("l1_reads", "always")  # ... in every level, L1 and L2 too
        cache_kwargs.setdefault("l2_reads", "always")
        db = CachedSqliteDatabase(str(tmp_path / "ttl.db"), cache=make_cache(**cache_kwargs))
        db.bind([User], bind_refs=False, bind_backrefs=False)
        db.drop_tables([User], safe=True)
        db.create_tables([User])
        User.create(name="alice")
        db.cache.drain(10)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()


def sneak_rename(db, name: str) -> None:
    """Change the row behind the cache's back, so a cached answer and a fresh one differ."""
    peewee.SqliteDatabase.execute_sql(db, 'UPDATE "user" SET name = ?', (name,))


def sneak_insert(db, name: str) -> None:
    peewee.SqliteDatabase.execute_sql(db, 'INSERT INTO "user" (name, score) VALUES (?, 0)', (name,))


def names_query(**options) -> peewee.Select:
    """Built once per test: exat/pxat are validated (against "now") when with_cache is called."""
    return User.select(User.name).order_by(User.name).tuples().with_cache(**options)


def names(query=None):
    return [n for (n,) in (query if query is not None else names_query()).clone()]


@pytest.mark.parametrize("level", ["l1", "l2"])
@pytest.mark.parametrize("option, alive, dead", [
    ({"ex": 5}, 4, 6),
    ({"ex": 5}, 4.999, 5),
    ({"px": 1500}, 1.4, 1.6),
    ({"px": 1500}, 1.499, 1.5),
    ({"exat": START_TS + 5}, 4, 6),
    ({"exat": START_TS + 5}, 4.999, 5),
    ({"pxat": START_MS + 1500}, 1.4, 1.6),
    ({"pxat": START_MS + 1500}, 1.499, 1.5),
], ids=lambda v: repr(v) if isinstance(v, dict) else str(v))
def test_entry_lives_until_its_expiry_and_not_a_moment_longer(open_sqlite, option, alive, dead,
                                                              level):
    """``level="l2"`` empties L1 before each read, so L2's own expiry check is what decides."""
    with freeze_time(START) as clock:
        db = open_sqlite()
        cache = db.cache
        query = names_query(**option)
        assert names(query) == ["alice"]
        assert cache.drain(10)
        sneak_rename(db, "bob")
        clock.move_to(datetime.fromtimestamp(START_TS + alive, timezone.utc))
        if level == "l2":
            cache.clear_local()
        hits = cache.get_stats()
        assert names(query) == ["alice"]                   # still the cached answer
        after = cache.get_stats()
        assert after.hits == hits.hits + 1
        assert (after.l2_hits if level == "l2" else local_hits(after)) == \
            (hits.l2_hits if level == "l2" else local_hits(hits)) + 1
        clock.move_to(datetime.fromtimestamp(START_TS + dead, timezone.utc))
        if level == "l2":
            cache.clear_local()
        assert names(query) == ["bob"]                     # expired: from the database
        assert cache.get_stats().hits == after.hits


def test_default_ttl_applies_when_no_expiry_is_given(open_sqlite):
    with freeze_time(START) as clock:
        db = open_sqlite(default_ttl=30)
        assert names() == ["alice"]
        sneak_rename(db, "bob")
        clock.tick(29.9)
        assert names() == ["alice"]
        clock.tick(0.2)
        assert names() == ["bob"]


def test_default_ttl_is_the_cache_not_the_package_default(open_sqlite):
    with freeze_time(START) as clock:
        db = open_sqlite(default_ttl=1000)
        assert names() == ["alice"]
        sneak_rename(db, "bob")
        clock.tick(301)                                        # past the package's 300 s default
        assert names() == ["alice"]
        clock.tick(700)
        assert names() == ["bob"]


def test_explicit_expiry_beats_default_ttl(open_sqlite):
    with freeze_time(START) as clock:
        db = open_sqlite(default_ttl=30)
        query = names_query(ex=100)
        assert names(query) == ["alice"]
        sneak_rename(db, "bob")
        clock.tick(60)
        assert names(query) == ["alice"]
        clock.tick(41)
        assert names(query) == ["bob"]


# --- KEEPTTL --------------------------------------------------------------------------------------

ONE = CachedResult(("v",), [(1,)])
TWO = CachedResult(("v",), [(2,)])


def only_entry(cache):
    """(L2 key, expires_at_ms in the payload, KV expiration) of the single cached result."""
    assert cache.drain(10)
    keys = cache.l2_entry_keys()
    assert len(keys) == 1, keys
    found = cache.namespace.get_with_metadata(keys[0])
    _, expires_at_ms = decode_entry(found.value)
    return keys[0], expires_at_ms, found.expiration


def test_keep_ttl_keeps_the_live_entrys_remaining_lifetime(make_cache):
    cache = make_cache(default_ttl=300)
    with freeze_time(START) as clock:
        assert cache.put("q", ONE, ["user"], config=CacheConfig(ex=10))
        clock.tick(4)
        assert cache.put("q", TWO, ["user"], config=CacheConfig(keep_ttl=True))
        assert cache.get("q", ["user"]) == TWO                 # the value is replaced...
        _, expires_at_ms, kv_expiration = only_entry(cache)
        assert expires_at_ms == START_MS + 10_000              # ...its lifetime is not
        assert kv_expiration >= START_TS + 4 + 60
        clock.tick(5.9)                                        # t0 + 9.9 s
        assert cache.get("q", ["user"]) == TWO
        clock.tick(0.2)                                        # t0 + 10.1 s
        assert cache.get("q", ["user"]) is None
        cache.clear_local()
        assert cache.get("q", ["user"]) is None                # L2 agrees


def test_keep_ttl_twice_still_keeps_the_first_lifetime(make_cache):
    cache = make_cache(default_ttl=300)
    with freeze_time(START) as clock:
        cache.put("q", ONE, ["user"], config=CacheConfig(px=8000))
        for _ in range(3):
            clock.tick(2)
            assert cache.put("q", TWO, ["user"], config=CacheConfig(keep_ttl=True))
        assert only_entry(cache)[1] == START_MS + 8000
        clock.tick(2.1)                                        # t0 + 8.1 s
        assert cache.get("q", ["user"]) is None


def test_overwrite_without_keep_ttl_resets_the_lifetime(make_cache):
    cache = make_cache(default_ttl=300)
    with freeze_time(START) as clock:
        cache.put("q", ONE, ["user"], config=CacheConfig(ex=10))
        clock.tick(4)
        cache.put("q", TWO, ["user"], config=CacheConfig(ex=10))
        assert only_entry(cache)[1] == START_MS + 14_000
        clock.tick(9)
        assert cache.get("q", ["user"]) == TWO


def test_keep_ttl_without_an_entry_falls_back_to_default_ttl(make_cache):
    cache = make_cache(default_ttl=30)
    with freeze_time(START) as clock:
        assert cache.put("q", ONE, ["user"], config=CacheConfig(keep_ttl=True))
        assert only_entry(cache)[1] == START_MS + 30_000
        clock.tick(29.9)
        assert cache.get("q", ["user"]) == ONE
        clock.tick(0.2)
        assert cache.get("q", ["user"]) is None


def test_keep_ttl_over_an_expired_entry_falls_back_to_default_ttl(make_cache):
    cache = make_cache(default_ttl=30)
    with freeze_time(START) as clock:
        cache.put("q", ONE, ["user"], config=CacheConfig(ex=5))
        clock.tick(6)
        assert cache.put("q", TWO, ["user"], config=CacheConfig(keep_ttl=True))
        assert only_entry(cache)[1] == START_MS + 36_000
        clock.tick(29)
        assert cache.get("q", ["user"]) == TWO


def test_keep_ttl_does_not_inherit_an_invalidated_entrys_lifetime(make_cache):
    """Invalidation is Redis' DEL: the entry is gone, so KEEPTTL has no TTL to keep and the
    default applies (CacheConfig: "keep the remaining lifetime of the *live* entry")."""
    cache = make_cache(default_ttl=30)
    with freeze_time(START) as clock:
        cache.put("q", ONE, ["user"], config=CacheConfig(ex=10))
        clock.tick(4)
        cache.on_mutate(tables=["user"])
        assert cache.get("q", ["user"]) is None                # the old entry is dead
        assert cache.put("q", TWO, ["user"], config=CacheConfig(keep_ttl=True))
        assert only_entry(cache)[1] == START_MS + 34_000
        clock.tick(7)                                          # t0 + 11 s
        assert cache.get("q", ["user"]) == TWO


def test_keep_ttl_through_a_query_after_a_write(open_sqlite):
    """The same, through ``with_cache(keep_ttl=True)``: a re-read after a write computes a new
    result; the invalidated entry's remaining 6 s must not be inherited."""
    with freeze_time(START) as clock:
        db = open_sqlite(default_ttl=30)
        assert names(names_query(ex=10)) == ["alice"]
        clock.tick(4)
        User.create(name="carol")                              # invalidates the cached result
        assert names(names_query(keep_ttl=True)) == ["alice", "carol"]
        sneak_insert(db, "dave")
        clock.tick(7)                                          # t0 + 11 s
        assert names(names_query(keep_ttl=True)) == ["alice", "carol"]  # cached (default TTL)


def test_keep_ttl_honours_a_live_entry_only_l2_holds(make_cache):
    """A host whose L1 lacks the entry (another host wrote it) still overwrites a live entry."""
    writer = make_cache("l1a", default_ttl=300)
    other = make_cache("l1b", default_ttl=300)
    with freeze_time(START) as clock:
        writer.put("q", ONE, ["user"], config=CacheConfig(ex=10))
        assert writer.drain(10)
        clock.tick(4)
        assert other.put("q", TWO, ["user"], config=CacheConfig(keep_ttl=True))
        assert only_entry(other)[1] == START_MS + 10_000


# --- L2 backfill and KV's 60 s floor --------------------------------------------------------------

def test_l2_backfill_keeps_the_l2_entrys_remaining_lifetime(open_sqlite):
    with freeze_time(START) as clock:
        db = open_sqlite()
        cache = db.cache
        query = names_query(ex=100)
        assert names(query) == ["alice"]
        assert cache.drain(10)
        sneak_rename(db, "bob")
        cache.clear_local()
        clock.tick(60)
        before = cache.get_stats()
        assert names(query) == ["alice"]                      # from L2, backfilled into L1
        after = cache.get_stats()
        assert after.l2_hits == before.l2_hits + 1
        assert len(cache.l1.entries) == 1
        clock.tick(39)                                         # t0 + 99 s
        assert names(query) == ["alice"]
        assert local_hits(cache.get_stats()) == local_hits(after) + 1
        clock.tick(2)                                          # t0 + 101 s
        assert names(query) == ["bob"]                        # not even L1 serves it any more
        final = cache.get_stats()
        assert (final.hits, local_hits(final)) == (after.hits + 1, local_hits(after) + 1)


@pytest.mark.parametrize("option, alive_for, kv_expiration", [
    ({"ex": 5}, 5, None),
    ({"px": 1}, 0.001, None),
    ({"ex": 59}, 59, None),
    ({"ex": 100}, 100, START_TS + 100),
    ({"exat": START_TS + 3600}, 3600, START_TS + 3600),
    ({"pxat": START_MS + 120_500}, 120.5, START_TS + 121),
])
def test_kv_expiration_floor(open_sqlite, option, alive_for, kv_expiration):
    """KV refuses expirations under 60 s: a shorter TTL is stored with a KV expiration of at least
    now + 60, but the entry's own expiry (in the payload) is what readers honour. Longer TTLs
    give the KV key the entry's own expiry, so nothing lingers in KV."""
    with freeze_time(START) as clock:
        db = open_sqlite()
        cache = db.cache
        query = names_query(**option)
        assert names(query) == ["alice"]
        key, expires_at_ms, expiration = only_entry(cache)
        assert expires_at_ms == START_MS + int(alive_for * 1000)
        assert expiration >= START_TS + 60
        if kv_expiration is not None:
            assert expiration == kv_expiration
        markers = list(cache.namespace.list_all(cache.prefix + "t:"))
        assert [m.expiration for m in markers] == [expiration]  # markers expire with the entry
        sneak_rename(db, "bob")
        clock.move_to(datetime.fromtimestamp(START_TS + alive_for + 0.5, timezone.utc))
        cache.clear_local()
        if expiration > START_TS + alive_for + 0.5:
            assert cache.namespace.get(key) is not None          # KV still holds the bytes...
        l2_hits = cache.get_stats().l2_hits
        assert names(query) == ["bob"]                        # ...yet it is expired
        assert cache.get_stats().l2_hits == l2_hits


# --- freezegun as users configure it --------------------------------------------------------------

PAST = datetime(2020, 6, 1, 8, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def users_freezegun():
    """freezegun with its default settings, as in a user's test suite: code near ``threading``
    frames, such as the cache's writer thread, sees the real clock while queries see frozen time
    (conftest freezes those frames too, for the other tests here)."""
    saved = list(freezegun.config.settings.default_ignore_list)
    freezegun.configure(default_ignore_list=list(freezegun.config.DEFAULT_IGNORE_LIST))
    yield
    freezegun.configure(default_ignore_list=saved)


@pytest.mark.parametrize("start, tick", [(PAST, False), (PAST, True), (START, False)],
                         ids=["past", "past-ticking", "future"])
def test_under_a_users_freeze_time_an_entry_lives_its_ttl_and_reaches_l2(
        users_freezegun, open_sqlite, make_cache, tmp_path, start, tick):
    with freeze_time(start, tick=tick) as clock:
        db = open_sqlite(l1_max_age=5.0)
        query = names_query(ex=30)
        assert names(query) == ["alice"]
        assert db.cache.drain(10)
        assert len(db.cache.l2_entry_keys()) == 1            # it reached L2
        sneak_rename(db, "bob")
        clock.tick(20)                                       # past l1_max_age: L2 confirms it
        assert names(query) == ["alice"]
        other = CachedSqliteDatabase(str(tmp_path / "ttl.db"),
                                     cache=make_cache("l1-other", l1_reads="always",
                                                      l2_reads="always"))
        with other.bind_ctx([User]):                         # a host with an empty L1
            assert names(names_query(ex=30)) == ["alice"]
            assert other.cache.get_stats().l2_hits == 1
        clock.tick(8)                                        # t0 + 28 s
        assert names(query) == ["alice"]
        clock.tick(3)                                        # t0 + 31 s
        assert names(query) == ["bob"]
        with other.bind_ctx([User]):
            assert names(names_query(ex=30)) == ["bob"]
        other.close()
