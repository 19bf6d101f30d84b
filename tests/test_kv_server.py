"""KVServer answers Cloudflare's Workers KV REST API over real HTTP: endpoints, limits, error
envelopes, auth, faults, counts, rate limit and the ``serve-kv`` command. No mocks: every test
talks to a running server with ``requests`` (or ``http.client`` where requests cannot lie about a
body's length)."""
from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import quote

import pytest
import requests

from peewee_kvcache.kv import codes, limits
from peewee_kvcache.testing import ENDPOINTS, Fault, KVServer

TOKEN = "test-token-7Qx9"
REPO = Path(__file__).resolve().parents[1]
OK = {"success": True, "errors": [], "messages": [], "result": None}


class Api:
    """A session on one server's namespace root, with the bearer token set."""

    def __init__(self, server: KVServer) -> None:
        self.server = server
        self.root = (f"{server.base_url}/accounts/{server.account_id}/storage/kv/namespaces/"
                     f"{server.namespace_id}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.api_token}"

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.root + path, **kwargs)

    def admin(self, method: str, name: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.server.admin_url}/{name}", timeout=10,
                                    **kwargs)

    def put(self, key: str, value: bytes = b"v", **kwargs: Any) -> requests.Response:
        return self("PUT", "/values/" + quote(key, safe=""), data=value, **kwargs)

    def get(self, key: str, **kwargs: Any) -> requests.Response:
        return self("GET", "/values/" + quote(key, safe=""), **kwargs)


@pytest.fixture
def server(tmp_path) -> Iterator[KVServer]:
    with KVServer(tmp_path / "kv", api_token=TOKEN) as srv:
        yield srv


@pytest.fixture
def api(server) -> Iterator[Api]:
    client = Api(server)
    yield client
    client.session.close()


def assert_ok(response: requests.Response, result: Any = None) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    body.pop("result_info", None)  # list's; checked where it matters
    assert body == {**OK, "result": result}


