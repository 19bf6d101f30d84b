"""Fault paths over real HTTP (the project's KV server) and real databases: at most one KV read
per query, circuit breakers that open for the calls that fail, a bounded recovery after an outage,
an unusable L1 directory that still lets NOTIFY through, and the sweeper's state under concurrent
request and writer threads.

KV clients use short timeouts (0.5 s, one retry; see tests.fault_worker.FAST)."""
from __future__ import annotations

import inspect
import logging
import sqlite3
import threading
import time
from collections import Counter
from typing import Dict

import pytest

from peewee_kvcache import CachedPostgresqlDatabase, CachedResult, CloudflareKVCache
from peewee_kvcache.testing.kv_server import Fault
from peewee_kvcache.levels.l1 import L1Store, L1Unavailable, UnavailableStore, stand_in
from peewee_kvcache.invalidation.outbox import MAX_BACKOFF_MS
from peewee_kvcache.invalidation.sweeper import Sweeper
from tests.conftest import PG, wait_for
from tests.fault_worker import Item, first_sweeps
from tests.test_faults import kv_cache, make_db, names, server, truth  # noqa: F401 (fixtures)

DEFAULT_RESET = inspect.signature(CloudflareKVCache).parameters["breaker_reset_timeout"].default
WRITER_TICK = 0.25  # BackgroundWriter's poll_s
SLACK = 1.0         # CPU scheduling on a loaded 2-core machine, as in test_history.py


def counters(cache) -> Dict[str, int]:
    return cache.counters.snapshot()


def distinct_miss(i: int):
    """A cached query of its own (one more KV read, one more KV write)."""
    return sorted(x.name for x in Item.select(Item.name).where(Item.score != -1 - i).with_cache())


# --- §5: at most one KV read per query ----------------------------------------------------------

@pytest.mark.parametrize("fault", [Fault("status", endpoint="get", status=503),
                                   Fault("timeout", endpoint="get", delay=2.0)],
                         ids=["status-503", "timeout"])
def test_a_failed_l1_recheck_is_the_querys_only_kv_read(fault, server, kv_cache, make_db):
    # an aged entry is re-checked on the path
    cache = kv_cache(l1_max_age=0.2, l1_reads="always", l2_reads="always")
    db = make_db(cache)
    Item.create(name="a")
    assert names() == ["a"]
    assert cache.drain(10)
    time.sleep(0.25)                                     # the L1 entry now needs a re-check
    server.inject(fault)
    server.reset_counts()
    before = counters(cache)
    assert names() == truth(db) == ["a"]                 # unverifiable: the database answers
    assert counters(cache)["l1_rechecks"] == before["l1_rechecks"] + 1
    assert server.counts()["get"] == 1, server.counts()  # not a second GET after the failed one


def test_an_l1_recheck_that_finds_nothing_is_not_followed_by_another_read(server, kv_cache,
                                                                          make_db):
    cache = kv_cache(l1_max_age=0.2, l1_reads="always", l2_reads="always")
    make_db(cache)
    Item.create(name="a")
    assert names() == ["a"]
    assert cache.drain(10)
    server.namespace.clear()                             # L2 lost the entry
    time.sleep(0.25)
    server.reset_counts()
    assert names() == ["a"]
    assert server.counts()["get"] == 1, server.counts()


# --- §5: circuit breakers -----------------------------------------------------------------------

def test_reads_failing_open_the_read_breaker_while_background_writes_succeed(server, kv_cache,
                                                                            make_db):
    cache = kv_cache(breaker_fail_max=3, breaker_reset_timeout=60, l1_reads="always",
                     l2_reads="always")
    make_db(cache)
    Item.create(name="a")
    assert cache.drain(10)
    server.inject(Fault("status", endpoint="get", status=503))
    server.reset_counts()
    for i in range(8):
        assert distinct_miss(i) == ["a"]
        assert cache.drain(10)                           # its store reached KV: a success
    counts = server.counts()
    assert counts["get"] == 3, counts                    # then no query waits for KV any more
    assert counts["bulk_put"] == 8, counts               # background writes go on
    stats = cache.get_stats()
    assert stats.l2_circuit == "open"
    assert stats.l2_circuit_open == 5


