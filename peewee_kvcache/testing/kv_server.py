"""KVServer: Cloudflare's Workers KV REST API served over real HTTP from a LocalKVNamespace.

Cloudflare cannot be reached from tests or a laptop, so the REST client, the cache and the CLI run
against this server: same paths, envelopes, limits, error codes and HTTP statuses (the checks are
``limits``' own, shared with the client). Tests also need the API's bad days, so faults and a rate
limit can be switched on from Python or over HTTP, and requests are counted per endpoint.
It binds to loopback only and never logs the API token.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import email.policy
import hmac
import json
import logging
import math
import os
import re
import socket
import socketserver
import threading
import time
from collections import deque
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import parse_qsl, unquote, unquote_to_bytes, urlsplit

from ..kv import codes, limits
from ..kv.base import KVError, KVPair
from ..kv.local import LocalKVNamespace
from ..kv.transport import is_loopback

log = logging.getLogger(__name__)

ENDPOINTS = ("get", "metadata", "put", "delete", "bulk_put", "bulk_delete", "bulk_get", "list")
FAULT_KINDS = ("latency", "status", "rate_limit", "timeout", "drop", "malformed")
ADMIN_PREFIX = "/__admin/"

_ROOT = re.compile(r"/client/v4/accounts/([^/]+)/storage/kv/namespaces/([^/]+)/(.+)")
_ROUTES = {
    ("GET", "values"): "get", ("PUT", "values"): "put", ("DELETE", "values"): "delete",
    ("GET", "metadata"): "metadata", ("PUT", "bulk"): "bulk_put",
    ("POST", "bulk/delete"): "bulk_delete", ("DELETE", "bulk"): "bulk_delete",
    ("POST", "bulk/get"): "bulk_get", ("GET", "keys"): "list",
}
# Largest body read per endpoint (a value plus multipart framing; KV's bulk request size; small
# JSON otherwise). A longer declared body is refused without reading it.
_BODY_LIMITS = {"put": limits.MAX_VALUE_BYTES + 64 * 1024,
                "bulk_put": limits.BULK_REQUEST_MAX_BYTES,
                "bulk_delete": limits.BULK_REQUEST_MAX_BYTES}
_SMALL_BODY = 1024 * 1024


@dataclasses.dataclass
class Fault:
    """A misbehaviour to inject; ``endpoint`` None hits every endpoint, ``times`` None never ends.

    latency: sleep ``delay``, then serve. status: answer ``status`` with an error envelope.
    rate_limit: 429, code 971, ``Retry-After: retry_after``. timeout: sleep ``delay`` without
    answering, then close. drop: close without a response. malformed: 200 with the body cut in
    half (JSON that does not parse; for ``get`` a value shorter than its Content-Length).
    """

    kind: str
    endpoint: Optional[str] = None
    times: Optional[int] = None
    status: int = 500
    delay: float = 0.0
    retry_after: int = 1

    def __post_init__(self) -> None:
        def whole(value: Any, low: int, high: int) -> bool:
            return type(value) is int and low <= value <= high

        problems = [
            (self.kind not in FAULT_KINDS, f"kind must be one of {FAULT_KINDS}"),
            (self.endpoint not in (None, *ENDPOINTS), f"endpoint must be None or in {ENDPOINTS}"),
            (self.times is not None and not whole(self.times, 1, 10**9), "times must be >= 1"),
            (not whole(self.status, 400, 599), "status must be an HTTP error status"),
            (type(self.delay) not in (int, float) or not 0 <= self.delay <= 3600,
             "delay must be 0-3600 seconds"),
            (not whole(self.retry_after, 0, 86400), "retry_after must be 0-86400 seconds"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(f"Fault {message}")


class _Route(NamedTuple):
    endpoint: str
    account: str
    namespace: str
    raw_key: Optional[str]


def _route(method: str, path: str) -> Optional[_Route]:
    """The endpoint addressed (ids unchecked), or None. A key is one path segment: the client
    must percent-encode ``/``, so a raw one finds no route."""
    match = _ROOT.fullmatch(path)
    if not match:
        return None
    account, namespace, rest = match.groups()
    operation, _, raw_key = rest.partition("/")
    if operation in ("values", "metadata") and raw_key and "/" not in raw_key:
        endpoint = _ROUTES.get((method, operation))
    else:
        endpoint, raw_key = _ROUTES.get((method, rest)), None
    return _Route(endpoint, account, namespace, raw_key) if endpoint else None


def _envelope(result: Any = None, errors: Optional[List[Dict[str, Any]]] = None,
              result_info: Optional[Dict[str, Any]] = None) -> bytes:
    body = {"success": not errors, "errors": errors or [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _malformed(message: str) -> KVError:
    return KVError(message, codes.ERR_MALFORMED_REQUEST, 400)


def _json_body(body: bytes, shape: type, what: str) -> Any:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise _malformed("Malformed JSON in request body.") from None
    if not isinstance(parsed, shape):
        kind = "array" if shape is list else "object"
        raise _malformed(f"{what}: the body must be a JSON {kind}.")
    return parsed


def _multipart(content_type: str, body: bytes) -> Dict[str, bytes]:
    """Form fields by name, parsed by the stdlib MIME parser (binary-safe)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise _malformed("Malformed multipart/form-data body.")
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            or b"" for part in message.iter_parts()}


