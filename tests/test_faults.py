"""Fault injection over real HTTP (the project's KV server) and real databases: every KV fault
leaves queries correct, the circuit breaker, invalidations that survive KV outages, restarts and
``kill -9``, an unusable / corrupt / full L1, forged L2 entries, and an API token that never leaks.

KV clients use short timeouts (0.5 s, one retry) so that each fault costs well under a second.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from typing import Callable, Dict, List, Optional

import peewee
import pytest

from peewee_kvcache import CloudflareKVCache
from peewee_kvcache.core.config import now_ms
from peewee_kvcache.kv.base import KVPair
from peewee_kvcache.testing.kv_server import Fault, KVServer
from peewee_kvcache.levels.l1 import L1Store
from peewee_kvcache.invalidation.outbox import Outbox
from tests.conftest import local_hits, open_database, wait_for
from tests.fault_worker import MODELS, Item, Other, first_sweeps, namespace

# runs in the full tox environment (py311): see tox.ini
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READ_TIMEOUT = 0.5  # the query path's KV read timeout (tests.fault_worker.FAST)
_CACHE_OPTIONS = inspect.signature(CloudflareKVCache).parameters


def supported(**options):
    """The cache options this version of the package has."""
    return {name: value for name, value in options.items() if name in _CACHE_OPTIONS}


# A cache that never re-validates old L1 entries against L2, so that a check of L1's own
# invalidation is not masked by that re-validation.
NO_RECHECK = supported(l1_max_age=None)


# --- fixtures and helpers -------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    with KVServer(tmp_path / "kv-server", api_token="pkv-token-" + uuid.uuid4().hex) as srv:
        yield srv


def server_info(server: KVServer, **override: str) -> Dict[str, str]:
    info = dict(base_url=server.base_url, account_id=server.account_id,
                namespace_id=server.namespace_id, api_token=server.api_token)
    info.update(override)
    return info


@pytest.fixture
def kv_cache(server, tmp_path):
    """Caches over the KV server; ``l1`` is a name under tmp_path (or an absolute path)."""
    made: List[CloudflareKVCache] = []

    def make(l1: str = "l1", client: Optional[Dict] = None, ns=None,
             **kwargs) -> CloudflareKVCache:
        kwargs.setdefault("breaker_reset_timeout", 0.5)
        kwargs.setdefault("propagation_delay", 0)
        # one test host, one clock; every miss reads KV, so every injected fault is met
        for name, value in supported(clock_skew=0, l1_reads="always", l2_reads="always").items():
            kwargs.setdefault(name, value)
        cache = CloudflareKVCache(ns or namespace(server_info(server), **(client or {})),
                                  l1_directory=str(tmp_path / l1), **kwargs)
        made.append(cache)
        return cache

    yield make
    server.clear_faults()
    for cache in made:
        try:
            cache.close()
        except Exception:  # noqa: BLE001 - asserted by test_close_with_an_unusable_l1_...
            pass


@pytest.fixture
def make_db(request, tmp_path):
    """A cached database over ``backend`` with MODELS bound (and created unless told not to).
    SQLite databases of one test share one file; PostgreSQL ones the session's schema."""
    opened: List[peewee.Database] = []

    def make(cache: CloudflareKVCache, backend: str = "sqlite", create: bool = True):
        db = open_database(backend, cache, request, tmp_path)
        if create:
            db.bind(MODELS)
            drop_tables(db)
            db.create_tables(MODELS)
            assert cache.drain(10)
        opened.append(db)
        return db

    yield make
    for db in opened:
        if isinstance(db, peewee.PostgresqlDatabase):
            drop_tables(db)
        db.close()


def drop_tables(db: peewee.Database) -> None:
    for model in MODELS:  # straight to the database: no KV traffic
        peewee.Database.execute_sql(db, f"DROP TABLE IF EXISTS {model._meta.table_name}")


def names() -> List[str]:
    """A cached query over fault_item."""
    return sorted(i.name for i in Item.select(Item.name).with_cache(ex=300))


