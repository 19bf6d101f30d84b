"""The L1 directory's state file (tokens, flags, outbox in one SQLite database) and what a write
costs there: one local transaction before its statement, none after it on its path (the bump it
owes is made by the writer thread, the next invalidation, or a read of those names), and sweeps
of writes in quick succession sent together."""
from __future__ import annotations

import os
import sqlite3
from typing import List, Tuple

import diskcache
import msgpack
import pytest

from peewee_kvcache.core.config import now_ms
from peewee_kvcache.invalidation.outbox import Job, Outbox
from peewee_kvcache.invalidation.sweeper import Sweeper
from peewee_kvcache.l2.gateway import L2Gateway
from peewee_kvcache.levels.l1 import L1_FAULTS, CorruptL1, L1Store
from peewee_kvcache.levels.state import StateClosed, StateFile
from tests.test_sweeper import parts as sweeper_parts  # noqa: F401 (a fixture)

Parts = Tuple[Sweeper, L1Store, Outbox, L2Gateway]


@pytest.fixture
def parts(sweeper_parts) -> Parts:  # noqa: F811 (the imported fixture, by name)
    """test_sweeper.py's sweeper, L1, outbox and gateway on one L1 directory."""
    return sweeper_parts[:4]


def traced(state: StateFile) -> List[str]:
    """Every statement this thread's connection to ``state`` runs from now on."""
    seen: List[str] = []
    state._connections.get().conn.set_trace_callback(seen.append)
    return seen


# --- the state file ------------------------------------------------------------------------------

def test_one_state_file_per_directory_in_a_process_until_its_last_user_leaves(tmp_path):
    first, second = StateFile.open(str(tmp_path)), StateFile.open(str(tmp_path))
    assert first is second
    first.release()
    assert second.read("SELECT 1") == [(1,)]             # one user left: still open
    second.release()
    with pytest.raises(StateClosed):
        second.read("SELECT 1")
    assert isinstance(StateClosed("x"), L1_FAULTS)       # counted as an L1 fault by its callers
    again = StateFile.open(str(tmp_path))
    assert again is not first and again.read("SELECT 1") == [(1,)]
    again.release()


def test_nested_writes_are_one_transaction_and_commit_hooks_wait_for_it(tmp_path):
    state = StateFile.open(str(tmp_path))
    ran: List[str] = []
    try:
        statements = traced(state)
        with state.write() as conn:
            conn.execute("INSERT INTO setting VALUES ('a', 1)")
            state.after_commit(lambda: ran.append("committed"))
            with state.write() as inner:                 # joins: no BEGIN of its own
                inner.execute("INSERT INTO setting VALUES ('b', 2)")
            assert ran == []
        assert ran == ["committed"]
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
            "BEGIN IMMEDIATE", "COMMIT"]
        with pytest.raises(ZeroDivisionError):
            with state.write() as conn:
                state.after_rollback(lambda: ran.append("rolled back"))
                state.after_commit(lambda: ran.append("never"))
                with state.write() as inner:
                    inner.execute("INSERT INTO setting VALUES ('c', 3)")
                    raise ZeroDivisionError              # an inner failure undoes the outer's
        assert ran == ["committed", "rolled back"]
        assert state.read("SELECT key FROM setting WHERE key IN ('a', 'b', 'c') ORDER BY key") == [
            ("a",), ("b",)]
    finally:
        state.release()


