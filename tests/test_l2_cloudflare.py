"""The cache with Cloudflare KV as L2, over real HTTP against the project's KV server: request
counts per operation, sharing between processes with separate L1 directories, a late process that
finds every entry from KV alone, and TTLs under KV's 60 s floor. Then the same cache over the KV
gateway Worker in workerd: its requests per operation, and one request per invalidation sweep
whatever the number of keys."""
import math
import multiprocessing
import time
from collections import Counter

import peewee
import pytest

from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache
from peewee_kvcache.core.codec import CachedResult
from peewee_kvcache.kv.cloudflare import CloudflareKVNamespace
from peewee_kvcache.testing.kv_server import KVServer
from tests.conftest import wait_for

RESULT = CachedResult(("id",), [(1,)])


@pytest.fixture
def server(tmp_path):
    with KVServer(tmp_path / "kv-server") as srv:
        yield srv


def namespace_for(server_info):
    base_url, account, namespace, token = server_info
    return CloudflareKVNamespace(account, namespace, token, base_url=base_url)


def info(server):
    return (server.base_url, server.account_id, server.namespace_id, server.api_token)


@pytest.fixture
def kv_cache(server, tmp_path):
    caches = []

    def make(l1="l1", **kwargs):
        cache = CloudflareKVCache(namespace_for(info(server)), l1_directory=str(tmp_path / l1),
                                  **kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


class Item(peewee.Model):
    name = peewee.CharField()


def open_db(path, cache):
    db = CachedSqliteDatabase(str(path), cache=cache)
    db.bind([Item])
    db.create_tables([Item])
    return db


def names(db):
    with db.bind_ctx([Item]):
        return sorted(i.name for i in Item.select().with_cache(ex=300))


def requests_per_operation(cache, tmp_path, sent, reset) -> list:
    """What reached KV for a miss, an L1 hit and an L2 hit (L1 emptied first), in turn: each
    ``sent()`` after a ``reset()``. Every miss reads L1 and asks L2 (under 'auto' whether it asks
    is measured: test_l2_costs.py)."""
    db = open_db(tmp_path / "app.db", cache)
    Item.create(name="a")
    assert cache.drain(10)
    seen = []
    for before in (None, None, cache.clear_local):
        if before is not None:
            before()
        reset()
        assert names(db) == ["a"]
        assert cache.drain(10)
        seen.append(sent())
    return seen


def test_request_counts_per_operation(server, kv_cache, tmp_path):
    miss, l1_hit, l2_hit = requests_per_operation(
        kv_cache(l1_reads="always", l2_reads="always"), tmp_path,
        lambda: {k: v for k, v in server.counts().items() if v}, server.reset_counts)
    assert miss == {"get": 1, "bulk_put": 1}     # 1 read, then 1 bulk write
    assert l1_hit == {}                          # nothing
    assert l2_hit == {"get": 1}                  # 1 read


@pytest.mark.parametrize("k", [1, 2500, 10_001])
def test_invalidating_a_table_with_k_entries(server, kv_cache, k):
    cache = kv_cache()
    for i in range(k):
        cache.put(f"q{i}", RESULT, ["item"])
    assert cache.drain(60)
    assert len(cache.l2_entry_keys()) == k
    server.reset_counts()
    cache.invalidate(tables=["item"])
    assert cache.drain(60)
    counts = server.counts()
    assert counts["list"] == max(1, math.ceil(k / 1000))
    assert counts["bulk_delete"] == math.ceil(k / 10_000)
    assert sum(counts.values()) == counts["list"] + counts["bulk_delete"]
    assert cache.l2_entry_keys() == []


def _process(args):
    """One app server: its own L1 directory, the shared KV server and SQLite file."""
    action, server_info, l1, db_path = args
    cache = CloudflareKVCache(namespace_for(server_info), l1_directory=l1)
    db = CachedSqliteDatabase(db_path, cache=cache)
    db.bind([Item])
    try:
        if action == "read":
            result = names(db)
        elif action == "write":
            Item.create(name="from-b")
            result = None
        else:
            cache.invalidate(tables=["item"])
            result = None
        assert cache.drain(30)
        stats = cache.get_stats()
        return result, stats.l1_hits, stats.l2_hits, stats.total_keys
    finally:
        db.close()
        cache.close()


def test_two_processes_share_l2_and_a_late_process_finds_everything(server, tmp_path):
    db_path = str(tmp_path / "shared.db")
    seed = open_db(db_path, CloudflareKVCache(namespace_for(info(server)),
                                              l1_directory=str(tmp_path / "seed-l1")))
    Item.create(name="a")
    seed.cache.drain(10)
    seed.close()
    srv = info(server)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as a, ctx.Pool(1) as b:
        def run_a(action):
            return a.apply(_process, ((action, srv, str(tmp_path / "l1-a"), db_path),))

        def run_b(action):
            return b.apply(_process, ((action, srv, str(tmp_path / "l1-b"), db_path),))

        assert run_a("read")[:3] == (["a"], 0, 0)          # A: miss, stores in L1 and L2
        result, l1_hits, l2_hits, total = run_b("read")
        assert (result, l1_hits, l2_hits, total) == (["a"], 0, 1, 1)   # B: from L2
        assert run_b("write")[3] == 0                        # B writes: A's L2 entry is gone
        assert run_b("read")[0] == ["a", "from-b"]
    # a process started after both, with an empty L1, sees and invalidates everything from KV
    late = CloudflareKVCache(namespace_for(srv), l1_directory=str(tmp_path / "l1-late"))
    try:
        assert late.get_stats().total_keys == 1
        late.invalidate(tables=[Item])
        assert late.drain(10)
        assert late.get_stats().total_keys == 0
    finally:
        late.close()


def test_ttl_under_kv_floor_is_honoured(server, kv_cache, tmp_path):
    cache = kv_cache()
    db = open_db(tmp_path / "app.db", cache)
    Item.create(name="a")
    with db.bind_ctx([Item]):
        query = Item.select().with_cache(ex=5)
        assert [i.name for i in query.clone()] == ["a"]
        assert cache.drain(10)
        (key,) = cache.l2_entry_keys()
        stored = cache.namespace.get_with_metadata(key)
        assert stored.expiration >= time.time() + 55         # KV's floor: at least 60 s
        peewee.Database.execute_sql(db, "UPDATE item SET name = 'b'")   # behind the cache's back
        cache.clear_local()
        assert [i.name for i in query.clone()] == ["a"]       # L2 hit within the 5 s
        time.sleep(5.2)
        cache.clear_local()
        assert cache.namespace.get(key) is not None           # KV still holds it...
        assert [i.name for i in query.clone()] == ["b"]       # ...but it expired after 5 s


def test_request_budget_skips_l2_instead_of_earning_429s(server, tmp_path):
    """Optional requests stop where the reserve starts; the invalidation sweep still runs."""
    from peewee_kvcache.kv.cloudflare import RequestBudget
    base_url, account, namespace, token = info(server)
    ns = CloudflareKVNamespace(account, namespace, token, base_url=base_url,
                               budget=RequestBudget(5, 300, burst=5, reserve=2))
    cache = CloudflareKVCache(ns, l1_directory=str(tmp_path / "l1"))
    try:
        cache.put("q", RESULT, ["item"])
        assert cache.drain(10)                                # request 1: the bulk write
        for _ in range(2):                                    # requests 2 and 3: L2 hits
            cache.clear_local()
            assert cache.get("q", ["item"]) == RESULT
        cache.clear_local()
        assert cache.get("q", ["item"]) is None               # only the reserve is left
        assert sum(server.counts().values()) == 3
        cache.invalidate(tables=["item"])                     # requests 4 and 5: the sweep
        assert cache.drain(10)
        assert server.counts()["list"] == 1 and server.counts()["bulk_delete"] == 1
        assert list(server.namespace.list_all()) == []
        stats = cache.get_stats()                             # its listing is skipped too
        assert stats.l2_budget_skipped == 2 and stats.total_keys == -1
        assert stats.l2_errors == 0 and stats.l2_circuit == "closed"
    finally:
        cache.close()


def stays_in_l1(cache, puts_sent) -> None:
    """A result over KV's value limit is kept in L1 and never sent (``puts_sent()``: how many
    bulk writes reached KV)."""
    big = CachedResult(("blob",), [("x" * (1 << 20),)] * 26)     # 26 MiB: over KV's 25 MiB
    assert cache.put("big", big, ["item"])
    assert cache.drain(30)
    assert cache.get_stats().oversized == 1
    assert puts_sent() == 0 and cache.l2_entry_keys() == []
    assert cache.get("big", ["item"]) == big                      # served from L1


def test_result_over_kv_value_limit_stays_in_l1(server, kv_cache):
    stays_in_l1(kv_cache(), lambda: server.counts()["bulk_put"])


# --- the same cache over the KV gateway Worker (workerd) -------------------------------------

@pytest.fixture
def gateway_cache(workerd_gateway, tmp_path):
    """Caches over the session's gateway Worker, emptied first."""
    workerd_gateway.clear()
    caches = []

    def make(l1="l1", **kwargs):
        cache = CloudflareKVCache(workerd_gateway.namespace(), l1_directory=str(tmp_path / l1),
                                  **kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def test_gateway_request_counts_per_operation(gateway_cache, http_sent, tmp_path):
    miss, l1_hit, l2_hit = requests_per_operation(
        gateway_cache(l1_reads="always", l2_reads="always"), tmp_path,
        lambda: list(http_sent), http_sent.clear)
    assert miss == ["POST /v1/get", "POST /v1/put"]  # 1 multi-get, then 1 bulk put
    assert l1_hit == []
    assert l2_hit == ["POST /v1/get"]                # 1 multi-get


def test_gateway_one_invalidation_of_k_keys_is_one_request(gateway_cache, http_sent):
    """Host A caches 160 results depending on three tables (each an entry under the first and a
    marker under the other two) and 20 on another table; host B writes two of the three: its
    sweep is one HTTP request for 480 keys. B sweeps again once KV's propagation delay (60 s on
    Cloudflare, 0.2 s here) and max_put_delay have passed, for results that landed late: one
    more request, so an invalidation costs two requests whatever the number of keys (up to the
    Worker's 1,000 KV operations per request; beyond, the sweep continues in further ones)."""
    a = gateway_cache("l1-a")
    for i in range(160):
        a.put(f"q{i}", RESULT, ["author", "book", "review"])
    for i in range(20):
        a.put(f"other{i}", RESULT, ["publisher"])
    assert a.drain(60)
    assert len(list(a.namespace.list_all(a.prefix))) == 160 * 3 + 20
    b = gateway_cache("l1-b", propagation_delay=0.2, max_put_delay=0.3)
    http_sent.clear()
    b.invalidate(tables=["book", "review"])
    assert b.drain(60)
    assert http_sent == ["POST /v1/sweep"]
    assert wait_for(lambda: len(b.outbox) == 0, timeout=10)     # the late re-sweep ran
    assert http_sent == ["POST /v1/sweep"] * 2
    left = list(b.namespace.list_all(b.prefix))
    assert Counter(info.name[len(b.prefix):].split(":")[1] for info in left) == {
        "publisher": 20}                                            # the other table's stay


def test_gateway_result_over_kv_value_limit_stays_in_l1(gateway_cache, http_sent):
    stays_in_l1(gateway_cache(), lambda: http_sent.count("POST /v1/put"))