def truth(db: peewee.Database) -> List[str]:
    """What the database holds, bypassing the cache entirely."""
    cursor = peewee.Database.execute_sql(db, "SELECT name FROM fault_item")
    return sorted(row[0] for row in cursor.fetchall())


def counters(cache: CloudflareKVCache) -> Dict[str, int]:
    return cache.counters.snapshot()


def timed(fn: Callable[[], object]):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


# --- 1. every KV fault leaves queries correct -----------------------------------------------------

KV_FAULTS = {
    "status-500": Fault("status", status=500),
    "status-503": Fault("status", status=503),
    "rate-limit-429": Fault("rate_limit", retry_after=1),
    "timeout": Fault("timeout", delay=2.0),
    "drop": Fault("drop"),
    "malformed": Fault("malformed"),
    "latency": Fault("latency", delay=0.2),  # slow but under the client timeouts: no error
}
MATRIX = ([(kind, "sqlite") for kind in KV_FAULTS]
          + [(kind, "postgres") for kind in ("status-503", "timeout", "malformed")])


@pytest.mark.parametrize("kind, backend", MATRIX, ids=[f"{k}-{b}" for k, b in MATRIX])
def test_every_kv_fault_leaves_queries_correct(kind, backend, server, kv_cache, make_db):
    cache = kv_cache()
    db = make_db(cache, backend)
    Item.create(name="a")
    assert names() == ["a"]
    assert cache.drain(10)
    (stale_key,) = cache.l2_entry_keys()
    stale = server.namespace.get(stale_key)              # the pre-write entry, in KV

    server.inject(KV_FAULTS[kind])                       # every endpoint misbehaves
    cache.clear_local()
    before = counters(cache)
    assert names() == truth(db) == ["a"]                 # the KV read fails: the database answers
    Item.create(name="b")                                # the write's KV sweep meets the fault
    assert names() == truth(db) == ["a", "b"]            # read after write
    cache.clear_local()
    assert names() == ["a", "b"]                         # never the pre-write entry from KV
    assert cache.drain(20)
    stats = cache.get_stats()                            # works while KV fails
    if kind == "latency":
        assert stats.l2_errors == 0 and stats.l2_circuit == "closed"
        assert first_sweeps(cache.outbox) == 0           # swept, slowly
    else:
        assert stats.misses == before["misses"] + 3
        assert stats.l2_errors > before["l2_errors"]
        assert stats.total_keys == -1                    # the listing failed: reported, not raised
        assert stats.outbox_jobs >= 1                    # the sweep waits for KV
        assert first_sweeps(cache.outbox) == 1

    server.clear_faults()                                # KV is back
    assert wait_for(lambda: first_sweeps(cache.outbox) == 0, 10), "the sweep was never retried"
    assert server.namespace.get(stale_key) != stale      # the pre-write entry left KV
    assert cache.drain(10)
    cache.clear_local()
    assert names() == ["a", "b"]                         # stored again after the sweep
    assert cache.drain(10)
    cache.clear_local()
    l2_hits = counters(cache)["l2_hits"]
    assert names() == ["a", "b"]                         # and served from KV: the client recovered
    assert counters(cache)["l2_hits"] == l2_hits + 1
    assert cache.get_stats().l2_circuit == "closed"


# --- 2. circuit breaker and latency bounds --------------------------------------------------------

