"""The KVServer's HTTP request handler: one request from the socket to its answer.

Each request goes latency → count → read body → fault → auth → ids → rate limit → operation;
admin requests (``/__admin/``) are authenticated but neither delayed, counted, faulted nor rate
limited.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from ..kv import codes
from ..kv.base import KVError
from . import wire
from .faults import Fault
from .operations import OPERATIONS, Request
from .routes import ADMIN_PREFIX, SMALL_BODY, body_limit, decode_key, route
from .state import ServerState

log = logging.getLogger(__name__)


class KVHTTPServer(ThreadingHTTPServer):
    """Serves ``state`` at ``address``, one daemon thread per connection."""

    daemon_threads = True

    def __init__(self, address: Tuple[str, int], state: ServerState) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)


class Handler(BaseHTTPRequestHandler):
    """One connection's requests, answered as Cloudflare would (or as an injected fault says)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server_version = "peewee-kvcache-kv"
    timeout = 60  # an idle keep-alive connection releases its thread
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    server: KVHTTPServer

    @property
    def kv(self) -> ServerState:
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s " + format, self.address_string(), *args)  # request line only, no headers

    def _handle(self) -> None:
        """Every method's entry point; errors become Cloudflare's envelopes, never a dead
        connection."""
        kv, method = self.kv, self.command
        self._fault: Optional[Fault] = None
        self._endpoint: Optional[str] = None
        try:
            if kv.stopping:
                self.close_connection = True
                return
            url = urlsplit(self.path)
            if url.path.startswith(ADMIN_PREFIX):
                body = self._read_body(SMALL_BODY)
                self._authenticate()
                return self._reply(self._admin(method, url.path[len(ADMIN_PREFIX):], body))
            if kv.latency:
                kv.sleep(kv.latency)  # the distance to the API, before anything is answered
            found = route(method, url.path)
            if found:
                self._endpoint = found.endpoint
                kv.traffic.add(found.endpoint)
            body = self._read_body(body_limit(self._endpoint))
            if found:
                self._fault = kv.faults.take(found.endpoint)
                if self._fault and self._act_out(self._fault):
                    return
            self._authenticate()
            if not found:
                raise KVError("No route for that URI", codes.ERR_NO_ROUTE, 400)
            if unquote(found.account) != kv.account_id:
                raise KVError(f"Could not route to {url.path}, perhaps your object identifier is "
                              "invalid?", codes.ERR_BAD_ACCOUNT, 404)
            if unquote(found.namespace) != kv.namespace_id:
                raise KVError("namespace not found", codes.ERR_NAMESPACE_NOT_FOUND, 404)
            wait = kv.rate.admit()
            if wait is not None:
                return self._reply(wire.rate_limited(wait))
            request = Request(decode_key(found.raw_key) if found.raw_key else "",
                              dict(parse_qsl(url.query)), body,
                              self.headers.get("Content-Type", ""))
            self._reply(OPERATIONS[found.endpoint](kv.namespace, request))
        except KVError as exc:
            self._reply(wire.failure(exc))
        except OSError:  # the client went away mid-request
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a bug must answer 500, not kill the connection
            log.exception("KV server failed on %s %s", method, self.path)
            self._reply(wire.failure(KVError("Internal server error", 500, 500)))

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
        if fault.sleeps:
            self.kv.sleep(fault.delay)
        if fault.serves:
            return False
        if fault.kind == "status":
            self._reply(wire.failure(KVError(f"Injected fault: HTTP {fault.status}",
                                             fault.status, fault.status)))
        elif fault.kind == "rate_limit":
            self._reply(wire.rate_limited(fault.retry_after))
        else:  # timeout, drop: no response at all
            self.close_connection = True
        return True

    def _authenticate(self) -> None:
        """Bearer token, compared in constant time: 401 without credentials, 403 if wrong."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise KVError("Authentication error", codes.ERR_AUTH, 401)
        if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"),
                                   self.kv.api_token.encode("utf-8")):
            raise KVError("Authentication error", codes.ERR_AUTH, 403)

    def _reply(self, reply: wire.Reply) -> None:
        """Send ``reply``, cut short when the request drew a malformed fault."""
        status, body, declared = reply.status, reply.body, len(reply.body)
        if self._fault and self._fault.kind == "malformed":
            status, (body, declared) = 200, self._fault.cut(self._endpoint, body)
            if declared > len(body):  # fewer bytes than announced, then hang up
                self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(declared))
        for name, value in (reply.headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _admin(self, method: str, name: str, body: bytes) -> wire.Reply:
        kv = self.kv
        if (method, name) == ("POST", "faults"):
            try:
                fault = Fault(**wire.json_body(body, dict, "fault"))
            except (TypeError, ValueError) as exc:  # unknown fields, bad values
                raise wire.malformed(f"Invalid fault: {exc}") from None
            kv.inject(fault)
            return wire.success(dataclasses.asdict(fault))
        if (method, name) == ("GET", "counts"):
            return wire.success(kv.counts())
        if (method, name) == ("DELETE", "faults"):
            kv.clear_faults()
        elif (method, name) == ("POST", "reset"):
            kv.reset()
        else:
            raise KVError("No route for that URI", codes.ERR_NO_ROUTE, 400)
        return wire.success()
