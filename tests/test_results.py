"""A cached result equals the database's, row for row and type for type, for every result shape,
served from L1 and from L2 alone (L1 emptied), on SQLite, PostgreSQL and MariaDB."""
import datetime
import decimal
import uuid

import peewee
import pytest
from peewee import fn

from tests.conftest import local_hits
from tests.models import ALL, Comment, Post, User


def rows_of(value):
    """Comparable form of any query output, keeping types."""
    if isinstance(value, peewee.Model):
        return (type(value).__name__, tuple(sorted((k, type(v).__name__, repr(v))
                                                   for k, v in value.__data__.items())))
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return [rows_of(v) for v in value]
    if isinstance(value, dict):
        return sorted((k, type(v).__name__, repr(v)) for k, v in value.items())
    return (type(value).__name__, repr(value))



@pytest.fixture
def cache(make_cache):
    """These tests read each level in turn: every miss asks L2 (not only where it pays)."""
    return make_cache(l1_reads="always", l2_reads="always")

@pytest.fixture
def data(db, bind):
    bind(*ALL)
    alice = User.create(name="alice", score=3)
    bob = User.create(name="bob", score=5)
    for user, n in ((alice, 2), (bob, 3)):
        for i in range(n):
            post = Post.create(user=user, title=f"{user.name}-{i}",
                               price=decimal.Decimal(f"{i}.5{i}"))
            Comment.create(post=post, body=f"c{i}")
    return db