def test_circuit_breaker_opens_skips_kv_and_closes_after_the_reset_timeout(server, kv_cache,
                                                                          make_db):
    cache = kv_cache(breaker_fail_max=3, breaker_reset_timeout=0.5)
    db = make_db(cache)
    Item.create(name="a")
    assert cache.drain(10)
    server.inject(Fault("status", status=503))
    server.reset_counts()
    for i in range(3):                                   # three consecutive failing KV reads
        assert cache._l2._read_breaker.state == "closed"
        assert cache.get(f"probe-{i}", [Item]) is None
        assert server.counts()["get"] == i + 1
    stats = cache.get_stats()
    assert stats.l2_circuit == "open"
    assert stats.l2_errors >= 2 and stats.l2_errors + stats.l2_circuit_open >= 3

    # open: a query goes straight to the database, reads nothing and waits for nothing (its
    # store still goes out in the background: only reads failed, the writer's breaker is closed)
    server.reset_counts()
    rows, elapsed = timed(lambda: sorted(
        i.name for i in Item.select().where(Item.name != "open").with_cache()))
    assert rows == truth(db) == ["a"]
    assert server.counts()["get"] == 0, server.counts()
    assert elapsed < 0.15, f"a query with the circuit open took {elapsed:.3f}s"
    assert counters(cache)["l2_circuit_open"] > stats.l2_circuit_open

    # KV recovers; after the reset timeout the next call is the probe, and it closes the circuit
    server.clear_faults()
    time.sleep(0.6)
    server.reset_counts()
    rows = sorted(i.name for i in Item.select().where(Item.name != "probe").with_cache())
    assert rows == ["a"]
    assert server.counts()["get"] == 1 and sum(server.counts().values()) == 1
    assert cache.get_stats().l2_circuit == "closed"


@pytest.mark.parametrize("how", ["server-stopped", "timeout"])
def test_query_latency_with_kv_down_is_bounded_by_the_read_timeout(how, server, kv_cache,
                                                                   make_db):
    cache = kv_cache()
    db = make_db(cache)
    Item.create(name="a")
    assert cache.drain(10)
    if how == "server-stopped":
        server.stop()
    else:
        server.inject(Fault("timeout", delay=5))
    cache.clear_local()
    rows, elapsed = timed(names)                         # L1 miss: KV is asked, and fails
    assert rows == truth(db) == ["a"]
    assert elapsed < READ_TIMEOUT + 0.25, f"the query took {elapsed:.3f}s"
    if how == "timeout":
        assert elapsed >= READ_TIMEOUT * 0.9             # it did wait for KV, up to the timeout
    assert cache.drain(10)
    _, elapsed = timed(lambda: Item.create(name="b"))    # a write never waits for KV
    assert elapsed < 0.2, f"a write took {elapsed:.3f}s"
    assert names() == truth(db) == ["a", "b"]
    assert counters(cache)["l2_errors"] >= 1


def test_a_query_never_waits_behind_a_hanging_background_kv_call(server, kv_cache, make_db):
    """The query path's KV read has its own short timeout, so a query is delayed by at most that
    timeout even while the writer thread sits in a slow KV call (background timeouts are long:
    10 s by default; 2 s here)."""
    cache = kv_cache(client=dict(timeout=(0.5, 2.0), retries=0))
    make_db(cache)
    Item.create(name="a")
    Item.create(name="b")
    assert cache.drain(10)
    server.inject(Fault("timeout", delay=5))
    server.reset_counts()
    assert [i.name for i in Item.select().where(Item.name == "a").with_cache()] == ["a"]
    assert wait_for(lambda: server.counts()["bulk_put"] >= 1, 3)   # its store now hangs in KV
    rows, elapsed = timed(lambda: [i.name for i in Item.select().where(Item.name == "b")
                                   .with_cache()])
    assert rows == ["b"]
    assert elapsed < READ_TIMEOUT + 0.25, (
        f"the query took {elapsed:.2f}s: its KV read waited for the background call")


# --- 3. no lost invalidation ----------------------------------------------------------------------

OUTBOX_CASES = [("list", "sqlite", False), ("bulk_delete", "sqlite", False),
                ("list", "postgres", True)]


@pytest.mark.parametrize("endpoint, backend, in_transaction", OUTBOX_CASES,
                         ids=["list-sqlite", "bulk_delete-sqlite", "list-postgres-atomic"])
