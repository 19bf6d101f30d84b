"""L2 never costs more than it brings: per query shape, a miss asks L2 first only when L2's
latency is below what it saves (the database's time times how often L2 has the answer), and
entries are re-checked against L2 in batches, off the query path, within ``l1_max_age``.

The integration tests run two "hosts" (caches with separate L1 directories) over the project's
KV server with a standing latency, and count the requests it served."""
from __future__ import annotations

import threading
import time

import peewee
import pytest
from freezegun import freeze_time

from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache
from peewee_kvcache.cache.costs import L1, L2, CostModel
from peewee_kvcache.kv.cloudflare import CloudflareKVNamespace
from peewee_kvcache.testing import KVServer

# --- the cost model ----------------------------------------------------------------------------


def test_without_a_shape_or_a_known_latency_a_miss_asks_l2():
    costs = CostModel()
    assert costs.ask(L2, None) and costs.ask(L2, "SELECT 1")  # L2's distance is unknown
    costs.read(L2, None, 40.0, found=False)
    assert costs.ask(L2, None)  # the low-level get/put API has no shape: it always asks


def test_a_shape_runs_on_the_database_once_before_it_is_judged():
    costs = CostModel()
    costs.read(L2, "q", 1.0, found=True)  # an unknown shape's hit rate is not recorded
    assert not costs.ask(L2, "q") and costs.estimate("q") is None
    costs.db_ran("q", 10.0)
    assert costs.estimate("q") == {"db_ms": 10.0, "l1_hit_rate": 0.5, "l2_hit_rate": 0.5}
    assert costs.ask(L2, "q")  # 1 ms of L2 against half of 10 ms


def test_a_cheap_shape_never_waits_for_a_far_l2_however_often_l2_has_it():
    costs = CostModel()
    costs.read(L2, None, 40.0, found=True)
    costs.db_ran("point lookup", 0.5)
    for _ in range(50):
        costs.read(L2, "point lookup", 40.0, found=True)
    assert costs.estimate("point lookup")["l2_hit_rate"] > 0.99
    assert not any(costs.ask(L2, "point lookup") for _ in range(1000))  # not even to explore


def test_an_expensive_shape_asks_and_stops_when_l2_stops_having_it_but_looks_now_and_then():
    costs = CostModel(explore_every=16)
    costs.read(L2, None, 40.0, found=False)
    costs.db_ran("report", 200.0)
    assert costs.ask(L2, "report")  # 40 ms against half of 200 ms
    for _ in range(30):
        costs.read(L2, "report", 40.0, found=False)
    asked = sum(costs.ask(L2, "report") for _ in range(160))
    assert asked == 10  # one miss in 16 still asks, so a rising hit rate is seen
    for _ in range(30):
        costs.read(L2, "report", 40.0, found=True)
    assert all(costs.ask(L2, "report") for _ in range(20))


def test_estimates_follow_the_latest_measurements():
    costs = CostModel()
    costs.read(L2, None, 100.0, found=False)
    costs.db_ran("q", 50.0)
    assert not costs.ask(L2, "q") or costs.l2_ms > 25.0
    for _ in range(40):
        costs.read(L2, None, 1.0, found=True)  # L2 came closer (and answers)
    assert costs.l2_ms < 2.0 and costs.ask(L2, "q")


def test_l1_is_read_for_a_new_shape_and_skipped_where_it_never_has_the_answer():
    costs = CostModel(explore_every=16)
    costs.read(L1, None, 0.05, found=False)  # L1's latency is known now
    assert costs.ask(L1, "point lookup")  # unknown shape: near and cheap, read it
    costs.db_ran("point lookup", 0.2)
    for _ in range(10):  # one process on this host: memory already held all L1 had
        costs.read(L1, "point lookup", 0.05, found=False)
    assert not costs.would_ask(L1, "point lookup")
    assert sum(costs.ask(L1, "point lookup") for _ in range(160)) == 10  # still explores
    for _ in range(10):  # other workers on this host started filling L1
        costs.read(L1, "point lookup", 0.05, found=True)
    assert all(costs.ask(L1, "point lookup") for _ in range(20))