def test_background_writes_failing_do_not_stop_query_path_reads(server, kv_cache, make_db):
    cache = kv_cache(breaker_fail_max=2, breaker_reset_timeout=60, l1_reads="always",
                     l2_reads="always")
    make_db(cache)
    Item.create(name="a")
    assert names() == ["a"]
    assert cache.drain(10)
    server.inject(Fault("status", endpoint="bulk_put", status=503))
    for i in range(4):                                   # their stores fail in the background
        assert distinct_miss(i) == ["a"]
        assert cache.drain(10)
    assert cache.get_stats().l2_circuit == "open"        # the background breaker
    cache.clear_local()
    hits, gets = counters(cache)["l2_hits"], server.counts()["get"]
    assert names() == ["a"]
    assert counters(cache)["l2_hits"] == hits + 1        # reads still reach KV
    assert server.counts()["get"] == gets + 1


# --- §5: recovery after an outage is bounded ----------------------------------------------------

def job_attempts(outbox) -> int:
    """The largest attempt count among queued commit-time sweeps."""
    return max((job.attempts for job in outbox.waiting() if job.sweep == 1), default=0)


@pytest.mark.slow
def test_the_first_sweep_after_an_outage_reaches_kv_within_the_documented_bound(
        server, kv_cache, make_db):
    """README: after KV answers again, the first sweep reaches it within
    ``breaker_reset_timeout`` + the outbox's backoff cap + the writer's tick."""
    cache = kv_cache(breaker_reset_timeout=DEFAULT_RESET)
    make_db(cache)
    Item.create(name="a")
    assert names() == ["a"]
    assert cache.drain(10)
    server.inject(Fault("drop"))                          # KV unreachable
    Item.update(name="b").execute()                      # its sweep fails and backs off
    for i in range(6):                                   # reads and stores fail too
        assert distinct_miss(i) == ["b"]
    assert cache.drain(20)
    assert wait_for(lambda: cache.get_stats().l2_circuit == "open", 10)
    assert wait_for(lambda: job_attempts(cache.outbox) >= 5, 30)   # backoff has grown
    assert first_sweeps(cache.outbox) == 1

    server.clear_faults()                                # KV is back
    recovered = time.monotonic()
    bound = DEFAULT_RESET + MAX_BACKOFF_MS / 1000 + WRITER_TICK
    assert bound <= 15
    swept = wait_for(lambda: first_sweeps(cache.outbox) == 0, bound + SLACK + 30)
    took = time.monotonic() - recovered
    assert swept and took <= bound + SLACK, f"the first sweep reached KV {took:.1f} s after " \
                                            f"recovery (bound {bound:.2f} s)"


# --- §7: an unusable L1 directory ---------------------------------------------------------------

def test_an_unusable_l1_behaves_like_a_store_that_raises(server, kv_cache, tmp_path):
    (tmp_path / "l1-file").write_bytes(b"not a directory")
    cache = kv_cache("l1-file")
    store, outbox = cache.l1, cache.outbox
    assert isinstance(store.l1_id, str) and store.l1_id   # data attributes are data
    assert isinstance(cache.origin, str) and cache.origin
    assert store.directory == str(tmp_path / "l1-file")
    assert isinstance(outbox.lease_ms, int)
    for call in (lambda: store.get("k"), lambda: store.tokens(["t:x"]), lambda: store.seq(),
                 lambda: store.bump(["t:x"], 1), lambda: store.is_current(["t:x"], [1]),
                 lambda: store.stats(), lambda: store.entries, lambda: len(outbox),
                 lambda: outbox.add(("t:x",), 1), lambda: outbox.done(None)):
        with pytest.raises(L1Unavailable, match="l1-file"):
            call()
    assert list(outbox.claim_due(1)) == []               # nothing was ever recorded there
    with pytest.raises(AttributeError):
        _ = store.no_such_method                         # not a function for any name
    cache.close()