def test_a_write_locked_by_another_process_fails_as_an_l1_fault(tmp_path):
    state = StateFile.open(str(tmp_path), timeout=0.1)
    other = sqlite3.connect(state.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(L1_FAULTS):
            with state.write():
                pass
    finally:
        other.execute("ROLLBACK")
        other.close()
        state.release()


# --- a write's local cost ------------------------------------------------------------------------

def test_a_write_is_one_local_transaction_before_its_statement_and_none_after(parts):
    sweeper, l1, outbox, _ = parts
    tokens = l1.tokens(["t:a"])
    statements = traced(l1.state)
    job = sweeper.prepare(["t:a"])                       # the job, the flags, the counter
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 1
    assert len(outbox) == 1 and l1.any_pending(["t:a"]) and l1._unbumped() == {
        "t:a": [f"{os.getpid()}:{job.job_id}"]}
    statements.clear()
    task = sweeper.complete(job)                         # after the statement: nothing local
    assert statements == [] and task is not None
    assert not l1.is_current(["t:a"], tokens)            # its flags: not trusted meanwhile
    task()                                               # the writer thread: bump, sweep
    assert l1._unbumped() == {} and not l1.any_pending(["t:a"])
    assert l1.tokens(["t:a"]) != tokens
    assert [job.sweep for job in outbox.waiting()] == [2]  # the late re-sweep


def test_the_next_invalidation_makes_the_bump_a_write_owes_in_its_own_transaction(parts):
    sweeper, l1, _, _ = parts
    first = sweeper.prepare(["t:a"])
    sweeper.complete(first)
    statements = traced(l1.state)
    sweeper.prepare(["t:b"])
    assert statements.count("BEGIN IMMEDIATE") == 1      # the owed bump went with it
    assert set(l1._unbumped()) == {"t:b"}


@pytest.mark.parametrize("read", ["tokens", "seq", "is_current"])
def test_a_read_of_this_process_makes_the_bump_it_owes_first(parts, read):
    """Its own later reads (and a transaction beginning: its baseline) see the write settled:
    results computed from now on can be stored."""
    sweeper, l1, _, _ = parts
    before = l1.tokens(["t:a"])
    sweeper.complete(sweeper.prepare(["t:a"]))
    {"tokens": lambda: l1.tokens(["t:a"]), "seq": l1.seq,
     "is_current": lambda: l1.is_current(["t:a"], before)}[read]()
    assert l1._unbumped() == {}
    after = l1.tokens(["t:a"])
    assert after != before and l1.is_current(["t:a"], after) and l1.seq() >= after[0]


def test_another_store_on_the_directory_distrusts_the_names_until_the_bump_is_made(parts,
                                                                                    tmp_path):
    sweeper, l1, _, _ = parts
    other = L1Store(str(tmp_path / "l1"))                # as another process would see it
    try:
        stamp = other.tokens(["t:a"])
        sweeper.complete(sweeper.prepare(["t:a"]))
        assert not other.is_current(["t:a"], stamp)      # the owner lives: no recovery
        assert not other.is_current(["t:a"], other.tokens(["t:a"]))
        l1.settle()
        assert not other.is_current(["t:a"], stamp)      # the old stamp is dead for good
        assert other.is_current(["t:a"], other.tokens(["t:a"]))
    finally:
        other.close()


def test_a_failed_owed_bump_stays_owed_and_its_flags_stay(parts, monkeypatch):
    sweeper, l1, _, _ = parts
    sweeper.complete(sweeper.prepare(["t:a"]))
    monkeypatch.setattr(l1, "_next_seq", lambda conn: (_ for _ in ()).throw(
        sqlite3.OperationalError("disk I/O error")))
    with pytest.raises(sqlite3.OperationalError):
        l1.settle()
    assert set(l1._unbumped()) == {"t:a"}
    monkeypatch.undo()
    l1.settle()
    assert l1._unbumped() == {}


def test_an_owed_bump_never_moves_an_invalidation_time_back(parts):
    sweeper, l1, _, _ = parts
    job = sweeper.prepare(["t:a"])
    sweeper.complete(job)                                # completed at T (owed)
    l1.bump(["t:a"], now_ms() + 60_000)                 # e.g. another host's write, later
    later = l1.invalidated_at(["t:a"])
    l1.settle()
    assert l1.invalidated_at(["t:a"]) == later


def test_close_makes_the_bumps_owed(tmp_path):
    l1, outbox = L1Store(str(tmp_path / "l1")), Outbox(str(tmp_path / "l1"))
    l1.mark_pending(["t:a"], "m")
    l1.bump_later(["t:a"], "m", 1)
    outbox.close()
    l1.close()
    again = L1Store(str(tmp_path / "l1"))
    try:
        assert again._unbumped() == {}
    finally:
        again.close()


# --- sweeps of writes in quick succession --------------------------------------------------------

def test_writes_completed_before_their_sweep_runs_share_it(parts, monkeypatch):
    sweeper, l1, outbox, l2 = parts
    listed: List[str] = []
    list_all = l2.keyspace.namespace.list_all
    monkeypatch.setattr(l2.keyspace.namespace, "list_all",
                        lambda prefix: listed.append(prefix) or list_all(prefix))
    tasks = [sweeper.complete(sweeper.prepare(names))
             for names in (["t:a"], ["t:a", "t:b"], ["t:a"])]
    assert tasks[0] is not None and tasks[1:] == [None, None]  # one task takes them all
    tasks[0]()
    assert sorted(listed) == ["pkv:t:a:", "pkv:t:b:"]    # one listing per name
    assert [job.sweep for job in outbox.waiting()] == [2, 2, 2]
    assert l1._unbumped() == {} and not l1.any_pending(["t:a", "t:b"])
    assert sweeper.complete(sweeper.prepare(["t:c"])) is not None  # the next write: a new task


# --- the outbox ----------------------------------------------------------------------------------

def test_sweeps_left_in_an_older_versions_outbox_are_taken_over(tmp_path):
    legacy = diskcache.Cache(str(tmp_path / "l1" / "outbox"), eviction_policy="none")
    legacy.set(f"{1234:015d}-abc", msgpack.packb([["t:a"], 1, 2, None]))
    legacy.close()
    outbox = Outbox(str(tmp_path / "l1"))
    try:
        assert outbox.waiting() == [Job("abc", ("t:a",), 1, 2, None)]
        assert outbox.next_due_ms() == 1234
        assert not (tmp_path / "l1" / "outbox").exists()
    finally:
        outbox.close()


def test_an_unreadable_job_is_dropped_and_does_not_stop_the_queue(tmp_path):
    outbox = Outbox(str(tmp_path / "l1"), lease_ms=1000)
    try:
        good = outbox.add(("t:a",), 10)
        with outbox.state.write() as conn:
            conn.execute("INSERT INTO job VALUES ('bad', 5, 'not json', 1, 0, NULL)")
        with pytest.raises(CorruptL1):
            outbox.claim_due(100)
        assert [job.job_id for job in outbox.waiting()] == [good.job_id]
        assert [job.job_id for job in outbox.claim_due(100 + 1000)] == [good.job_id]  # leased
    finally:
        outbox.close()
