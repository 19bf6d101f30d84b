"""Which Workers KV REST endpoint a request addresses, and how much body each may send."""
from __future__ import annotations

import re
from typing import NamedTuple, Optional
from urllib.parse import unquote_to_bytes

from ..kv import codes, limits
from ..kv.base import KVError

ENDPOINTS = ("get", "metadata", "put", "delete", "bulk_put", "bulk_delete", "bulk_get", "list")
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
SMALL_BODY = 1024 * 1024


class Route(NamedTuple):
    endpoint: str
    account: str
    namespace: str
    raw_key: Optional[str]


def route(method: str, path: str) -> Optional[Route]:
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
    return Route(endpoint, account, namespace, raw_key) if endpoint else None


def body_limit(endpoint: Optional[str]) -> int:
    """The largest body a request to ``endpoint`` (None: no endpoint) may declare."""
    return _BODY_LIMITS.get(endpoint or "", SMALL_BODY)


def decode_key(raw: str) -> str:
    """Percent-decoded exactly once, as UTF-8; ``+`` stays a plus sign (a path, not a form).
    http.server gives the path as latin-1, so ``encode`` recovers the bytes on the wire."""
    try:
        return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeError:
        raise KVError("Key name is not valid UTF-8.", codes.ERR_ILLEGAL_KEY, 400) from None
