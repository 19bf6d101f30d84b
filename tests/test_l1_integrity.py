"""L1 flags and entries under overlap, failure and corruption (found in review, with real processes
and a real lock held by another connection).

Run as ``python -m tests.test_l1_integrity <dir>``, this module is writer A of the overlap test.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import msgpack
import peewee
import pytest

from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache, LocalKVNamespace
from peewee_kvcache.core.names import table_name
from tests.conftest import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Item(peewee.Model):
    v = peewee.TextField()


def open_cache(base: str, **options) -> CloudflareKVCache:
    return CloudflareKVCache(LocalKVNamespace(f"{base}/kv"), l1_directory=f"{base}/l1", **options)


@pytest.fixture
def setup(tmp_path):
    base = str(tmp_path)
    cache = open_cache(base, outbox_lease=30)
    db = CachedSqliteDatabase(f"{base}/db.sqlite", cache=cache)
    with db.bind_ctx([Item]):
        db.create_tables([Item])
        Item.create(id=1, v="orig")
        Item.create(id=2, v="other")
        yield base, cache
    db.close()
    cache.close()


def read() -> str:
    return Item.select().where(Item.id == 1).with_cache(ex=300).get().v


def _writer_a(base: str) -> None:
    """Flags ``item``, waits, commits an UPDATE outside the cache's sight and dies (kill -9)
    between that COMMIT and its L1 bump."""
    cache = open_cache(base, outbox_lease=30)

    def run() -> None:
        open(f"{base}/a_flagged", "w").close()
        while not os.path.exists(f"{base}/a_go"):
            time.sleep(0.01)
        conn = sqlite3.connect(f"{base}/db.sqlite", isolation_level=None)
        conn.execute("UPDATE item SET v = 'A' WHERE id = 1")
        conn.close()
        os.kill(os.getpid(), signal.SIGKILL)

    cache.write([table_name("item")], run)


def test_an_overlapping_writer_does_not_lift_a_killed_writers_flag(setup):
    """A flags ``item``; B flags it too, writes and bumps; a reader caches; A commits and is killed
    before its bump. B's bump must lift only B's flag: the old row is never served."""
    base, cache = setup
    writer = subprocess.Popen([sys.executable, "-m", "tests.test_l1_integrity", base], cwd=ROOT)
    try:
        assert wait_for(lambda: os.path.exists(f"{base}/a_flagged"), 20)
        Item.update(v="B").where(Item.id == 2).execute()   # writer B: flag, write, bump
        assert read() == "orig"
        open(f"{base}/a_go", "w").close()
        assert writer.wait(20) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
    assert read() == "A"
    assert read() == "A"


def test_a_failed_bump_does_not_leave_its_flag_behind(setup):
    """The write's L1 bump fails once (another connection holds the token store past diskcache's
    timeout); the retry that succeeds must lift the flag, or nothing of the table is cached on
    this host again while the process lives."""
    base, cache = setup
    held = threading.Event()

    def hold_tokens() -> None:
        conn = sqlite3.connect(f"{base}/l1/state.sqlite3", timeout=5, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(1.5)
        conn.execute("ROLLBACK")
        conn.close()

    def update() -> None:
        conn = sqlite3.connect(f"{base}/db.sqlite", isolation_level=None)
        conn.execute("UPDATE item SET v = 'new' WHERE id = 1")
        conn.close()
        threading.Thread(target=hold_tokens).start()
        held.wait(5)

    cache.write([table_name("item")], update)               # its bump is made after it:
    assert wait_for(lambda: cache.get_stats().l1_errors >= 1, 10)  # it failed
    assert wait_for(lambda: not cache.l1._unbumped(), 10)  # the retry lifted the flag
    assert read() == "new"
    assert read() == "new"
    stats = cache.get_stats()
    assert stats.stores == 1 and stats.memory_hits + stats.l1_hits == 1


@pytest.mark.parametrize("fields", [[1, 2, 2 ** 62, b"x", 0],
                                    [["t:item"], [1], "soon", b"x", 0]],
                         ids=["names-not-a-list", "expiry-not-a-number"])
def test_a_malformed_l1_entry_is_a_counted_miss(setup, fields):
    base, cache = setup
    assert read() == "orig"
    (key,) = [k for k in cache.l1.entries.iterkeys() if not k.startswith("fill:")]
    cache.l1.entries.set(key, msgpack.packb(fields, use_bin_type=True))
    errors = cache.get_stats().l1_errors
    fresh = open_cache(base)                               # no copy in this process's memory
    db = CachedSqliteDatabase(f"{base}/db.sqlite", cache=fresh)
    try:
        with db.bind_ctx([Item]):
            assert read() == "orig"
        assert fresh.get_stats().l1_errors == 1
    finally:
        db.close()
        fresh.close()
    assert cache.get_stats().l1_errors == errors


if __name__ == "__main__":
    _writer_a(sys.argv[1])