def test_the_unusable_l1_stand_in_is_made_from_the_store_it_replaces():
    """Every public operation of the store raises on the stand-in, including one added later,
    without being written out again."""
    class GrownStore(L1Store):
        def new_operation(self) -> int:
            return 1

    stand = stand_in(GrownStore, data=("directory", "l1_id"))("l1-dir", OSError("no"), l1_id="i")
    with pytest.raises(L1Unavailable, match="l1-dir"):
        stand.new_operation()
    public = {name for name in dir(L1Store) if not name.startswith("_")}
    handles = set(L1Store.__annotations__) - {"directory", "l1_id"}
    assert public <= set(dir(UnavailableStore))
    assert vars(UnavailableStore).keys() - public - handles <= {"__module__", "__doc__"}


@pytest.fixture
def pg_host(request, tmp_path, pg_schema):
    """PostgreSQL 'hosts' (own L1 each, one local KV namespace); ``l1`` may be a file."""
    made = []

    def make(l1: str, **kwargs):
        cache = CloudflareKVCache(l1_directory=str(tmp_path / l1), propagation_delay=0,
                                  l1_max_age=None, **kwargs)
        db = CachedPostgresqlDatabase("test", cache=cache, options=f"-c search_path={pg_schema}",
                                      **PG)
        made.append(db)
        return db

    yield make
    for db in made:
        db.stop_listener()
        db.close()
        db.cache.close()


def test_a_host_with_an_unusable_l1_still_notifies_other_hosts(pg_host, tmp_path):
    from peewee_kvcache import LocalKVNamespace
    ns = LocalKVNamespace(tmp_path / "kv")
    (tmp_path / "l1-file").write_bytes(b"not a directory")
    reader = pg_host("l1-reader", namespace=ns)
    writer = pg_host("l1-file", namespace=ns)
    with reader.bind_ctx([Item]):
        reader.drop_tables([Item], safe=True)
        reader.create_tables([Item])
        Item.create(name="a")
        assert names() == ["a"]                          # cached in the reader's L1
        assert reader.start_listener().wait_ready(5)
    with writer.bind_ctx([Item]):
        Item.update(name="b").execute()                  # NOTIFY from a host without an L1
    with reader.bind_ctx([Item]):
        assert wait_for(lambda: names() == ["b"], 5), "the reader never heard of the write"
        assert reader.cache.get_stats().remote_evictions >= 1
        reader.drop_tables([Item], safe=True)


# --- §7: the sweeper's state under concurrent threads -------------------------------------------

class WriterTrace:
    """Pause the cache's writer thread at one point and signal when it returns from a function:
    a real interleaving, forced with a trace function (nothing of the library is replaced).

    ``pause_at``: (function, line) pauses before that line runs; (function, None) when the
    function returns a value (not None, i.e. not left by an exception)."""

    def __init__(self, pause_at, signal_after):
        self.pause_code, self.pause_line = pause_at[0].__code__, pause_at[1]
        self.signal_code = signal_after.__code__
        self.pause_armed = self.signal_armed = False
        self.paused, self.release, self.signalled = (threading.Event(), threading.Event(),
                                                     threading.Event())

    def __enter__(self) -> "WriterTrace":
        threading.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        threading.settrace(None)
        self.release.set()

    def _global(self, frame, event, arg):
        if frame.f_code in (self.pause_code, self.signal_code) and \
                threading.current_thread().name.startswith("peewee-kvcache-writer"):
            return self._local
        return None

    def _local(self, frame, event, arg):
        if frame.f_code is self.pause_code and self.pause_armed and (
                (event == "line" and frame.f_lineno == self.pause_line) or
                (event == "return" and self.pause_line is None and arg is not None)):
            self.pause_armed = False
            self.paused.set()
            self.release.wait(10)
        elif frame.f_code is self.signal_code and event == "return" and self.signal_armed:
            self.signal_armed = False
            self.signalled.set()
        return self._local

    def resume_and_wait(self) -> None:
        """Let the writer go on, and wait until it returned from ``signal_after``."""
        self.signal_armed = True
        self.release.set()
        assert self.signalled.wait(10)


