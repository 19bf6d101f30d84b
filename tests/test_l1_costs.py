"""A miss in memory reads the L1 directory only where that pays for the query's shape: on a host
with one process, L1 holds only what memory holds, and its read costs as much as a cheap query.
An entry a re-check confirmed in L1 (its memory copy dropped) is read from L1 all the same."""
import subprocess
import sys
import threading
import time

import peewee
import pytest
from freezegun import freeze_time

from peewee_kvcache import CachedSqliteDatabase


class Doc(peewee.Model):
    title = peewee.CharField()


@pytest.fixture
def db(make_cache, tmp_path):
    database = CachedSqliteDatabase(str(tmp_path / "d.db"), cache=make_cache(l1_max_age=10.0))
    database.bind([Doc])
    database.create_tables([Doc])
    Doc.insert_many([{"title": f"t{i}"} for i in range(1, 11)]).execute()
    yield database
    database.close()


@pytest.fixture
def l1_reads(db, monkeypatch):
    """L1 reads of the cache's directory, each made to cost 5 ms: far more than this SQLite
    lookup, so that the cost model's verdict does not depend on this machine's speed."""
    reads = []
    get = db.cache.l1.get

    def slow_get(digest):
        reads.append(digest)
        time.sleep(0.005)
        return get(digest)

    monkeypatch.setattr(db.cache.l1, "get", slow_get)
    return reads


def title(doc_id: int) -> str:
    return Doc.select().where(Doc.id == doc_id).with_cache().get().title


def test_a_shape_l1_never_pays_for_skips_the_l1_read(db, l1_reads):
    assert title(1) == "t1"  # a new shape: L1 is read (a sibling may have it), and measured
    assert len(l1_reads) == 1
    assert [title(i) for i in range(2, 11)] == [f"t{i}" for i in range(2, 11)]
    stats = db.cache.get_stats()
    assert len(l1_reads) == 1 and stats.l1_skipped_cost == 9 and stats.misses == 10


def test_an_exploring_try_of_l1_is_made_in_the_background_not_by_the_query(db, l1_reads,
                                                                           monkeypatch):
    """L1 could pay for a slow shape (5 ms against 1 s) but its hit rate says it does not: one
    miss in 16 still tries L1, so a rising rate is seen, on the writer thread; every query goes
    straight to the database."""
    threads = []
    get = db.cache.l1.get

    def recording_get(digest):
        threads.append(threading.current_thread())
        return get(digest)

    assert title(1) == "t1"  # the shape is learnt
    costs = db.cache._reader.costs
    for known in costs._shapes.values():  # as if it took 1 s and L1 never had its answers
        known.db_ms, known.rates[0] = 1000.0, 0.0
    monkeypatch.setattr(db.cache.l1, "get", recording_get)
    reads_before = len(l1_reads)
    for _ in range(2):
        assert [title(i) for i in range(2, 10)] == [f"t{i}" for i in range(2, 10)]
        db.cache.clear_local()  # each lookup is a miss again (the shape's estimates stay)
    assert db.cache.drain(10)
    assert db.cache.get_stats().l1_skipped_cost == 16
    assert len(l1_reads) - reads_before == len(threads) == 1
    assert threading.current_thread() not in threads


def test_an_entry_confirmed_by_a_recheck_is_read_from_l1_even_where_l1_does_not_pay(db,
                                                                                   l1_reads):
    with freeze_time("2026-12-01 12:00:00") as clock:
        assert title(1) == "t1" and title(2) == "t2"  # the second miss skips L1 already
        assert db.cache.drain(10)
        assert db.cache.get_stats().l1_skipped_cost == 1
        clock.tick(6)  # past half of l1_max_age: served from memory, queued for a re-check
        assert title(1) == "t1"
        assert db.cache.drain(10)  # confirmed in L1; its memory copy dropped
        stats, reads = db.cache.get_stats(), len(l1_reads)
        assert stats.l1_refreshes == 1
        assert title(1) == "t1"
    after = db.cache.get_stats()
    assert after.l1_hits == stats.l1_hits + 1 and after.misses == stats.misses
    assert len(l1_reads) > reads


#: run in a fresh interpreter: forking pytest's own process (threads of earlier tests alive)
#: could deadlock the child; this one has only its cache's threads, which are fork-safe
FORKED_WORKER = r"""
import os, sys, time
import peewee
from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache, LocalKVNamespace

class Doc(peewee.Model):
    title = peewee.CharField()

work = sys.argv[1]
cache = CloudflareKVCache(LocalKVNamespace(work + "/kv"), l1_directory=work + "/l1")
db = CachedSqliteDatabase(work + "/d.db", cache=cache)
db.bind([Doc])
db.create_tables([Doc])
Doc.insert_many([{"title": f"t{i}"} for i in range(1, 5)]).execute()
reads = []
get = cache.l1.get
def slow_get(digest):  # 5 ms: far more than the lookup, whatever this machine's speed
    reads.append(digest)
    time.sleep(0.005)
    return get(digest)
cache.l1.get = slow_get
def title(doc_id):
    return Doc.select().where(Doc.id == doc_id).with_cache().get().title
assert title(1) == "t1" and title(2) == "t2"
assert cache.drain(10)
print("parent skipped", cache.get_stats().l1_skipped_cost, flush=True)
pid = os.fork()
if pid == 0:
    before = len(reads)
    title(3)
    print("child", "read" if len(reads) > before else "skipped", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
title(4)
print("parent skipped", cache.get_stats().l1_skipped_cost, flush=True)
cache.close()
"""


def test_a_forked_worker_learns_l1_anew(tmp_path):
    """Before the fork the parent learned that L1 never pays for the lookup (it was alone on
    the host); its forked child has siblings that fill L1, so it reads L1 again; the parent
    still skips it."""
    done = subprocess.run([sys.executable, "-c", FORKED_WORKER, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["parent skipped 1", "child read", "parent skipped 2"]
