"""CloudflareWorkerKVNamespace: the KVNamespace interface over the project's KV gateway Worker.

The REST API's 1,200 requests per 5 minutes hold a whole fleet to about 4 requests a second; a
Worker's KV binding has no such limit and batches what REST cannot: a multi-get returns binary
values with their metadata, and a sweep lists and deletes server-side in one request whatever
the number of keys. The Worker (``worker/``) answers with the REST API's envelopes and error
codes, so requests travel through the same :class:`RestTransport` (sessions, retries, envelope
parsing), authenticated by :class:`SignedRequests` instead of a bearer token.

Every argument is checked against KV's limits before anything is sent. The Worker may stop
before the end of a bulk call (a Worker invocation makes at most 1,000 KV operations): the keys
it did not attempt are sent again, and an unfinished sweep continues, until all is done.
"""
from __future__ import annotations

import base64
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import limits
from .base import KVError, KVNamespace, KVPair, ListPage, ValueWithMetadata, chunked
from .budget import RequestBudget
from .signing import SignedRequests
from .transport import (RestTransport, Timeout, bulk_put_item, check_base_url, encode_json,
                        envelope, json_batches, list_page, parsing)

__all__ = ["CloudflareWorkerKVNamespace", "MAX_BODY_BYTES", "BULK_MAX_ITEMS", "URL_VARIABLE",
           "SECRET_VARIABLE"]

#: the Worker's request body limit (a Worker has 128 MB: one 25 MiB value in base64 must fit)
MAX_BODY_BYTES = 36 * 1024 * 1024
#: pairs or keys per bulk request: a Worker invocation makes at most 1,000 KV operations
BULK_MAX_ITEMS = 1000
#: the environment variables :meth:`CloudflareWorkerKVNamespace.from_env` reads
URL_VARIABLE, SECRET_VARIABLE = "PEEWEE_KVCACHE_WORKER_URL", "PEEWEE_KVCACHE_WORKER_SECRET"
_ENV = {"url": URL_VARIABLE, "secret": SECRET_VARIABLE}



