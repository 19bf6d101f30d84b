"""Closing and freeing: no SQLite handle is closed under a running statement, closed caches are
freed, a database's own default cache is closed with it, and exit waits a bounded time."""
from __future__ import annotations

import gc
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import List

import pytest

from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache, LocalKVNamespace
from peewee_kvcache.orm import notify as notify_module
from peewee_kvcache.invalidation.outbox import Outbox
from tests.conftest import open_database

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run_python(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def open_fds(suffix: str) -> List[str]:
    """This process's open files whose path ends with ``suffix``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(suffix):
            found.append(target)
    return found


def test_closing_one_cache_during_anothers_sweep_never_crashes(tmp_path):
    """The CI crash: SIGSEGV in the sweeping thread when another cache closed the namespace."""
    result = run_python(str(TESTS / "close_stress_worker.py"), "rounds", str(tmp_path), "60")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rounds done" in result.stdout


def test_close_leaves_a_busy_connection_to_its_thread(tmp_path):
    """close() returns at once, the busy thread's write completes and its connection is closed
    by that thread (no file left open); later calls raise KVError."""
    result = run_python(str(TESTS / "close_stress_worker.py"), "busy", str(tmp_path / "kv"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["close returned", "outcome ['written']",
                                          f"after close: LocalKVNamespace('{tmp_path / 'kv'}') "
                                          "is closed"]


# -- §3 lifecycle ------------------------------------------------------------------------------

def writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "peewee-kvcache-writer")


def test_closed_caches_are_freed(tmp_path):
    """Nothing (the exit hook included) keeps a closed cache alive."""
    refs = []
    for i in range(50):
        cache = CloudflareKVCache(LocalKVNamespace(tmp_path / f"kv{i}"),
                                  l1_directory=str(tmp_path / f"l1-{i}"))
        cache.invalidate(tables=["t"])  # the writer thread runs
        cache.close()
        refs.append(weakref.ref(cache))
        del cache
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0


def test_a_database_closes_the_default_cache_it_built(tmp_path, monkeypatch):
    """Without ``cache=`` the database builds a cache; dropping the database closes it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    gc.collect()
    before = len(open_fds(""))
    for i in range(20):
        db = CachedSqliteDatabase(str(tmp_path / f"app{i}.db"))
        db.execute_sql("CREATE TABLE t (x INTEGER)")
        db.execute_sql("INSERT INTO t VALUES (1)")  # an invalidation: the writer thread runs
        db.close()
        del db
    gc.collect()
    for thread in threading.enumerate():  # the caches are closed on threads of their own
        if thread.name == "peewee-kvcache-close":
            thread.join(10)
    gc.collect()
    assert len(open_fds("")) <= before


def test_submit_after_close_starts_no_thread(make_cache, caplog):
    """A closed cache used again drops its L2 work (logged and counted) instead of restarting
    its writer thread."""
    cache = make_cache()
    cache.invalidate(tables=["t"])
    cache.close()
    threads = writer_threads()
    with caplog.at_level(logging.WARNING, logger="peewee_kvcache"):
        cache.invalidate(tables=["t"])
    assert writer_threads() == threads
    assert cache._writer.dropped == 1
    assert "dropped 1 L2 task(s) submitted after close" in caplog.text


@pytest.mark.parametrize("value, error", [(-1, ValueError), ("2", TypeError),
                                          (float("inf"), ValueError), (True, TypeError)])
def test_exit_timeout_is_validated(tmp_path, value, error):
    with pytest.raises(error, match=f"exit_timeout.*{re.escape(repr(value))}"):
        CloudflareKVCache(LocalKVNamespace(tmp_path / "kv"), l1_directory=str(tmp_path / "l1"),
                          exit_timeout=value)


UNREACHABLE_SCRIPT = """
import sys, time
from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache, CloudflareKVNamespace
namespace = CloudflareKVNamespace("acc", "ns", "token", base_url=sys.argv[1])
cache = CloudflareKVCache(namespace, l1_directory=sys.argv[2], strategy="all")
db = CachedSqliteDatabase(sys.argv[3], cache=cache)
db.execute_sql("CREATE TABLE t (x INTEGER)")
for i in range(10):
    db.execute_sql("INSERT INTO t VALUES (?)", (i,))
    list(db.execute_sql("SELECT x FROM t WHERE x = ?", (i,)))
print("done", time.monotonic(), flush=True)
"""


def test_exit_with_kv_unreachable_is_bounded_and_keeps_the_outbox(tmp_path):
    """KV unreachable: the exit drain waits at most exit_timeout (1 s by default), not for
    every retry; the sweeps it could not send stay in the durable outbox."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_python("-c", UNREACHABLE_SCRIPT, f"http://127.0.0.1:{port}/client/v4",
                        str(tmp_path / "l1"), str(tmp_path / "app.db"))
    exited = time.monotonic()
    assert result.returncode == 0, result.stderr[-3000:]
    done = float(result.stdout.split()[-1])
    assert exited - done < 1.0 + 1.0, f"exit took {exited - done:.1f} s"
    outbox = Outbox(str(tmp_path / "l1"))
    try:
        assert len(outbox) > 0  # the next process sweeps what this one could not
    finally:
        outbox.close()


def test_concurrent_first_reads_start_one_listener(make_cache, request, tmp_path, monkeypatch):
    """start_listener() checked, then acted, without a lock: threads whose first cached reads
    met started a LISTEN thread (and connection) each."""
    made = []
    meet = threading.Barrier(4)

    class MeetingListener(notify_module.Listener):
        def __init__(self, *args, **kwargs):
            made.append(self)
            try:  # every caller gets here at once unless only one may build the listener
                meet.wait(0.5)
            except threading.BrokenBarrierError:
                pass
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(notify_module, "Listener", MeetingListener)
    db = open_database("postgres", make_cache(), request, tmp_path)
    callers = [threading.Thread(target=db._kv_before_read) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    try:
        assert len(made) == 1
        assert db._kv_listener.wait_ready(5)
    finally:
        for listener in made:
            listener.stop()


def test_stopping_the_listener_wakes_it_at_once(make_cache, request, tmp_path, monkeypatch):
    """stop() (a database closed, a test's teardown, the CLI's exit) ends the LISTEN thread and
    its connection at once, not at the thread's next poll: with a 60 s poll it still has."""
    class SlowPoll(notify_module.Listener):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "poll_s": 60.0})
            self.alive_after_join: List[bool] = []

        def stop(self) -> None:
            self.request_stop()
            assert self._thread is not None
            self._thread.join(30)
            self.alive_after_join.append(self._thread.is_alive())

    monkeypatch.setattr(notify_module, "Listener", SlowPoll)
    db = open_database("postgres", make_cache(), request, tmp_path)
    listener = db.start_listener()
    assert listener.wait_ready(5)
    db.stop_listener()
    assert listener.alive_after_join == [False]  # ended well before the join's 30 s
