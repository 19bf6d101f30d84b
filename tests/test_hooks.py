"""The Peewee layer overrides hooks that call ``super()``: Peewee's own ``execute`` (and whatever a
user's database class adds to it) runs for cached selects too, with every argument it was given;
``with_cache`` is installed reversibly."""
from __future__ import annotations

import logging
from typing import Any, List

import peewee
import pytest

from peewee_kvcache import CachedDatabase, CachedPostgresqlDatabase, with_cache
from peewee_kvcache.orm import database
from peewee_kvcache.orm import query as query_module
from peewee_kvcache.sql import analysis, memo
from peewee_kvcache.sql.analysis import analyze_sql

from .conftest import PG
from .models import User


class Recording(peewee.SqliteDatabase):
    """A user's database class with an ``execute`` of its own (an extra argument, a record)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seen: List[Any] = []

    def execute(self, query: Any, label: str = "", **context_options: Any) -> Any:
        self.seen.append((type(query).__name__, label))
        return super().execute(query, **context_options)


class RecordingCached(CachedDatabase, Recording):
    pass


@pytest.fixture
def recording(cache, tmp_path):
    db = RecordingCached(str(tmp_path / "app.db"), cache=cache)
    db.bind([User], bind_refs=False, bind_backrefs=False)
    db.create_tables([User])
    User.create(name="ann")
    db.seen.clear()
    yield db
    db.close()


def test_peewee_execute_runs_for_cached_selects_with_its_arguments(recording, cache):
    """CachedDatabase.execute copied Peewee's body: a class below it never saw a cached select,
    and positional arguments were dropped."""
    query = User.select().with_cache(ex=60)
    for _ in range(2):
        cursor = recording.execute(query, "mine")
        assert [row[1] for row in cursor.fetchall()] == ["ann"]
    assert recording.seen == [("ModelSelect", "mine")] * 2
    stats = cache.get_stats()
    assert (stats.stores, stats.hits) == (1, 1)


def test_the_cached_path_ends_with_its_execute(recording, cache):
    """Only the select ``execute()`` runs is read through the cache: the same SQL sent raw
    afterwards goes to the database, as raw SQL always does."""
    query = User.select().with_cache(ex=60)
    assert len(list(query)) == 1
    sql, params = query.sql()
    for _ in range(2):
        assert len(recording.execute_sql(sql, params).fetchall()) == 1
    stats = cache.get_stats()
    assert (stats.stores, stats.hits, stats.misses) == (1, 0, 1)


def test_raw_sql_reads_are_counted_and_logged_with_the_reason(recording, cache, caplog):
    """Raw-SQL reads were neither cached nor counted: nothing told a user looking at the stats
    why a query never hit. A SELECT sent as text (execute_sql, Model.raw) counts in
    raw_sql_reads and logs why at DEBUG; query objects and raw writes do not count there."""
    caplog.set_level(logging.DEBUG, logger="peewee_kvcache")
    sql = 'SELECT "name" FROM "user" WHERE "name" = ?'
    invalidations = cache.get_stats().invalidations  # the fixture's own writes
    for _ in range(2):
        assert recording.execute_sql(sql, ("ann",)).fetchall() == [("ann",)]
    assert [u.name for u in User.raw(sql, "ann")] == ["ann"]
    list(User.select())                                   # a query object, not asked to cache
    list(User.select().with_cache(ex=60))                 # a cached one
    recording.execute_sql('UPDATE "user" SET "score" = 1')  # a raw write: invalidates
    stats = cache.get_stats()
    assert (stats.raw_sql_reads, stats.uncacheable, stats.misses, stats.stores) == (3, 0, 1, 1)
    assert stats.invalidations == invalidations + 1
    reasons = [r.getMessage() for r in caplog.records if "raw SQL" in r.getMessage()]
    assert reasons == ["peewee_kvcache: not caching: raw SQL is not cached: use a query object "
                       "with with_cache()"] * 3


def test_a_failed_execute_leaves_no_select_to_cache(recording, cache, monkeypatch):
    """Peewee failing while it builds the SQL never reaches execute_sql: the next raw select is
    not taken for the cached one."""
    def broken_context(**options: Any) -> Any:
        raise RuntimeError("no context")

    monkeypatch.setattr(recording, "get_sql_context", broken_context)
    with pytest.raises(RuntimeError):
        recording.execute(User.select().with_cache(ex=60))
    monkeypatch.undo()
    recording.execute_sql('SELECT "t1"."id", "t1"."name", "t1"."score" FROM "user" AS "t1"')
    stats = cache.get_stats()
    assert (stats.stores, stats.misses) == (0, 0)


def test_with_cache_uninstalls_to_exactly_what_was_there_and_installs_again(recording, cache):
    """install() had no way back: the attribute it set (or replaced) could not be restored."""
    def theirs(self: Any) -> str:
        return "theirs"

    assert vars(peewee.SelectBase)["with_cache"] is with_cache
    try:
        query_module.uninstall()
        assert "with_cache" not in vars(peewee.SelectBase)
        assert not hasattr(User.select(), "with_cache")
        query_module.uninstall()  # nothing left to undo
        assert "with_cache" not in vars(peewee.SelectBase)
        peewee.SelectBase.with_cache = theirs  # another library's method: replaced, then restored
        query_module.install()
        query_module.install()  # twice: still one record of what it replaced
        assert vars(peewee.SelectBase)["with_cache"] is with_cache
        query_module.uninstall()
        assert vars(peewee.SelectBase)["with_cache"] is theirs
    finally:
        if vars(peewee.SelectBase).get("with_cache") is theirs:
            del peewee.SelectBase.with_cache
        query_module.install()
    for _ in range(2):
        assert [user.name for user in User.select().with_cache(ex=60)] == ["ann"]
    stats = cache.get_stats()
    assert (stats.stores, stats.hits) == (1, 1)


def test_a_query_survives_a_fault_in_the_sql_analysis(recording, cache, monkeypatch, caplog):
    """The analysis failing unexpectedly degrades to the database (nothing cached, everything
    invalidated as for an unknown write) and is logged, instead of failing the query. (A query
    object is read from its tree; here the walk gives up, so its SQL is parsed.)"""
    def broken(statement: Any) -> Any:
        raise KeyError("no such node")

    memo.texts("sqlite").clear()
    analyze_sql.cache_clear()
    monkeypatch.setattr(database, "analyze_query", lambda query, sql: None)
    monkeypatch.setattr(analysis, "classify", broken)
    try:
        with caplog.at_level(logging.WARNING, logger="peewee_kvcache"):
            assert [user.name for user in User.select().with_cache(ex=60)] == ["ann"]
    finally:
        monkeypatch.undo()
        memo.texts("sqlite").clear()
        analyze_sql.cache_clear()
    assert cache.get_stats().stores == 0
    assert any(record.levelno == logging.WARNING and "KeyError: 'no such node'" in
               record.getMessage() for record in caplog.records)


class FailingNotify(CachedPostgresqlDatabase):
    def _run(self, sql: str, params: Any, *args: Any, **kwargs: Any) -> Any:
        if sql.startswith("SELECT pg_notify"):
            raise peewee.OperationalError("notify refused")
        return super()._run(sql, params, *args, **kwargs)


def test_a_failed_notify_is_logged_with_its_type_and_message(make_cache, pg_schema, caplog):
    """A NOTIFY that failed was logged without saying why (the reason only at DEBUG)."""
    db = FailingNotify("test", cache=make_cache(), options=f"-c search_path={pg_schema}", **PG)
    db.bind([User], bind_refs=False, bind_backrefs=False)
    try:
        with caplog.at_level(logging.WARNING, logger="peewee_kvcache"):
            db.create_tables([User])  # DDL: its NOTIFY is a statement of its own, after it
            User.create(name="bob")
        assert User.select().count() == 1
    finally:
        db.drop_tables([User])
        db.close()
        db.stop_listener()
    assert any(record.levelno == logging.WARNING and "NOTIFY failed (OperationalError: notify "
               "refused)" in record.getMessage() for record in caplog.records)
