"""Every path that changes a table invalidates every cached query that read it (and no other)."""
import peewee
import pytest
from peewee import fn

from tests.conftest import local_hits
from tests.models import ALL, Audit, Badge, Comment, Post, User


@pytest.fixture
def data(db, bind):
    bind(*ALL)
    alice = User.create(name="alice", score=1)
    post = Post.create(user=alice, title="hello")
    Comment.create(post=post, body="first")
    Badge.create(user=alice, label="gold")
    return db


def user_names():
    return sorted(u.name for u in User.select().with_cache())


def post_titles():
    return sorted(p.title for p in Post.select().with_cache())


def upsert(backend):
    if backend == "mysql":
        return User.insert(name="alice", score=9).on_conflict(update={User.score: 9})
    return User.insert(name="alice", score=9).on_conflict(conflict_target=[User.name],
                                                          update={User.score: 9})


MUTATIONS = {
    "insert": lambda b: User.insert(name="zed").execute(),
    "insert_many": lambda b: User.insert_many([{"name": "x1"}, {"name": "x2"}]).execute(),
    "insert_from": lambda b: User.insert_from(Post.select(Post.title, Post.id),
                                              [User.name, User.score]).execute(),
    "replace": lambda b: User.replace(name="alice", score=7).execute(),
    "on_conflict": lambda b: upsert(b).execute(),
    "update": lambda b: User.update(score=User.score + 1).execute(),
    "delete": lambda b: User.delete().where(User.name == "alice").execute(),
    "create": lambda b: User.create(name="carol"),
    "save": lambda b: _save(),
    "delete_instance": lambda b: User.get(User.name == "alice").delete_instance(recursive=True),
    "bulk_create": lambda b: User.bulk_create([User(name="b1"), User(name="b2")]),
    "bulk_update": lambda b: _bulk_update(),
    "raw_execute_sql": lambda b: User._meta.database.execute_sql(
        "UPDATE %s SET score = score + 1" % _q(b, "user")),
    "truncate": lambda b: _truncate(b),
}


def _q(backend, name):
    return f"`{name}`" if backend == "mysql" else f'"{name}"'


def _save():
    user = User.get(User.name == "alice")
    user.score = 42
    user.save()


def _bulk_update():
    users = list(User.select())
    for u in users:
        u.score = 77
    User.bulk_update(users, fields=[User.score])


def _truncate(backend):
    if backend == "postgres":
        User.truncate_table(cascade=True)
    elif backend == "mysql":
        User._meta.database.execute_sql("SET FOREIGN_KEY_CHECKS = 0")
        User.truncate_table()
        User._meta.database.execute_sql("SET FOREIGN_KEY_CHECKS = 1")
    else:
        User.truncate_table()


def user_state():
    return sorted((u.name, u.score) for u in User.select().with_cache())


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_write_path_invalidates(data, backend, mutation):
    if mutation == "replace" and backend == "postgres":
        pytest.skip("PostgreSQL has no REPLACE (peewee refuses it); on_conflict covers upserts")
    before = user_state()
    assert user_state() == before                 # now served from the cache
    hits = data.cache.get_stats().hits
    MUTATIONS[mutation](backend)
    uncached = sorted((u.name, u.score) for u in User.select().with_cache(False))
    assert uncached != before, "the mutation must change the table for this test to mean anything"
    assert user_state() == uncached
    assert data.cache.get_stats().hits == hits


def test_unrelated_write_keeps_entries(data):
    user_names()
    Audit.create(event="x")
    hits = data.cache.get_stats().hits
    user_names()
    assert data.cache.get_stats().hits == hits + 1


@pytest.mark.parametrize("reader", ["join", "subquery", "cte", "union", "exists", "count"])
def test_tables_read_indirectly_are_invalidated(data, reader):
    queries = {
        "join": lambda: sorted((p.title, p.user.score) for p in
                               Post.select(Post, User).join(User).with_cache()),
        "subquery": lambda: sorted(p.title for p in Post.select().where(
            Post.user.in_(User.select(User.id).where(User.score > 5))).with_cache()),
        "cte": lambda: _cte_query(),
        "union": lambda: sorted((Post.select(Post.title.alias("n"))
                                 | User.select(User.name.alias("n")).where(User.score > 5))
                                .with_cache().tuples()),
        "exists": lambda: Post.select().where(peewee.fn.EXISTS(
            User.select().where((User.id == Post.user) & (User.score > 5)))).with_cache().count(),
        "count": lambda: Post.select().join(User).where(User.score > 5).with_cache().count(),
    }
    run = queries[reader]
    before = run()
    assert run() == before
    User.update(score=10).execute()
    after = run()
    assert after != before


def _cte_query():
    rich = User.select(User.id).where(User.score > 5).cte("rich")
    query = (Post.select(Post.title).join(rich, on=(Post.user == rich.c.id))
             .with_cte(rich).with_cache())
    return sorted(p.title for p in query)


def test_cascading_foreign_keys_invalidate_dependent_tables(data):
    titles = post_titles()
    comments = sorted(c.body for c in Comment.select().with_cache())
    badges = sorted((b.label, b.user_id is None) for b in Badge.select().with_cache())
    assert titles and comments and badges
    User.delete().execute()               # ON DELETE CASCADE / SET NULL in the database
    assert post_titles() == []
    assert sorted(c.body for c in Comment.select().with_cache()) == []
    assert sorted((b.label, b.user_id is None) for b in Badge.select().with_cache()) == \
        [("gold", True)]


