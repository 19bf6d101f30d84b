"""``explain``: why a query is or isn't cached, its key, what each level holds, what serves it."""
from __future__ import annotations

import json

import peewee
import pytest

from peewee_kvcache import CachedSqliteDatabase


class Person(peewee.Model):
    name = peewee.CharField()


@pytest.fixture
def db(make_cache, tmp_path):
    database = CachedSqliteDatabase(str(tmp_path / "e.db"),
                                    cache=make_cache(l1_reads="always", l2_reads="always"))
    database.bind([Person])
    database.create_tables([Person])
    Person.create(name="ann")
    assert database.cache.drain(10)
    yield database
    database.close()


def lookup():
    return Person.select().where(Person.id == 1).with_cache(ex=30, tag="people")


def test_a_query_before_and_after_it_is_cached(db):
    before = db.cache.explain(lookup())
    assert before.cacheable and before.reason == "" and before.tables == ("person",)
    assert before.tags == ("people",) and before.served_by == "database"
    assert not any(level["holds"] for level in before.levels.values())
    assert [p.name for p in lookup()] == ["ann"]
    assert db.cache.drain(10)
    after = db.cache.explain(lookup())
    assert after.key == before.key and after.served_by == "memory"
    assert all(level["holds"] and level["valid"] for level in after.levels.values())
    assert 29 < after.levels["l1"]["expires_in_s"] <= 30
    db.cache.clear_local()
    assert db.cache.explain(lookup()).served_by == "l2"
    text = str(db.cache.explain(lookup()))
    assert "tables:     person" in text and "served by:  l2" in text and after.key in text
    assert "cacheable:  yes" in text
    json.dumps(after.as_dict())  # for scripts


def test_an_invalidated_copy_is_shown_and_not_served(db):
    list(lookup())
    Person.update(name="bo").execute()
    explained = db.cache.explain(lookup())
    assert explained.levels["memory"]["holds"] and not explained.levels["memory"]["valid"]
    assert explained.served_by == "database"
    assert "holds an invalidated or expired copy" in str(explained)


@pytest.mark.parametrize("query, reason", [
    (lambda: Person.select(), "no with_cache() and strategy is 'explicit'"),
    (lambda: Person.select().with_cache(False), "with_cache(False) opts it out"),
    (lambda: Person.select(peewee.fn.random()).with_cache(), "volatile function random()"),
    (lambda: 'SELECT * FROM "person"', "raw SQL is not cached"),
])
def test_why_a_query_is_not_cached(db, query, reason):
    explained = db.explain_cache(query()) if isinstance(query(), str) else \
        db.cache.explain(query())
    assert not explained.cacheable and explained.reason.startswith(reason)
    assert explained.served_by == "database" and f"cacheable:  no: {reason}" in str(explained)


def test_inside_a_transaction_that_wrote_the_table(db):
    with db.atomic():
        Person.create(name="cy")
        explained = db.cache.explain(lookup())
    assert not explained.cacheable and "transaction that wrote" in explained.reason


def test_the_miss_path_is_explained_from_the_measured_costs(make_cache, tmp_path):
    database = CachedSqliteDatabase(str(tmp_path / "c.db"), cache=make_cache())
    with database.bind_ctx([Person]):
        database.create_tables([Person])
        Person.create(name="ann")
        assert database.cache.drain(10)
        for i in range(3):  # measures the database for the lookup's shape (and L2's distance)
            list(Person.select().where(Person.id == i).with_cache())
        explained = database.cache.explain(lookup())
    assert explained.costs is not None and explained.costs["db_ms"] > 0
    assert "on a miss:" in str(explained)
    database.close()


def test_bad_input_is_refused(db, make_cache, tmp_path):
    with pytest.raises(TypeError, match="query must be a Peewee query or a SQL string, got int"):
        db.explain_cache(3)
    other = CachedSqliteDatabase(str(tmp_path / "o.db"), cache=make_cache("l1-other"))
    with other.bind_ctx([Person]), pytest.raises(TypeError, match="query must be bound to a "
                                                                  "database using this cache"):
        db.cache.explain(Person.select())
    other.close()