def test_a_failed_sweep_waits_in_the_outbox_and_this_host_skips_kv_meanwhile(
        endpoint, backend, in_transaction, server, kv_cache, make_db):
    cache = kv_cache()
    db = make_db(cache, backend)
    Item.create(name="a")
    assert names() == ["a"]
    assert cache.drain(10)
    (stale,) = cache.l2_entry_keys()
    stale_value = server.namespace.get(stale)

    server.inject(Fault("status", endpoint=endpoint, status=503))
    started = now_ms()
    if in_transaction:
        with db.atomic():
            Item.update(name="b").execute()
    else:
        Item.update(name="b").execute()
    assert cache.drain(10)
    finished = now_ms()
    due = cache.outbox.next_due_ms()                     # first retry: 0.5 s after the failure
    assert due is not None and started + 500 <= due <= finished + 500
    assert cache.get_stats().outbox_jobs >= 1
    assert first_sweeps(cache.outbox) == 1
    assert server.namespace.get(stale) == stale_value    # the old entry is still in KV...

    cache.clear_local()
    before, gets = counters(cache), server.counts()["get"]
    assert names() == truth(db) == ["b"]                 # ...but this host does not read it
    after = counters(cache)
    assert after["l2_hits"] == before["l2_hits"]
    assert after["l2_skipped_pending"] == before["l2_skipped_pending"] + 1
    assert server.counts()["get"] == gets
    assert cache.drain(10)

    server.clear_faults()                                # KV recovers: the outbox retries
    assert wait_for(lambda: first_sweeps(cache.outbox) == 0, 10), "the sweep was never retried"
    # the pre-write entry is gone (its key may hold the post-write result stored meanwhile)
    assert server.namespace.get(stale) != stale_value
    fresh = kv_cache("l1-fresh")                         # another host, empty L1, same KV
    fresh_db = make_db(fresh, backend, create=False)
    with fresh_db.bind_ctx(MODELS):
        assert names() == ["b"]
    cache.clear_local()
    assert names() == ["b"]                              # the table is read from KV again
    assert cache.drain(10)
    cache.clear_local()
    hits = counters(cache)["l2_hits"]
    assert names() == ["b"]
    assert counters(cache)["l2_hits"] == hits + 1


def test_a_new_cache_on_the_same_l1_finishes_the_sweep_the_old_one_left(server, kv_cache,
                                                                       make_db):
    old = kv_cache("l1", outbox_lease=1)
    make_db(old)
    Item.create(name="a")
    assert names() == ["a"]
    assert old.drain(10)
    (stale,) = old.l2_entry_keys()
    server.inject(Fault("status", endpoint="list", status=503))
    Item.update(name="b").execute()
    assert old.drain(10)
    assert old.get_stats().outbox_jobs >= 1
    assert first_sweeps(old.outbox) == 1
    old.close()                                          # the process ends, the job unfinished
    server.clear_faults()

    new = kv_cache("l1", outbox_lease=1)                 # a restart: no query, no write
    assert wait_for(lambda: first_sweeps(new.outbox) == 0, 10), "the left-over sweep was lost"
    assert stale not in new.l2_entry_keys()
    assert server.namespace.get(stale) is None
    db = make_db(new, create=False)
    with db.bind_ctx(MODELS):
        assert names() == truth(db) == ["b"]
        assert counters(new)["l2_skipped_pending"] == 0  # the pending flag was lifted too