def lock_tokens(l1_dir) -> sqlite3.Connection:
    """Another process holding L1's token database: every bump times out (a real L1 fault)."""
    conn = sqlite3.connect(str(l1_dir / "state.sqlite3"), timeout=0,
                           isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def complete(cache, job) -> None:
    """What the cache does after a write: its bump owed (made at once if it left no flags),
    the L2 sweep queued (unless a queued task takes it)."""
    task = cache._sweeper.complete(job)
    if task is not None:
        cache._writer.submit(task)


def test_a_bump_that_fails_while_the_writer_retries_an_older_one_leaves_the_name_distrusted(
        make_cache, tmp_path):
    """Request thread: its bump of X fails (L1 locked), so this process must distrust X. Writer
    thread, meanwhile: its retry of an older failed bump of X succeeded and it is about to trust X
    again. Whatever the order, the newer failure must win."""
    x = ["t:x"]
    with WriterTrace((L1Store.bump, None), Sweeper.run_due) as trace:
        cache = make_cache("l1")
        cache._writer.start()                            # the writer thread starts traced
        held = lock_tokens(tmp_path / "l1")
        complete(cache, cache._sweeper.prepare(x))       # an older bump of X fails
        assert cache._sweeper.distrusts(x)
        newer = cache._sweeper.prepare(x)
        trace.pause_armed = True
        held.execute("ROLLBACK")                          # the writer's retry can now succeed
        assert trace.paused.wait(10)                      # it did; the writer is paused after it
        held.execute("BEGIN EXCLUSIVE")                   # and L1 fails again
        before = counters(cache)["l1_errors"]
        thread = threading.Thread(target=complete, args=(cache, newer))
        thread.start()                                    # a newer bump of X fails meanwhile
        assert wait_for(lambda: counters(cache)["l1_errors"] > before, 10)
        thread.join(0.5)                                  # done, or waiting for the writer
        trace.resume_and_wait()                           # the writer finished its retry
        thread.join(10)
        distrusted = cache._sweeper.distrusts(x)          # (L1 is still locked: no new retry)
        held.execute("ROLLBACK")
        held.close()
    assert distrusted, "X is trusted although its latest bump failed"
    assert cache.drain(10)


def line_of(function, text: str) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_a_sweep_recorded_while_the_writer_clears_a_finished_one_stays_pending(make_cache,
                                                                              tmp_path):
    """Without an L1, sweeps are counted in this process's memory. The writer thread finishes
    one sweep of X and drops X's zero count while a request thread records another sweep of X:
    X must stay pending (else this host reads X from KV during its sweep)."""
    (tmp_path / "l1-file").write_bytes(b"not a directory")
    x = ["t:x"]
    drop_zero = (Counter._keep_positive, line_of(Counter._keep_positive, "del self[elem]"))
    with WriterTrace(drop_zero, Counter._keep_positive) as trace:
        cache = make_cache("l1-file")
        first = cache._sweeper.prepare(x)                 # recorded in memory
        trace.pause_armed = True
        complete(cache, first)                            # the writer sweeps, then drops X...
        assert trace.paused.wait(10)                      # ...and is paused right there
        second = []
        thread = threading.Thread(target=lambda: second.append(cache._sweeper.prepare(x)))
        thread.start()                                    # another write to X, meanwhile
        thread.join(0.5)                                  # done, or waiting for the writer
        trace.resume_and_wait()
        thread.join(10)
        pending = cache._sweeper.pending_in_memory(x)
    assert pending, "X's second sweep is pending but this host would read X from KV"
    complete(cache, second[0])
    assert cache.drain(10)
    assert not cache._sweeper.pending_in_memory(x)        # and nothing is left behind


# --- one fault path ------------------------------------------------------------------------------

def test_a_fault_is_one_warning_with_its_exception_and_a_count(make_cache, monkeypatch, caplog):
    """Logged once at WARNING with the exception's type and message, the traceback only when
    DEBUG is on, and counted; a lookup says it is a miss (no query needs to be running)."""
    cache = make_cache()
    assert cache.put("q", CachedResult(("n",), [(1,)]), ["t"])
    cache.clear_local()

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(cache.l1, "get", broken)
    for level, traceback in ((logging.WARNING, False), (logging.DEBUG, True)):
        caplog.clear()
        caplog.set_level(level, logger="peewee_kvcache")
        before = counters(cache)["l1_errors"]
        assert cache.get("q", ["t"]) is None
        assert counters(cache)["l1_errors"] == before + 1
        (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert record.levelno == logging.WARNING
        assert record.getMessage() == ("peewee_kvcache: L1 read failed, counted as a miss "
                                       "(OSError: disk on fire)")
        assert bool(record.exc_info) is traceback
