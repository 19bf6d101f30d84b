"""CloudflareKVNamespace against the Cloudflare-compatible KVServer, over real HTTP.

The contract tests run on three namespaces (embedded, REST client, and the KV gateway Worker in
workerd) to show they behave the same;
the rest covers what only the REST client has: request counts, retries, timeouts, the request
budget, credentials handling and token hygiene.
"""
from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
import traceback
from typing import Iterator

import pytest

from peewee_kvcache.kv import base, cloudflare, codes, limits, transport
from peewee_kvcache.kv.base import KVError, KVNamespace, KVOutcomeUnknown, KVPair
from peewee_kvcache.kv.cloudflare import BudgetExhausted, CloudflareKVNamespace, RequestBudget
from peewee_kvcache.kv.local import LocalKVNamespace
from peewee_kvcache.testing import Fault, KVServer

TOKEN = "tok-3x4mpl3-S3CR3T-value"
ODD_KEYS = ["a/b", "q?x=1&y", "100%", "%2F", "#frag", "with space", "café é", "smile 🙂",
            "..x", "a/../b", "./", "+plus", "tab\tkey"]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[KVServer]:
    with KVServer(tmp_path_factory.mktemp("server"), api_token=TOKEN) as srv:
        yield srv


@pytest.fixture
def server(shared_server) -> Iterator[KVServer]:
    """The module's server, emptied (keys, counts, faults) for each test: starting is cheap,
    stopping is not."""
    shared_server.reset()
    yield shared_server
    shared_server.clear_faults()


def connect(server: KVServer, **kwargs) -> CloudflareKVNamespace:
    """A client for ``server``; fast backoff, no budget, and reads retried like writes (so the
    retry tests can use ``get``) unless a test asks otherwise."""
    options = dict(base_url=server.base_url, budget=None, backoff_factor=0.01, read_retries=3)
    options.update(kwargs)
    return CloudflareKVNamespace(server.account_id, server.namespace_id, server.api_token,
                                 **options)


@pytest.fixture
def client(server) -> Iterator[CloudflareKVNamespace]:
    namespace = connect(server)
    yield namespace
    namespace.close()


@pytest.fixture(params=["local", "cloudflare", "worker"])
def ns(request, tmp_path) -> Iterator[KVNamespace]:
    if request.param == "local":
        namespace: KVNamespace = LocalKVNamespace(tmp_path / "local")
    elif request.param == "worker":
        worker = request.getfixturevalue("workerd_gateway")  # one per session
        worker.clear()
        namespace = worker.namespace()
    else:
        namespace = connect(request.getfixturevalue("server"))
    yield namespace
    namespace.close()


def sent(server: KVServer) -> int:
    return sum(server.counts().values())


# --- contract: both namespaces ----------------------------------------------------------------

def test_put_get_delete(ns):
    assert ns.get("k") is None
    ns.put("k", b"\x00\xff binary \r\n")
    assert ns.get("k") == b"\x00\xff binary \r\n"
    ns.put("k", b"")
    assert ns.get("k") == b""
    ns.put("k", bytearray(b"second"))
    assert ns.get("k") == b"second"
    ns.delete("k")
    assert ns.get("k") is None
    ns.delete("k")  # a missing key is fine


def test_metadata_round_trip_and_replacement(ns):
    meta = {"tables": ["a", "b"], "n": 3, "ünï": None}
    ns.put("k", b"\x00v", metadata=meta)
    found = ns.get_with_metadata("k")
    assert (found.value, found.metadata, found.expiration) == (b"\x00v", meta, None)
    ns.put("k", b"w")  # a put replaces value, expiry and metadata together
    assert ns.get_with_metadata("k").metadata is None
    assert ns.get_with_metadata("missing") is None


def test_expiration_ttl_and_absolute_expiration(ns):
    now = int(time.time())
    ns.put("ttl", b"1", expiration_ttl=120, metadata={"m": 1})
    ns.put("abs", b"2", expiration=now + 600)
    ns.put("both", b"3", expiration=now + 600, expiration_ttl=300)  # the ttl wins
    ns.put("never", b"4")
    assert ns.get("ttl") == b"1" and ns.get("abs") == b"2"
    ttl = ns.get_with_metadata("ttl")
    assert ttl.metadata == {"m": 1} and now + 120 <= ttl.expiration <= now + 122
    assert ns.get_with_metadata("abs").expiration == now + 600
    assert now + 300 <= ns.get_with_metadata("both").expiration <= now + 302
    listed = {k.name: k for k in ns.list_all()}
    assert listed["abs"].expiration == now + 600 and listed["never"].expiration is None
    assert listed["ttl"].metadata == {"m": 1} and listed["ttl"].expiration == ttl.expiration


