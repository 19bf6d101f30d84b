"""Stampede protection: many threads or processes missing the same key run the query once."""
import functools
import multiprocessing
import threading
import time

import peewee
import pytest

from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache, LocalKVNamespace
from peewee_kvcache.cache import stampede


class Item(peewee.Model):
    name = peewee.CharField()


def query():
    return Item.select().order_by(Item.id).with_cache()


@pytest.fixture
def slow_db(make_cache, tmp_path, monkeypatch):
    """A database whose reads of ``item`` take 0.3 s and are counted."""
    cache = make_cache(stampede_wait=3)
    db = CachedSqliteDatabase(str(tmp_path / "s.db"), cache=cache)
    db.bind([Item])
    db.create_tables([Item])
    Item.create(name="a")
    runs = []
    real_run = type(db)._run

    def slow_run(self, sql, params):
        if "item" in sql:
            runs.append(threading.get_ident())
            time.sleep(self._delay)
        return real_run(self, sql, params)

    db._delay = 0.3
    monkeypatch.setattr(type(db), "_run", slow_run)
    yield db, runs
    db.close()


def run_threads(n, target):
    results, errors = [], []

    def work():
        try:
            results.append(target())
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results, errors


def test_threads_missing_one_key_run_the_query_once(slow_db):
    db, runs = slow_db
    results, errors = run_threads(8, lambda: [i.name for i in query()])
    assert errors == []
    assert results == [["a"]] * 8
    assert len(runs) == 1
    assert db.cache.get_stats().stampede_waits == 7


def names_from(lowest: int) -> list:
    """One query shape, a key per ``lowest``."""
    return [i.name for i in Item.select().where(Item.id >= lowest).order_by(Item.id).with_cache()]


def test_a_shape_known_to_be_expensive_stays_guarded(slow_db):
    db, runs = slow_db
    for lowest in (1, 0, -1):  # the first stampede meets an unknown shape, the others a slow one
        runs.clear()
        results, errors = run_threads(4, functools.partial(names_from, lowest))
        assert errors == [] and results == [["a"]] * 4
        assert len(runs) == 1


def test_followers_waiting_on_the_lock_do_not_make_it_look_costly(slow_db, monkeypatch):
    """In a stampede the followers' takes wait on the leader's (here: 50 ms each, as a busy L1
    makes them); the lock is judged by its cheapest take, so the next stampedes of this 0.3 s
    shape are guarded still (an average of those waits would have dropped the guard)."""
    db, runs = slow_db
    real_add = db.cache.l1.entries.add

    def contended_add(key, *args, **kwargs):
        taken = real_add(key, *args, **kwargs)
        if not taken:
            time.sleep(0.05)
        return taken

    monkeypatch.setattr(db.cache.l1.entries, "add", contended_add)
    for lowest in (1, 0, -1, -2):
        runs.clear()
        results, errors = run_threads(4, functools.partial(names_from, lowest))
        assert errors == [] and results == [["a"]] * 4
        assert len(runs) == 1


def test_a_cheap_shape_takes_no_fill_lock_and_is_written_to_l1_in_the_background(
        slow_db, make_cache, monkeypatch, tmp_path):
    """Two L1 writes per miss cost more than a cheap query: once the shape is known to be cheap
    its misses take no lock, and the background writer writes their L1 copies."""
    db, runs = slow_db
    db._delay = 0
    monkeypatch.setattr(stampede, "GUARD_MIN_DB_MS", 1000.0)  # "cheap" even on a loaded machine
    assert names_from(1) == ["a"]  # an unknown shape: guarded
    locks = []
    real_add = db.cache.l1.entries.add
    monkeypatch.setattr(db.cache.l1.entries, "add",
                        lambda key, *args, **kwargs: locks.append(key) or real_add(
                            key, *args, **kwargs))
    assert [names_from(lowest) for lowest in (0, -1, -2)] == [["a"]] * 3
    assert locks == [] and len(runs) == 4
    assert db.cache.drain(10)
    neighbour = CachedSqliteDatabase(str(tmp_path / "s.db"), cache=make_cache(stampede_wait=3))
    with neighbour.bind_ctx([Item]):  # another process on this host: the same L1 directory
        assert [names_from(lowest) for lowest in (0, -1, -2)] == [["a"]] * 3
    assert neighbour.cache.get_stats().l1_hits == 3 and len(runs) == 4


