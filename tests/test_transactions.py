"""Transactions: read-your-writes inside, nothing uncommitted stored or served, commit-time
re-invalidation, savepoints, the store race, and exception safety at BEGIN / COMMIT / body."""
import threading

import peewee
import pytest

from tests.conftest import local_hits, open_database
from tests.models import ALL, Post, User


@pytest.fixture
def data(db, bind):
    bind(*ALL)
    User.create(name="alice", score=1)
    return db


def scores(query_db=None):
    query = User.select(User.name, User.score).order_by(User.name).tuples().with_cache()
    if query_db is not None:
        query = query.bind(query_db)
    return list(query)


def test_read_after_write_inside_transaction_sees_the_write(data):
    assert scores() == [("alice", 1)]
    with data.atomic():
        User.update(score=2).execute()
        assert scores() == [("alice", 2)]
        stores = data.cache.get_stats().stores
        assert scores() == [("alice", 2)]
        assert data.cache.get_stats().stores == stores  # computed inside a writing txn: not stored
    assert scores() == [("alice", 2)]


def test_rollback_never_serves_uncommitted_rows(data):
    scores()
    with data.atomic() as txn:
        User.update(score=99).execute()
        assert scores() == [("alice", 99)]
        txn.rollback()
    assert scores() == [("alice", 1)]
    assert scores() == [("alice", 1)]


def test_nested_savepoint_rollback(data):
    scores()
    with data.atomic():
        User.update(score=5).execute()
        with data.atomic() as inner:
            User.update(score=6).execute()
            assert scores() == [("alice", 6)]
            inner.rollback()
        assert scores() == [("alice", 5)]
        with data.atomic():
            with data.atomic() as innermost:
                User.create(name="bob")
                innermost.rollback()
        assert scores() == [("alice", 5)]
    assert scores() == [("alice", 5)]


def test_commit_invalidates_what_another_connection_cached_meanwhile(data, backend, request,
                                                                    tmp_path):
    if backend == "sqlite":
        pytest.skip("SQLite's writer lock blocks the other connection's read of the table")
    other = open_database(backend, data.cache, request, tmp_path)
    try:
        assert scores(other) == [("alice", 1)]
        with data.atomic():
            User.update(score=3).execute()
            result = []
            reader = threading.Thread(target=lambda: result.append(scores(other)))
            reader.start()
            reader.join()
            assert result == [[("alice", 1)]]     # pre-commit rows, (re)cached by the other side
        assert scores(other) == [("alice", 3)]
        assert scores() == [("alice", 3)]
    finally:
        other.close()


def test_transaction_that_only_read_may_store(data):
    with data.atomic():
        scores()
    assert data.cache.get_stats().stores == 1
    scores()
    assert local_hits(data.cache.get_stats()) == 1


def test_store_refused_when_written_after_transaction_began(data, backend, request, tmp_path):
    """A REPEATABLE READ snapshot may predate a commit made after BEGIN: don't store it."""
    if backend == "sqlite":
        pytest.skip("SQLite serialises writers: no other connection can commit inside our txn")
    other = open_database(backend, data.cache, request, tmp_path)
    try:
        with data.atomic():
            Post.select().count()  # the transaction has begun
            User.update(score=8).bind(other).execute()   # another connection commits a write
            scores()
        assert data.cache.get_stats().stores == 0
        assert scores() == [("alice", 8)]
    finally:
        other.close()


def test_store_race_two_threads(data):
    """Reader runs its SELECT before a write, the write commits and invalidates, then the reader
    tries to store: the store must be refused and the next read must see the write."""
    query_done, write_done = threading.Event(), threading.Event()
    real_run = type(data)._run
    reader_thread = {}

    def slow_run(self, sql, params):
        cursor = real_run(self, sql, params)
        if threading.current_thread() is reader_thread.get("t"):
            rows = cursor.fetchall()
            query_done.set()
            assert write_done.wait(10)
            return _ListCursor(cursor.description, rows)
        return cursor

    type(data)._run = slow_run
    try:
        result = []
        reader = threading.Thread(target=lambda: result.append(scores()))
        reader_thread["t"] = reader
        reader.start()
        assert query_done.wait(10)
        User.update(score=50).execute()             # commits and invalidates
        write_done.set()
        reader.join(10)
    finally:
        type(data)._run = real_run
    assert result == [[("alice", 1)]]               # the reader got its (older) snapshot
    stats = data.cache.get_stats()
    assert stats.stores_refused == 1 and stats.stores == 0
    assert scores() == [("alice", 50)]


class _ListCursor:
    def __init__(self, description, rows):
        self.description, self._rows = description, list(rows)

    def fetchall(self):
        rows, self._rows = self._rows, []
        return rows

    def close(self):
        pass


def test_failure_at_begin_leaves_no_state(data, backend):
    scores()
    bad = {"lock_type": "BOGUS"} if backend == "sqlite" else {"isolation_level": "NOT A LEVEL"}
    with pytest.raises(peewee.DatabaseError):
        with data.atomic(**bad):
            pass
    assert data._kv_open_transaction() is None and not data.in_transaction()
    User.update(score=4).execute()
    assert scores() == [("alice", 4)]
    scores()
    assert local_hits(data.cache.get_stats()) >= 1


def test_failure_in_body_rolls_back_and_keeps_caching(data):
    scores()
    with pytest.raises(RuntimeError):
        with data.atomic():
            User.update(score=7).execute()
            raise RuntimeError("boom")
    assert data._kv_open_transaction() is None
    assert scores() == [("alice", 1)]
    User.update(score=9).execute()
    assert scores() == [("alice", 9)]
    stores = data.cache.get_stats().stores
    scores()
    assert local_hits(data.cache.get_stats()) >= 1 and data.cache.get_stats().stores == stores


def test_failure_at_commit_deferred_constraint(db, bind, backend):
    if backend != "postgres":
        pytest.skip("deferred constraints are a PostgreSQL feature")
    bind(*ALL)
    User.create(name="alice", score=1)
    db.execute_sql('ALTER TABLE "post" DROP CONSTRAINT IF EXISTS post_user_id_fkey')
    db.execute_sql('ALTER TABLE "post" ADD CONSTRAINT post_user_fk FOREIGN KEY (user_id) '
                   'REFERENCES "user" (id) DEFERRABLE INITIALLY DEFERRED')
    scores()
    with pytest.raises(peewee.IntegrityError):
        with db.atomic():
            User.update(score=2).execute()
            Post.insert(user=12345, title="orphan").execute()   # fails only at COMMIT
    assert db._kv_open_transaction() is None
    assert scores() == [("alice", 1)]
    User.update(score=3).execute()                               # later invalidations still work
    assert scores() == [("alice", 3)]
    scores()
    assert local_hits(db.cache.get_stats()) >= 1


def test_invalidation_runs_before_after_commit_callbacks(data):
    if not hasattr(data, "after_commit"):
        pytest.skip("db.after_commit exists from peewee 4 on")
    scores()
    seen = []
    with data.atomic():
        User.update(score=11).execute()
        data.after_commit(lambda: seen.append(scores()))
    assert seen == [[("alice", 11)]]


def test_manual_commit_mode(data):
    scores()
    with data.manual_commit():
        data.begin()
        User.update(score=12).execute()
        assert scores() == [("alice", 12)]
        data.commit()
    assert scores() == [("alice", 12)]


def test_raw_transaction_statements(data):
    scores()
    data.execute_sql("BEGIN")
    User.update(score=13).execute()
    data.execute_sql("COMMIT")
    assert scores() == [("alice", 13)]
