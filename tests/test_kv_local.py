"""LocalKVNamespace specifics: time-based expiry, persistence, process safety; the behaviour it
shares with the REST client is the contract suite in test_kv_cloudflare.py."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, List

import pytest
from freezegun import freeze_time

from peewee_kvcache.kv import limits
from peewee_kvcache.kv.base import KVError, KVPair
from peewee_kvcache.kv.local import LocalKVNamespace

START = datetime(2030, 1, 1, tzinfo=timezone.utc)
START_TS = int(START.timestamp())


@pytest.fixture
def ns(tmp_path):
    namespace = LocalKVNamespace(tmp_path / "kv")
    yield namespace
    namespace.close()


@contextmanager
def raises_kv(code: int, status: int) -> Iterator[pytest.ExceptionInfo]:
    """Expect a KVError carrying Cloudflare's error code and HTTP status."""
    with pytest.raises(KVError) as info:
        yield info
    assert (info.value.code, info.value.status) == (code, status)


# --- basic operations -------------------------------------------------------------------------





def test_repr_and_directory_created(tmp_path):
    target = tmp_path / "a" / "b"
    namespace = LocalKVNamespace(str(target))
    assert target.is_dir() and str(target) in repr(namespace)
    namespace.close()
    with pytest.raises(KVError):
        namespace.get("k")


def test_clear(ns):
    ns.bulk_put([KVPair(f"k{i}", b"v") for i in range(20)])
    ns.clear()
    assert list(ns.list_all()) == []


def test_persists_across_instances(tmp_path):
    first = LocalKVNamespace(tmp_path)
    first.put("k", b"v", metadata={"m": 1})
    first.close()
    second = LocalKVNamespace(tmp_path)
    assert second.get_with_metadata("k").metadata == {"m": 1}
    second.close()


# --- expiration -------------------------------------------------------------------------------

def test_expiration_ttl_visible_then_gone(ns):
    with freeze_time(START) as clock:
        ns.put("k", b"v", expiration_ttl=60, metadata={"x": 1})
        assert ns.get_with_metadata("k").expiration == START_TS + 60
        clock.tick(59)
        assert ns.get("k") == b"v"
        assert [k.name for k in ns.list_all()] == ["k"]
        clock.tick(2)
        assert ns.get("k") is None
        assert ns.get_with_metadata("k") is None
        assert ns.bulk_get(["k"]) == {"k": None}
        assert list(ns.list_all()) == []


def test_absolute_expiration_and_listing(ns):
    with freeze_time(START) as clock:
        ns.put("a", b"1", expiration=START_TS + 60)
        ns.put("b", b"2", expiration=START_TS + 600)
        ns.put("c", b"3")
        page = ns.list()
        assert [(k.name, k.expiration) for k in page.keys] == [
            ("a", START_TS + 60), ("b", START_TS + 600), ("c", None)]
        clock.tick(59)
        assert ns.get("a") == b"1"
        clock.tick(2)
        assert ns.get("a") is None
        assert [k.name for k in ns.list_all()] == ["b", "c"]


def test_expired_entries_are_purged_on_write(ns):
    with freeze_time(START) as clock:
        ns.put("old", b"v", expiration_ttl=60)
        clock.tick(61)
        ns.put("new", b"v")
        rows = ns._read("SELECT count(*) FROM kv", ())
        assert rows == [(1,)]


def test_ttl_wins_over_expiration_and_put_resets_expiry(ns):
    with freeze_time(START):
        ns.put("k", b"v", expiration=START_TS + 5000, expiration_ttl=120)
        assert ns.get_with_metadata("k").expiration == START_TS + 120
        ns.put("k", b"v")
        assert ns.get_with_metadata("k").expiration is None


def test_ttl_below_minimum_rejected_like_cloudflare(ns):
    with raises_kv(10034, 400) as info:
        ns.put("k", b"v", expiration_ttl=30)
    assert str(info.value) == "Invalid expiration_ttl of 30. Expiration TTL must be at least 60."
    with raises_kv(10034, 400):
        ns.put("k", b"v", expiration_ttl=0)
    with raises_kv(10034, 400):
        ns.put("k", b"v", expiration_ttl=60.5)
    assert ns.get("k") is None


def test_expiration_too_soon_rejected(ns):
    with freeze_time(START):
        with raises_kv(10033, 400) as info:
            ns.put("k", b"v", expiration=START_TS + 59)
        assert str(START_TS + 59) in str(info.value)
        with raises_kv(10033, 400):
            ns.put("k", b"v", expiration=START_TS - 10)
        ns.put("k", b"v", expiration=START_TS + 60)  # exactly now + 60 is allowed
        assert ns.get("k") == b"v"


# --- key, value and metadata limits ----------------------------------------------------------

