"""Run by test_fork.py in a subprocess: ``os.fork()`` while the cache is mid-flight, then check the
child and the parent.

At the fork the writer thread is blocked inside a KV bulk write with more work queued behind it.
Without ``release_after`` the write stays stuck (the fork stops waiting for it after a shortened
``forksafe.FORK_WAIT_S``) and another thread holds every lock the cache, its namespace and the
database own. With ``release_after`` the write ends that many seconds after the fork began, and the
fork must have waited for it. The child must read (L1 hit), cache (L1 and L2), invalidate (L1 and
L2) and exit normally, within a second; the parent, once the blocked thread and call are
released, must do the same. Prints one JSON line with what it measured; exit code 0 when both
sides passed.

Usage: fork_worker.py '{"dir": ..., "backend": "sqlite"|"postgres", "schema": ...,
                        "server": null | {"base_url", "account_id", "namespace_id", "api_token"},
                        "release_after": null | seconds}'
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Set

import peewee

from peewee_kvcache import (CachedPostgresqlDatabase, CachedSqliteDatabase, CloudflareKVCache,
                            CloudflareKVNamespace, LocalKVNamespace)
from peewee_kvcache.core import forksafe

CHILD_DEADLINE_S = 1.0
PARENT_PID = os.getpid()
block_writes = threading.Event()
write_entered = threading.Event()
release_write = threading.Event()


class BlockingWrites:
    """In the parent, once ``block_writes`` is set, a bulk write waits for ``release_write``
    (the writer stuck in a slow KV call)."""

    def bulk_put(self, pairs):  # type: ignore[no-untyped-def]
        if os.getpid() == PARENT_PID and block_writes.is_set() and not release_write.is_set():
            write_entered.set()
            release_write.wait(30)
        return super().bulk_put(pairs)  # type: ignore[misc]


class Item(peewee.Model):
    name = peewee.CharField(max_length=64)

    class Meta:
        table_name = "fork_item"


class Kept(peewee.Model):
    """Never written after setup: its cached result must be a hit on both sides of the fork."""
    name = peewee.CharField(max_length=64)

    class Meta:
        table_name = "fork_kept"


class Other(peewee.Model):
    """Written just before the fork, so a sweep is queued behind the blocked write."""
    name = peewee.CharField(max_length=64)

    class Meta:
        table_name = "fork_other"


MODELS = [Item, Kept, Other]


def child_rows() -> peewee.Query:
    return Item.select(Item.name).where(Item.name == "child").tuples().with_cache(ex=60)


def make_namespace(config: Dict[str, Any]) -> Any:
    server = config["server"]
    if server is None:
        cls: Any = type("BlockingLocal", (BlockingWrites, LocalKVNamespace), {})
        return cls(os.path.join(config["dir"], "kv"))
    cls = type("BlockingCloudflare", (BlockingWrites, CloudflareKVNamespace), {})
    return cls(server["account_id"], server["namespace_id"], server["api_token"],
               base_url=server["base_url"], budget=None, timeout=(2, 2), read_timeout=(2, 2))


def make_database(config: Dict[str, Any], cache: CloudflareKVCache) -> peewee.Database:
    if config["backend"] == "sqlite":
        return CachedSqliteDatabase(os.path.join(config["dir"], "app.db"), cache=cache)
    return CachedPostgresqlDatabase("test", cache=cache, host="127.0.0.1", port=5432,
                                    user="postgres", options=f"-c search_path={config['schema']}")


def sockets_to(port: int) -> Set[str]:
    """Inodes of this process's TCP sockets connected to ``port`` on loopback."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    found.add(fields[9])
    return found


def held_locks(cache: CloudflareKVCache, db: peewee.Database) -> List[Any]:
    """Every lock a request thread or the writer may hold at the moment of a fork."""
    namespace = cache.namespace
    locks = [cache._writer._cond, cache._memory._lock, cache._l2._breaker._lock,
             cache.counters._lock, cache._l2._read_breaker._lock, cache._sweeper._lock,
             cache._invalidations._listeners_lock,
             getattr(namespace, "_lock", None), getattr(namespace.budget, "_lock", None)
             if hasattr(namespace, "budget") and namespace.budget else None,
             getattr(db, "_kv_listener_lock", None)]
    return [lock for lock in locks if lock is not None]


def exercise(db: peewee.Database, cache: CloudflareKVCache, label: str) -> Dict[str, Any]:
    """Read (a hit), cache a new result in L1 and L2, invalidate it in L1 and L2."""
    out: Dict[str, Any] = {}
    hits = cache.counters.snapshot()["hits"]
    assert [k.name for k in Kept.select().with_cache(ex=60)] == ["kept"]
    out["read_hit"] = cache.counters.snapshot()["hits"] == hits + 1
    assert cache.drain(5), "earlier L2 work not done"
    before = set(cache.l2_entry_keys())
    query = Item.select().where(Item.name == label).with_cache(ex=60)
    assert list(query) == []
    assert cache.drain(5), "L2 write not done"
    keys = set(cache.l2_entry_keys()) - before
    out["cached_in_l2"] = len(keys) == 1
    Item.create(name=label)  # invalidates fork_item: L1 bump now, L2 sweep in the background
    assert cache.drain(5), "L2 sweep not done"
    out["swept_from_l2"] = not (keys & set(cache.l2_entry_keys()))
    out["fresh_after_write"] = [i.name for i in query.clone()] == [label]
    if hasattr(db, "_kv_listener"):
        out["listener_ready"] = db._kv_listener.wait_ready(CHILD_DEADLINE_S)
    return out


