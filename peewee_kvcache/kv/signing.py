"""HMAC-signed requests for the KV gateway Worker (``worker/src/auth.js`` verifies them).

A shared secret never travels: each request carries a unix-seconds timestamp, a random nonce and
``hex(HMAC-SHA256(secret, "PKV1\\n" + timestamp + "\\n" + nonce + "\\n" + METHOD + "\\n" +
path_and_query + "\\n" + hex(sha256(body))))``. The Worker accepts a request within 30 s of its
timestamp and refuses a mutating request's nonce the second time, so a captured request can
neither be altered nor (within one isolate) replayed. The signature is made when a request is
prepared: urllib3's retries resend those very bytes, which is why writes go through the session
that resends only what never reached the Worker (see :mod:`.transport`).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any, Callable

import requests
from requests.auth import AuthBase

#: the Worker refuses a shorter SECRET (``openssl rand -hex 32`` makes a good one)
MIN_SECRET_LENGTH = 32
TIMESTAMP, NONCE, SIGNATURE = "X-PKV-Timestamp", "X-PKV-Nonce", "X-PKV-Signature"


def _wall_clock() -> Callable[[], float]:
    """Real unix seconds, taken before any test tool can freeze ``time.time``: a frozen clock
    would sign requests the Worker refuses as outside its window."""
    clock_gettime = getattr(time, "clock_gettime", None)
    if clock_gettime is None:  # not on Windows
        return time.time
    return lambda: clock_gettime(time.CLOCK_REALTIME)


_now = _wall_clock()


def check_secret(secret: Any) -> bytes:
    """The secret as bytes; its type and length may be named in an error, its value never."""
    if not isinstance(secret, str):
        raise TypeError(f"secret must be a str, got {type(secret).__name__}")
    if len(secret) < MIN_SECRET_LENGTH or any(ch.isspace() or not ch.isprintable()
                                              for ch in secret):
        raise ValueError(f"secret must be at least {MIN_SECRET_LENGTH} printable characters "
                         f"without whitespace (got {len(secret)} characters)")
    return secret.encode("utf-8")


def signature(secret: bytes, timestamp: str, nonce: str, method: str, path: str,
              body: bytes) -> str:
    """The hex HMAC-SHA256 the Worker expects for one request."""
    text = "\n".join(["PKV1", timestamp, nonce, method.upper(), path,
                      hashlib.sha256(body).hexdigest()])
    return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()


class SignedRequests(AuthBase):
    """Signs every prepared request with the secret, which is held here only."""

    def __init__(self, secret: Any) -> None:
        self._secret = check_secret(secret)

    def __repr__(self) -> str:
        return "SignedRequests(<secret>)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            raise TypeError("a streamed request body cannot be signed: pass bytes")
        timestamp, nonce = str(int(_now())), secrets.token_urlsafe(18)
        request.headers[TIMESTAMP] = timestamp
        request.headers[NONCE] = nonce
        request.headers[SIGNATURE] = signature(self._secret, timestamp, nonce,
                                               str(request.method), request.path_url, body)
        return request