def test_list_pagination_over_2500_keys(ns):
    names = [f"p:{i:05d}" for i in range(2500)]
    ns.bulk_put([KVPair(name, b"v") for name in reversed(names)])
    ns.bulk_put([KVPair(name, b"v") for name in ("p", "p;", "o:9", "q:0")])
    first = ns.list("p:", limit=1000)
    assert [k.name for k in first.keys] == names[:1000] and first.cursor
    second = ns.list("p:", limit=1000, cursor=first.cursor)
    assert [k.name for k in second.keys] == names[1000:2000] and second.cursor
    third = ns.list("p:", limit=1000, cursor=second.cursor)
    assert [k.name for k in third.keys] == names[2000:] and third.cursor is None
    assert [k.name for k in ns.list_all("p:", limit=1000)] == names
    assert [k.name for k in itertools.islice(ns.list_all("p:", limit=10), 12)] == names[:12]
    assert len(list(ns.list_all())) == 2504


def test_list_last_full_page_has_no_cursor(ns):
    ns.bulk_put([KVPair(f"k{i:02d}", b"v") for i in range(20)])
    page = ns.list(limit=10)
    assert page.cursor
    last = ns.list(limit=10, cursor=page.cursor)
    assert [k.name for k in last.keys] == [f"k{i:02d}" for i in range(10, 20)]
    assert last.cursor is None


def test_prefix_isolation(ns):
    for name in ["a", "a/x", "ab", "abc", "b", "B", "é", "éa"]:
        ns.put(name, b"v")
    assert [k.name for k in ns.list("a").keys] == ["a", "a/x", "ab", "abc"]
    assert [k.name for k in ns.list("ab").keys] == ["ab", "abc"]
    assert [k.name for k in ns.list("é").keys] == ["é", "éa"]
    assert ns.list("zz").keys == [] and ns.list("zz").cursor is None
    assert [k.name for k in ns.list().keys] == ["B", "a", "a/x", "ab", "abc", "b", "é", "éa"]


def test_bulk_put_get_delete(ns):
    now = int(time.time())
    assert ns.bulk_put([
        KVPair("a", "alpha".encode(), metadata={"t": ["x"]}),
        KVPair("b", "béta 🙂".encode(), expiration_ttl=120),
        KVPair("c", b"gamma", expiration=now + 900),
    ]) == []
    assert ns.get_with_metadata("a").metadata == {"t": ["x"]}
    assert now + 120 <= ns.get_with_metadata("b").expiration <= now + 122
    assert ns.get_with_metadata("c").expiration == now + 900
    assert ns.bulk_get(["a", "b", "missing", "a"]) == {
        "a": b"alpha", "b": "béta 🙂".encode(), "missing": None}
    assert ns.bulk_get([]) == {}
    assert ns.bulk_delete(["a", "missing", "c"]) == []
    assert ns.bulk_get(["a", "b", "c"]) == {"a": None, "b": "béta 🙂".encode(), "c": None}
    assert ns.bulk_put([]) == [] and ns.bulk_delete([]) == []


def test_bulk_get_more_than_one_request(ns):
    ns.bulk_put([KVPair(f"k{i}", str(i).encode()) for i in range(250)])
    found = ns.bulk_get([f"k{i}" for i in range(260)])
    assert found == {f"k{i}": (str(i).encode() if i < 250 else None) for i in range(260)}


def test_bulk_metadata_tells_which_keys_exist(ns):
    """Re-checks of many entries in one call: present keys with their metadata, missing as None,
    binary values (which KV's bulk read mangles as text) do not matter."""
    ns.bulk_put([KVPair(f"m{i}", b"\xff\x00" * 3, metadata={"c": i}) for i in range(150)]
                + [KVPair("plain", b"v")])
    ns.delete("m7")
    found = ns.bulk_metadata([f"m{i}" for i in range(150)] + ["plain", "missing", "m1"])
    assert found == {**{f"m{i}": {"c": i} for i in range(150) if i != 7}, "m7": None,
                     "plain": {}, "missing": None}
    assert ns.bulk_metadata([]) == {}


