"""Consistency across hosts: caches with separate L1 directories sharing one L2.

Another host's write deletes the L2 entry but cannot touch this host's L1. Two mechanisms bound
how long this host serves the old rows: ``l1_max_age`` (every backend) and, on PostgreSQL, NOTIFY.
Every test runs twice: the shared L2 is the embedded namespace, then the KV gateway Worker in
workerd (what a fleet uses on Cloudflare).
"""
import time

import peewee
import pytest

from peewee_kvcache import CachedPostgresqlDatabase, CachedSqliteDatabase
from tests.conftest import PG, local_hits, wait_for


class Row(peewee.Model):
    value = peewee.IntegerField()


def read(db):
    with db.bind_ctx([Row]):
        return [r.value for r in Row.select().order_by(Row.id).with_cache()]


def write(db, value):
    with db.bind_ctx([Row]):
        Row.update(value=value).execute()


@pytest.fixture(params=["local", pytest.param("worker", marks=pytest.mark.slow)])
def l2(request):
    """What both hosts' caches share as L2 (options for ``make_cache``): its default local
    namespace, or the session's gateway Worker, emptied (slow: it runs in the full tox
    environments). Miniflare's KV is consistent at once, so the gateway's caches re-sweep
    without waiting out Cloudflare's 60 s propagation delay."""
    if request.param == "local":
        yield {}
        return
    gateway = request.getfixturevalue("workerd_gateway")
    gateway.clear()
    namespace = gateway.namespace()
    yield {"namespace": namespace, "propagation_delay": 0}
    namespace.close()


@pytest.fixture
def two_hosts_sqlite(make_cache, tmp_path, l2):
    """Two 'hosts': separate L1 directories, one KV namespace, one database file. Every miss
    (and every aged entry) asks L2: these tests are about what L2 answers, not about whether
    asking it pays (test_l2_costs.py)."""
    path = str(tmp_path / "shared.db")
    options = dict(l1_max_age=1, max_put_delay=0.5, l1_reads="always", l2_reads="always", **l2)
    a = CachedSqliteDatabase(path, cache=make_cache("l1-a", **options))
    b = CachedSqliteDatabase(path, cache=make_cache("l1-b", **options))
    with a.bind_ctx([Row]):
        a.create_tables([Row])
        Row.create(value=1)
    yield a, b
    a.close()
    b.close()


def test_l1_max_age_bounds_another_hosts_stale_l1(two_hosts_sqlite):
    a, b = two_hosts_sqlite
    assert read(a) == [1]
    assert a.cache.drain(10)
    write(b, 2)                                   # B's invalidation deletes the L2 entry
    assert b.cache.drain(10)
    assert read(a) == [1]                         # within l1_max_age A still trusts its L1
    time.sleep(1.1)
    assert read(a) == [2]                         # past it, A re-checks L2: gone -> database
    stats = a.cache.get_stats()
    assert stats.l1_rechecks >= 1


def test_recheck_keeps_serving_an_entry_l2_still_holds(two_hosts_sqlite):
    a, _ = two_hosts_sqlite
    assert read(a) == [1]
    assert a.cache.drain(10)
    time.sleep(1.1)
    sent = []
    a.cursor = lambda *args, **kwargs: sent.append(args)  # the database must not be asked
    assert read(a) == [1]
    del a.cursor
    assert sent == [] and a.cache.get_stats().l1_rechecks == 1
    assert read(a) == [1]                          # re-verified: a plain L1 hit again
    assert a.cache.get_stats().l1_rechecks == 1


def test_recheck_prefers_a_newer_result_in_l2(two_hosts_sqlite):
    a, b = two_hosts_sqlite
    assert read(a) == [1]
    assert a.cache.drain(10)
    write(b, 2)
    assert b.cache.drain(10)
    assert read(b) == [2]                          # B caches the new rows in L2
    assert b.cache.drain(10)
    time.sleep(1.1)
    l2_hits = a.cache.get_stats().l2_hits
    assert read(a) == [2]
    assert a.cache.get_stats().l2_hits == l2_hits + 1


