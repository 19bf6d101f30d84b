"""The Workers KV operations a KVServer serves, each from a decoded request to a Reply.

They run on a LocalKVNamespace, whose checks are ``limits``' (shared with the REST client), so the
errors carry Cloudflare's codes, statuses and wording.
"""
from __future__ import annotations

import base64
import binascii
import email.policy
import json
from email.parser import BytesParser
from typing import Any, Callable, Dict, List, NamedTuple

from ..kv import codes, limits
from ..kv.base import KVError, KVNamespace, KVPair, ValueWithMetadata
from .wire import Reply, json_body, malformed, success


class Request(NamedTuple):
    """What an operation reads: the decoded key ("" for bulk and list), the query parameters
    (strings, blank ones absent: ``limits`` checks them as KV does), the body and its
    Content-Type."""

    key: str
    query: Dict[str, Any]
    body: bytes
    content_type: str


def _multipart(content_type: str, body: bytes) -> Dict[str, bytes]:
    """Form fields by name, parsed by the stdlib MIME parser (binary-safe)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise malformed("Malformed multipart/form-data body.")
    fields: Dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            fields[name] = payload if isinstance(payload, bytes) else b""
    return fields


def _bulk_pair(item: Any) -> KVPair:
    if not isinstance(item, dict) or not isinstance(item.get("value"), str):
        raise malformed("bulk write: every item must be an object with a string 'value'.")
    try:
        value = (base64.b64decode(item["value"], validate=True) if item.get("base64")
                 else item["value"].encode("utf-8"))
    except (binascii.Error, ValueError):
        raise malformed("bulk write: 'value' is not valid base64 / UTF-8.") from None
    key: Any = item.get("key")  # checked with the other pairs by the namespace
    return KVPair(key, value, item.get("expiration"), item.get("expiration_ttl"),
                  item.get("metadata"))


def _bulk_result(total: int, failed: List[str]) -> Reply:
    return success({"successful_key_count": total - len(failed), "unsuccessful_keys": failed})


def _found(ns: KVNamespace, key: str, what: str) -> ValueWithMetadata:
    found = ns.get_with_metadata(key)
    if found is None:
        raise KVError(f"{what}: 'key not found'", codes.ERR_KEY_NOT_FOUND, 404)
    return found


def get_value(ns: KVNamespace, request: Request) -> Reply:
    found = _found(ns, request.key, "get")
    headers = {} if found.expiration is None else {"expiration": str(found.expiration)}
    return Reply(200, found.value, "application/octet-stream", headers)


def get_metadata(ns: KVNamespace, request: Request) -> Reply:
    return success(_found(ns, request.key, "metadata").metadata)


def put_value(ns: KVNamespace, request: Request) -> Reply:
    value, metadata = request.body, None
    if request.content_type.lower().startswith("multipart/form-data"):
        fields = _multipart(request.content_type, request.body)
        if "value" not in fields:
            raise malformed("multipart/form-data body has no 'value' part.")
        value = fields["value"]
        if "metadata" in fields:
            metadata = limits.validate_metadata_json(fields["metadata"])
    ns.put(request.key, value, expiration=request.query.get("expiration"),
           expiration_ttl=request.query.get("expiration_ttl"), metadata=metadata)
    return success()


def delete_value(ns: KVNamespace, request: Request) -> Reply:
    ns.delete(request.key)
    return success()


def bulk_put(ns: KVNamespace, request: Request) -> Reply:
    """All-or-nothing, like KV: one invalid pair fails the request and writes nothing."""
    items = json_body(request.body, list, "bulk write")
    limits.validate_bulk_count("put", len(items))
    pairs = [_bulk_pair(item) for item in items]
    return _bulk_result(len(pairs), ns.bulk_put(pairs))


def bulk_delete(ns: KVNamespace, request: Request) -> Reply:
    keys = json_body(request.body, list, "bulk delete")
    limits.validate_bulk_count("delete", len(keys))
    return _bulk_result(len(keys), ns.bulk_delete(keys))


def bulk_get(ns: KVNamespace, request: Request) -> Reply:
    """Values decode like a Worker's TextDecoder (invalid UTF-8 becomes U+FFFD)."""
    body = json_body(request.body, dict, "bulk get")
    keys, kind = body.get("keys"), body.get("type", "text")
    with_metadata = body.get("withMetadata", False)
    if not isinstance(keys, list) or kind not in ("text", "json") \
            or not isinstance(with_metadata, bool):
        raise malformed("bulk get: expected {\"keys\": [...], \"type\": \"text\"|\"json\", "
                        "\"withMetadata\": bool}.")
    limits.validate_bulk_count("get", len(keys))
    values: Dict[str, Any] = {}
    for name in keys:
        found = ns.get_with_metadata(name)
        value: Any = None if found is None else found.value.decode("utf-8", "replace")
        if found is not None and kind == "json":
            try:
                value = json.loads(value)
            except ValueError:
                raise malformed(f"bulk get: the value of key {name!r} is not JSON.") from None
        if found is not None and with_metadata:
            value = {"value": value, "metadata": found.metadata}
            if found.expiration is not None:
                value["expiration"] = found.expiration
        values[name] = value
    return success({"values": values})


def list_keys(ns: KVNamespace, request: Request) -> Reply:
    query = request.query
    page = ns.list(query.get("prefix", ""), limit=query.get("limit", 1000),
                   cursor=query.get("cursor"))
    result = [{"name": info.name,
               **({} if info.expiration is None else {"expiration": info.expiration}),
               **({} if info.metadata is None else {"metadata": info.metadata})}
              for info in page.keys]
    return success(result, {"count": len(result), "cursor": page.cursor or ""})


OPERATIONS: Dict[str, Callable[[KVNamespace, Request], Reply]] = {
    "get": get_value, "metadata": get_metadata, "put": put_value, "delete": delete_value,
    "bulk_put": bulk_put, "bulk_delete": bulk_delete, "bulk_get": bulk_get, "list": list_keys,
}