def test_bulk_metadata_is_one_request_per_100_keys(client, server):
    client.bulk_put([KVPair(f"k{i}", b"v") for i in range(250)])
    server.reset_counts()
    assert len(client.bulk_metadata([f"k{i}" for i in range(250)])) == 250
    assert server.counts()["bulk_get"] == 3 and sent(server) == 3


def test_keys_with_reserved_characters(ns):
    for key in ODD_KEYS:
        ns.put(key, b"\x01" + key.encode(), metadata={"k": key})
    ns.bulk_put([KVPair(key + "/sibling", b"s") for key in ODD_KEYS])
    for key in ODD_KEYS:
        found = ns.get_with_metadata(key)
        assert (found.value, found.metadata) == (b"\x01" + key.encode(), {"k": key})
    assert [k.name for k in ns.list_all()] == sorted(
        [*ODD_KEYS, *(key + "/sibling" for key in ODD_KEYS)], key=lambda k: k.encode())
    assert ns.bulk_get(ODD_KEYS) == {key: b"\x01" + key.encode() for key in ODD_KEYS}
    for key in ODD_KEYS:
        ns.delete(key)
    assert ns.bulk_get(ODD_KEYS + ["a/b/sibling"]) == {**dict.fromkeys(ODD_KEYS),
                                                        "a/b/sibling": b"s"}
    assert [k.name for k in ns.list("a/").keys] == ["a/../b/sibling", "a/b/sibling"]
    assert ns.bulk_delete([key + "/sibling" for key in ODD_KEYS]) == []
    assert list(ns.list_all()) == []


def test_sweep_deletes_what_the_rule_condemns(ns):
    """One sweep over two prefixes: results computed up to each boundary (or of unknown age)
    and the entries their markers point at inside the scope; later results and other keys stay."""
    ns.bulk_put([
        KVPair("c:t:a:old", b"\x00e", metadata={"c": 100}),
        KVPair("c:t:a:new", b"e", metadata={"c": 900}),
        KVPair("c:t:a:ageless", b"e"),
        KVPair("c:t:b:old", b"1", metadata={"e": "c:t:z:target", "c": 100}),
        KVPair("c:t:b:outside", b"1", metadata={"e": "d:t:z:kept", "c": 100}),
        KVPair("c:t:b:new", b"1", metadata={"e": "c:t:z:kept", "c": 600}),
        *(KVPair(key, b"v") for key in ("c:t:z:target", "c:t:z:kept", "d:t:z:kept", "c:t:c:x")),
    ])
    assert ns.sweep({"c:t:a:": 500, "c:t:b:": 500}, scope="c:") == []
    assert [k.name for k in ns.list_all()] == [
        "c:t:a:new", "c:t:b:new", "c:t:c:x", "c:t:z:kept", "d:t:z:kept"]
    assert ns.sweep({}, scope="c:") == []


