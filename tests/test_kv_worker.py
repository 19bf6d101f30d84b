"""The KV gateway Worker in workerd (through Miniflare) and its Python client, over real HTTP.

The contract every namespace passes is in test_kv_cloudflare.py (its ``worker`` parameter); here
is what only the gateway has: signed requests (missing, wrong, stale, replayed, rotated secrets),
KV's limits checked by the Worker with Cloudflare's codes, the per-invocation operation limit
(partial work continued to the end), one request per sweep, and KV's own failures.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import urlsplit

import pytest
import requests

from peewee_kvcache.kv import codes, signing
from peewee_kvcache.kv.base import KVError, KVPair
from peewee_kvcache.kv.worker import MAX_BODY_BYTES, CloudflareWorkerKVNamespace
from peewee_kvcache.testing.workerd import WorkerGateway, start_for_tests

SECRET = "gateway-secret-new-0123456789abcdef-XYZ"
PREVIOUS = "gateway-secret-old-0123456789abcdef-QRS"
WRONG = "gateway-secret-bad-0123456789abcdef-JKL"


@pytest.fixture(scope="module")
def gateway() -> Iterator[WorkerGateway]:
    worker = start_for_tests({"SECRET": SECRET, "SECRET_PREVIOUS": PREVIOUS})
    yield worker
    worker.stop()


@pytest.fixture
def ns(gateway) -> Iterator[CloudflareWorkerKVNamespace]:
    gateway.clear()
    namespace = gateway.namespace()
    yield namespace
    namespace.close()


def raw(gateway: WorkerGateway, method: str, path: str, body: Any = b"", *,
        secret: Optional[str] = SECRET, timestamp: Optional[float] = None,
        nonce: str = "", headers: Optional[Dict[str, str]] = None) -> requests.Response:
    """A request signed by hand (``secret=None``: unsigned), to send what the client never
    would."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = requests.Request(method, gateway.url + path, data=data).prepare()
    if secret is not None:
        stamp = str(int(time.time() if timestamp is None else timestamp))
        nonce = nonce or signing.secrets.token_urlsafe(18)
        request.headers.update({
            signing.TIMESTAMP: stamp, signing.NONCE: nonce,
            signing.SIGNATURE: signing.signature(secret.encode(), stamp, nonce, method,
                                                 request.path_url, data)})
    request.headers.update(headers or {})
    with requests.Session() as session:
        return session.send(request, timeout=30)


def error(response: requests.Response) -> tuple:
    body = response.json()
    assert body["success"] is False and body["result"] is None
    return response.status_code, body["errors"][0]["code"]


# --- authentication --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["unsigned", "wrong secret", "stale", "future", "bad signature",
                                  "missing nonce"])
def test_requests_not_signed_right_are_refused(gateway, case):
    now = time.time()
    kwargs: Dict[str, Any] = {
        "unsigned": dict(secret=None), "wrong secret": dict(secret=WRONG),
        "stale": dict(timestamp=now - 31), "future": dict(timestamp=now + 31),
        "bad signature": dict(headers={signing.SIGNATURE: "0" * 64}),
        "missing nonce": dict(headers={signing.NONCE: ""}),
    }[case]
    response = raw(gateway, "POST", "/v1/put", [{"key": "k", "value": "dg=="}], **kwargs)
    assert error(response) == (401, codes.ERR_AUTH)
    text = response.text
    assert SECRET not in text and WRONG not in text and PREVIOUS not in text
    signature = response.request.headers.get(signing.SIGNATURE)
    assert not signature or signature not in text
    assert raw(gateway, "POST", "/v1/get", {"keys": ["k"]}).json()["result"] == {
        "values": {"k": None}}  # nothing was written


def test_a_signature_covers_the_body(gateway):
    request = requests.Request("POST", gateway.url + "/v1/delete", data=b'["a"]').prepare()
    signing.SignedRequests(SECRET)(request)
    request.body = b'["b"]'
    with requests.Session() as session:
        assert error(session.send(request)) == (401, codes.ERR_AUTH)


def test_a_replayed_mutating_request_is_refused(gateway, ns):
    body = [{"key": "k", "value": "dg=="}]
    nonce = "replay-nonce-0123456789"
    assert raw(gateway, "POST", "/v1/put", body, nonce=nonce).status_code == 200
    ns.delete("k")
    again = raw(gateway, "POST", "/v1/put", body, nonce=nonce)
    assert error(again) == (401, codes.ERR_AUTH) and "replay" in again.text
    assert ns.get("k") is None
    # reads change nothing: the same nonce may come again (a retried read)
    for _ in range(2):
        assert raw(gateway, "POST", "/v1/get", {"keys": ["k"]}, nonce=nonce).status_code == 200


