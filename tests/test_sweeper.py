"""The sweeper on its own: built from its collaborators (outbox, L1 store, L2 gateway, two
durations, the fault path), with no cache object, and retrying a failed sweep with one backoff
whether the job lives in the outbox or in memory."""
from __future__ import annotations

import functools
from typing import Iterator, List, Tuple

import pytest
from freezegun import freeze_time

from peewee_kvcache import LocalKVNamespace
from peewee_kvcache.core.config import now_ms
from peewee_kvcache.core.faults import report
from peewee_kvcache.core.stats import Counters
from peewee_kvcache.invalidation.outbox import MAX_BACKOFF_MS, Outbox, UnavailableOutbox
from peewee_kvcache.invalidation.sweeper import Sweeper
from peewee_kvcache.kv.base import KVError
from peewee_kvcache.l2.gateway import L2Gateway
from peewee_kvcache.levels.l1 import L1Store, UnavailableStore

Parts = Tuple[Sweeper, L1Store, Outbox, L2Gateway, Counters]


@pytest.fixture
def parts(tmp_path) -> Iterator[Parts]:
    counters = Counters()
    fault = functools.partial(report, counters)
    namespace = LocalKVNamespace(tmp_path / "kv")
    l1, outbox = L1Store(str(tmp_path / "l1")), Outbox(str(tmp_path / "l1"))
    l2 = L2Gateway(namespace, "pkv:", fail_max=100, reset_timeout=5.0, counters=counters,
                   fault=fault)
    yield (Sweeper(outbox, l1, l2, resweep_after_ms=0, clock_skew_ms=0, fault=fault), l1, outbox,
           l2, counters)
    outbox.close()
    l1.close()
    namespace.close()


def stored_keys(l2: L2Gateway) -> set:
    return {info.name for info in l2.keyspace.keys()}


def test_a_write_is_recorded_bumped_swept_and_swept_again(parts):
    sweeper, l1, outbox, l2, counters = parts
    namespace = l2.keyspace.namespace
    older, newer = now_ms() - 1000, now_ms() + 60_000
    namespace.bulk_put(l2.layout.entry_pairs("old", b"v", ["t:a", "t:b"], 60, older))
    namespace.bulk_put(l2.layout.entry_pairs("new", b"v", ["t:b"], 60, newer))
    namespace.bulk_put(l2.layout.entry_pairs("other", b"v", ["t:c"], 60, older))
    tokens = l1.tokens(["t:b"])

    job = sweeper.prepare(["t:b"])                       # before the write commits
    assert len(outbox) == 1 and l1.any_pending(["t:b"])
    sweep = sweeper.complete(job)                        # after it: tokens now, L2 later
    assert l1.tokens(["t:b"]) != tokens
    sweep()                                              # its marker, the entry it points at
    assert stored_keys(l2) == {"pkv:t:b:new", "pkv:t:c:other"}  # computed later, or unrelated
    assert not l1.any_pending(["t:b"])
    assert len(outbox) == 1                              # the late re-sweep
    sweeper.run_due()
    assert len(outbox) == 0
    assert counters.snapshot()["l2_errors"] == 0


def failing_listing(monkeypatch, l2: L2Gateway) -> List[int]:
    """KV down for ``l2``: when each listing was tried (ms after 2031-03-01 12:00)."""
    tries: List[int] = []

    def down(*args, **kwargs):
        tries.append(now_ms() - START_MS)
        raise KVError("KV down")

    monkeypatch.setattr(l2.keyspace.namespace, "list", down)
    return tries


START_MS = 1930132800000  # 2031-03-01 12:00:00 UTC


def test_a_failed_sweep_backs_off_alike_in_the_outbox_and_in_memory(parts, monkeypatch,
                                                                    tmp_path):
    """A sweep recorded in the outbox and one kept in memory (no usable L1) are tried again at
    the same moments: 0.5 s after failing, then twice as long each time, at most
    ``MAX_BACKOFF_MS`` apart."""
    sweeper, _, _, l2, counters = parts
    fault = functools.partial(report, counters)
    other_l2 = L2Gateway(LocalKVNamespace(tmp_path / "kv2"), "pkv:", fail_max=100,
                         reset_timeout=5.0, counters=counters, fault=fault)
    unusable = Sweeper(UnavailableOutbox("gone", OSError("gone"), lease_ms=30_000),
                       UnavailableStore("gone", OSError("gone"), l1_id="x"), other_l2,
                       resweep_after_ms=0, clock_skew_ms=0, fault=fault)
    durable, in_memory = failing_listing(monkeypatch, l2), failing_listing(monkeypatch, other_l2)
    with freeze_time("2031-03-01 12:00:00") as clock:
        assert now_ms() == START_MS
        for each in (sweeper, unusable):
            each.complete(each.prepare(["t:a"]))()       # the first attempt fails at once
        for _ in range(180):                             # 18 s, in writer-like ticks
            clock.tick(0.1)
            sweeper.run_due()
            unusable.run_due()
    assert MAX_BACKOFF_MS == 5_000
    assert durable == in_memory == [0, 500, 1500, 3500, 7500, 12500, 17500]