SHAPES = {
    "models": lambda: list(User.select().order_by(User.id).with_cache()),
    "dicts": lambda: list(Post.select().order_by(Post.id).dicts().with_cache()),
    "tuples": lambda: list(Post.select(Post.title, Post.price, Post.created)
                           .order_by(Post.id).tuples().with_cache()),
    "namedtuples": lambda: [tuple(r) for r in Post.select().order_by(Post.id)
                            .namedtuples().with_cache()],
    "objects": lambda: [(p.title, p.user_id) for p in Post.select().order_by(Post.id)
                        .objects().with_cache()],
    "join": lambda: [(p.title, p.user.name) for p in Post.select(Post, User).join(User)
                     .order_by(Post.id).with_cache()],
    "aggregate": lambda: list(User.select(User.name, fn.COUNT(Post.id).alias("n"))
                              .join(Post).group_by(User.name).order_by(User.name)
                              .tuples().with_cache()),
    "count": lambda: Post.select().with_cache().count(),
    "exists": lambda: Post.select().where(Post.title == "bob-2").with_cache().exists(),
    "scalar": lambda: Post.select(fn.MAX(Post.price)).with_cache().scalar(),
    "get": lambda: rows_of(User.select().where(User.name == "bob").with_cache().get()),
    "first": lambda: rows_of(User.select().order_by(User.id).with_cache().first()),
    "compound": lambda: sorted(
        (User.select(User.name).where(User.score < 4)
         | User.select(User.name).where(User.score > 4)).with_cache().tuples()),
    "subquery": lambda: sorted(p.title for p in Post.select().where(
        Post.user.in_(User.select(User.id).where(User.score > 4))).with_cache()),
    "prefetch": lambda: [(u.name, [p.title for p in u.posts]) for u in peewee.prefetch(
        User.select().order_by(User.id).with_cache(),
        Post.select().order_by(Post.id).with_cache())],
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_is_served_equal_from_l1_and_l2(data, shape):
    run = SHAPES[shape]
    cache = data.cache
    expected = rows_of(run())             # miss: from the database, stored
    assert cache.drain(10)
    local_before = local_hits(cache.get_stats())
    assert rows_of(run()) == expected      # from this host (process memory or L1)
    assert local_hits(cache.get_stats()) > local_before
    cache.clear_local()              # only L2 is left
    l2_before = cache.get_stats().l2_hits
    assert rows_of(run()) == expected
    assert cache.get_stats().l2_hits > l2_before


def test_cached_query_does_not_reach_the_database(data, monkeypatch):
    query = User.select().where(User.name == "alice").with_cache()
    first = [u.score for u in query.clone()]
    sent = []
    monkeypatch.setattr(data, "cursor", lambda *a, **k: sent.append(a))  # any DB call is seen
    assert [u.score for u in query.clone()] == first
    assert sent == []


def test_with_cache_survives_cloning(data):
    base = User.select().with_cache(ex=60, tag="users")
    chained = base.where(User.score > 0).order_by(User.name).limit(5).offset(0)
    assert chained._kvcache == base._kvcache
    list(chained)
    before = local_hits(data.cache.get_stats())
    list(chained.clone())
    assert local_hits(data.cache.get_stats()) == before + 1


def typed_select(backend):
    """A SELECT returning one value of every type the backend's driver produces."""
    common = [peewee.Value(decimal.Decimal("12345678901234567890.125")).alias("dec"),
              peewee.Value(None).alias("nothing"),
              peewee.Value(2 ** 62).alias("big"),
              peewee.Value("héllo").alias("text"),
              peewee.Value(1.5).alias("flt")]
    if backend == "postgres":
        extra = [peewee.SQL("'2024-01-02 03:04:05.123456'::timestamp AS ts"),
                 peewee.SQL("'2024-01-02 03:04:05.5+05:30'::timestamptz AS tstz"),
                 peewee.SQL("'2024-01-02'::date AS d"), peewee.SQL("'10:11:12.5'::time AS t"),
                 peewee.SQL("'10:11:12+02'::timetz AS ttz"),
                 peewee.SQL("interval '1 day 2 hours' AS iv"),
                 peewee.SQL("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u"),
                 peewee.SQL("'\\x00ff10'::bytea AS b"),
                 peewee.SQL("'{\"a\": [1, 2.5, null, \"x\"], \"b\": {\"c\": true}}'::json AS j"),
                 peewee.SQL("'[1, {\"k\": \"v\"}]'::jsonb AS jb"),
                 peewee.SQL("ARRAY[1, 2, NULL]::int[] AS arr"),
                 peewee.SQL("ARRAY['1.10', '2']::numeric[] AS narr"),
                 peewee.SQL("true AS flag"), peewee.SQL("(2 ^ 80)::numeric AS huge")]
    elif backend == "mysql":
        extra = [peewee.SQL("CAST('2024-01-02 03:04:05.123456' AS DATETIME(6)) AS ts"),
                 peewee.SQL("CAST('2024-01-02' AS DATE) AS d"),
                 peewee.SQL("CAST('10:11:12' AS TIME) AS t"),
                 peewee.SQL("CAST(x'00ff10' AS BINARY) AS b"),
                 peewee.SQL("CAST(18446744073709551615 AS UNSIGNED) AS u64"),
                 peewee.SQL("JSON_OBJECT('a', 1) AS j")]
    else:
        extra = [peewee.SQL("x'00ff10' AS b"), peewee.SQL("9223372036854775807 AS i64")]
    return peewee.Select(columns=common + extra)


def test_every_type_round_trips_exactly(db, backend):
    query = typed_select(backend).bind(db).tuples().with_cache()
    expected = list(query.clone())
    assert db.cache.drain(10)
    for source in ("l1", "l2"):
        if source == "l2":
            db.cache.clear_local()
        got = list(query.clone())
        assert [[type(v) for v in row] for row in got] == [[type(v) for v in row]
                                                           for row in expected]
        assert [[bytes(v) if isinstance(v, memoryview) else v for v in row] for row in got] == \
               [[bytes(v) if isinstance(v, memoryview) else v for v in row] for row in expected]
    if backend == "postgres":
        row = got[0]
        tstz = row[6]
        assert tstz.utcoffset() == expected[0][6].utcoffset()
        assert isinstance(row[11], uuid.UUID) and isinstance(row[8], datetime.time)
