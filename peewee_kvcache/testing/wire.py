"""The bodies a KVServer reads and writes: Cloudflare's JSON envelopes and request JSON."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from ..kv import codes
from ..kv.base import KVError


class Reply(NamedTuple):
    """One HTTP answer, before faults may cut it short."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Optional[Mapping[str, str]] = None


def envelope(result: Any = None, errors: Optional[List[Dict[str, Any]]] = None,
             result_info: Optional[Dict[str, Any]] = None) -> bytes:
    body = {"success": not errors, "errors": errors or [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def success(result: Any = None, result_info: Optional[Dict[str, Any]] = None) -> Reply:
    return Reply(200, envelope(result, result_info=result_info))


def failure(exc: KVError, headers: Optional[Mapping[str, str]] = None) -> Reply:
    """Errors without a Cloudflare code (store failures, injected statuses) carry the status."""
    status = exc.status or 500
    return Reply(status, envelope(None, [{"code": exc.code or status, "message": str(exc)}]),
                 headers=headers)


def rate_limited(retry_after: int) -> Reply:
    """Cloudflare's answer past the rate limit."""
    return failure(KVError("Please wait and consider throttling your request speed",
                           codes.ERR_RATE_LIMITED, 429), {"Retry-After": str(retry_after)})


def malformed(message: str) -> KVError:
    return KVError(message, codes.ERR_MALFORMED_REQUEST, 400)


def json_body(body: bytes, shape: type, what: str) -> Any:
    """The request's JSON, which must be an array (``list``) or an object (``dict``)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        raise malformed("Malformed JSON in request body.") from None
    if not isinstance(parsed, shape):
        kind = "array" if shape is list else "object"
        raise malformed(f"{what}: the body must be a JSON {kind}.")
    return parsed