def child(db: peewee.Database, cache: CloudflareKVCache, started: float, results: str,
          kv_port: Optional[int], parents_sockets: Set[str]) -> None:
    out: Dict[str, Any] = {"l2_entries_at_start": len(cache.l2_entry_keys())}
    with db.connection_context():
        out.update(exercise(db, cache, "child"))
    if kv_port is not None:  # the parent's pooled keep-alive connections are not this child's
        out["no_parent_kv_socket"] = not (sockets_to(kv_port) & parents_sockets)
    out["work_s"] = time.monotonic() - started
    with open(results, "w") as fh:
        json.dump(out, fh)
    sys.exit(0)  # a normal exit: atexit hooks (the writer's exit drain) run


def main(config: Dict[str, Any]) -> Dict[str, Any]:
    cache = CloudflareKVCache(make_namespace(config),
                              l1_directory=os.path.join(config["dir"], "l1"))
    db = make_database(config, cache)
    db.bind(MODELS)
    with db.connection_context():
        db.drop_tables(MODELS)
        db.create_tables(MODELS)
        Kept.create(name="kept")
        list(Kept.select().with_cache(ex=60))  # warm: memory, L1, L2
        assert cache.drain(5)
        block_writes.set()
        list(Kept.select().where(Kept.name == "x").with_cache(ex=60))  # its L2 write blocks
        assert write_entered.wait(5)
        list(Other.select().where(Other.name == "y").with_cache(ex=60))  # queued behind it
        Other.create(name="z")  # a sweep queued too
        assert list(child_rows()) == []  # cached here; the child's write must reach it
    report: Dict[str, Any] = {"parent_pending_at_fork": cache._writer.pending(),
                              "l2_entries_before_fork": len(cache.l2_entry_keys())}
    locked, release_locks = threading.Event(), threading.Event()

    def hold() -> None:
        locks = held_locks(cache, db)
        for lock in locks:
            lock.acquire()
        locked.set()
        release_locks.wait(30)
        for lock in reversed(locks):
            lock.release()

    release_after = config.get("release_after")
    if release_after is None:  # the write stays stuck; other threads hold every lock
        forksafe.FORK_WAIT_S = 0.2  # the fork gives up waiting for the stuck writer soon
        threading.Thread(target=hold, daemon=True).start()
        assert locked.wait(5)
    else:  # the write ends soon after the fork began: the fork must wait for it
        release_locks.set()
        threading.Timer(release_after, release_write.set).start()
    results = os.path.join(config["dir"], "child.json")
    kv_port = int(config["server"]["base_url"].split(":")[2].split("/")[0]) \
        if config["server"] else None
    parents_sockets = sockets_to(kv_port) if kv_port else set()
    report["parent_kv_sockets_at_fork"] = len(parents_sockets)
    started = time.monotonic()
    pid = os.fork()
    forked = time.monotonic()
    if pid == 0:
        try:
            child(db, cache, forked, results, kv_port, parents_sockets)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit 1
            if isinstance(exc, SystemExit) and exc.code == 0:
                raise
            print(f"child failed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(1)
    report["fork_s"] = forked - started
    deadline = time.monotonic() + 10
    status = None
    while status is None and time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
        else:
            time.sleep(0.01)
    report["child_total_s"] = time.monotonic() - forked
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        report["child_exit"] = "killed after 10 s (hung)"
    else:
        report["child_exit"] = os.waitstatus_to_exitcode(status)
    report["child"] = json.load(open(results)) if os.path.exists(results) else None
    release_locks.set()
    release_write.set()
    with db.connection_context():
        # the child's invalidation reached this process (shared L1 tokens and mapped counter)
        sees_child = list(child_rows()) == ([("child",)] if status == 0 else [])
        report["parent"] = exercise(db, cache, "parent")
    report["parent"]["sees_child_write"] = sees_child
    if hasattr(db, "stop_listener"):
        report["parent"]["hears_other_hosts"] = hears_other_hosts(config, cache)
        db.stop_listener()
    with db.connection_context():
        db.drop_tables(MODELS)
    cache.close()
    return report


def hears_other_hosts(config: Dict[str, Any], cache: CloudflareKVCache) -> bool:
    """The parent's LISTEN connection survived the child: another host's write reaches it."""
    other_cache = CloudflareKVCache(cache.namespace, l1_directory=os.path.join(config["dir"], "o"))
    other = make_database(config, other_cache)
    evictions = cache.counters.snapshot()["remote_evictions"]
    with other.bind_ctx([Item]), other.connection_context():
        Item.create(name="other host")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if cache.counters.snapshot()["remote_evictions"] > evictions:
            return True
        time.sleep(0.02)
    return False


if __name__ == "__main__":
    faulthandler.enable()
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