def test_each_level_explores_one_miss_in_16_when_a_miss_asks_both_in_turn():
    """A lookup asks L1, then L2, on every miss: a count of exploring asks shared by the two
    would give L1 every even number and L2 only odd ones, so L2 would never look again."""
    costs = CostModel(explore_every=16)
    costs.db_ran("q", 5.0)
    for _ in range(30):  # neither level has it now, both could pay
        costs.read(L1, "q", 0.05, found=False)
        costs.read(L2, "q", 2.0, found=False)
    asked = {L1: 0, L2: 0}
    for _ in range(160):
        for level in (L1, L2):
            asked[level] += costs.ask(level, "q")
    assert asked == {L1: 10, L2: 10}


def test_always_asks_a_level_on_every_miss_but_still_measures():
    costs = CostModel(always_l1=True, always_l2=True)
    costs.db_ran("q", 0.01)
    for level in (L1, L2):
        for _ in range(10):
            costs.read(level, "q", 5.0, found=False)
        assert all(costs.ask(level, "q") for _ in range(50))
    assert costs.estimate("q")["l1_hit_rate"] < 0.1 and costs.l1_ms == 5.0


def test_shapes_are_bounded():
    costs = CostModel(max_shapes=3)
    for shape in "abcd":
        costs.db_ran(shape, 1.0)
    assert costs.estimate("a") is None and costs.estimate("d") is not None


# --- two hosts over a KV server at a distance ----------------------------------------------


class Item(peewee.Model):
    name = peewee.CharField()


@pytest.fixture
def far_kv(tmp_path):
    with KVServer(tmp_path / "kv-server", latency=0.03) as server:  # 30 ms each way and back
        yield server


@pytest.fixture
def hosts(far_kv, tmp_path):
    """Two hosts' databases (one SQLite file, separate L1s, one L2 at a distance)."""
    opened = []

    def host(name: str, **cache_kwargs) -> CachedSqliteDatabase:
        namespace = CloudflareKVNamespace(far_kv.account_id, far_kv.namespace_id,
                                          far_kv.api_token, base_url=far_kv.base_url)
        cache = CloudflareKVCache(namespace, l1_directory=str(tmp_path / f"l1-{name}"),
                                  **cache_kwargs)
        db = CachedSqliteDatabase(str(tmp_path / "app.db"), cache=cache)
        opened.append(db)
        return db

    yield host
    for db in opened:
        db.close()
        db.cache.close()


def slow_names(db: CachedSqliteDatabase, seconds: float, calls: list) -> None:
    """Register ``slow(x)``: a scalar function that takes ``seconds`` (an expensive report);
    each call is appended to ``calls``."""
    @db.func("slow")
    def slow(value):
        calls.append(value)
        time.sleep(seconds)
        return value


def gets(server: KVServer) -> int:
    return server.counts()["get"]


def test_point_lookups_stop_asking_a_far_l2(hosts, far_kv):
    a, b = hosts("a"), hosts("b")
    with a.bind_ctx([Item]):
        a.create_tables([Item])
        Item.insert_many([{"name": f"n{i}"} for i in range(20)]).execute()
        for i in range(1, 11):  # A fills L2
            assert Item.select().where(Item.id == i).with_cache().get().name == f"n{i - 1}"
        assert a.cache.drain(10)
    far_kv.reset_counts()
    with b.bind_ctx([Item]):
        for i in range(1, 11):
            assert Item.select().where(Item.id == i).with_cache().get().name == f"n{i - 1}"
    stats = b.cache.get_stats()
    # B's first miss measures L2's distance (and finds A's entry); the lookup's shape then runs
    # on the database once, which takes far less than L2's 30 ms: no further miss waits for L2
    assert gets(far_kv) == 1 and stats.l2_hits == 1
    assert stats.l2_skipped_cost == 9 and stats.misses == 9


