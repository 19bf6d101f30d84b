"""The in-process level: hits skip diskcache, stay exactly as fresh as L1, and never share values
a caller could mutate."""
import peewee
import pytest

from peewee_kvcache import CachedSqliteDatabase
from peewee_kvcache.core.codec import CachedResult
from peewee_kvcache.levels.entry import Entry
from peewee_kvcache.levels.memory import MemoryLevel, shareable


class Doc(peewee.Model):
    title = peewee.CharField()


@pytest.fixture
def db(make_cache, tmp_path):
    database = CachedSqliteDatabase(str(tmp_path / "m.db"), cache=make_cache())
    database.bind([Doc])
    database.create_tables([Doc])
    Doc.create(title="a")
    yield database
    database.close()


def titles():
    return [d.title for d in Doc.select().with_cache()]


def test_a_memory_hit_does_not_touch_diskcache(db, monkeypatch):
    assert titles() == ["a"]
    assert len(db.cache._memory) == 1

    def broken(*args, **kwargs):
        raise AssertionError("diskcache read on a memory hit")

    monkeypatch.setattr(db.cache.l1.entries, "get", broken)
    assert titles() == ["a"]
    stats = db.cache.get_stats()
    assert (stats.memory_hits, stats.l1_hits) == (1, 0)


def test_each_hit_is_counted_by_the_level_that_served_it(db, make_cache):
    """Process memory, the L1 directory (another process on this host: same directory, its
    own memory) and L2 (another host): ``hits`` is their sum."""
    assert titles() == ["a"]                                     # a miss, stored
    assert titles() == ["a"]                                     # memory
    assert db.cache.drain(10)
    for cache, level in ((db.cache, "memory_hits"), (make_cache(), "l1_hits"),
                         (make_cache("elsewhere"), "l2_hits")):
        with db.bind_ctx([Doc]):
            db.cache, before = cache, cache.get_stats()
            assert titles() == ["a"]
            after = cache.get_stats()
        moved = {name: getattr(after, name) - getattr(before, name)
                 for name in ("hits", "memory_hits", "l1_hits", "l2_hits")}
        assert moved == {"hits": 1, "memory_hits": 0, "l1_hits": 0, "l2_hits": 0, level: 1}


def test_memory_entries_die_with_their_tokens(db):
    assert titles() == ["a"]
    Doc.update(title="b").execute()
    assert titles() == ["b"]


def test_another_process_on_the_same_l1_invalidates_this_memory(db, make_cache):
    """A bump by another cache object on the same L1 (as another process would) is seen through
    the shared counter."""
    assert titles() == ["a"]
    other = make_cache()                      # same L1 directory
    other.invalidate(tables=["doc"])
    peewee.Database.execute_sql(db, "UPDATE doc SET title = 'c'")
    assert titles() == ["c"]


def test_results_with_mutable_values_are_not_shared():
    mutable = CachedResult(("j",), [({"a": 1},)])
    frozen = CachedResult(("x",), [(1, "s", b"b", None)])
    assert not shareable(mutable, 10) and shareable(frozen, 10)
    assert not shareable(CachedResult(("x",), [(1,)] * 11), 10)

    class Row(list):  # a subclass of a mutable type is mutable too
        pass

    assert not shareable(CachedResult(("x", "y"), [(1, "a"), (2, Row())]), 10)
    level = MemoryLevel(max_entries=2)
    level.put("m", Entry(("*",), (1,), 10**15, 0, mutable))
    assert level.get("m") is None


def test_lru_bound():
    level = MemoryLevel(max_entries=2)
    result = CachedResult(("x",), [(1,)])
    for key in "abc":
        level.put(key, Entry(("*",), (1,), 10**15, 0, result))
    assert level.get("a") is None and level.get("b") and level.get("c")
    assert len(level) == 2