def test_key_length_in_utf8_bytes(ns):
    ns.put("k" * 512, b"v")
    assert ns.get("k" * 512) == b"v"
    with raises_kv(10030, 414) as info:
        ns.put("k" * 513, b"v")
    assert "513" in str(info.value) and "k" * 20 not in str(info.value)
    ns.put("é" * 256, b"v")  # 2 bytes each: exactly 512 bytes
    with raises_kv(10030, 414):
        ns.put("é" * 257, b"v")  # 257 characters but 514 bytes
    with raises_kv(10030, 414):
        ns.get("€" * 171)  # 513 bytes; reads are checked too


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_illegal_key_names(ns, bad):
    with raises_kv(10042, 400):
        ns.put(bad, b"v")
    with raises_kv(10042, 400):
        ns.get(bad)
    with raises_kv(10042, 400):
        ns.delete(bad)


def test_metadata_limit(ns):
    padding = "x" * (1024 - len('{"p":""}'))
    ns.put("ok", b"v", metadata={"p": padding})  # exactly 1024 bytes of JSON
    with raises_kv(10047, 413):
        ns.put("big", b"v", metadata={"p": padding + "x"})
    with raises_kv(10047, 400):
        ns.put("bad", b"v", metadata={"p": {1, 2}})
    assert ns.get("big") is None and ns.get("bad") is None


def test_value_limit_and_type(ns):
    too_big = bytes(limits.MAX_VALUE_BYTES + 1)
    with raises_kv(10024, 413) as info:
        ns.put("k", too_big)
    assert len(str(info.value)) < 200
    with raises_kv(10024, 413):
        ns.bulk_put([KVPair("k", too_big)])
    ns.put("k", memoryview(too_big)[:limits.MAX_VALUE_BYTES])
    assert len(ns.get("k")) == limits.MAX_VALUE_BYTES
    with raises_kv(10012, 400):
        ns.put("k", "text is not bytes")


# --- list ---------------------------------------------------------------------------------------

def test_list_pagination_every_key_once_in_order(ns):
    names = [f"p:{i:05d}" for i in range(2500)]
    ns.bulk_put([KVPair(name, b"v", metadata={"i": i}) for i, name in enumerate(names)])
    seen, cursor, pages = [], None, 0
    while True:
        page = ns.list("p:", limit=1000, cursor=cursor)
        pages += 1
        seen.extend(k.name for k in page.keys)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert pages == 3 and seen == names
    assert [k.name for k in ns.list_all("p:", limit=10)] == names
    assert ns.list("p:", limit=10).keys[3].metadata == {"i": 3}


def test_list_exact_page_has_no_cursor(ns):
    ns.bulk_put([KVPair(f"k{i:02d}", b"v") for i in range(10)])
    page = ns.list(limit=10)
    assert len(page.keys) == 10 and page.cursor is None


def test_list_prefix_isolation_and_byte_order(ns):
    for name in ["a:1", "a:2", "ab", "a", "b:1", "a:\U0010ffff", "a;", "é"]:
        ns.put(name, b"v")
    assert [k.name for k in ns.list("a:").keys] == ["a:1", "a:2", "a:\U0010ffff"]
    assert [k.name for k in ns.list().keys] == sorted(
        ["a:1", "a:2", "ab", "a", "b:1", "a:\U0010ffff", "a;", "é"], key=lambda s: s.encode())
    assert ns.list("zzz").keys == []


def test_list_limit_and_cursor_validation(ns):
    for bad in (5, 9, 1001, 0):
        with raises_kv(10028, 400):
            ns.list(limit=bad)
    ns.list(limit=10)
    ns.list(limit=1000)
    with raises_kv(10041, 400):
        ns.list(cursor="not a cursor!")


# --- bulk ---------------------------------------------------------------------------------------



def test_bulk_get_beyond_one_request(ns):
    keys = [f"k{i}" for i in range(250)]
    ns.bulk_put([KVPair(k, k.encode()) for k in keys])
    assert ns.bulk_get(keys + ["nope"]) == {**{k: k.encode() for k in keys}, "nope": None}


def test_bulk_put_invalid_pair_writes_nothing(ns):
    with raises_kv(10034, 400):
        ns.bulk_put([KVPair("good", b"v"), KVPair("bad", b"v", expiration_ttl=30)])
    assert ns.get("good") is None


def test_bulk_put_10001_items_in_two_transactions(ns, monkeypatch):
    transactions = []
    original = LocalKVNamespace._write

    def counting(self):
        transactions.append(1)
        return original(self)

    monkeypatch.setattr(LocalKVNamespace, "_write", counting)
    pairs = [KVPair(f"k{i:05d}", b"v") for i in range(limits.BULK_WRITE_MAX_ITEMS + 1)]
    assert ns.bulk_put(pairs) == []
    assert len(transactions) == 2
    assert sum(1 for _ in ns.list_all()) == limits.BULK_WRITE_MAX_ITEMS + 1
    assert ns.bulk_delete([p.key for p in pairs]) == []
    assert len(transactions) == 4
    assert ns.list().keys == []