def test_an_expensive_shape_is_served_from_l2(hosts, far_kv):
    a, b = hosts("a"), hosts("b")
    calls: list = []
    for db in (a, b):
        slow_names(db, 0.15, calls)

    def report(lowest: int) -> list:
        query = Item.select(peewee.fn.slow(Item.name).alias("n")).where(Item.id >= lowest)
        return [row.n for row in query.order_by(Item.id).limit(1).with_cache()]

    with a.bind_ctx([Item]):
        a.create_tables([Item])
        Item.insert_many([{"name": f"n{i}"} for i in range(5)]).execute()
        assert [report(lowest) for lowest in (1, 2, 3)] == [["n0"], ["n1"], ["n2"]]
        assert a.cache.drain(10)
    with b.bind_ctx([Item]):
        assert report(4) == ["n3"]  # measures L2 (a miss there), then the database: 150 ms
        far_kv.reset_counts()
        calls.clear()
        assert report(2) == ["n1"]  # 30 ms of L2 against half of 150 ms: asked, and found
    assert gets(far_kv) == 1 and b.cache.get_stats().l2_hits == 1
    assert calls == []  # the report did not run


def served_while_the_writer_is_busy(db: CachedSqliteDatabase, lookups: list) -> None:
    """Serve ``lookups`` while the background writer is held on a task of ours (so the re-checks
    they queue are all waiting when it takes them, as under load), then let it go and drain."""
    release = threading.Event()
    db.cache._writer.submit(lambda: release.wait(10))
    try:
        assert [q.get().name for q in lookups] == [f"n{i}" for i in range(30)]
    finally:
        release.set()
    assert db.cache.drain(10)


def test_hot_entries_are_rechecked_in_batches_off_the_query_path(hosts, far_kv):
    with freeze_time("2026-12-01 12:00:00") as clock:
        a = hosts("a", l1_max_age=10.0)
        with a.bind_ctx([Item]):
            a.create_tables([Item])
            Item.insert_many([{"name": f"n{i}"} for i in range(30)]).execute()
            lookups = [Item.select().where(Item.id == i).with_cache() for i in range(1, 31)]
            assert [q.get().name for q in lookups] == [f"n{i}" for i in range(30)]
            assert a.cache.drain(10)
            far_kv.reset_counts()
            clock.tick(6)  # past half of l1_max_age: served, and queued for a re-check
            served_while_the_writer_is_busy(a, lookups)
            assert far_kv.counts()["bulk_get"] == 1 and gets(far_kv) == 0  # one request
            clock.tick(6)  # 12 s after the store, 6 s after the re-check: served (and queued)
            served_while_the_writer_is_busy(a, lookups)
        stats = a.cache.get_stats()
    assert far_kv.counts()["bulk_get"] == 2 and gets(far_kv) == 0
    assert stats.l1_refreshes == 60 and stats.l1_rechecks == 0
    assert stats.misses == 30 and stats.hits == 60


def test_an_entry_swept_elsewhere_is_not_served_past_l1_max_age(hosts, far_kv):
    """Without NOTIFY (SQLite), B's write reaches A's L1 only through L2: A's re-check finds the
    entry gone, and A stops serving it."""
    with freeze_time("2026-12-01 12:00:00") as clock:
        a, b = hosts("a", l1_max_age=10.0), hosts("b")
        with a.bind_ctx([Item]):
            a.create_tables([Item])
            Item.create(name="old")
            query = Item.select().where(Item.id == 1).with_cache()
            assert query.get().name == "old"
            assert a.cache.drain(10)
        with b.bind_ctx([Item]):
            Item.update(name="new").where(Item.id == 1).execute()
            assert b.cache.drain(10)  # B's sweep deleted A's entry from L2
        with a.bind_ctx([Item]):
            clock.tick(6)
            assert query.get().name == "old"  # within l1_max_age: the documented bound
            assert a.cache.drain(10)  # the re-check finds it gone
            assert query.get().name == "new"
        stats = a.cache.get_stats()
    assert stats.l1_refreshes_gone == 1 and stats.l1_refreshes == 0


