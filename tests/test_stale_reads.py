"""Stale reads through transaction and session state, odd table names and database identity.

Every test here runs a real interleaving on the real backends: a snapshot older than another
host's commit, raw transaction statements however spelled, a hand-made invalidation inside a
transaction, one connection shared by threads, in-memory SQLite databases, and session statements
(``SET search_path``, ``SET ROLE``, ``USE``, temporary tables) that change what the same SQL means.
"""
import threading
import time
from typing import Any, Callable, List

import peewee
import pytest

from peewee_kvcache import (CachedMySQLDatabase, CachedPooledPostgresqlDatabase,
                            CachedPostgresqlDatabase, CachedSqliteDatabase)
from tests.conftest import MY, PG, RUN_ID, local_hits
from tests.models import Post, User

PEEWEE_3 = peewee.__version__.startswith("3.")


@pytest.fixture
def data(db, bind):
    bind(User)
    User.create(name="alice", score=1)
    return db


@pytest.fixture
def connect(request, tmp_path):
    """Open another connection to the test database (with its own cache: another host). No
    NOTIFY, so the interleavings are exactly the ones a test writes."""
    opened: List[peewee.Database] = []

    def open_(backend: str, cache: Any, **kwargs: Any) -> peewee.Database:
        if backend == "sqlite":
            database = CachedSqliteDatabase(str(tmp_path / "app.db"), cache=cache, **kwargs)
        elif backend == "postgres":
            schema = request.getfixturevalue("pg_schema")
            kwargs.setdefault("notify", False)
            database = CachedPostgresqlDatabase("test", cache=cache,
                                                options=f"-c search_path={schema}", **PG, **kwargs)
        else:
            database = CachedMySQLDatabase(request.getfixturevalue("mysql_database"), cache=cache,
                                           **MY, **kwargs)
        opened.append(database)
        return database

    yield open_
    for database in opened:
        if not database.is_closed():
            database.close()


def scores(database=None):
    query = User.select(User.name, User.score).order_by(User.name).tuples().with_cache()
    return list(query if database is None else query.bind(database))


def in_thread(fn: Callable[[], Any], database: peewee.Database) -> Any:
    """``fn()`` in another thread (with its own connection unless ``thread_safe=False``)."""
    result: List[Any] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        finally:
            if database.thread_safe and not database.is_closed():
                database.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


def raw_update(database: peewee.Database, score: int) -> None:
    """A write the library cannot see: straight through the driver's cursor."""
    sql, params = User.update(score=score).sql()
    database.connection().cursor().execute(sql, params)


# -- §4a: a REPEATABLE READ snapshot older than another host's commit ---------------------------
@pytest.mark.parametrize("backend", ["postgres", "mysql", "sqlite"])
def test_snapshot_result_is_stamped_with_begin(data, backend, make_cache, connect):
    """Host A's transaction reads a snapshot, host B commits and sweeps, A stores the snapshot's
    rows: B's re-sweep must delete them from L2, so a host started later reads the commit."""
    if backend == "sqlite":
        data.execute_sql("PRAGMA journal_mode = wal")  # readers keep a snapshot while B commits
    host_b = connect(backend, make_cache(l1="b", max_put_delay=1))
    host_c = connect(backend, make_cache(l1="c"))
    isolation = {"isolation_level": "REPEATABLE READ"} if backend == "postgres" else {}
    with data.atomic(**isolation):
        assert list(User.select(User.score).tuples()) == [(1,)]  # uncached: the snapshot
        User.update(score=2).bind(host_b).execute()
        assert host_b.cache.drain(10)  # B's first sweep is done
        assert scores() == [("alice", 1)]  # A stores what its snapshot shows
    assert data.cache.drain(10)  # A's L2 write has landed
    deadline = time.monotonic() + 15
    while len(host_b.cache.outbox) and time.monotonic() < deadline:  # B's re-sweep
        time.sleep(0.05)
    assert len(host_b.cache.outbox) == 0
    assert scores(host_c) == [("alice", 2)]


