"""Cloudflare Workers KV's limits and the checks that enforce them.

One set of pure functions serves three callers: the embedded namespace (to behave exactly like KV),
the REST client (to fail before spending a request from the small API budget) and the
KV-compatible server (to answer with Cloudflare's own error code, HTTP status and wording).
Messages name the offending number or length but never echo a stored value.
"""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Optional, Union

from . import codes
from .base import KVError

MAX_KEY_BYTES = 512
ILLEGAL_KEYS = frozenset({".", ".."})
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_METADATA_BYTES = 1024
MIN_EXPIRATION_TTL = 60
BULK_WRITE_MAX_ITEMS = 10_000
BULK_DELETE_MAX_ITEMS = 10_000
BULK_GET_MAX_KEYS = 100
BULK_REQUEST_MAX_BYTES = 100 * 1000 * 1000
LIST_MIN_LIMIT = 10
LIST_MAX_LIMIT = 1000

_BULK_MAXIMUM = {
    "put": (BULK_WRITE_MAX_ITEMS, "key/value pairs"),
    "delete": (BULK_DELETE_MAX_ITEMS, "keys"),
    "get": (BULK_GET_MAX_KEYS, "keys"),
}


class CheckedPut(NamedTuple):
    """A write that passed every check, in the form a store needs it."""

    key: bytes  # UTF-8, the form KV measures and orders keys by
    value: bytes
    expiration: Optional[int]  # absolute unix seconds, None = never expires
    metadata: Optional[str]  # compact JSON, as measured against the limit


def _show(raw: Any) -> str:
    """A bad parameter for a message, cut short so a huge input cannot flood logs."""
    text = str(raw)
    return text if len(text) <= 64 else text[:61] + "..."


def _as_int(raw: Any) -> Optional[int]:
    """An integer from an int or decimal string (a query parameter); None for anything else."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
        return int(raw)
    return None


def _key_length(key: Any, what: str) -> bytes:
    if not isinstance(key, str):
        raise KVError(f"{what} must be a string, not {type(key).__name__}.",
                      codes.ERR_ILLEGAL_KEY, 400)
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise KVError(f"{what} is not valid UTF-8.", codes.ERR_ILLEGAL_KEY, 400) from None
    if len(encoded) > MAX_KEY_BYTES:
        raise KVError(f"UTF-8 encoded length of {len(encoded)} exceeds key length limit of "
                      f"{MAX_KEY_BYTES}.", codes.ERR_KEY_TOO_LONG, 414)
    return encoded


def validate_key(key: Any) -> bytes:
    """Check a key name; returns its UTF-8 bytes (what KV measures and sorts by)."""
    encoded = _key_length(key, "Key name")
    if not encoded:
        raise KVError("Key names must not be empty.", codes.ERR_ILLEGAL_KEY, 400)
    if key in ILLEGAL_KEYS:
        raise KVError(f'Illegal key name "{key}". Please use a different name.',
                      codes.ERR_ILLEGAL_KEY, 400)
    return encoded


def validate_prefix(prefix: Any) -> bytes:
    """Check a list prefix: any string (empty included) no longer than a key."""
    return _key_length(prefix, "Prefix")


def validate_value(value: Any) -> bytes:
    """Check a value is bytes-like and within 25 MiB; returns it as bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise KVError(f"Malformed value: expected bytes, got {type(value).__name__}.",
                      codes.ERR_MALFORMED_REQUEST, 400)
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if size > MAX_VALUE_BYTES:
        raise KVError(f"Value length of {size} exceeds limit of {MAX_VALUE_BYTES}.",
                      codes.ERR_PAYLOAD_TOO_LARGE, 413)
    return bytes(value)


def validate_metadata_json(raw: Union[str, bytes]) -> Any:
    """Check metadata received as JSON text (the server's case); returns the parsed object."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise KVError(f"Metadata length of {size} exceeds limit of {MAX_METADATA_BYTES}.",
                      codes.ERR_INVALID_METADATA, 413)
    try:
        return json.loads(raw)
    except ValueError:
        raise KVError("Metadata is not valid JSON.", codes.ERR_INVALID_METADATA, 400) from None


def validate_metadata(metadata: Any) -> Optional[str]:
    """Check metadata objects (the clients' case); returns the compact JSON that is sent/stored."""
    if metadata is None:
        return None
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise KVError(f"Metadata is not JSON-serialisable: {_show(exc)}",
                      codes.ERR_INVALID_METADATA, 400) from None
    validate_metadata_json(text)
    return text


def resolve_expiration(expiration: Any = None, expiration_ttl: Any = None, *,
                       now: float) -> Optional[int]:
    """Absolute expiry (unix s) of a write, or None; ``expiration_ttl`` wins when both are given.

    ``now`` is truncated to whole seconds, as KV counts time.
    """
    current = int(now)
    if expiration_ttl is not None:
        ttl = _as_int(expiration_ttl)
        if ttl is None or ttl <= 0:
            raise KVError(f"Invalid expiration_ttl of {_show(expiration_ttl)}. Please specify "
                          "integer greater than 0.", codes.ERR_INVALID_EXPIRATION_TTL, 400)
        if ttl < MIN_EXPIRATION_TTL:
            raise KVError(f"Invalid expiration_ttl of {ttl}. Expiration TTL must be at least "
                          f"{MIN_EXPIRATION_TTL}.", codes.ERR_INVALID_EXPIRATION_TTL, 400)
        return current + ttl
    if expiration is not None:
        at = _as_int(expiration)
        if at is None or at <= current:
            raise KVError(f"Invalid expiration of {_show(expiration)}. Please specify integer "
                          "greater than the current number of seconds since the UNIX epoch.",
                          codes.ERR_INVALID_EXPIRATION, 400)
        if at < current + MIN_EXPIRATION_TTL:
            raise KVError(f"Invalid expiration of {at}. Expiration times must be at least "
                          f"{MIN_EXPIRATION_TTL} seconds in the future.",
                          codes.ERR_INVALID_EXPIRATION, 400)
        return at
    return None


def validate_put(key: Any, value: Any, *, expiration: Any = None, expiration_ttl: Any = None,
                 metadata: Any = None, now: float) -> CheckedPut:
    """Every check of one write, in the order KV applies them (key, expiry, metadata, value)."""
    encoded_key = validate_key(key)
    expires = resolve_expiration(expiration, expiration_ttl, now=now)
    metadata_json = validate_metadata(metadata)
    return CheckedPut(encoded_key, validate_value(value), expires, metadata_json)


def validate_list_limit(limit: Any) -> int:
    """Check a list page size against KV's 10..1000."""
    count = _as_int(limit)
    if count is None or not LIST_MIN_LIMIT <= count <= LIST_MAX_LIMIT:
        raise KVError(f"Invalid limit of {_show(limit)}. Please specify an integer between "
                      f"{LIST_MIN_LIMIT} and {LIST_MAX_LIMIT}.", codes.ERR_INVALID_LIMIT, 400)
    return count


def validate_bulk_count(operation: str, count: int) -> None:
    """Check the item count of one bulk request ("put", "delete" or "get")."""
    maximum, items = _BULK_MAXIMUM[operation]
    if count > maximum:
        raise KVError(f"bulk {operation}: 'received {count} {items}, but max allowed per "
                      f"request is: {maximum}'", codes.ERR_MALFORMED_REQUEST, 400)