TTL_MESSAGE = "Invalid expiration_ttl of 30. Expiration TTL must be at least 60."
BAD_CALLS = {
    "ttl 30": (lambda ns: ns.put("k", b"v", expiration_ttl=30), codes.ERR_INVALID_EXPIRATION_TTL),
    "513-byte key": (lambda ns: ns.put("é" * 256 + "x", b"v"), codes.ERR_KEY_TOO_LONG),
    "513-byte get": (lambda ns: ns.get("k" * 513), codes.ERR_KEY_TOO_LONG),
    "dot key": (lambda ns: ns.put(".", b"v"), codes.ERR_ILLEGAL_KEY),
    "dot-dot get": (lambda ns: ns.get(".."), codes.ERR_ILLEGAL_KEY),
    "empty key": (lambda ns: ns.delete(""), codes.ERR_ILLEGAL_KEY),
    "1025-byte metadata": (lambda ns: ns.put("k", b"v", metadata={"x": "a" * 1017}),
                           codes.ERR_INVALID_METADATA),
    "value over 25 MiB": (lambda ns: ns.put("k", bytes(limits.MAX_VALUE_BYTES + 1)),
                          codes.ERR_PAYLOAD_TOO_LARGE),
    "past expiration": (lambda ns: ns.put("k", b"v", expiration=int(time.time()) - 5),
                        codes.ERR_INVALID_EXPIRATION),
    "expiration too soon": (lambda ns: ns.put("k", b"v", expiration=int(time.time()) + 30),
                            codes.ERR_INVALID_EXPIRATION),
    "list limit 5": (lambda ns: ns.list(limit=5), codes.ERR_INVALID_LIMIT),
    "list limit 1001": (lambda ns: ns.list(limit=1001), codes.ERR_INVALID_LIMIT),
    "bad pair in bulk": (lambda ns: ns.bulk_put([KVPair("ok", b"v"), KVPair("..", b"v")]),
                         codes.ERR_ILLEGAL_KEY),
    "bad key in bulk delete": (lambda ns: ns.bulk_delete(["ok", "k" * 513]),
                               codes.ERR_KEY_TOO_LONG),
    "bad key in bulk get": (lambda ns: ns.bulk_get(["ok", "."]), codes.ERR_ILLEGAL_KEY),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_limits_raise_cloudflare_codes(ns, case):
    call, code = BAD_CALLS[case]
    with pytest.raises(KVError) as info:
        call(ns)
    assert info.value.code == code
    assert ns.get("ok") is None  # nothing of a rejected bulk call was written


def test_ttl_message_is_cloudflares(ns):
    with pytest.raises(KVError, match=TTL_MESSAGE):
        ns.put("k", b"v", expiration_ttl=30)


def test_list_rejects_foreign_cursor(ns):
    with pytest.raises(KVError) as info:
        ns.list(cursor="not-a-cursor-we-issued")
    assert info.value.code == codes.ERR_INVALID_CURSOR


# --- the REST client only ---------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_CALLS)
def test_validation_failures_send_no_request(server, client, case):
    call, _ = BAD_CALLS[case]
    before = server.counts()
    with pytest.raises(KVError):
        call(client)
    assert server.counts() == before


def test_request_counts(server, client):
    client.put("k", b"v")
    server.reset_counts()
    client.get("k")
    assert server.counts()["get"] == 1 and sent(server) == 1

    server.reset_counts()
    assert client.bulk_put([KVPair(f"b:{i:05d}", b"v") for i in range(25_000)]) == []
    assert server.counts()["bulk_put"] == 3 and sent(server) == 3

    server.reset_counts()
    assert client.bulk_delete([f"b:{i:05d}" for i in range(10_001)]) == []
    assert server.counts()["bulk_delete"] == 2 and sent(server) == 2
    assert client.get("b:10000") is None and client.get("b:10001") == b"v"

    client.bulk_delete([f"b:{i:05d}" for i in range(10_001, 25_000)])
    client.bulk_put([KVPair(f"l:{i:04d}", b"v") for i in range(2500)])
    server.reset_counts()
    assert len(list(client.list_all("l:", limit=1000))) == 2500
    assert server.counts()["list"] == 3 and sent(server) == 3

    server.reset_counts()
    client.get_with_metadata("l:0000")
    assert (server.counts()["get"], server.counts()["metadata"], sent(server)) == (1, 1, 2)


def test_one_client_shared_by_threads(server, client):
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                client.put(f"t{n}:{i}", f"{n}-{i}".encode())
                assert client.get(f"t{n}:{i}") == f"{n}-{i}".encode()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(list(client.list_all())) == 160
    assert server.counts()["put"] == server.counts()["get"] == 160


def test_bulk_put_splits_by_request_size(server, client):
    big = bytes(20 * 1024 * 1024)  # 20 MiB each, ~28 MB base64: four fit under 100 MB
    server.reset_counts()
    assert client.bulk_put([KVPair(f"big{i}", big) for i in range(5)]) == []
    assert server.counts()["bulk_put"] == 2
    assert client.get("big4") == big


def test_retries_transient_503(server, client):
    client.put("k", b"v")
    server.reset_counts()
    server.inject(Fault("status", endpoint="get", status=503, times=2))
    assert client.get("k") == b"v"
    assert server.counts()["get"] == 3


def test_rate_limit_honours_retry_after(server, client):
    server.inject(Fault("rate_limit", endpoint="put", times=1, retry_after=1))
    started = time.monotonic()
    client.put("k", b"v")
    assert time.monotonic() - started >= 0.9
    assert server.counts()["put"] == 2 and client.get("k") == b"v"


def test_long_retry_after_is_capped(server, client, monkeypatch):
    """A lockout's Retry-After (minutes) must not park the calling thread that long."""
    monkeypatch.setattr(transport, "_MAX_RETRY_AFTER", 0.2)
    server.inject(Fault("rate_limit", endpoint="get", retry_after=300))
    started = time.monotonic()
    with pytest.raises(KVError) as info:
        client.get("k")
    assert (info.value.code, info.value.status) == (971, 429)
    assert time.monotonic() - started < 2.0 and server.counts()["get"] == 4


def test_persistent_500_fails_after_retries(server):
    client = connect(server, read_retries=2)
    server.inject(Fault("status", status=500))
    with pytest.raises(KVError) as info:
        client.get("k")
    assert info.value.status == 500
    assert sent(server) == 3


def test_read_timeout_is_bounded(server):
    client = connect(server, read_timeout=(1, 0.5))  # 3 retries: 4 attempts of 0.5 s
    server.inject(Fault("timeout", delay=2))
    started = time.monotonic()
    with pytest.raises(KVError, match="ReadTimeout"):
        client.get("k")
    assert time.monotonic() - started < 3.0
    assert server.counts()["get"] == 4


def test_query_path_read_fails_fast_by_default(server):
    """``get`` runs on a query's path: by default one attempt with a short read timeout, while
    background writes keep retrying."""
    client = CloudflareKVNamespace(server.account_id, server.namespace_id, server.api_token,
                                   base_url=server.base_url, budget=None)
    server.inject(Fault("timeout", delay=5))
    started = time.monotonic()
    with pytest.raises(KVError, match="ReadTimeout"):
        client.get("k")
    assert time.monotonic() - started < 2.6
    assert server.counts()["get"] == 1
    server.clear_faults()
    server.inject(Fault("rate_limit", retry_after=0, times=1))
    client.put("k", b"v")                       # the write path retried past the 429
    assert server.counts()["put"] == 2 and client.get("k") == b"v"


@pytest.mark.parametrize("fault", [Fault("timeout", delay=1), Fault("drop"),
                                   Fault("status", status=503)], ids=lambda f: f.kind)
@pytest.mark.parametrize("call", [lambda c: c.put("k", b"v"),
                                  lambda c: c.bulk_put([KVPair("k", b"v")])],
                         ids=["put", "bulk_put"])
def test_a_write_that_may_have_landed_is_never_resent(server, fault, call):
    """A resent write can land before the abandoned one, which then lands after the sweep meant
    to remove it: writes without an answer are reported as unknown, never retried."""
    client = connect(server, timeout=(1, 0.3), retries=3)
    server.inject(fault)
    with pytest.raises(KVOutcomeUnknown):
        call(client)
    assert sum(server.counts()[e] for e in ("put", "bulk_put")) == 1


def unreachable() -> CloudflareKVNamespace:
    """A client for a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return CloudflareKVNamespace("a", "n", TOKEN, base_url=f"http://127.0.0.1:{port}/v4",
                                 retries=1, backoff_factor=0.01, budget=None)


def test_a_write_that_never_connected_is_a_plain_kverror():
    with pytest.raises(KVError) as info:
        unreachable().bulk_put([KVPair("k", b"v")])
    assert not isinstance(info.value, KVOutcomeUnknown)


def test_dropped_connection_is_retried(server, client):
    client.put("k", b"v")
    server.inject(Fault("drop", times=1))
    assert client.get("k") == b"v"


def test_connection_refused_is_kverror():
    with pytest.raises(KVError) as info:
        unreachable().get("k")
    assert "ConnectionError" in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize("call", [lambda c: c.put("k", b"v"), lambda c: c.list(),
                                  lambda c: c.bulk_get(["k"]), lambda c: c.bulk_delete(["k"]),
                                  lambda c: c.get("k"), lambda c: c.get_with_metadata("k")])
def test_malformed_response_is_kverror(server, client, call):
    client.put("k", b"a value long enough to be cut short")
    server.inject(Fault("malformed"))
    with pytest.raises(KVError) as info:
        call(client)
    assert info.value.code is None


def test_wrong_token_is_authentication_error(server):
    wrong = "wrong-token-Zq9"
    client = CloudflareKVNamespace(server.account_id, server.namespace_id, wrong,
                                   base_url=server.base_url, budget=None)
    with pytest.raises(KVError) as info:
        client.get("k")
    assert info.value.code == 10000 and info.value.status in (400, 401, 403)
    assert wrong not in str(info.value) and wrong not in repr(client)
    assert sent(server) == 1  # an auth failure is not retried


@pytest.mark.parametrize("wrong", ["account", "namespace"])
def test_wrong_account_or_namespace(server, wrong):
    ids = {"account_id": server.account_id, "namespace_id": server.namespace_id}
    ids[f"{wrong}_id"] = "no-such-id"
    client = CloudflareKVNamespace(**ids, api_token=server.api_token, base_url=server.base_url,
                                   budget=None)
    for call in (lambda: client.put("k", b"v"), lambda: client.get("k"), client.list):
        with pytest.raises(KVError) as info:
            call()
        assert info.value.code in (10013, 7003) and info.value.status == 404


def test_budget_exhausted_sends_nothing(server):
    client = connect(server, budget=RequestBudget(3, 60, burst=3))
    for _ in range(3):
        client.get("k")
    with pytest.raises(BudgetExhausted) as info:
        client.get("k")
    assert isinstance(info.value, KVError)
    assert sent(server) == 3


def test_budget_exhausted_needs_no_backend_import():
    """The cache catches it without importing the REST backend; the old name still works."""
    assert base.BudgetExhausted is BudgetExhausted and issubclass(BudgetExhausted, KVError)
    assert cloudflare.RequestBudget is RequestBudget and "BudgetExhausted" in cloudflare.__all__


def test_bulk_call_pays_up_front(server):
    client = connect(server, budget=RequestBudget(2, 60, burst=2))
    with pytest.raises(BudgetExhausted):
        client.bulk_get([f"k{i}" for i in range(250)])  # three requests
    assert sent(server) == 0
    assert client.bulk_get([f"k{i}" for i in range(200)]) == {f"k{i}": None for i in range(200)}
    assert sent(server) == 2


def test_budget_refills_over_time(server):
    budget = RequestBudget(4, 1.0, burst=2)
    client = connect(server, budget=budget)
    client.get("k")
    client.get("k")
    with pytest.raises(BudgetExhausted):
        client.get("k")
    time.sleep(0.6)  # (4 - 2) tokens per second: one is back
    assert budget.remaining() >= 1
    client.get("k")
    assert sent(server) == 3


def test_budget_reserve_is_kept_for_work_that_must_happen():
    budget = RequestBudget(40, 60, burst=8)  # reserve: a quarter of the burst
    assert budget.reserve == 2 and budget.spare(6) and not budget.spare(7)
    assert budget.try_acquire(6) and not budget.spare()  # optional work stops here...
    assert budget.try_acquire(2)  # ...and the sweeps still get the reserve
    with pytest.raises(ValueError, match="reserve must be below burst=8, got 8"):
        RequestBudget(40, 60, burst=8, reserve=8)
    with pytest.raises(ValueError, match="reserve"):
        RequestBudget(reserve=-1)


def test_request_budget_is_a_thread_safe_bucket():
    budget = RequestBudget(500, 3600, burst=500)
    assert not budget.try_acquire(501) and budget.try_acquire(0)
    granted = []

    def worker():
        granted.append(sum(budget.try_acquire() for _ in range(100)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 500 and budget.remaining() < 1
    with pytest.raises(ValueError):
        RequestBudget(0, 1)


def test_budget_never_exceeds_capacity_in_any_window(monkeypatch):
    """Greedy use over 15 simulated minutes: no 300 s window sees more than 1,200 requests."""
    clock = [1000.0]
    monkeypatch.setattr("peewee_kvcache.kv.budget.time.monotonic", lambda: clock[0])
    budget = RequestBudget(1200, 300)
    grants = []
    for step in range(9000):
        clock[0] = 1000.0 + step * 0.1
        while budget.try_acquire():
            grants.append(clock[0])
    window = [sum(1 for g in grants if start <= g < start + 300) for start in
              (1000.0 + i for i in range(0, 600, 5))]
    assert max(window) <= 1200
    assert max(window) >= 1150          # and the budget is actually usable
    with pytest.raises(ValueError, match="burst"):
        RequestBudget(10, 1, burst=20)


def test_default_budget_is_1200_per_5_minutes(server):
    client = CloudflareKVNamespace("a", "n", TOKEN, base_url=server.base_url)
    assert (client.budget.capacity, client.budget.period) == (1200, 300)


@pytest.mark.parametrize("url", ["http://api.cloudflare.com/client/v4", "http://10.0.0.1/x",
                                 "ftp://127.0.0.1/x", "api.cloudflare.com/client/v4",
                                 "http://localhost.evil.example/x"])
def test_plain_http_only_to_loopback(url):
    with pytest.raises(ValueError, match=url.replace(".", r"\.")):
        CloudflareKVNamespace("a", "n", TOKEN, base_url=url)


@pytest.mark.parametrize("url", ["https://api.cloudflare.com/client/v4/", "http://localhost:8787",
                                 "http://127.9.0.1/v4", "http://[::1]:1/v4"])
def test_accepted_base_urls(url):
    client = CloudflareKVNamespace("a", "n", TOKEN, base_url=url)
    assert client.base_url == url.rstrip("/")


def test_from_env(monkeypatch, server):
    for name in ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_KV_NAMESPACE_ID",
                 "CLOUDFLARE_API_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError) as info:
        CloudflareKVNamespace.from_env()
    for name in ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_KV_NAMESPACE_ID"):
        assert name in str(info.value)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", server.account_id)
    with pytest.raises(ValueError) as info:
        CloudflareKVNamespace.from_env()
    assert "CLOUDFLARE_KV_NAMESPACE_ID" in str(info.value) and TOKEN not in str(info.value)
    assert "CLOUDFLARE_API_TOKEN" not in str(info.value)
    monkeypatch.setenv("CLOUDFLARE_KV_NAMESPACE_ID", server.namespace_id)
    monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", server.base_url)
    client = CloudflareKVNamespace.from_env(budget=None)
    client.put("k", b"v")
    assert client.get("k") == b"v" and client.base_url == server.base_url
    assert CloudflareKVNamespace.from_env(base_url="https://x.example").base_url == \
        "https://x.example"
    client.close()


def test_token_never_leaks(server, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    client = connect(server)
    failures = []
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    client.put("k", b"v", metadata={"m": 1})
    client.get_with_metadata("k")
    server.inject(Fault("status", status=503, times=1))
    client.get("k")
    server.inject(Fault("drop", times=1))
    client.list()
    server.inject(Fault("status", status=500))
    with pytest.raises(KVError) as info:
        client.get("k")
    failures.append(info.value)
    server.clear_faults()
    server.inject(Fault("malformed"))
    with pytest.raises(KVError) as info:
        client.list()
    failures.append(info.value)
    server.clear_faults()
    other = CloudflareKVNamespace(server.account_id, "other", TOKEN, base_url=server.base_url,
                                  budget=None)
    with pytest.raises(KVError) as info:
        other.get("k")
    failures.append(info.value)
    server.inject(Fault("timeout", delay=1))
    with pytest.raises(KVError) as info:
        connect(server, timeout=(1, 0.2), retries=0).get("k")
    failures.append(info.value)
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert any(r.name == "peewee_kvcache.kv.transport" for r in caplog.records)
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    for exc in failures:
        shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        assert TOKEN not in shown and TOKEN not in repr(exc.args)
        assert exc.__cause__ is None and exc.__context__ is None  # no requests error attached


def test_repr_shows_ids_not_token(client, server):
    text = repr(client)
    assert server.account_id in text and server.namespace_id in text and server.base_url in text
    assert TOKEN not in text


def test_api_token_must_be_one_header_value():
    for bad in ("", "abc\n", "a b"):
        with pytest.raises(ValueError) as info:
            CloudflareKVNamespace("a", "n", bad)
        assert bad.strip() == "" or bad.strip() not in str(info.value)