def test_schema_changes_invalidate(data, db):
    user_names()
    db.drop_tables([Comment, Post, Badge])
    db.drop_tables([User])
    db.create_tables([User, Post, Comment, Badge])
    assert user_names() == []


def test_migration_invalidates(data, db, backend):
    from playhouse.migrate import SchemaMigrator, migrate
    user_names()
    migrator = SchemaMigrator.from_database(db)
    migrate(migrator.add_column("user", "nickname",
                                peewee.CharField(max_length=10, default="nick")))
    hits = db.cache.get_stats().hits
    rows = [r["nickname"] for r in User.select(peewee.SQL("*")).dicts().with_cache()]
    assert rows == ["nick"]
    assert db.cache.get_stats().hits == hits


def test_unknown_raw_write_invalidates_everything(data, db, backend):
    user_names()
    post_titles()
    manual = sorted(a.event for a in Audit.select().with_cache(auto_invalidate=False))
    if backend == "postgres":
        db.execute_sql("DO $$ BEGIN UPDATE \"user\" SET name = 'renamed'; END $$")
    elif backend == "mysql":
        db.execute_sql("CREATE PROCEDURE pkv_rename() UPDATE `user` SET name = 'renamed'")
        db.execute_sql("CALL pkv_rename()")
        db.execute_sql("DROP PROCEDURE pkv_rename")
    else:
        pytest.skip("SQLite has no statement that changes rows without naming its table")
    assert user_names() == ["renamed"]
    hits = db.cache.get_stats().hits
    post_titles()
    assert db.cache.get_stats().hits == hits     # everything auto-invalidated went
    assert sorted(a.event for a in Audit.select().with_cache(auto_invalidate=False)) == manual
    assert db.cache.get_stats().hits == hits + 1  # but not auto_invalidate=False entries


def test_auto_invalidate_false_survives_mutations_until_ttl(data):
    query = User.select(User.name).with_cache(auto_invalidate=False)
    before = sorted(u.name for u in query.clone())
    User.create(name="zed")
    assert sorted(u.name for u in query.clone()) == before
    User._meta.database.cache.invalidate(tables=[User])      # manual table invalidation neither
    assert sorted(u.name for u in query.clone()) == before


def test_tags_and_manual_invalidation(data):
    db = User._meta.database
    tagged = Post.select().with_cache(tag=["all_posts", "feed"])
    titles = sorted(p.title for p in tagged.clone())
    user_names()
    Post.update(title="changed").where(Post.id > 0).execute()
    assert sorted(p.title for p in tagged.clone()) == ["changed"]
    # an out-of-band change: the cache cannot see it, manual invalidation by tag fixes it
    before = sorted(p.title for p in tagged.clone())
    other = peewee.Database.execute_sql  # bypass the cache's write detection
    other(db, "UPDATE post SET title = 'oob'")
    assert sorted(p.title for p in tagged.clone()) == before
    db.cache.invalidate(tags="feed")
    assert sorted(p.title for p in tagged.clone()) == ["oob"]
    other(db, "UPDATE post SET title = 'oob2'")
    db.cache.invalidate(tables=["post"])
    assert sorted(p.title for p in tagged.clone()) == ["oob2"]
    assert titles == ["hello"]


def test_with_cache_false_and_strategy_all(make_cache, backend, request, tmp_path):
    from tests.conftest import open_database
    cache = make_cache(strategy="all")
    db = open_database(backend, cache, request, tmp_path)
    db.bind(ALL)
    db.drop_tables(ALL, safe=True)
    db.create_tables(ALL)
    try:
        User.create(name="a")
        list(User.select())
        list(User.select())
        assert local_hits(cache.get_stats()) == 1      # cached without with_cache()
        list(User.select().with_cache(False))
        assert local_hits(cache.get_stats()) == 1      # opted out
        assert User.get(User.name == "a").name == "a"
        assert User.get(User.name == "a").name == "a"
        assert local_hits(cache.get_stats()) == 2      # Model.get goes through the cache too
    finally:
        db.drop_tables(ALL, safe=True)
        db.close()


def test_explicit_strategy_leaves_plain_queries_alone(data):
    list(User.select())
    list(User.select())
    stats = data.cache.get_stats()
    assert stats.hits == 0 and stats.misses == 0


def test_max_aggregate_and_volatile_are_not_cached(data, backend):
    if backend == "sqlite":
        volatile = User.select(fn.random()).with_cache()
    elif backend == "mysql":
        volatile = User.select(fn.NOW()).with_cache()
    else:
        volatile = User.select(fn.now()).with_cache()
    list(volatile.clone())
    list(volatile.clone())
    expected_uncacheable = 2
    if backend != "sqlite":  # SQLite has no locking reads
        locking = User.select().for_update().with_cache()
        with User._meta.database.atomic():
            list(locking.clone())
            list(locking.clone())
        expected_uncacheable += 2
    stats = User._meta.database.cache.get_stats()
    assert stats.hits == 0 and stats.stores == 0 and stats.uncacheable == expected_uncacheable