def test_another_hosts_late_write_is_never_served_to_the_writer(two_hosts_sqlite):
    """A's result (computed before B's write) lands in L2 after B's sweep: B rejects it (it was
    computed before B's invalidation), and B's late re-sweep deletes it for everyone else."""
    a, b = two_hosts_sqlite
    assert read(a) == [1]                          # A's L2 write is still queued...
    write(b, 2)
    assert b.cache.drain(10)                       # ...B's sweep runs first...
    assert a.cache.drain(10)                       # ...then A's stale entry lands
    (key,) = b.cache.l2_entry_keys()
    assert read(b) == [2]                          # read-your-writes on B despite it
    assert b.cache.get_stats().l2_stale_rejected == 1
    assert b.cache.drain(10)
    assert wait_for(lambda: b.cache.get_stats().outbox_jobs == 0, timeout=5)  # re-sweep ran
    c = make_third_host(b)
    assert read(c) == [2]                          # a host that never heard of the write


def make_third_host(b):
    from peewee_kvcache import CloudflareKVCache
    cache = CloudflareKVCache(b.cache.namespace, l1_directory=b.cache.l1.directory + "-c")
    return CachedSqliteDatabase(b.database, cache=cache)


def test_recheck_without_l2_goes_to_the_database(two_hosts_sqlite, monkeypatch):
    a, b = two_hosts_sqlite
    assert read(a) == [1]
    assert a.cache.drain(10)
    peewee.Database.execute_sql(b, "UPDATE row SET value = 3")   # behind both caches' backs

    def down(key):
        raise ConnectionError("KV down")

    monkeypatch.setattr(a.cache.namespace, "get", down)
    time.sleep(1.1)
    assert read(a) == [3]                          # unverifiable: not served


@pytest.fixture
def two_hosts_pg(make_cache, pg_schema, l2):
    """Two PostgreSQL 'hosts' with separate L1s, no l1_max_age: only NOTIFY can help."""
    options = f"-c search_path={pg_schema}"
    a = CachedPostgresqlDatabase("test", cache=make_cache("l1-a", l1_max_age=None, **l2),
                                 options=options, **PG)
    b = CachedPostgresqlDatabase("test", cache=make_cache("l1-b", l1_max_age=None, **l2),
                                 options=options, **PG)
    with a.bind_ctx([Row]):
        a.drop_tables([Row], safe=True)
        a.create_tables([Row])
        Row.create(value=1)
    yield a, b
    with a.bind_ctx([Row]):
        a.drop_tables([Row], safe=True)
    for db in (a, b):
        db.stop_listener()
        db.close()


def test_notify_evicts_other_hosts_l1_on_commit(two_hosts_pg):
    a, b = two_hosts_pg
    assert read(a) == [1]
    assert a.start_listener().wait_ready(5)
    write(b, 2)                                     # autocommit: NOTIFY right after
    assert wait_for(lambda: read(a) == [2], timeout=3)
    assert a.cache.get_stats().remote_evictions >= 1

    with b.atomic():
        write(b, 3)
        assert read(a) == [2]                      # uncommitted: nothing delivered yet
    assert wait_for(lambda: read(a) == [3], timeout=3)


def test_rolled_back_write_sends_nothing(two_hosts_pg):
    a, b = two_hosts_pg
    assert read(a) == [1]
    assert a.start_listener().wait_ready(5)
    with b.atomic() as txn:
        write(b, 9)
        txn.rollback()
    time.sleep(0.5)
    assert a.cache.get_stats().remote_evictions == 0
    hits = local_hits(a.cache.get_stats())
    assert read(a) == [1]
    assert local_hits(a.cache.get_stats()) == hits + 1


def test_own_notifications_do_not_evict_fresh_entries(two_hosts_pg):
    a, _ = two_hosts_pg
    assert a.start_listener().wait_ready(5)
    write(a, 5)
    assert read(a) == [5]
    time.sleep(0.5)                                 # a's own NOTIFY arrives meanwhile
    hits = local_hits(a.cache.get_stats())
    assert read(a) == [5]
    assert local_hits(a.cache.get_stats()) == hits + 1
    assert a.cache.get_stats().remote_evictions == 0