# -- §4d: raw transaction statements, however spelled ----------------------------------------------
COMMITS = [
    ("sqlite", "/* app */ BEGIN", "/* app */ COMMIT"), ("sqlite", "begin;", "commit;"),
    ("sqlite", "BEGIN IMMEDIATE", "END"),
    ("sqlite", "begin deferred transaction", "end transaction;"),
    ("postgres", "/* app */ BEGIN", "/* app */ COMMIT"), ("postgres", "begin;", "commit;"),
    ("postgres", "BEGIN WORK", "END"),
    ("postgres", "START TRANSACTION", "-- done\nEND TRANSACTION"),
    ("postgres", "BEGIN", "COMMIT AND NO CHAIN"),
    ("mysql", "/* app */ BEGIN", "/* app */ COMMIT"), ("mysql", "begin;", "commit;"),
    ("mysql", "START TRANSACTION", "COMMIT WORK"), ("mysql", "BEGIN WORK", "# done\nCOMMIT"),
]


@pytest.mark.parametrize("backend,begin,commit", COMMITS)
def test_raw_commit_is_recognised_however_spelled(data, backend, begin, commit, connect):
    """Another connection caches the pre-commit rows meanwhile: the COMMIT must invalidate."""
    other = connect(backend, data.cache)
    assert scores() == [("alice", 1)]
    data.execute_sql(begin)
    User.update(score=2).execute()
    assert in_thread(lambda: scores(other), other) == [("alice", 1)]
    data.execute_sql(commit)
    assert in_thread(lambda: scores(other), other) == [("alice", 2)]
    assert scores() == [("alice", 2)]


ROLLBACKS = {"sqlite": "/* app */ ROLLBACK", "postgres": "ABORT", "mysql": "rollback work;"}


def test_raw_rollback_ends_the_transaction(data, backend, connect):
    """After ABORT (or a commented ROLLBACK) an autocommit write invalidates at once again."""
    other = connect(backend, data.cache)
    data.execute_sql("BEGIN")
    User.update(score=9).execute()
    data.execute_sql(ROLLBACKS[backend])
    assert in_thread(lambda: scores(other), other) == [("alice", 1)]
    User.update(score=3).execute()
    assert in_thread(lambda: scores(other), other) == [("alice", 3)]


def test_rollback_to_savepoint_keeps_the_transaction(data, backend, connect):
    other = connect(backend, data.cache)
    assert scores() == [("alice", 1)]
    data.execute_sql("BEGIN")
    data.execute_sql("/* app */ SAVEPOINT s1")
    User.update(score=5).execute()
    data.execute_sql("-- undo\nROLLBACK TO SAVEPOINT s1;")
    User.update(score=6).execute()
    assert scores() == [("alice", 6)]  # still inside: its own writes, from the database
    data.execute_sql("COMMIT")
    assert in_thread(lambda: scores(other), other) == [("alice", 6)]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_failed_raw_begin_keeps_the_open_transaction(data, connect):
    other = connect("sqlite", data.cache)
    assert scores() == [("alice", 1)]
    data.execute_sql("BEGIN")
    User.update(score=2).execute()
    with pytest.raises(peewee.OperationalError):
        data.execute_sql("BEGIN")  # cannot start a transaction within a transaction
    assert in_thread(lambda: scores(other), other) == [("alice", 1)]
    data.execute_sql("COMMIT")
    assert in_thread(lambda: scores(other), other) == [("alice", 2)]


@pytest.mark.parametrize("backend", ["postgres"])
def test_failed_raw_commit_still_ends_the_transaction(db, bind, connect):
    """A deferred constraint fails the COMMIT: the transaction is over, so a later autocommit
    write must invalidate at once (not wait for a COMMIT that never comes)."""
    bind(User, Post)
    User.create(name="alice", score=1)
    db.execute_sql('ALTER TABLE "post" DROP CONSTRAINT IF EXISTS post_user_id_fkey')
    db.execute_sql('ALTER TABLE "post" ADD CONSTRAINT post_user_fk FOREIGN KEY (user_id) '
                   'REFERENCES "user" (id) DEFERRABLE INITIALLY DEFERRED')
    other = connect("postgres", db.cache)
    db.execute_sql("BEGIN")
    Post.insert(user=12345, title="orphan").execute()
    with pytest.raises(peewee.IntegrityError):
        db.execute_sql("COMMIT")
    assert in_thread(lambda: scores(other), other) == [("alice", 1)]
    User.update(score=3).execute()
    assert in_thread(lambda: scores(other), other) == [("alice", 3)]