def test_a_recheck_never_restamps_another_result_held_in_memory(make_cache, tmp_path):
    """Found in review: two processes of host A share an L1 directory; host D's write swept A's
    result X from L2 and D stored the new result E'. A2 re-checks its L1 copy, finds E' and keeps
    it; A1 then re-checks: L1 holds E', L2 holds E' — confirmed — but A1's memory still held X,
    with the same tokens. It must not be re-stamped (it was, and served until its TTL)."""
    path = str(tmp_path / "app.db")
    options = dict(l1_max_age=10.0, max_put_delay=0.5, l1_reads="always", l2_reads="always")
    with freeze_time("2026-12-01 12:00:00") as clock:
        a1 = CachedSqliteDatabase(path, cache=make_cache("l1-a", **options))
        a2 = CachedSqliteDatabase(path, cache=make_cache("l1-a", **options))
        d = CachedSqliteDatabase(path, cache=make_cache("l1-d", **options))

        def read(db: CachedSqliteDatabase) -> str:
            with db.bind_ctx([Item]):
                return Item.select().where(Item.id == 1).with_cache().get().name

        with a1.bind_ctx([Item]):
            a1.create_tables([Item])
            Item.create(name="x")
        assert read(a1) == "x" and a1.cache.drain(10)  # X: A1's memory, A's L1, L2
        clock.tick(1)
        with d.bind_ctx([Item]):
            Item.update(name="new").where(Item.id == 1).execute()  # no NOTIFY on SQLite
        assert d.cache.drain(10)  # D's sweep deleted X from L2
        assert read(d) == "new" and d.cache.drain(10)  # E' in L2
        clock.tick(5)  # past half of l1_max_age, within it: X may still be served...
        assert read(a2) == "x" and a2.cache.drain(10)  # ...A2's re-check keeps E' in A's L1
        assert read(a1) == "x" and a1.cache.drain(10)  # A1's re-check confirms E' in L1
        assert read(a1) == "new"  # and A1's memory no longer serves X
        for db in (a1, a2, d):
            db.close()


def test_a_recheck_does_not_order_results_by_two_hosts_clocks(make_cache, tmp_path):
    """Found in review: host H's clock runs 2 s ahead of D's (clock_skew=2 says so). H holds X,
    created at H's T+2; D's write sweeps it and D stores E', created at D's T+0.5. E' is newer,
    though its creation time is smaller: a re-check must keep L2's entry, not confirm X."""
    path = str(tmp_path / "app.db")
    options = dict(l1_max_age=10.0, max_put_delay=0.5, clock_skew=2.0, l1_reads="always",
                   l2_reads="always")
    h = CachedSqliteDatabase(path, cache=make_cache("l1-h", **options))
    d = CachedSqliteDatabase(path, cache=make_cache("l1-d", **options))

    def read(db: CachedSqliteDatabase) -> str:
        with db.bind_ctx([Item]):
            return Item.select().where(Item.id == 1).with_cache().get().name

    with freeze_time("2026-12-01 12:00:00") as clock:
        with d.bind_ctx([Item]):
            d.create_tables([Item])
            Item.create(name="x")
        clock.move_to("2026-12-01 12:00:02")  # H's clock
        assert read(h) == "x" and h.cache.drain(10)
        clock.move_to("2026-12-01 12:00:00")  # D's clock
        with d.bind_ctx([Item]):
            Item.update(name="new").where(Item.id == 1).execute()
        assert d.cache.drain(10)  # the sweep (allowing for 2 s of skew) deleted X
        clock.move_to("2026-12-01 12:00:00.500")
        assert read(d) == "new" and d.cache.drain(10)  # E' in L2, created at 00.500
        clock.move_to("2026-12-01 12:00:08")  # H: X is in the second half of l1_max_age
        assert read(h) == "x" and h.cache.drain(10)  # served (within the bound), re-checked
        assert read(h) == "new"
    h.close()
    d.close()
