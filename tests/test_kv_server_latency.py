"""KVServer's standing latency: every API request waits ``latency`` seconds before it is served,
for as long as it is set, so the cache can be measured against a KV that is tens of ms away (the
workload benchmark sweeps it). Only lower bounds are asserted: a loaded machine makes requests
slower, never faster."""
from __future__ import annotations

import time

import pytest

from peewee_kvcache import CloudflareKVNamespace
from peewee_kvcache.testing import Fault, KVServer

LATENCY = 0.15


def client(server: KVServer) -> CloudflareKVNamespace:
    return CloudflareKVNamespace(server.account_id, server.namespace_id, server.api_token,
                                 base_url=server.base_url, budget=None)


def timed(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_every_request_waits_the_latency(tmp_path):
    with KVServer(tmp_path / "kv", latency=LATENCY) as server:
        kv = client(server)
        try:
            assert server.latency == LATENCY
            assert timed(lambda: kv.put("k", b"v")) >= LATENCY
            for _ in range(2):  # not a one-off: it stays
                assert timed(lambda: kv.get("k")) >= LATENCY
            assert server.counts()["get"] == 2 and server.counts()["put"] == 1
        finally:
            kv.close()


def test_latency_set_while_serving_applies_to_the_next_request_and_survives_reset(tmp_path):
    with KVServer(tmp_path / "kv") as server:
        kv = client(server)
        try:
            assert server.latency == 0.0
            server.latency = LATENCY
            assert timed(lambda: kv.get("k")) >= LATENCY
            server.reset()  # counts, faults and keys go; the distance stays
            assert server.latency == LATENCY
            assert timed(lambda: kv.get("k")) >= LATENCY
        finally:
            kv.close()


def test_a_latency_fault_adds_to_the_standing_latency(tmp_path):
    with KVServer(tmp_path / "kv", latency=LATENCY) as server:
        kv = client(server)
        try:
            server.inject(Fault("latency", delay=LATENCY, endpoint="get", times=1))
            assert timed(lambda: kv.get("k")) >= 2 * LATENCY
        finally:
            kv.close()


@pytest.mark.parametrize("bad", [-0.001, 3601, float("nan"), "0.1", None, True])
def test_bad_latency_is_refused_naming_it(tmp_path, bad):
    with pytest.raises(ValueError, match="latency"):
        KVServer(tmp_path / "kv", latency=bad)
    server = KVServer(tmp_path / "kv2")
    with pytest.raises(ValueError, match="latency"):
        server.latency = bad
    assert server.latency == 0.0
    server.namespace.close()