def test_a_shape_is_guarded_only_where_the_lock_costs_a_small_part_of_its_query(
        slow_db, monkeypatch):
    """Taking the lock costs 100 ms here (a slow L1): once that is measured, a 0.3 s query is
    no longer guarded (20 × 100 ms > 0.3 s)."""
    db, runs = slow_db
    locks = []
    real_add = db.cache.l1.entries.add

    def slow_add(key, *args, **kwargs):
        locks.append(key)
        time.sleep(0.1)
        return real_add(key, *args, **kwargs)

    monkeypatch.setattr(db.cache.l1.entries, "add", slow_add)
    assert names_from(1) == ["a"]  # an unknown shape: guarded, and the lock measured
    assert len(locks) == 1
    assert [names_from(lowest) for lowest in (0, -1, -2)] == [["a"]] * 3
    assert len(locks) == 1 and len(runs) == 4


def test_in_lists_of_every_length_are_one_shape(slow_db, monkeypatch):
    """What a shape costs is known from one IN-list length for every other."""
    db, runs = slow_db
    db._delay = 0
    monkeypatch.setattr(stampede, "GUARD_MIN_DB_MS", 1000.0)  # "cheap" even on a loaded machine

    def by_ids(ids: list) -> list:
        return [i.name for i in Item.select().where(Item.id.in_(ids)).with_cache()]

    assert by_ids([1]) == ["a"]  # an unknown shape: guarded; now known to be cheap
    locks = []
    real_add = db.cache.l1.entries.add
    monkeypatch.setattr(db.cache.l1.entries, "add",
                        lambda key, *args, **kwargs: locks.append(key) or real_add(
                            key, *args, **kwargs))
    assert [by_ids(list(range(1, n))) for n in (3, 7, 20)] == [["a"]] * 3
    assert locks == []


def test_followers_fall_back_when_the_leader_is_too_slow(slow_db, make_cache, monkeypatch):
    db, runs = slow_db
    monkeypatch.setattr(db, "cache", make_cache("quick", stampede_wait=0.2))
    db._delay = 1.0
    started = time.monotonic()
    results, errors = run_threads(4, lambda: [i.name for i in query()])
    assert errors == [] and results == [["a"]] * 4
    assert len(runs) == 4                          # each follower gave up after 0.2 s
    assert time.monotonic() - started < 3.0


def test_followers_run_the_query_when_the_leader_fails(slow_db, monkeypatch):
    db, runs = slow_db
    real_store = db.cache._storer.store
    failed = []

    def failing_store(*args, **kwargs):
        if not failed:
            failed.append(1)
            raise RuntimeError("leader died")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(db.cache._storer, "store", failing_store)
    results, errors = run_threads(3, lambda: [i.name for i in query()])
    assert len(errors) == 1 and str(errors[0]) == "leader died"
    assert results == [["a"]] * 2                   # not stuck: they ran it themselves
    assert len(runs) >= 2


def _process_read(args):
    """A process sharing the L1 directory: waits at the barrier, then reads (slowly)."""
    db_path, l1, kv, barrier, counter, results = args
    cache = CloudflareKVCache(LocalKVNamespace(kv), l1_directory=l1, stampede_wait=5)
    db = CachedSqliteDatabase(db_path, cache=cache)
    real_run = type(db)._run

    def slow_run(self, sql, params):
        if "item" in sql:
            with counter.get_lock():
                counter.value += 1
            time.sleep(0.5)
        return real_run(self, sql, params)

    type(db)._run = slow_run
    with db.bind_ctx([Item]):
        barrier.wait(10)
        results.put([i.name for i in query()])
    cache.close()


def test_processes_sharing_l1_run_the_query_once(tmp_path):
    db_path = str(tmp_path / "p.db")
    db = CachedSqliteDatabase(db_path, cache=CloudflareKVCache(
        LocalKVNamespace(tmp_path / "kv"), l1_directory=str(tmp_path / "l1")))
    with db.bind_ctx([Item]):
        db.create_tables([Item])
        Item.create(name="a")
    db.cache.close()
    db.close()
    ctx = multiprocessing.get_context("spawn")
    barrier, counter, results = ctx.Barrier(4), ctx.Value("i", 0), ctx.Queue()
    args = (db_path, str(tmp_path / "l1"), str(tmp_path / "kv"), barrier, counter, results)
    procs = [ctx.Process(target=_process_read, args=(args,)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * 4
    assert [results.get(timeout=5) for _ in procs] == [["a"]] * 4
    assert counter.value == 1