def test_the_previous_secret_is_accepted_while_rotating(gateway):
    for secret in (SECRET, PREVIOUS):
        client = CloudflareWorkerKVNamespace(gateway.url, secret, budget=None)
        client.put(f"by-{secret[:18]}", b"v")
        assert client.get(f"by-{secret[:18]}") == b"v"
    with pytest.raises(KVError) as info:
        CloudflareWorkerKVNamespace(gateway.url, WRONG).get("k")
    assert (info.value.status, info.value.code) == (401, codes.ERR_AUTH)


def test_a_gateway_without_secret_refuses_everything():
    worker = start_for_tests({})
    try:
        client = CloudflareWorkerKVNamespace(worker.url, SECRET)
        for call in (lambda: client.get("k"), client.list, lambda: client.put("k", b"v")):
            with pytest.raises(KVError) as info:
                call()
            assert (info.value.status, info.value.code) == (401, codes.ERR_AUTH)
            assert "no SECRET" in str(info.value)
    finally:
        worker.stop()


# --- KV's limits, checked by the Worker --------------------------------------------------------

BAD_BODIES = {
    "513-byte key": ("/v1/put", [{"key": "k" * 513, "value": ""}], 414, codes.ERR_KEY_TOO_LONG),
    "dot key": ("/v1/delete", ["ok", "."], 400, codes.ERR_ILLEGAL_KEY),
    "empty key": ("/v1/get", {"keys": [""]}, 400, codes.ERR_ILLEGAL_KEY),
    "1025-byte metadata": ("/v1/put", [{"key": "k", "value": "", "metadata": {"x": "a" * 1017}}],
                           413, codes.ERR_INVALID_METADATA),
    "ttl 30": ("/v1/put", [{"key": "k", "value": "", "expiration_ttl": 30}], 400,
               codes.ERR_INVALID_EXPIRATION_TTL),
    "expiration too soon": ("/v1/put", [{"key": "k", "value": "",
                                         "expiration": int(time.time()) + 30}],
                            400, codes.ERR_INVALID_EXPIRATION),
    "101 keys in a get": ("/v1/get", {"keys": [f"k{i}" for i in range(101)]}, 400,
                          codes.ERR_MALFORMED_REQUEST),
    "10,001 keys in a delete": ("/v1/delete", [f"k{i}" for i in range(10_001)], 400,
                                codes.ERR_MALFORMED_REQUEST),
    "not JSON": ("/v1/delete", b"[not json", 400, codes.ERR_MALFORMED_REQUEST),
    "not base64": ("/v1/put", [{"key": "k", "value": "%%%"}], 400, codes.ERR_MALFORMED_REQUEST),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_limits_are_refused_with_cloudflares_codes(gateway, ns, case):
    path, body, status, code = BAD_BODIES[case]
    assert error(raw(gateway, "POST", path, body)) == (status, code)
    assert ns.get("ok") is None and ns.get("k") is None  # nothing of a refused call was done


def test_list_limits(gateway):
    assert error(raw(gateway, "GET", "/v1/keys?limit=5")) == (400, codes.ERR_INVALID_LIMIT)
    assert error(raw(gateway, "GET", "/v1/keys?cursor=foreign")) == (400,
                                                                     codes.ERR_INVALID_CURSOR)


def test_a_value_over_25_mib_is_refused(gateway, ns):
    body = b'[{"key":"k","value":"' + b"A" * ((25 * 1024 * 1024 + 3) // 3 * 4) + b'"}]'
    assert error(raw(gateway, "POST", "/v1/put", body)) == (413, codes.ERR_PAYLOAD_TOO_LARGE)
    assert ns.get("k") is None


def test_an_oversized_request_is_refused_before_it_is_read(gateway):
    body = b"[" + b" " * MAX_BODY_BYTES + b"]"
    response = raw(gateway, "POST", "/v1/delete", body)
    assert error(response) == (413, codes.ERR_PAYLOAD_TOO_LARGE)
    assert str(MAX_BODY_BYTES) in response.json()["errors"][0]["message"]


def unended_chunked_post(gateway: WorkerGateway, headers: bytes, chunks: int) -> bytes:
    """The status line the Worker answers a chunked body with while the body is still being
    sent (``chunks`` MiB, never ended): what it answers before reading all of a body."""
    url = urlsplit(gateway.url)
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(b"POST /v1/delete HTTP/1.1\r\nHost: gateway\r\n"
                     b"Transfer-Encoding: chunked\r\n" + headers + b"\r\n")

        def send() -> None:
            try:
                for _ in range(chunks):
                    sock.sendall(b"100000\r\n" + b" " * 0x100000 + b"\r\n")
            except OSError:  # the Worker refused and closed: what the test expects
                pass

        threading.Thread(target=send, daemon=True).start()
        return sock.makefile("rb").readline()


def test_a_request_without_authentication_headers_is_refused_before_its_body_is_read(gateway):
    assert unended_chunked_post(gateway, b"", 1).startswith(b"HTTP/1.1 401")


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(gateway):
    """Without Content-Length, the Worker stops reading at MAX_BODY_BYTES: no body of any size
    is held in its 128 MB (the signature, checked after, cannot be valid here)."""
    headers = (f"{signing.TIMESTAMP}: {int(time.time())}\r\n{signing.NONCE}: "
               f"nonce-0123456789abcdef\r\n{signing.SIGNATURE}: {'0' * 64}\r\n").encode()
    chunks = MAX_BODY_BYTES // 0x100000 + 2
    assert unended_chunked_post(gateway, headers, chunks).startswith(b"HTTP/1.1 413")


def test_client_checks_its_arguments():
    with pytest.raises(ValueError, match="http://example.com"):
        CloudflareWorkerKVNamespace("http://example.com", SECRET)
    with pytest.raises(ValueError, match="got 5 characters"):
        CloudflareWorkerKVNamespace("https://x.example", "short")
    with pytest.raises(TypeError, match="secret must be a str, got bytes"):
        CloudflareWorkerKVNamespace("https://x.example", SECRET.encode())  # type: ignore
    with pytest.raises(ValueError, match="timeout"):
        CloudflareWorkerKVNamespace("https://x.example", SECRET, timeout=0)


# --- the operation limit, one request per sweep --------------------------------------------------

def entries(count: int, created: int) -> List[KVPair]:
    """``count`` entries under pkv:t:a: with a marker each under pkv:t:b: (pointing back)."""
    pairs = []
    for i in range(count):
        key = f"pkv:t:a:{i:04d}"
        pairs.append(KVPair(key, b"\x00entry", metadata={"c": created, "f": "x"}))
        pairs.append(KVPair(f"pkv:t:b:{i:04d}", b"1", metadata={"e": key, "c": created}))
    return pairs


def test_a_sweep_of_many_keys_is_one_request(ns, http_sent):
    assert ns.bulk_put(entries(300, created=1000)) == []
    ns.bulk_put([KVPair("pkv:t:b:fresh", b"1", metadata={"e": "pkv:t:a:0000", "c": 5000}),
                 KVPair("pkv:t:b:alien", b"1", metadata={"e": "other:key", "c": 1}),
                 KVPair("other:key", b"v")])
    http_sent.clear()
    assert ns.sweep({"pkv:t:b:": 2000}, scope="pkv:") == []
    assert http_sent == ["POST /v1/sweep"]
    left = {info.name for info in ns.list_all()}
    assert left == {"pkv:t:b:fresh", "other:key"}  # fresh kept, and nothing outside the scope


@pytest.fixture(scope="module")
def small_gateway() -> Iterator[WorkerGateway]:
    """A Worker allowed only 7 KV operations per invocation: every call is partial."""
    worker = start_for_tests({"SECRET": SECRET, "MAX_OPS": "7"})
    yield worker
    worker.stop()


def test_partial_work_is_continued_to_the_end(small_gateway, http_sent):
    client = small_gateway.namespace()
    small_gateway.clear()
    assert client.bulk_put(entries(20, created=1000)) == []  # 40 puts, 7 per request
    assert http_sent.count("POST /v1/put") == 6
    assert len(list(client.list_all())) == 40
    http_sent.clear()
    assert client.sweep({"pkv:t:b:": 2000}, scope="pkv:") == []
    assert http_sent.count("POST /v1/sweep") > 3  # continued where the limit stopped it
    assert list(client.list_all()) == []
    client.bulk_put([KVPair(f"k{i}", b"v") for i in range(10)])
    http_sent.clear()
    assert client.bulk_delete([f"k{i}" for i in range(10)]) == []
    assert http_sent.count("POST /v1/delete") == 2 and list(client.list_all()) == []


def test_a_partial_response_says_what_is_left(small_gateway):
    response = raw(small_gateway, "POST", "/v1/delete", [f"k{i}" for i in range(10)])
    result = response.json()["result"]
    assert result == {"successful_key_count": 7, "unsuccessful_keys": [],
                      "unattempted_keys": ["k7", "k8", "k9"]}


def test_a_worker_out_of_time_stops_and_the_client_continues(http_sent):
    """Past its time budget (TIME_BUDGET_MS, test-only: 5 s by default, well within the client's
    10 s wait) the Worker starts no new KV call and reports what is left, as at its operation
    limit. With a 1 ms budget each request makes one round of calls (time moves on only while
    the Worker waits for KV), so a 300-key sweep and a 600-key write take several requests."""
    worker = start_for_tests({"SECRET": SECRET, "TIME_BUDGET_MS": "1"})
    try:
        client = worker.namespace()
        assert client.bulk_put(entries(300, created=1000)) == []
        assert http_sent.count("POST /v1/put") > 1
        assert len(list(client.list_all())) == 600
        http_sent.clear()
        assert client.sweep({"pkv:t:b:": 2000}, scope="pkv:") == []
        assert http_sent.count("POST /v1/sweep") > 1
        assert list(client.list_all()) == []
    finally:
        worker.stop()


def test_delay_ms_holds_every_request():
    """The test-only DELAY_MS binding (the benchmark's distance to the gateway) delays each
    request, reads and writes alike, and changes nothing else."""
    worker = start_for_tests({"SECRET": SECRET, "DELAY_MS": "250"})
    try:
        client = worker.namespace()
        for call in (lambda: client.put("k", b"v"), lambda: client.get("k")):
            began = time.monotonic()
            call()
            assert time.monotonic() - began >= 0.25
        assert client.get("k") == b"v"
    finally:
        worker.stop()


# --- KV's own failures ---------------------------------------------------------------------------

def test_kv_refusing_a_write_is_reported_per_key(ns):
    """An expiry thousands of years ahead passes KV's documented limits (and ours) but the KV
    binding refuses it: the Worker reports those keys, writes the others."""
    far = 10**15
    assert ns.bulk_put([KVPair("ok", b"v"), KVPair("far", b"v", expiration=far)]) == ["far"]
    assert ns.get("ok") == b"v" and ns.get("far") is None
    with pytest.raises(KVError, match="refused the write of 'far'") as info:
        ns.put("far", b"v", expiration=far)
    assert info.value.status == 500


def test_secret_never_leaks(gateway, caplog):
    caplog.set_level(logging.DEBUG)
    client = gateway.namespace()
    failures = []
    assert SECRET not in repr(client) and SECRET not in str(client)
    client.put("k", b"v", metadata={"m": 1})
    client.get_with_metadata("k")
    for bad in (lambda: client.put("k", b"v", expiration=10**15),
                lambda: CloudflareWorkerKVNamespace(gateway.url, WRONG).get("k"),
                lambda: CloudflareWorkerKVNamespace("https://x.example", SECRET[:10])):
        with pytest.raises((KVError, ValueError)) as info:
            bad()
        failures.append(info.value)
    for record in caplog.records:
        assert SECRET not in record.getMessage() and WRONG not in record.getMessage()
    for exc in failures:
        shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        for secret in (SECRET, WRONG, SECRET[:10]):
            assert secret not in shown and secret not in repr(exc.args)
    assert SECRET not in repr(signing.SignedRequests(SECRET))


def test_from_env(monkeypatch, gateway):
    for name in ("PEEWEE_KVCACHE_WORKER_URL", "PEEWEE_KVCACHE_WORKER_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="PEEWEE_KVCACHE_WORKER_URL, PEEWEE_KVCACHE_WORKER_SECRET"):
        CloudflareWorkerKVNamespace.from_env()
    monkeypatch.setenv("PEEWEE_KVCACHE_WORKER_URL", gateway.url)
    monkeypatch.setenv("PEEWEE_KVCACHE_WORKER_SECRET", SECRET)
    client = CloudflareWorkerKVNamespace.from_env()
    client.put("env", b"v")
    assert client.get("env") == b"v" and client.url == gateway.url and client.budget is None


def test_a_sweep_that_makes_no_progress_is_an_error_not_a_loop():
    """The project's Worker always makes progress (its first round of KV calls always runs);
    a deployed Worker of another version that answered a sweep with the very request it was
    sent would hold the client forever: the client refuses it. The misbehaving gateway here is
    a plain HTTP server, since the real Worker cannot be made to do it."""
    import http.server

    class Stuck(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = json.dumps({"success": True, "errors": [], "messages": [],
                                 "result": {"done": False, "deleted_key_count": 0,
                                            "unsuccessful_keys": [], "next": body}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stuck)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = CloudflareWorkerKVNamespace(f"http://127.0.0.1:{server.server_port}", SECRET)
        with pytest.raises(KVError, match="no progress|the request it was sent"):
            client.sweep({"pkv:t:a:": 1}, scope="pkv:")
        client.close()
    finally:
        server.shutdown()
        server.server_close()