def _bulk_pair(item: Any) -> KVPair:
    if not isinstance(item, dict) or not isinstance(item.get("value"), str):
        raise _malformed("bulk write: every item must be an object with a string 'value'.")
    try:
        value = (base64.b64decode(item["value"], validate=True) if item.get("base64")
                 else item["value"].encode("utf-8"))
    except (binascii.Error, ValueError):
        raise _malformed("bulk write: 'value' is not valid base64 / UTF-8.") from None
    return KVPair(item.get("key"), value, item.get("expiration"), item.get("expiration_ttl"),
                  item.get("metadata"))


def _bulk_result(total: int, failed: List[str]) -> Dict[str, Any]:
    return {"successful_key_count": total - len(failed), "unsuccessful_keys": failed}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], owner: "KVServer") -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server_version = "peewee-kvcache-kv"
    timeout = 60  # an idle keep-alive connection releases its thread
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s " + format, self.address_string(), *args)  # request line only, no headers

    def _handle(self) -> None:
        """count → read body → fault → auth → ids → rate limit → operation."""
        kv, method = self.server.owner, self.command
        self._fault: Optional[Fault] = None
        self._endpoint: Optional[str] = None
        try:
            if kv.stopping:
                self.close_connection = True
                return
            url = urlsplit(self.path)
            if url.path.startswith(ADMIN_PREFIX):
                body = self._read_body(_SMALL_BODY)
                self._authenticate()
                return self._admin(method, url.path[len(ADMIN_PREFIX):], body)
            route = _route(method, url.path)
            if route:
                self._endpoint = route.endpoint
                kv.count(route.endpoint)
            body = self._read_body(_BODY_LIMITS.get(self._endpoint or "", _SMALL_BODY))
            if route:
                self._fault = kv.take_fault(route.endpoint)
                if self._fault and self._act_out(self._fault):
                    return
            self._authenticate()
            if not route:
                raise KVError("No route for that URI", codes.ERR_NO_ROUTE, 400)
            if unquote(route.account) != kv.account_id:
                raise KVError(f"Could not route to {url.path}, perhaps your object identifier is "
                              "invalid?", codes.ERR_BAD_ACCOUNT, 404)
            if unquote(route.namespace) != kv.namespace_id:
                raise KVError("namespace not found", codes.ERR_NAMESPACE_NOT_FOUND, 404)
            wait = kv.admit()
            if wait is not None:
                return self._rate_limited(wait)
            self._query = dict(parse_qsl(url.query))  # blank parameters count as absent
            self._body, self._ns = body, kv.namespace
            getattr(self, "_op_" + route.endpoint)(route.raw_key and self._key(route.raw_key))
        except KVError as exc:
            self._send_error(exc)
        except OSError:  # the client went away mid-request
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a bug must answer 500, not kill the connection
            log.exception("KV server failed on %s %s", method, self.path)
            self._send_error(KVError("Internal server error", 500, 500))

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _handle

    def _read_body(self, maximum: int) -> bytes:
        """Read the whole body first, so every answer leaves the keep-alive stream in sync."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or length < 0:
            self.close_connection = True
            raise KVError("Send a valid Content-Length (chunked bodies are not supported).",
                          codes.ERR_MALFORMED_REQUEST, 411)
        if length > maximum:
            self.close_connection = True  # the unread body must not be taken for a request
            raise KVError(f"Request body of {length} bytes exceeds limit of {maximum}.",
                          codes.ERR_PAYLOAD_TOO_LARGE, 413)
        return self.rfile.read(length)

    def _act_out(self, fault: Fault) -> bool:
        """Act out ``fault``; True when the request is finished (answered or abandoned)."""
        if fault.kind in ("latency", "timeout"):
            self.server.owner.sleep(fault.delay)
        if fault.kind in ("latency", "malformed"):
            return False
        if fault.kind == "status":
            self._send_error(KVError(f"Injected fault: HTTP {fault.status}", fault.status,
                                     fault.status))
        elif fault.kind == "rate_limit":
            self._rate_limited(fault.retry_after)
        else:  # timeout, drop: no response at all
            self.close_connection = True
        return True

    def _authenticate(self) -> None:
        """Bearer token, compared in constant time: 401 without credentials, 403 if wrong."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise KVError("Authentication error", codes.ERR_AUTH, 401)
        if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"),
                                   self.server.owner.api_token.encode("utf-8")):
            raise KVError("Authentication error", codes.ERR_AUTH, 403)

    @staticmethod
    def _key(raw: str) -> str:
        """Percent-decoded exactly once, as UTF-8; ``+`` stays a plus sign (a path, not a form).
        http.server gives the path as latin-1, so ``encode`` recovers the bytes on the wire."""
        try:
            return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
        except UnicodeError:
            raise KVError("Key name is not valid UTF-8.", codes.ERR_ILLEGAL_KEY, 400) from None

    # --- responses ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: Optional[Dict[str, str]] = None) -> None:
        declared = len(body)
        if self._fault and self._fault.kind == "malformed":
            status, body = 200, body[:len(body) // 2]
            if self._endpoint == "get":  # fewer bytes than announced, then hang up
                declared, self.close_connection = declared + 1, True
            else:  # a complete response whose JSON stops halfway
                declared = len(body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(declared))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_result(self, result: Any = None,
                     result_info: Optional[Dict[str, Any]] = None) -> None:
        self._send(200, _envelope(result, result_info=result_info))

    def _send_error(self, exc: KVError, headers: Optional[Dict[str, str]] = None) -> None:
        """Errors without a Cloudflare code (store failures, injected statuses) carry the status."""
        status = exc.status or 500
        self._send(status, _envelope(None, [{"code": exc.code or status, "message": str(exc)}]),
                   headers=headers)

    def _rate_limited(self, retry_after: int) -> None:
        self._send_error(KVError("Please wait and consider throttling your request speed",
                                 codes.ERR_RATE_LIMITED, 429), {"Retry-After": str(retry_after)})

    # --- operations: the decoded key (None for bulk and list), self._query, self._body -------

    def _op_get(self, key: str) -> None:
        found = self._ns.get_with_metadata(key)
        if found is None:
            raise KVError("get: 'key not found'", codes.ERR_KEY_NOT_FOUND, 404)
        headers = {} if found.expiration is None else {"expiration": str(found.expiration)}
        self._send(200, found.value, "application/octet-stream", headers)

    def _op_metadata(self, key: str) -> None:
        found = self._ns.get_with_metadata(key)
        if found is None:
            raise KVError("metadata: 'key not found'", codes.ERR_KEY_NOT_FOUND, 404)
        self._send_result(found.metadata)

    def _op_put(self, key: str) -> None:
        content_type = self.headers.get("Content-Type", "")
        value, metadata = self._body, None
        if content_type.lower().startswith("multipart/form-data"):
            fields = _multipart(content_type, self._body)
            if "value" not in fields:
                raise _malformed("multipart/form-data body has no 'value' part.")
            value = fields["value"]
            if "metadata" in fields:
                metadata = limits.validate_metadata_json(fields["metadata"])
        self._ns.put(key, value, expiration=self._query.get("expiration"),
                     expiration_ttl=self._query.get("expiration_ttl"), metadata=metadata)
        self._send_result()

    def _op_delete(self, key: str) -> None:
        self._ns.delete(key)
        self._send_result()

    def _op_bulk_put(self, key: Optional[str]) -> None:
        """All-or-nothing, like KV: one invalid pair fails the request and writes nothing."""
        items = _json_body(self._body, list, "bulk write")
        limits.validate_bulk_count("put", len(items))
        pairs = [_bulk_pair(item) for item in items]
        self._send_result(_bulk_result(len(pairs), self._ns.bulk_put(pairs)))

    def _op_bulk_delete(self, key: Optional[str]) -> None:
        keys = _json_body(self._body, list, "bulk delete")
        limits.validate_bulk_count("delete", len(keys))
        self._send_result(_bulk_result(len(keys), self._ns.bulk_delete(keys)))

    def _op_bulk_get(self, key: Optional[str]) -> None:
        """Values decode like a Worker's TextDecoder (invalid UTF-8 becomes U+FFFD)."""
        request = _json_body(self._body, dict, "bulk get")
        keys, kind = request.get("keys"), request.get("type", "text")
        with_metadata = request.get("withMetadata", False)
        if not isinstance(keys, list) or kind not in ("text", "json") \
                or not isinstance(with_metadata, bool):
            raise _malformed("bulk get: expected {\"keys\": [...], \"type\": \"text\"|\"json\", "
                             "\"withMetadata\": bool}.")
        limits.validate_bulk_count("get", len(keys))
        values: Dict[str, Any] = {}
        for name in keys:
            found = self._ns.get_with_metadata(name)
            value: Any = None if found is None else found.value.decode("utf-8", "replace")
            if found is not None and kind == "json":
                try:
                    value = json.loads(value)
                except ValueError:
                    raise _malformed(f"bulk get: the value of key {name!r} is not JSON.") from None
            if found is not None and with_metadata:
                value = {"value": value, "metadata": found.metadata}
                if found.expiration is not None:
                    value["expiration"] = found.expiration
            values[name] = value
        self._send_result({"values": values})

    def _op_list(self, key: Optional[str]) -> None:
        query: Dict[str, Any] = self._query
        page = self._ns.list(query.get("prefix", ""), limit=query.get("limit", 1000),
                             cursor=query.get("cursor"))
        result = [{"name": info.name,
                   **({} if info.expiration is None else {"expiration": info.expiration}),
                   **({} if info.metadata is None else {"metadata": info.metadata})}
                  for info in page.keys]
        self._send_result(result, {"count": len(result), "cursor": page.cursor or ""})

    # --- admin (not counted, faulted or rate limited) -----------------------------------------

    def _admin(self, method: str, name: str, body: bytes) -> None:
        kv = self.server.owner
        if (method, name) == ("POST", "faults"):
            try:
                fault = Fault(**_json_body(body, dict, "fault"))
            except (TypeError, ValueError) as exc:  # unknown fields, bad values
                raise _malformed(f"Invalid fault: {exc}") from None
            kv.inject(fault)
            return self._send_result(dataclasses.asdict(fault))
        if (method, name) == ("GET", "counts"):
            return self._send_result(kv.counts())
        if (method, name) == ("DELETE", "faults"):
            kv.clear_faults()
        elif (method, name) == ("POST", "reset"):
            kv.reset()
        else:
            raise KVError("No route for that URI", codes.ERR_NO_ROUTE, 400)
        self._send_result()


class KVServer:
    """A Cloudflare-compatible Workers KV endpoint on loopback, backed by ``data_dir``.

    ``base_url`` is the API root a client's ``base_url`` takes (``http://HOST:PORT/client/v4``);
    the namespace lives under ``/accounts/{account_id}/storage/kv/namespaces/{namespace_id}``.
    ``rate_limit=(requests, per_seconds)`` answers 429 / code 971 / Retry-After past the budget
    (a sliding window), as Cloudflare does. ``admin_url`` (``/__admin``) serves ``POST|DELETE
    faults``, ``GET counts`` and ``POST reset`` with the same token.
    """

    def __init__(self, data_dir: Union[str, "os.PathLike[str]"], *, host: str = "127.0.0.1",
                 port: int = 0, api_token: str = "local-dev-token",
                 account_id: str = "local-account", namespace_id: str = "local-namespace",
                 rate_limit: Optional[Tuple[int, float]] = None) -> None:
        if not is_loopback(host):
            raise ValueError(f"KVServer binds to loopback only, not {host!r}")
        if not api_token or not account_id or not namespace_id:
            raise ValueError("api_token, account_id and namespace_id must not be empty")
        if rate_limit is not None and (int(rate_limit[0]) < 1 or float(rate_limit[1]) <= 0):
            raise ValueError("rate_limit must be (requests >= 1, per_seconds > 0)")
        self.host, self.api_token, self.rate_limit = host, api_token, rate_limit
        self.account_id, self.namespace_id = account_id, namespace_id
        self.namespace = LocalKVNamespace(data_dir)
        self._requested_port = port
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(ENDPOINTS, 0)
        self._faults: List[Fault] = []
        self._window: Deque[float] = deque()
        self._stopping = threading.Event()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "KVServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (port 0 picks a free one), else the requested one."""
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/client/v4"

    @property
    def admin_url(self) -> str:
        return self.base_url[:-len("/client/v4")] + ADMIN_PREFIX.rstrip("/")

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> "KVServer":
        """Bind, then serve in a daemon thread."""
        if self._httpd is not None or self.stopping:
            raise RuntimeError("a KVServer starts once")
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        # A short poll interval keeps stop() quick: shutdown() waits for the next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=f"kv-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake requests sleeping in faults, close the namespace."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()  # type: ignore[union-attr]
        self.namespace.close()

    def sleep(self, seconds: float) -> None:
        """A fault's sleep, cut short by ``stop()``."""
        self._stopping.wait(seconds)

    def count(self, endpoint: str) -> None:
        with self._lock:
            self._counts[endpoint] += 1

    def counts(self) -> Dict[str, int]:
        """Requests received per endpoint, whatever their outcome (faulted and refused too)."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(ENDPOINTS, 0)

    def inject(self, fault: Fault) -> None:
        """Add a copy of ``fault`` (its ``times`` counts down here); the oldest match applies."""
        if not isinstance(fault, Fault):
            raise TypeError("inject() takes a Fault")
        with self._lock:
            self._faults.append(dataclasses.replace(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, endpoint: str) -> Optional[Fault]:
        """The fault for this request, if any, spending one of its ``times``."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in (None, endpoint):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def admit(self) -> Optional[int]:
        """None if the request fits the rate limit (and is charged), else Retry-After seconds."""
        if self.rate_limit is None:
            return None
        allowed, per = int(self.rate_limit[0]), float(self.rate_limit[1])
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0] <= now - per:
                self._window.popleft()
            if len(self._window) >= allowed:
                return max(1, math.ceil(self._window[0] + per - now))
            self._window.append(now)
        return None

    def reset(self) -> None:
        """Clear counts, faults, the rate-limit window and every stored key."""
        with self._lock:
            self._counts = dict.fromkeys(ENDPOINTS, 0)
            self._faults.clear()
            self._window.clear()
        self.namespace.clear()