class CloudflareWorkerKVNamespace(KVNamespace):
    """A Workers KV namespace reached through the gateway Worker at ``url`` (``secret``: the
    Worker's SECRET). Behaves like LocalKVNamespace and CloudflareKVNamespace."""

    propagation_delay = 60.0  # KV: visible elsewhere (and in list) within about 60 s

    def __init__(self, url: str, secret: str, *, timeout: Timeout = (3.05, 10.0),
                 retries: int = 3, backoff_factor: float = 0.3,
                 read_timeout: Timeout = (1.0, 2.0), read_retries: int = 0,
                 budget: Optional[RequestBudget] = None) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {url!r}")
        self.url = check_base_url(url)
        self._rest = RestTransport(
            self.url + "/v1", SignedRequests(secret), timeout=timeout, read_timeout=read_timeout,
            retries=retries, read_retries=read_retries, backoff_factor=backoff_factor,
            budget=budget)

    @classmethod
    def from_env(cls, **kwargs: Any) -> "CloudflareWorkerKVNamespace":
        """The Worker's URL and secret from PEEWEE_KVCACHE_WORKER_URL and
        PEEWEE_KVCACHE_WORKER_SECRET."""
        values = {arg: os.environ.get(var, "").strip() for arg, var in _ENV.items()}
        missing = [_ENV[arg] for arg, value in values.items() if not value]
        if missing:
            raise ValueError(f"missing environment variable(s): {', '.join(missing)}")
        return cls(values["url"], values["secret"], **kwargs)

    def __repr__(self) -> str:
        return f"CloudflareWorkerKVNamespace(url={self.url!r})"

    @property
    def budget(self) -> Optional[RequestBudget]:
        """The request budget calls are paid from; None (the default): unlimited, as Workers
        have no API rate limit (the free plan allows 100,000 requests a day)."""
        return self._rest.budget

    def _post(self, path: str, body: Any, **kwargs: Any) -> Any:
        """One JSON request; its envelope's ``result``."""
        data = body if isinstance(body, bytes) else encode_json(body)
        response = self._rest.call("POST", path, data=data,
                                   headers={"Content-Type": "application/json"}, **kwargs)
        return envelope(response, path).get("result")

    def _get_many(self, keys: Sequence[str], *, values: bool, expiration: bool = False,
                  read: bool = False) -> Dict[str, Optional[Dict[str, Any]]]:
        """Multi-get, 100 distinct keys per request: each key's {value?, metadata, expiration?}
        or None when missing."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            limits.validate_key(key)
        found: Dict[str, Optional[Dict[str, Any]]] = {}
        for batch in chunked(unique, limits.BULK_GET_MAX_KEYS):
            result = self._post("/get", {"keys": batch, "values": values,
                                         "expiration": expiration}, read=read)
            with parsing("get"):
                answered = result["values"]
                for key in batch:
                    item = answered[key]
                    found[key] = None if item is None else dict(item)
        return found

    @staticmethod
    def _value(item: Mapping[str, Any]) -> bytes:
        with parsing("get"):
            return base64.b64decode(item["value"], validate=True)

    def get(self, key: str) -> Optional[bytes]:
        item = self._get_many([key], values=True, read=True)[key]
        return None if item is None else self._value(item)

    def get_with_metadata(self, key: str) -> Optional[ValueWithMetadata]:
        """One request: the value, its metadata and its expiry."""
        item = self._get_many([key], values=True, expiration=True)[key]
        if item is None:
            return None
        return ValueWithMetadata(self._value(item), item.get("metadata"), item.get("expiration"))

    def bulk_get(self, keys: Sequence[str]) -> Dict[str, Optional[bytes]]:
        """Binary values, 100 keys per request."""
        found = self._get_many(keys, values=True)
        return {key: None if found[key] is None else self._value(found[key] or {})
                for key in keys}

    def bulk_metadata(self, keys: Sequence[str]) -> Dict[str, Optional[Mapping[str, Any]]]:
        """One request per 100 keys, and one KV operation in the Worker (no values read)."""
        found = self._get_many(keys, values=False)
        return {key: None if item is None else dict(item.get("metadata") or {})
                for key, item in found.items()}

    def put(self, key: str, value: bytes, *, expiration: Optional[int] = None,
            expiration_ttl: Optional[int] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> None:
        left = self.bulk_put([KVPair(key, value, expiration, expiration_ttl, metadata)])
        if left:
            raise KVError(f"put: KV refused the write of {key!r}", None, 500)

    def delete(self, key: str) -> None:
        if self.bulk_delete([key]):
            raise KVError(f"delete: KV refused the deletion of {key!r}", None, 500)

    def bulk_put(self, pairs: Sequence[KVPair]) -> List[str]:
        """Every pair is checked before anything is sent; values travel base64-encoded."""
        now = time.time()
        items: Dict[str, bytes] = {}
        for pair in pairs:  # a later pair for the same key replaces it (as in KV)
            items[pair.key] = encode_json(bulk_put_item(pair, now))
        return self._bulk("/put", items)

    def bulk_delete(self, keys: Sequence[str]) -> List[str]:
        items = {}
        for key in keys:
            limits.validate_key(key)
            items[key] = encode_json(key)
        return self._bulk("/delete", items)

    def _bulk(self, path: str, items: Dict[str, bytes]) -> List[str]:
        """Send key -> encoded item until the Worker attempted all (it stops at its operation
        limit and names the keys it left); the keys KV refused."""
        unsuccessful: List[str] = []
        waiting = list(items)
        while waiting:
            batch = next(json_batches([items[key] for key in waiting], BULK_MAX_ITEMS,
                                      MAX_BODY_BYTES))
            result = self._post(path, b"[" + b",".join(batch) + b"]", write=True)
            with parsing(path):
                failed = [str(key) for key in result.get("unsuccessful_keys") or []]
                unattempted = [str(key) for key in result.get("unattempted_keys") or []]
                done = int(result["successful_key_count"]) + len(failed)
            if not done:
                raise KVError(f"{path}: the Worker attempted none of {len(batch)} keys")
            unsuccessful.extend(failed)
            waiting = unattempted + waiting[len(batch):]
        return unsuccessful

    def list(self, prefix: str = "", limit: int = 1000, cursor: Optional[str] = None) -> ListPage:
        return list_page(self._rest, prefix, limit, cursor)

    def sweep(self, prefixes: Mapping[str, int], *, scope: str) -> List[str]:
        """One request, whatever the number of keys: the Worker lists and deletes (the rule of
        :mod:`.sweep`); if its operation limit stops it first, the request it answers with
        continues where it stopped. The keys KV refused to delete."""
        if not isinstance(scope, str):
            raise TypeError(f"scope must be a str, got {scope!r}")
        for prefix, before_ms in prefixes.items():
            limits.validate_prefix(prefix)
            if not isinstance(before_ms, int) or isinstance(before_ms, bool):
                raise TypeError(f"prefixes[{prefix!r}] must be unix ms (int), got {before_ms!r}")
        if not prefixes:
            return []
        body: Any = {"prefixes": dict(prefixes), "scope": scope}
        unsuccessful: List[str] = []
        while True:
            result = self._post("/sweep", body, write=True)
            with parsing("sweep"):
                unsuccessful.extend(str(key) for key in result.get("unsuccessful_keys") or [])
                if result["done"]:
                    return unsuccessful
                resumed = dict(result["next"])
            if resumed == body:  # a Worker that makes no progress must not hold us forever
                raise KVError("sweep: the Worker answered with the request it was sent")
            body = resumed

    def close(self) -> None:
        self._rest.close()