def spawn(args: Dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.fault_worker", json.dumps(args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_kv_write_that_times_out_and_lands_late_is_swept_again(server, kv_cache, make_db):
    """Host A's bulk write times out on the client (KV holds it 1.4 s); host B's write and both
    of its sweeps pass before it lands. The abandoned write must not survive in L2: it is never
    resent, and A sweeps its names again once it can no longer land (max_put_delay)."""
    a = kv_cache("l1-a", client=dict(timeout=(0.5, 1.0)), max_put_delay=1)
    b = kv_cache("l1-b", max_put_delay=1)
    db_a = make_db(a)
    Item.create(name="old")
    db_b = make_db(b, create=False)
    server.inject(Fault("latency", endpoint="bulk_put", times=1, delay=1.4))
    with db_a.bind_ctx(MODELS):
        assert names() == ["old"]                        # A's write is queued (0.2 s linger)
    landed_by = time.monotonic() + 0.2 + 1.4 + 0.2       # linger + KV's delay + slack
    with db_b.bind_ctx(MODELS):
        Item.update(name="new").execute()                # B's write, before A's write lands
    assert a.drain(10) and b.drain(10)
    time.sleep(max(0.0, landed_by - time.monotonic()))   # the abandoned request has landed
    assert wait_for(lambda: len(a.outbox) == 0 and len(b.outbox) == 0, 10)  # every sweep ran
    assert counters(a)["l2_puts_unknown"] == 1
    fresh = kv_cache("l1-fresh")                         # a new host: empty L1, same KV
    with make_db(fresh, create=False).bind_ctx(MODELS):
        assert names() == ["new"]


def old_row_cached(reader: str, kv_cache, make_db):
    """A row "old" cached in L1 (and memory) by a cache that stays open for the "running"
    reader, or is closed before the write for the one "started-later"; (cache, database)."""
    first = kv_cache("l1", **NO_RECHECK)
    db = make_db(first)
    Item.create(name="old")
    assert names() == ["old"]                            # in L1 (and process memory)
    assert first.drain(10)
    if reader == "started-later":
        first.close()
    return first, db


@pytest.mark.parametrize("reader", ["running", "started-later"])
def test_kill_9_between_commit_and_bump_no_process_on_the_host_serves_the_old_row(
        reader, server, kv_cache, make_db, tmp_path):
    """The dead writer's L1 bump never happens and its outbox job waits out a 30 s lease: the
    unbumped flag it left makes this host's processes bump in its place at once."""
    first, db = old_row_cached(reader, kv_cache, make_db)
    proc = spawn(dict(action="write", server=server_info(server), l1=str(tmp_path / "l1"),
                      db=str(tmp_path / "app.db"), new="new", die_before_bump=True,
                      outbox_lease=30))
    try:
        assert wait_for(lambda: truth(db) == ["new"], 20)
        proc.send_signal(signal.SIGKILL)                 # kill -9 between COMMIT and bump
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.communicate()
    reading = first if reader == "running" else kv_cache("l1", outbox_lease=30, **NO_RECHECK)
    reading_db = db if reader == "running" else make_db(reading, create=False)
    with reading_db.bind_ctx(MODELS):
        assert names() == ["new"]
        assert names() == ["new"]                        # and cached again from here on


@pytest.mark.parametrize("reader", ["running", "started-later"])
def test_kill_9_between_a_writes_completion_and_its_owed_bump_no_process_serves_the_old_row(
        reader, server, kv_cache, make_db, tmp_path):
    """The write returned, its bump owed to the writer thread (L1Store.bump_later), and the
    process dies before making it: the flags it left keep this host's processes from serving
    the old row, and the first to meet them bumps in its place."""
    first, db = old_row_cached(reader, kv_cache, make_db)
    proc = spawn(dict(action="write", server=server_info(server), l1=str(tmp_path / "l1"),
                      db=str(tmp_path / "app.db"), new="new", die_before_settle=True,
                      outbox_lease=30))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "committed"
        proc.send_signal(signal.SIGKILL)                 # the write returned; no bump was made
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.communicate()
    assert truth(db) == ["new"]
    reading = first if reader == "running" else kv_cache("l1", outbox_lease=30, **NO_RECHECK)
    reading_db = db if reader == "running" else make_db(reading, create=False)
    with reading_db.bind_ctx(MODELS):
        assert names() == ["new"]
        assert names() == ["new"]                        # and cached again from here on


@pytest.mark.parametrize("moment", ["mid-sweep", "before-bump"])
def test_kill_9_after_commit_a_restarted_process_completes_the_sweep(moment, server, kv_cache,
                                                                    make_db, tmp_path):
    l1 = str(tmp_path / "l1")
    first = kv_cache("l1")
    db = make_db(first)
    Item.create(name="old")
    assert names() == ["old"]
    assert first.drain(10)
    (stale,) = first.l2_entry_keys()
    first.close()                     # the host's other process is gone: it must not do the sweep

    server.inject(Fault("timeout", endpoint="list", delay=30))   # KV's list hangs
    server.reset_counts()
    proc = spawn(dict(action="write", server=server_info(server), l1=l1,
                      db=str(tmp_path / "app.db"), new="new",
                      die_before_bump=(moment == "before-bump"),
                      client=dict(timeout=(0.5, 60))))
    try:
        committed = wait_for(lambda: truth(db) == ["new"], 20)
        hanging = moment != "mid-sweep" or wait_for(lambda: server.counts()["list"] >= 1, 10)
        proc.send_signal(signal.SIGKILL)                 # kill -9, right after the COMMIT
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate()
    assert committed and hanging, err                    # (its sweep hangs in KV's list)
    assert proc.returncode == -signal.SIGKILL

    outbox = Outbox(l1)                                  # the job outlived the process...
    assert first_sweeps(outbox) == 1
    outbox.close()
    assert server.namespace.get(stale) is not None       # ...and the old entry is still in KV
    store = L1Store(l1)
    (digest,) = [k for k in store.entries.iterkeys() if not k.startswith("fill:")]
    entry = store.get(digest)
    bumped = store.tokens(entry.names) != entry.tokens  # (is_current would bump for the dead)
    store.close()
    assert bumped == (moment == "mid-sweep")             # where the kill landed

    server.clear_faults()
    recovery = spawn(dict(action="recover", server=server_info(server), l1=l1))
    try:
        out, err = recovery.communicate(timeout=30)
    finally:
        if recovery.poll() is None:
            recovery.kill()
            recovery.communicate()
    assert recovery.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["first_sweeps"] == 0
    assert server.namespace.get(stale) is None           # the restarted process swept KV

    fresh = kv_cache("l1-fresh")                         # another host: empty L1, same KV
    fresh_db = make_db(fresh, create=False)
    with fresh_db.bind_ctx(MODELS):
        assert names() == ["new"]
    assert counters(fresh)["l2_hits"] == 0

    shared = kv_cache("l1", **NO_RECHECK)                # a process sharing the killed one's L1
    shared_db = make_db(shared, create=False)
    with shared_db.bind_ctx(MODELS):
        assert names() == ["new"]                        # not the pre-write L1 entry
    assert local_hits(counters(shared)) == 0


# --- 4. L1 unusable -------------------------------------------------------------------------------

def test_l1_directory_that_is_a_regular_file(server, kv_cache, make_db, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="peewee_kvcache")
    (tmp_path / "l1-file").write_bytes(b"not a directory")
    cache = kv_cache("l1-file")
    db = make_db(cache)
    Item.create(name="a")
    assert names() == names() == truth(db) == ["a"]
    Item.update(name="b").execute()
    assert names() == truth(db) == ["b"]
    assert cache.drain(10)
    stats = cache.get_stats()
    assert stats.l1_errors > 0
    assert stats.hits == 0 and stats.l1_hits == 0
    assert "l1-file" in repr(cache)
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_close_with_an_unusable_l1_does_not_raise(server, kv_cache, tmp_path):
    (tmp_path / "l1-file").write_bytes(b"not a directory")
    cache = kv_cache("l1-file")
    cache.close()


def test_with_l1_unusable_every_write_still_sweeps_kv(server, kv_cache, make_db, tmp_path):
    """Another host must never read pre-write rows from KV: each write's sweep must happen."""
    (tmp_path / "l1-file").write_bytes(b"not a directory")
    good = kv_cache("l1-good")
    make_db(good)
    Item.create(name="a")
    Other.create(name="x")
    assert names() == ["a"]
    assert [o.name for o in Other.select().with_cache()] == ["x"]
    assert good.drain(10)
    assert len(good.l2_entry_keys()) == 2

    broken = kv_cache("l1-file")
    broken_db = make_db(broken, create=False)
    server.inject(Fault("latency", endpoint="list", delay=0.3))  # sweeps overlap the next write
    with broken_db.bind_ctx(MODELS):
        Item.update(name="b").execute()
        Other.update(name="y").execute()
    assert broken.drain(10)
    server.clear_faults()
    assert good.l2_entry_keys() == []                    # both tables swept

    fresh = kv_cache("l1-fresh")
    fresh_db = make_db(fresh, create=False)
    with fresh_db.bind_ctx(MODELS):
        assert names() == ["b"]
        assert [o.name for o in Other.select().with_cache()] == ["y"]


def test_l1_files_corrupted_while_running(server, kv_cache, make_db, tmp_path):
    cache = kv_cache("l1")
    db = make_db(cache)
    Item.create(name="a")
    assert names() == names() == ["a"]
    assert local_hits(counters(cache)) == 1
    assert cache.drain(10)
    for part in ("entries/cache.db", "state.sqlite3"):
        (tmp_path / "l1" / part).write_bytes(b"\xde\xad\xbe\xef" * 4096)

    before = counters(cache)["l1_errors"]
    assert names() == truth(db) == ["a"]
    Item.update(name="b").execute()
    assert names() == truth(db) == ["b"]
    assert cache.drain(10)
    assert counters(cache)["l1_errors"] > before

    reopened = kv_cache("l1")                            # as after a restart, on the same files
    reopened_db = make_db(reopened, create=False)
    with reopened_db.bind_ctx(MODELS):
        assert names() == names() == ["b"]
        Item.update(name="c").execute()
        assert names() == truth(reopened_db) == ["c"]
    assert reopened.drain(10)
    stats = reopened.get_stats()
    assert stats.l1_errors > 0 and local_hits(stats) == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs; skipped where mounting is not permitted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                              capture_output=True, text=True)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory) -> None:
    """Write a filler file until the file system has no byte left."""
    try:
        with open(os.path.join(directory, "filler"), "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    assert os.statvfs(directory).f_bavail == 0


def test_l1_on_a_full_disk(server, kv_cache, make_db, small_disk):
    cache = kv_cache(str(small_disk))
    try:
        db = make_db(cache)
        Item.create(name="a")
        assert names() == names() == ["a"]               # cached in L1 before the disk filled
        assert local_hits(counters(cache)) == 1
        assert cache.drain(10)
        fill(small_disk)
        before = counters(cache)["l1_errors"]

        pad = "x" * 50_000                               # too big to fit anywhere now
        big = Item.select(Item.name, peewee.Value(pad).alias("pad")).with_cache(ex=300)
        assert [(i.name, i.pad) for i in big] == [("a", pad)]
        assert counters(cache)["l1_errors"] > before

        Item.update(name="b").execute()                  # must not raise...
        assert names() == truth(db) == ["b"]             # ...and must invalidate
        assert [(i.name, i.pad) for i in big.clone()] == [("b", pad)]
        assert cache.drain(10)
        assert cache.get_stats().l1_errors > before
    finally:
        cache.close()


# --- 5. forged L2 entries -------------------------------------------------------------------------

FORGERIES = {  # case: (writer's secret, reader's secret, counter)
    "garbage": (None, None, "codec_errors"),
    "other-secret": ("s2", "s1", "bad_signatures"),
    "unsigned": (None, "s1", "bad_signatures"),
    "copied-to-another-key": ("s1", "s1", "bad_signatures"),
}


def rows_of(name: str):
    return [(i.name, i.score) for i in Item.select(Item.name, Item.score)
            .where(Item.name == name).with_cache(ex=300)]


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_a_forged_l2_entry_is_a_miss(case, server, kv_cache, make_db):
    writer_secret, reader_secret, counter = FORGERIES[case]
    writer = kv_cache("l1-writer", secret=writer_secret)
    db = make_db(writer)
    Item.create(name="a", score=1)
    Item.create(name="b", score=1)
    assert rows_of("a") == [("a", 1)]
    assert writer.drain(10)
    (key_a,) = writer.l2_entry_keys()
    assert rows_of("b") == [("b", 1)]
    assert writer.drain(10)
    (key_b,) = set(writer.l2_entry_keys()) - {key_a}

    stored = server.namespace.get_with_metadata(key_b)
    if case == "garbage":
        server.namespace.put(key_b, b"\x00garbage\xff" * 8, expiration=stored.expiration)
    elif case == "copied-to-another-key":             # a valid signed entry, under b's key
        server.namespace.put(key_b, server.namespace.get(key_a), expiration=stored.expiration)
    peewee.Database.execute_sql(db, "UPDATE fault_item SET score = 2 WHERE name = 'b'")

    reader = kv_cache("l1-reader", secret=reader_secret)
    reader_db = make_db(reader, create=False)
    with reader_db.bind_ctx(MODELS):
        if case == "copied-to-another-key":
            assert rows_of("a") == [("a", 1)]            # genuine entries are accepted...
            assert counters(reader)["l2_hits"] == 1
        before = counters(reader)
        assert rows_of("b") == [("b", 2)]                # ...a forged one is not: the DB answers
    after = counters(reader)
    assert after[counter] == before[counter] + 1
    assert after["misses"] == before["misses"] + 1
    assert after["l2_hits"] == before["l2_hits"]


# --- 6. the API token never leaks -----------------------------------------------------------------

def direct_calls(ns, quick: bool = False):
    """Every namespace operation once; the exceptions they raise."""
    calls = [lambda: ns.get("pkv:t:x:1"), lambda: ns.list("pkv:")]
    if not quick:
        calls += [lambda: ns.get_with_metadata("pkv:t:x:1"),
                  lambda: ns.put("pkv:t:x:1", b"v", expiration_ttl=60),
                  lambda: ns.delete("pkv:t:x:1"),
                  lambda: ns.bulk_put([KVPair("pkv:t:x:1", b"v", expiration_ttl=60)]),
                  lambda: ns.bulk_delete(["pkv:t:x:1"]),
                  lambda: ns.bulk_get(["pkv:t:x:1"])]
    raised = []
    for call in calls:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - collected for inspection
            raised.append(exc)
    return raised


def test_the_api_token_never_leaks(server, kv_cache, make_db, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests", "peewee_kvcache", "peewee_kvcache.kv.cloudflare",
                 "peewee_kvcache.testing.kv_server"):
        caplog.set_level(logging.DEBUG, logger=name)
    cache = kv_cache(breaker_fail_max=1000)              # every call reaches the faulty KV
    db = make_db(cache)
    Item.create(name="a")
    errors: List[BaseException] = []
    for i, fault in enumerate([Fault("drop"), Fault("malformed"), Fault("status", status=500)]):
        server.inject(fault)
        cache.clear_local()
        assert names() == truth(db)
        Item.create(name=f"w{i}")
        assert names() == truth(db)
        cache.get_stats()
        assert cache.drain(20)
        errors += direct_calls(cache.namespace)
        server.clear_faults()
    server.inject(Fault("timeout", delay=1.0))           # timeouts: a read and two direct calls
    cache.clear_local()
    assert names() == truth(db)
    errors += direct_calls(cache.namespace, quick=True)
    server.clear_faults()

    wrong_token = "pkv-wrong-" + uuid.uuid4().hex          # an authentication failure
    wrong = kv_cache("l1-wrong", ns=namespace(server_info(server, api_token=wrong_token)))
    wrong_db = make_db(wrong, create=False)
    with wrong_db.bind_ctx(MODELS):
        assert names() == truth(wrong_db)
        Item.create(name="z")
        assert names() == truth(wrong_db)
    assert wrong.drain(10)
    assert wrong.get_stats().l2_errors >= 1
    auth_errors = direct_calls(wrong.namespace)
    assert len(auth_errors) == 8                         # every operation refused: HTTP 403
    assert all(getattr(e, "status", None) == 403 for e in auth_errors), auth_errors
    errors += auth_errors

    assert len(errors) >= 20, errors
    assert any(r.name.startswith("urllib3") for r in caplog.records)   # DEBUG really captured
    assert any(r.exc_info for r in caplog.records)                     # tracebacks too
    formatter = logging.Formatter()
    texts = []
    for record in caplog.records:
        texts += [record.getMessage(), formatter.format(record), repr(record.args)]
    for exc in errors:
        texts += [str(exc), repr(exc), repr(exc.args),
                  "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    for c in (cache, wrong):
        texts += [repr(c), repr(c.namespace), str(c.get_stats()), str(c.get_stats().as_dict())]
    texts += list(capfd.readouterr())
    for secret in (server.api_token, wrong_token):
        leaks = [t for t in texts if secret in t]
        assert not leaks, leaks[:3]