def assert_error(response: requests.Response, status: int, code: int,
                 message: Optional[str] = None) -> None:
    """The exact error envelope Cloudflare sends, with its HTTP status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "errors", "messages", "result"}
    assert (body["success"], body["messages"], body["result"]) == (False, [], None)
    assert [error["code"] for error in body["errors"]] == [code]
    assert isinstance(body["errors"][0]["message"], str) and body["errors"][0]["message"]
    if message is not None:
        assert body["errors"][0]["message"] == message


# --- single-key endpoints ---------------------------------------------------------------------

def test_put_get_delete_raw_bytes(api):
    value = bytes(range(256)) + b"\r\n\r\n--x\r\n"
    assert_ok(api.put("k", value))
    got = api.get("k")
    assert got.status_code == 200
    assert got.content == value
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert "expiration" not in got.headers
    assert_ok(api("GET", "/metadata/k"), None)
    assert_ok(api("DELETE", "/values/k"))
    assert_error(api.get("k"), 404, 10009, "get: 'key not found'")
    assert_ok(api("DELETE", "/values/k"))  # deleting a missing key is fine, as in KV


def test_missing_key_on_get_and_metadata(api):
    assert_error(api.get("nope"), 404, 10009, "get: 'key not found'")
    assert_error(api("GET", "/metadata/nope"), 404, 10009)


def test_expiration_header_and_ttl_precedence(api):
    now = int(time.time())
    assert_ok(api.put("ttl", params={"expiration_ttl": 120}))
    assert now + 120 <= int(api.get("ttl").headers["expiration"]) <= now + 122
    assert_ok(api.put("abs", params={"expiration": now + 3600}))
    assert api.get("abs").headers["expiration"] == str(now + 3600)
    assert_ok(api.put("both", params={"expiration": now + 3600, "expiration_ttl": 300}))
    assert int(api.get("both").headers["expiration"]) <= now + 302
    assert_ok(api.put("blank", params={"expiration": "", "expiration_ttl": ""}))
    assert "expiration" not in api.get("blank").headers


def test_multipart_put_with_metadata(api, server):
    value = b"\x00binary\r\nwith\nline\rends\xff\r"
    metadata = {"tables": ["a", "b"], "n": 1, "ünï": None}
    files = [("value", (None, value, "application/octet-stream")),
             ("metadata", (None, json.dumps(metadata), "application/json"))]
    assert_ok(api("PUT", "/values/m", files=files, params={"expiration_ttl": 600}))
    assert api.get("m").content == value
    assert_ok(api("GET", "/metadata/m"), metadata)
    assert server.namespace.get_with_metadata("m").metadata == metadata
    assert_ok(api("PUT", "/values/m", files={"value": (None, b"only value")}))
    assert api.get("m").content == b"only value"
    assert_ok(api("GET", "/metadata/m"), None)  # a put replaces value and metadata together


def test_multipart_errors(api):
    assert_error(api("PUT", "/values/m", files={"metadata": (None, "{}")}), 400,
                 codes.ERR_MALFORMED_REQUEST)
    bad_json = [("value", (None, b"v")), ("metadata", (None, "{not json"))]
    assert_error(api("PUT", "/values/m", files=bad_json), 400, codes.ERR_INVALID_METADATA)
    too_big = [("value", (None, b"v")), ("metadata", (None, json.dumps({"x": "y" * 1100})))]
    assert_error(api("PUT", "/values/m", files=too_big), 413, codes.ERR_INVALID_METADATA)
    assert api.get("m").status_code == 404


@pytest.mark.parametrize("key", ["a/b", "what?x=1&y", "100%", "100%25", "with space", "plus+sign",
                                 "ünï/☃ key", "#frag", "a/../b", "%", "..."])
def test_percent_encoded_keys_decoded_once(api, server, key):
    assert_ok(api.put(key, key.encode()))
    assert api.get(key).content == key.encode()
    assert server.namespace.get(key) == key.encode()
    assert [entry["name"] for entry in api("GET", "/keys").json()["result"]] == [key]
    assert_ok(api("GET", "/metadata/" + quote(key, safe="")), None)
    assert_ok(api("DELETE", "/values/" + quote(key, safe="")))
    assert server.namespace.get(key) is None


def test_unencoded_slash_in_key_finds_no_route(api):
    assert_error(api("PUT", "/values/a/b", data=b"v"), 400, 7000)


def test_raw_utf8_key_bytes_read_as_utf8(server):
    """Bytes the client did not percent-encode are UTF-8 too (http.client cannot send them)."""
    server.namespace.put("ü+é", b"v")
    path = (f"/client/v4/accounts/{server.account_id}/storage/kv/namespaces/"
            f"{server.namespace_id}/values/")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + "ü+%C3%A9".encode() + b" HTTP/1.1\r\n"
                     b"Host: x\r\nConnection: close\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\n\r\n")
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nv")


@pytest.mark.parametrize("encoded", ["%2E", "%2E%2E", "%FF%FE"])
def test_illegal_key_names(api, encoded):
    assert_error(api("PUT", "/values/" + encoded, data=b"v"), 400, codes.ERR_ILLEGAL_KEY)
    assert_error(api("GET", "/values/" + encoded), 400, codes.ERR_ILLEGAL_KEY)


def test_key_length_limit(api):
    assert_ok(api.put("é" * 256))  # 512 UTF-8 bytes
    assert_error(api.put("é" * 256 + "x"), 414, codes.ERR_KEY_TOO_LONG)
    assert_error(api.get("k" * 513), 414, codes.ERR_KEY_TOO_LONG)


def test_value_too_large(api):
    assert_error(api.put("big", b"\0" * (limits.MAX_VALUE_BYTES + 1)), 413,
                 codes.ERR_PAYLOAD_TOO_LARGE)
    assert api.get("big").status_code == 404


def test_expiration_errors(api):
    assert_error(api.put("k", params={"expiration_ttl": 30}), 400,
                 codes.ERR_INVALID_EXPIRATION_TTL,
                 "Invalid expiration_ttl of 30. Expiration TTL must be at least 60.")
    assert_error(api.put("k", params={"expiration_ttl": "soon"}), 400,
                 codes.ERR_INVALID_EXPIRATION_TTL)
    assert_error(api.put("k", params={"expiration": int(time.time()) - 5}), 400,
                 codes.ERR_INVALID_EXPIRATION)
    assert_error(api.put("k", params={"expiration": int(time.time()) + 30}), 400,
                 codes.ERR_INVALID_EXPIRATION)
    assert api.get("k").status_code == 404


def test_declared_body_over_limit_is_refused_unread(server):
    path = (f"/client/v4/accounts/{server.account_id}/storage/kv/namespaces/"
            f"{server.namespace_id}/bulk")
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.putrequest("PUT", path)
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(limits.BULK_REQUEST_MAX_BYTES + 1))
        conn.endheaders()  # no body is sent: the server must answer from the headers alone
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413
    assert response.getheader("Connection") == "close"
    assert body["errors"][0]["code"] == codes.ERR_PAYLOAD_TOO_LARGE


# --- auth and routing -------------------------------------------------------------------------

@pytest.mark.parametrize("header, status", [(None, 401), ("Bearer", 401), (f"Basic {TOKEN}", 401),
                                            ("Bearer wrong-token", 403),
                                            (f"Bearer {TOKEN}x", 403)])
def test_authentication_errors(api, header, status):
    headers = {"Authorization": header}  # None removes the session's header
    assert_error(api.get("k", headers=headers), status, 10000, "Authentication error")
    assert_error(api.admin("GET", "counts", headers=headers), status, 10000)


def test_token_is_never_logged(api, caplog):
    caplog.set_level(logging.DEBUG, logger="peewee_kvcache.testing")
    api.put("k")
    api.get("k", headers={"Authorization": "Bearer wrong-token"})
    assert "GET" in caplog.text
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text


def test_wrong_account_namespace_and_unknown_route(api, server):
    base = f"{server.base_url}/accounts"
    path = "/storage/kv/namespaces"
    bad_account = api.session.get(f"{base}/other{path}/{server.namespace_id}/values/k", timeout=10)
    assert_error(bad_account, 404, 7003)
    assert "perhaps your object identifier is invalid" in bad_account.json()["errors"][0]["message"]
    assert_error(api.session.get(f"{base}/{server.account_id}{path}/other/values/k", timeout=10),
                 404, 10013)
    assert_error(api("GET", "/nothing"), 400, 7000)
    assert_error(api("POST", "/values/k"), 400, 7000)
    assert_error(api("PATCH", "/keys"), 400, 7000)
    assert_error(api.session.get(f"{server.base_url}/user", timeout=10), 400, 7000)


# --- bulk endpoints ---------------------------------------------------------------------------

def test_bulk_put_text_base64_expiry_metadata(api, server):
    now = int(time.time())
    items = [{"key": "text", "value": "héllo"},
             {"key": "bin", "value": base64.b64encode(b"\x00\xff").decode(), "base64": True},
             {"key": "ttl", "value": "t", "expiration_ttl": 120, "metadata": {"m": 1}},
             {"key": "abs", "value": "a", "expiration": now + 999}]
    assert_ok(api("PUT", "/bulk", json=items), {"successful_key_count": 4, "unsuccessful_keys": []})
    assert api.get("text").content == "héllo".encode()
    assert api.get("bin").content == b"\x00\xff"
    assert_ok(api("GET", "/metadata/ttl"), {"m": 1})
    assert api.get("abs").headers["expiration"] == str(now + 999)
    listed = {entry["name"]: entry for entry in api("GET", "/keys").json()["result"]}
    assert listed["text"] == {"name": "text"}
    assert listed["abs"] == {"name": "abs", "expiration": now + 999}
    assert listed["ttl"]["metadata"] == {"m": 1} and listed["ttl"]["expiration"] >= now + 120


@pytest.mark.parametrize("body, code", [
    (b"not json", codes.ERR_MALFORMED_REQUEST),
    (b'{"key": "k", "value": "v"}', codes.ERR_MALFORMED_REQUEST),
    (b'[{"key": "k", "value": 1}]', codes.ERR_MALFORMED_REQUEST),
    (b'[{"key": "k", "value": "@@", "base64": true}]', codes.ERR_MALFORMED_REQUEST),
    (b'[{"key": "ok", "value": "v"}, {"key": "..", "value": "v"}]', codes.ERR_ILLEGAL_KEY),
    (b'[{"key": "ok", "value": "v"}, {"key": "k", "value": "v", "expiration_ttl": 30}]',
     codes.ERR_INVALID_EXPIRATION_TTL),
])
def test_bulk_put_rejects_the_whole_request(api, body, code):
    assert_error(api("PUT", "/bulk", data=body), 400, code)
    assert api.get("ok").status_code == 404


def test_bulk_delete_and_legacy_route(api, server):
    for key in ("a", "b", "c"):
        server.namespace.put(key, b"v")
    assert_ok(api("POST", "/bulk/delete", json=["a", "missing"]),
              {"successful_key_count": 2, "unsuccessful_keys": []})
    assert_ok(api("DELETE", "/bulk", json=["b"]),
              {"successful_key_count": 1, "unsuccessful_keys": []})
    assert [entry["name"] for entry in api("GET", "/keys").json()["result"]] == ["c"]
    assert_error(api("POST", "/bulk/delete", json={"keys": ["c"]}), 400,
                 codes.ERR_MALFORMED_REQUEST)
    assert_error(api("POST", "/bulk/delete", json=["c", 7]), 400, codes.ERR_ILLEGAL_KEY)


def test_bulk_get_text_json_and_metadata(api, server):
    server.namespace.put("t", "tëxt".encode())
    server.namespace.put("j", b'{"a": [1, 2]}', metadata={"m": True}, expiration_ttl=300)
    server.namespace.put("bad", b"\xff\xfe")
    text = api("POST", "/bulk/get", json={"keys": ["t", "j", "missing", "bad"]})
    assert_ok(text, {"values": {"t": "tëxt", "j": '{"a": [1, 2]}', "missing": None,
                                "bad": "\ufffd\ufffd"}})
    as_json = api("POST", "/bulk/get", json={"keys": ["j", "missing"], "type": "json"})
    assert_ok(as_json, {"values": {"j": {"a": [1, 2]}, "missing": None}})
    with_meta = api("POST", "/bulk/get", json={"keys": ["t", "j", "missing"],
                                                "withMetadata": True}).json()["result"]["values"]
    assert with_meta["t"] == {"value": "tëxt", "metadata": None}
    assert with_meta["j"]["metadata"] == {"m": True} and with_meta["j"]["expiration"] > time.time()
    assert with_meta["missing"] is None
    assert_error(api("POST", "/bulk/get", json={"keys": ["t"], "type": "json"}), 400,
                 codes.ERR_MALFORMED_REQUEST)
    for bad in ({"keys": "t"}, ["t"], {"keys": ["t"], "type": "arrayBuffer"},
                {"keys": ["t"], "withMetadata": "yes"}):
        assert_error(api("POST", "/bulk/get", json=bad), 400, codes.ERR_MALFORMED_REQUEST)


def test_bulk_item_count_limits(api, server):
    too_many = limits.BULK_WRITE_MAX_ITEMS + 1
    response = api("PUT", "/bulk", json=[{"key": f"k{i}", "value": ""} for i in range(too_many)])
    assert_error(response, 400, codes.ERR_MALFORMED_REQUEST,
                 "bulk put: 'received 10001 key/value pairs, but max allowed per request is: "
                 "10000'")
    assert server.namespace.list(limit=10).keys == []
    assert_error(api("POST", "/bulk/delete", json=[f"k{i}" for i in range(too_many)]), 400,
                 codes.ERR_MALFORMED_REQUEST)
    assert_ok(api("POST", "/bulk/delete", json=[f"k{i}" for i in range(too_many - 1)]),
              {"successful_key_count": 10_000, "unsuccessful_keys": []})
    assert_error(api("POST", "/bulk/get", json={"keys": [f"k{i}" for i in range(101)]}), 400,
                 codes.ERR_MALFORMED_REQUEST)


# --- list -------------------------------------------------------------------------------------

def test_list_paginates_2500_keys_in_order(api, server):
    keys = [f"p:{i:05d}" for i in range(2500)]
    items = [{"key": key, "value": ""} for key in keys] + [{"key": "q:other", "value": ""},
                                                           {"key": "p", "value": ""}]
    assert_ok(api("PUT", "/bulk", json=items), {"successful_key_count": 2502,
                                                "unsuccessful_keys": []})
    seen, cursor, pages = [], None, []
    while True:
        params = {"prefix": "p:", "limit": 1000, **({"cursor": cursor} if cursor else {})}
        body = api("GET", "/keys", params=params).json()
        assert body["success"] is True
        assert body["result_info"]["count"] == len(body["result"])
        pages.append(len(body["result"]))
        seen.extend(entry["name"] for entry in body["result"])
        cursor = body["result_info"]["cursor"]
        if not cursor:
            assert cursor == ""
            break
    assert pages == [1000, 1000, 500]
    assert seen == keys
    default = api("GET", "/keys").json()
    assert len(default["result"]) == 1000 and default["result_info"]["cursor"]


@pytest.mark.parametrize("limit", [9, 1001, "ten", -1])
def test_list_limit_bounds(api, limit):
    assert_error(api("GET", "/keys", params={"limit": limit}), 400, codes.ERR_INVALID_LIMIT)


def test_list_limit_edges_and_bad_cursor(api):
    assert_ok(api("GET", "/keys", params={"limit": 10}), [])
    assert api("GET", "/keys", params={"limit": 10}).json()["result_info"] == {"count": 0,
                                                                                "cursor": ""}
    assert_ok(api("GET", "/keys", params={"limit": 1000}), [])
    assert_error(api("GET", "/keys", params={"cursor": "not-a-cursor!"}), 400,
                 codes.ERR_INVALID_CURSOR)


# --- faults -----------------------------------------------------------------------------------

def test_latency_fault_then_normal_answer(api, server):
    server.inject(Fault("latency", delay=0.3, times=1))
    started = time.monotonic()
    assert_error(api.get("k"), 404, 10009)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    api.get("k")
    assert time.monotonic() - started < 0.3


def test_status_fault_counts_down_and_targets_one_endpoint(api, server):
    server.inject(Fault("status", endpoint="get", times=2, status=503))
    assert_ok(api.put("k"))  # other endpoints are untouched
    assert_error(api.get("k"), 503, 503, "Injected fault: HTTP 503")
    assert_error(api.get("k"), 503, 503)
    assert api.get("k").status_code == 200
    assert server.counts()["get"] == 3


def test_rate_limit_fault(api, server):
    server.inject(Fault("rate_limit", retry_after=7))
    response = api.get("k")
    assert_error(response, 429, 971)
    assert response.headers["Retry-After"] == "7"
    server.clear_faults()
    assert_error(api.get("k"), 404, 10009)


def test_timeout_fault(api, server):
    server.inject(Fault("timeout", delay=2.0, times=1))
    with pytest.raises(requests.ReadTimeout):
        api.get("k", timeout=0.3)
    server.inject(Fault("timeout", delay=0.1, times=1))
    with pytest.raises(requests.ConnectionError):  # closed without an answer
        api.get("k", timeout=5)
    assert_error(api.get("k"), 404, 10009)


def test_drop_fault(api, server):
    assert_ok(api.put("k"))  # a pooled keep-alive connection now exists
    server.inject(Fault("drop", endpoint="get", times=1))
    with pytest.raises(requests.ConnectionError):
        api.get("k")
    assert api.get("k").content == b"v"


def test_malformed_fault(api, server):
    assert_ok(api.put("k", b"0123456789"))
    server.inject(Fault("malformed", times=2))
    listed = api("GET", "/keys")
    assert listed.status_code == 200
    with pytest.raises(ValueError):
        listed.json()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # value shorter than announced
        api.get("k")
    assert api.get("k").content == b"0123456789"


def test_fault_validation():
    for bad in (dict(kind="explode"), dict(kind="drop", endpoint="values"),
                dict(kind="drop", times=0), dict(kind="status", status=200),
                dict(kind="latency", delay=-1), dict(kind="rate_limit", retry_after=-1)):
        with pytest.raises(ValueError):
            Fault(**bad)


# --- admin API and counts ---------------------------------------------------------------------

def test_counts_every_endpoint(api, server):
    assert server.counts() == dict.fromkeys(ENDPOINTS, 0)
    api.put("k")
    api.get("k")
    api("GET", "/metadata/k")
    api("PUT", "/bulk", json=[])
    api("POST", "/bulk/get", json={"keys": ["k"]})
    api("GET", "/keys")
    api("POST", "/bulk/delete", json=[])
    api("DELETE", "/bulk", json=[])
    api("DELETE", "/values/k")
    api.get("k", headers={"Authorization": "Bearer wrong"})  # refused requests count too
    api("GET", "/nothing")  # no endpoint, not counted
    api.admin("GET", "counts")  # admin calls are not counted
    assert server.counts() == {"get": 2, "metadata": 1, "put": 1, "delete": 1, "bulk_put": 1,
                               "bulk_delete": 2, "bulk_get": 1, "list": 1}
    assert_ok(api.admin("GET", "counts"), server.counts())
    server.reset_counts()
    assert server.counts() == dict.fromkeys(ENDPOINTS, 0)


def test_admin_faults_counts_and_reset_over_http(api, server):
    fault = {"kind": "status", "endpoint": "list", "times": 1, "status": 502}
    assert_ok(api.admin("POST", "faults", json=fault),
              {**fault, "delay": 0.0, "retry_after": 1})
    assert_error(api("GET", "/keys"), 502, 502)
    assert_ok(api("GET", "/keys"), [])
    assert_ok(api.admin("POST", "faults", json={"kind": "drop"}), {
        "kind": "drop", "endpoint": None, "times": None, "status": 500, "delay": 0.0,
        "retry_after": 1})
    assert_ok(api.admin("GET", "counts"), {**dict.fromkeys(ENDPOINTS, 0), "list": 2})
    assert_ok(api.admin("DELETE", "faults"))
    assert_ok(api.put("k"))
    server.inject(Fault("drop"))
    assert_ok(api.admin("POST", "reset"))  # clears faults, counts and data
    assert server.counts() == dict.fromkeys(ENDPOINTS, 0)
    assert_error(api.get("k"), 404, 10009)
    for bad in ({"kind": "explode"}, {"kind": "drop", "bogus": 1}, [1]):
        assert_error(api.admin("POST", "faults", json=bad), 400, codes.ERR_MALFORMED_REQUEST)
    assert_error(api.admin("POST", "faults", data=b"{oops"), 400, codes.ERR_MALFORMED_REQUEST)
    assert_error(api.admin("GET", "nothing"), 400, 7000)


# --- rate limit, binding, CLI -----------------------------------------------------------------

def test_rate_limit(tmp_path):
    with KVServer(tmp_path / "kv", api_token=TOKEN, rate_limit=(5, 60)) as server:
        api = Api(server)
        for _ in range(5):
            assert_error(api.get("k"), 404, 10009)
        refused = api.get("k")
        assert_error(refused, 429, 971)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert_error(api.put("k"), 429, 971)  # every call, writes included
        assert_ok(api.admin("GET", "counts"), {**dict.fromkeys(ENDPOINTS, 0), "get": 6, "put": 1})
        assert_ok(api.admin("POST", "reset"))  # also empties the rate-limit window
        assert_error(api.get("k"), 404, 10009)
        api.session.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_binds_to_loopback_only(tmp_path, host):
    with pytest.raises(ValueError):
        KVServer(tmp_path / "kv", host=host)


def test_python_api_properties(tmp_path):
    server = KVServer(tmp_path / "kv", port=0, account_id="acc", namespace_id="ns")
    with server:
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}/client/v4"
        assert server.admin_url == f"http://127.0.0.1:{server.port}/__admin"
        assert (server.account_id, server.namespace_id, server.api_token) == (
            "acc", "ns", "local-dev-token")
        server.namespace.put("k", b"v")
        response = requests.get(f"{server.base_url}/accounts/acc/storage/kv/namespaces/ns/values/k",
                                headers={"Authorization": "Bearer local-dev-token"}, timeout=10)
        assert response.content == b"v"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_kv_subprocess_until_sigterm(tmp_path):
    port = _free_port()
    env = {**os.environ, "PEEWEE_KVCACHE_SERVER_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "peewee_kvcache", "serve-kv", "--port", str(port),
               "--data", str(tmp_path / "kv"), "--account-id", "acc", "--namespace-id", "ns",
               "--rate-limit", "100/60"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        base_url = f"http://127.0.0.1:{port}/client/v4"
        assert base_url in line and "acc" in line and "ns" in line and TOKEN not in line
        root = f"{base_url}/accounts/acc/storage/kv/namespaces/ns"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.put(f"{root}/values/k%2F1", data=b"v", headers=headers,
                            timeout=10).json()["success"] is True
        assert requests.get(f"{root}/values/k%2F1", headers=headers, timeout=10).content == b"v"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert TOKEN not in process.stdout.read() + process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


# --- the public home: peewee_kvcache.testing and its pytest plugin ----------------------------

PLUGIN_USER_TESTS = '''
from peewee_kvcache import CloudflareKVNamespace
from peewee_kvcache.kv.base import KVError
from peewee_kvcache.testing import Fault, KVServer

seen = []


def test_a_started_server(kv_server):
    assert isinstance(kv_server, KVServer) and not kv_server.stopping
    kv = CloudflareKVNamespace(kv_server.account_id, kv_server.namespace_id, kv_server.api_token,
                               base_url=kv_server.base_url, budget=None)
    kv.put("k", b"v")
    kv_server.inject(Fault("status", endpoint="get", status=503, times=1))
    try:
        kv.get("k")
    except KVError as exc:
        assert exc.status == 503
    else:
        raise AssertionError("the fault was not injected")
    assert kv.get("k") == b"v"
    kv.close()
    seen.append(kv_server)


def test_each_test_gets_its_own_empty_server(kv_server):
    assert seen and seen[0].stopping and kv_server is not seen[0]
    assert kv_server.namespace.get("k") is None
    assert sum(kv_server.counts().values()) == 0
'''


def test_pytest_plugin_gives_users_a_kv_server_fixture(tmp_path):
    """What the README tells users to do: enable the plugin in a conftest, use ``kv_server``."""
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["peewee_kvcache.testing.pytest_plugin"]\n')
    (tmp_path / "test_app.py").write_text(PLUGIN_USER_TESTS)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_app.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
