"""The L2 gateway: one cache's keys listed, counted and deleted in one place (the cache's stats and
clear_all, the sweeper and the command line's maintenance all use it), and guarded calls that
turn each kind of KV trouble into its own counter instead of an exception."""
from __future__ import annotations

import functools
import logging
from typing import Iterator, Tuple

import pytest

from peewee_kvcache import CachedResult, LocalKVNamespace
from peewee_kvcache.cli.maintenance import Maintenance
from peewee_kvcache.core.faults import report
from peewee_kvcache.core.stats import Counters
from peewee_kvcache.kv.base import KVError
from peewee_kvcache.kv.cloudflare import BudgetExhausted
from peewee_kvcache.l2.gateway import L2Gateway

ROW = CachedResult(("n",), [(1,)])


@pytest.fixture
def gateway(tmp_path) -> Iterator[Tuple[L2Gateway, Counters]]:
    counters = Counters()
    namespace = LocalKVNamespace(tmp_path / "kv")
    yield (L2Gateway(namespace, "a", fail_max=2, reset_timeout=60.0, counters=counters,
                     fault=functools.partial(report, counters)), counters)
    namespace.close()


def test_a_cache_lists_counts_and_clears_only_its_own_prefix(make_cache):
    """Prefix "a" must not take prefix "ab"'s keys for its own (a bare prefix listing would):
    stats, the command line's count and clear_all agree, and leave "ab" alone."""
    mine, other = make_cache("l1-a", prefix="a"), make_cache("l1-ab", prefix="ab")
    mine.put("q1", ROW, ["user", "post"])
    mine.put("q2", ROW, ["user"], is_tag=True)
    other.put("q3", ROW, ["user"])
    assert mine.drain(10) and other.drain(10)
    stats, counts = mine.get_stats(), Maintenance.for_cache(mine).count()
    assert (stats.total_keys, stats.table_keys, stats.tag_keys) == \
        (counts.total_keys, counts.table_keys, counts.tag_keys) == (2, 3, 1)
    assert counts.markers == 2 and counts.by_table == {"post": 1, "user": 2}
    assert len(mine.l2_entry_keys()) == 2
    mine.clear_all()
    assert mine.get_stats().total_keys == 0
    assert len(other.l2_entry_keys()) == 1


@pytest.mark.parametrize("raised, counter", [
    (BudgetExhausted("budget"), "l2_budget_skipped"), (KVError("refused", status=400), "l2_errors"),
    (KVError("down", status=503), "l2_errors"), (OSError("socket"), "l2_errors")])
def test_a_guarded_call_turns_trouble_into_a_counter(gateway, raised, counter, caplog):
    l2, counters = gateway
    caplog.set_level(logging.WARNING, logger="peewee_kvcache")

    def call() -> None:
        raise raised

    sent = None if counter == "l2_budget_skipped" else False  # None: nothing reached KV
    assert l2.call("listing", call) == (sent, None)
    assert counters.snapshot()[counter] == 1
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ([] if counter == "l2_budget_skipped" else
                      [f"peewee_kvcache: listing ({type(raised).__name__}: {raised})"])


def test_only_kv_faults_open_the_breakers(gateway):
    """Our own request refused (a 4xx) or the budget says nothing about KV's health; a 503 does.
    The read breaker counts reads only."""
    l2, counters = gateway

    def refused() -> None:
        raise KVError("bad key", status=400)

    def down(key: str) -> None:
        raise KVError("down", status=503)

    for _ in range(3):
        l2.call("refused", refused)
    assert l2.circuit == "closed"
    l2.keyspace.namespace.get = down  # type: ignore[method-assign]
    for _ in range(2):
        assert l2.read("read", "k") is None
    assert l2.circuit == "open"
    assert l2.read("read", "k") is None and counters.snapshot()["l2_circuit_open"] == 1
    assert l2.call("background", lambda: "ok") == (True, "ok")   # the other breaker


def test_a_partial_bulk_delete_is_a_fault_with_its_keys(gateway, caplog):
    l2, counters = gateway
    caplog.set_level(logging.WARNING, logger="peewee_kvcache")
    l2.keyspace.namespace.bulk_delete = lambda keys: list(keys)[1:]  # type: ignore[method-assign]
    assert l2.delete(["ae:1", "ae:2", "ae:3"]) is False
    assert counters.snapshot()["l2_errors"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "peewee_kvcache: L2 bulk delete left 2 keys (KVError: KV refused 'ae:2' and 1 more)"]