# -- §4e: table names with '.', '"', '[' or a backtick ---------------------------------------------
ODD_NAMES = ["my.table", 'we"ird', "br[ack]et", "back`tick"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_table_names_are_invalidated(db, backend, name):
    if PEEWEE_3 and backend == "mysql" and name in ('we"ird', "back`tick"):
        pytest.skip("peewee 3 escapes '\"' as PostgreSQL does, and not '`', inside MySQL quotes")

    class Odd(peewee.Model):
        v = peewee.IntegerField()

        class Meta:
            database = db
            table_name = name

    def values() -> List[int]:
        return [row.v for row in Odd.select().with_cache()]

    def bypass(v: int) -> None:
        sql, params = Odd.update(v=v).sql()
        db.connection().cursor().execute(sql, params)

    db.drop_tables([Odd], safe=True)
    db.create_tables([Odd])
    try:
        Odd.create(v=1)
        assert values() == [1]
        Odd.update(v=2).execute()
        assert values() == [2]
        bypass(3)
        db.cache.invalidate(tables=[Odd])
        assert values() == [3]
        bypass(4)
        db.cache.invalidate(tables=[name])
        assert values() == [4]
        Odd.delete().execute()
        assert values() == []
    finally:
        db.drop_tables([Odd], safe=True)


# -- §4f: a hand-made invalidation inside a transaction --------------------------------------------
def test_manual_invalidation_inside_transaction_is_repeated_at_commit(data, backend, connect):
    other = connect(backend, data.cache)
    assert scores() == [("alice", 1)]
    read = threading.Event()
    with data.atomic():
        raw_update(data, 2)  # a write the library can't see, so the user invalidates by hand
        data.cache.invalidate(tables=[User])

        def reader():
            rows = scores(other)  # the pre-commit rows, cached again
            read.set()
            return rows

        assert in_thread(reader, other) == [("alice", 1)]
        assert read.is_set()
        assert scores() == [("alice", 2)]  # this transaction reads its own change
    assert in_thread(lambda: scores(other), other) == [("alice", 2)]
    assert scores() == [("alice", 2)]


# -- §4g: thread_safe=False: one connection, one transaction, many threads -------------------------
def test_shared_connection_never_serves_a_rolled_back_value(db, bind, backend, connect):
    bind(User)
    User.create(name="alice", score=1)
    extra = {"check_same_thread": False} if backend == "sqlite" else {}
    shared = connect(backend, db.cache, thread_safe=False, **extra)
    with shared.atomic() as txn:
        User.update(score=99).bind(shared).execute()
        seen = in_thread(lambda: scores(shared), shared)  # same connection: same transaction
        assert seen == [("alice", 99)]
        assert shared.cache.get_stats().stores == 0
        txn.rollback()
    assert scores(shared) == [("alice", 1)]
    assert in_thread(lambda: scores(shared), shared) == [("alice", 1)]


# -- §4h: in-memory SQLite databases ---------------------------------------------------------------
@pytest.mark.parametrize("database,params", [
    (":memory:", {}), ("file::memory:", {"uri": True}),
    ("file:pkv_private?mode=memory", {"uri": True}),
])
def test_in_memory_databases_never_share_entries(cache, database, params):
    one = CachedSqliteDatabase(database, cache=cache, **params)
    two = CachedSqliteDatabase(database, cache=cache, **params)
    for db, name in ((one, "alice"), (two, "bob")):
        with db.bind_ctx([User]):
            db.create_tables([User])
            User.create(name=name)
    for _ in range(2):
        for db, name in ((one, "alice"), (two, "bob")):
            with db.bind_ctx([User]):
                assert [u.name for u in User.select().with_cache()] == [name]
    one.close()
    two.close()


def test_shared_in_memory_database_by_name(cache):
    """Two objects on one named shared in-memory database see the same rows (and may cache
    them apart); one on another name never sees them."""
    uri = {"uri": True}
    one = CachedSqliteDatabase(f"file:{RUN_ID}_a?mode=memory&cache=shared", cache=cache, **uri)
    same = CachedSqliteDatabase(f"file:{RUN_ID}_a?mode=memory&cache=shared", cache=cache, **uri)
    other = CachedSqliteDatabase(f"file:{RUN_ID}_b?mode=memory&cache=shared", cache=cache, **uri)
    for db, name in ((one, "alice"), (other, "bob")):
        with db.bind_ctx([User]):
            db.create_tables([User])
            User.create(name=name)
    for db, name in ((one, "alice"), (other, "bob"), (same, "alice"), (one, "alice")):
        with db.bind_ctx([User]):
            assert [u.name for u in User.select().with_cache()] == [name]
    with same.bind_ctx([User]):
        User.update(name="carol").execute()
    with one.bind_ctx([User]):
        assert [u.name for u in User.select().with_cache()] == ["carol"]
    for db in (one, same, other):
        db.close()


# -- §4i: session statements change what the same SQL means ----------------------------------------
@pytest.fixture
def tenant2(data, backend):
    """A second schema (PostgreSQL) or database (MariaDB) with its own ``user`` table."""
    name = f"{RUN_ID}_t2"
    if backend == "postgres":
        data.execute_sql(f'CREATE SCHEMA "{name}"')
        data.execute_sql(f'CREATE TABLE "{name}"."user" (id serial PRIMARY KEY, '
                         f'name varchar(64), score integer)')
        data.execute_sql(f'INSERT INTO "{name}"."user" (name, score) VALUES (%s, %s)', ("bob", 7))
        yield name
        data.execute_sql(f'DROP SCHEMA "{name}" CASCADE')
    elif backend == "mysql":
        data.execute_sql(f"CREATE DATABASE `{name}`")
        data.execute_sql(f"CREATE TABLE `{name}`.`user` (id integer AUTO_INCREMENT PRIMARY KEY, "
                         f"name varchar(64), score integer)")
        data.execute_sql(f"INSERT INTO `{name}`.`user` (name, score) VALUES (%s, %s)", ("bob", 7))
        yield name
        data.execute_sql(f"DROP DATABASE `{name}`")
    else:
        pytest.skip("SQLite has no schemas to switch between")


def switch(backend: str, name: str) -> str:
    return f'SET search_path TO "{name}"' if backend == "postgres" else f"USE `{name}`"


def test_switching_schema_or_database(data, backend, tenant2, connect, pg_schema_or_db):
    assert scores() == [("alice", 1)]
    data.execute_sql(switch(backend, tenant2))
    assert scores() == [("bob", 7)]
    assert scores() == [("bob", 7)]
    data.execute_sql(switch(backend, pg_schema_or_db))
    assert scores() == [("alice", 1)]
    other = connect(backend, data.cache)
    hits = local_hits(data.cache.get_stats())

    def as_tenant2():
        other.execute_sql(switch(backend, tenant2))
        return scores(other)

    assert in_thread(as_tenant2, other) == [("bob", 7)]  # the same SET: the same entries
    assert local_hits(data.cache.get_stats()) == hits + 1
    assert in_thread(lambda: scores(other), other) == [("alice", 1)]


@pytest.fixture
def pg_schema_or_db(backend, request):
    return request.getfixturevalue("pg_schema" if backend == "postgres" else "mysql_database")


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("statement", [
    "RESET search_path", "SELECT set_config('search_path', %s, false)",
])
def test_reset_and_set_config(data, tenant2, pg_schema, statement):
    data.execute_sql("SELECT set_config('search_path', %s, false)", (f'"{tenant2}"',))
    assert scores() == [("bob", 7)]
    params = (f'"{pg_schema}"',) if "%s" in statement else None
    data.execute_sql(statement, params)
    assert scores() == [("alice", 1)]


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("become,back", [
    ("SET ROLE {role}", "RESET ROLE"),
    ("SET SESSION AUTHORIZATION {role}", "RESET SESSION AUTHORIZATION"),
])
def test_role_with_row_level_security(data, become, back):
    role = f"{RUN_ID}_reader"
    User.create(name="bob", score=2)
    data.execute_sql(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        data.execute_sql(f'GRANT USAGE ON SCHEMA "{RUN_ID}" TO "{role}"')
        data.execute_sql(f'GRANT SELECT ON "user" TO "{role}"')
        data.execute_sql('ALTER TABLE "user" ENABLE ROW LEVEL SECURITY')
        data.execute_sql(f"""CREATE POLICY only_bob ON "user" FOR SELECT TO "{role}" """
                         f"""USING (name = 'bob')""")
        assert scores() == [("alice", 1), ("bob", 2)]
        data.execute_sql(become.format(role=f'"{role}"'))
        assert scores() == [("bob", 2)]
        data.execute_sql(back)
        assert scores() == [("alice", 1), ("bob", 2)]
    finally:
        data.execute_sql(back)
        data.execute_sql('DROP POLICY IF EXISTS only_bob ON "user"')
        data.execute_sql(f'DROP OWNED BY "{role}"')
        data.execute_sql(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("backend", ["postgres"])
def test_pooled_connection_keeps_its_session(data, tenant2, pg_schema, cache):
    pooled = CachedPooledPostgresqlDatabase("test", cache=cache, notify=False, max_connections=1,
                                            options=f"-c search_path={pg_schema}", **PG)
    try:
        assert scores(pooled) == [("alice", 1)]
        pooled.execute_sql(f'SET search_path TO "{tenant2}"')
        pooled.close()  # back to the pool, its search_path with it
        assert scores(pooled) == [("bob", 7)]
    finally:
        pooled.close_all()


TEMPORARY = {"sqlite": "CREATE TEMP TABLE", "postgres": "CREATE TEMP TABLE",
             "mysql": "CREATE TEMPORARY TABLE"}


def test_temporary_table_shadows_only_its_connection(data, backend, connect):
    table = "`user`" if backend == "mysql" else '"user"'
    data.execute_sql(f"{TEMPORARY[backend]} {table} AS SELECT * FROM {table}")
    try:
        data.execute_sql(f"UPDATE {table} SET score = 50")  # the temporary one
        assert scores() == [("alice", 50)]
        other = connect(backend, data.cache)
        assert in_thread(lambda: scores(other), other) == [("alice", 1)]
    finally:
        data.execute_sql(f"DROP TABLE {table}")  # the temporary one


def test_sqlite_savepoint_outside_a_transaction_is_one(tmp_path, make_cache):
    """On SQLite a SAVEPOINT outside a transaction opens one and its RELEASE commits it: the
    UPDATE inside is invalidated at the RELEASE, so a read from another connection meanwhile
    can't leave the pre-commit row cached (found in review)."""
    import threading

    cache = make_cache()
    db = CachedSqliteDatabase(str(tmp_path / "sp.db"), cache=cache,
                              pragmas={"journal_mode": "wal"})

    class Item(peewee.Model):
        v = peewee.TextField()

        class Meta:
            database = db

    db.create_tables([Item])
    Item.create(id=1, v="orig")

    def read() -> str:
        return Item.select().where(Item.id == 1).with_cache(ex=300).get().v

    seen = []

    def other_connection() -> None:
        seen.append(read())
        db.close()

    with db.savepoint():
        Item.update(v="new").where(Item.id == 1).execute()
        reader = threading.Thread(target=other_connection)
        reader.start()
        reader.join()
    assert seen == ["orig"]                      # the savepoint had not committed yet
    assert read() == "new"
    db.close()