# --- concurrency --------------------------------------------------------------------------------

def _write_keys(directory: str, worker: int, count: int) -> None:
    namespace = LocalKVNamespace(directory)
    for i in range(count):
        namespace.put(f"w{worker}:{i:04d}", f"{worker}-{i}".encode(), metadata={"w": worker})
    namespace.bulk_put([KVPair(f"w{worker}:bulk:{i:04d}", b"b") for i in range(count)])
    namespace.close()


def test_processes_share_one_directory(tmp_path):
    directory = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write_keys, args=(directory, w, 150)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    namespace = LocalKVNamespace(directory)
    for w in range(4):
        assert len(list(namespace.list_all(f"w{w}:"))) == 300
        assert namespace.get(f"w{w}:0149") == f"{w}-149".encode()
    namespace.close()


WAL_SWITCH = "PRAGMA journal_mode=WAL"
TOGETHER = 4  # processes opening one new directory at once


def _open_together(directory: str, barrier: Any, blocked: Any, report: Any, worker: int) -> None:
    """Released with the others: open ``directory``'s namespace and write a key, then (once all
    wrote) read everyone's. ``blocked`` is set once this process's switch to WAL failed or is
    being tried a second time. Every worker passes both barriers, failed or not."""
    attempts = 0
    connect = sqlite3.connect

    def watched(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        def trace(statement: str) -> None:
            nonlocal attempts
            attempts += statement == WAL_SWITCH
            if attempts == 2:
                blocked.set()

        conn = connect(*args, **kwargs)
        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = watched  # type: ignore[assignment]  # this spawned process only
    failures: List[str] = []
    namespace = None
    barrier.wait()
    try:
        namespace = LocalKVNamespace(directory)
        namespace.put(f"w{worker}", str(worker).encode())
    except KVError as exc:
        failures.append(f"open and write: {exc}")
        blocked.set()
    barrier.wait()
    if namespace is not None:
        keys = [f"w{w}" for w in range(TOGETHER)]
        found = namespace.bulk_get(keys)
        if found != {key: str(w).encode() for w, key in enumerate(keys)}:
            failures.append(f"read {found}")
        namespace.close()
    report.put((worker, failures))


def test_processes_open_a_new_directory_together(tmp_path):
    """Workers starting together (gunicorn's, on the default directory) all create the same
    namespace. The file's first switch to WAL is held half-done (this process keeps the write
    lock the switch needs, as the first opener's switch does) until every worker met it: a
    switch that meets the lock fails at once whatever the busy timeout (core/wal.py), so each
    must retry, then open, write and read."""
    directory = tmp_path / "kv"
    directory.mkdir()
    holder = sqlite3.connect(str(directory / "kv.sqlite3"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(TOGETHER, timeout=60)
    blocked = [ctx.Event() for _ in range(TOGETHER)]
    report = ctx.Queue()
    workers = [ctx.Process(target=_open_together,
                           args=(str(directory), barrier, blocked[w], report, w))
               for w in range(TOGETHER)]
    for process in workers:
        process.start()
    try:
        assert all(event.wait(60) for event in blocked)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    results = dict(report.get(timeout=60) for _ in workers)
    for process in workers:
        process.join(60)
    assert results == {w: [] for w in range(TOGETHER)}
    assert [p.exitcode for p in workers] == [0] * TOGETHER


def test_threads_share_one_namespace(ns):
    errors = []

    def run(worker: int) -> None:
        try:
            for i in range(200):
                ns.put(f"t{worker}:{i:04d}", b"v")
                assert ns.get(f"t{worker}:{i:04d}") == b"v"
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [len(list(ns.list_all(f"t{w}:"))) for w in range(2)] == [200, 200]


# --- checks the REST client and the compatible server share ------------------------------------

def test_shared_checks_for_client_and_server():
    with raises_kv(10012, 400) as info:
        limits.validate_bulk_count("put", 10_001)
    assert "10001" in str(info.value)
    limits.validate_bulk_count("delete", 10_000)
    with raises_kv(10012, 400):
        limits.validate_bulk_count("get", 101)
    assert limits.validate_metadata_json('{"a":1}') == {"a": 1}
    with raises_kv(10047, 400):
        limits.validate_metadata_json("{not json")
    assert limits.resolve_expiration(expiration_ttl="120", now=1000.9) == 1120
    assert limits.resolve_expiration(now=1000) is None
