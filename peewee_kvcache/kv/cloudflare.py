"""CloudflareKVNamespace: the KVNamespace interface over Cloudflare's Workers KV REST API.

The REST API allows only 1,200 requests per 5 minutes per token and locks a client out for 5 minutes
past that, so every request is paid for from a client-side budget first (``RequestBudget``), every
argument is checked against KV's limits before anything is sent, and bulk calls are used wherever
KV offers them. How requests travel (sessions, retries, envelopes, the token) is ``transport``'s.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

from . import limits
from .base import BudgetExhausted, KVNamespace, KVPair, ListPage, ValueWithMetadata, chunked
from .budget import RequestBudget
from .transport import (BearerAuth, RestTransport, Timeout, api_error, bulk_put_item,
                        check_base_url, encode_json, envelope, is_missing, json_batches, list_page,
                        parsing)

__all__ = ["CloudflareKVNamespace", "RequestBudget", "BudgetExhausted", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
_DEFAULT_BUDGET: Any = object()  # "argument not given", as None means "no budget"
_ENV = {"account_id": "CLOUDFLARE_ACCOUNT_ID", "namespace_id": "CLOUDFLARE_KV_NAMESPACE_ID",
        "api_token": "CLOUDFLARE_API_TOKEN"}


def _json_array(items: List[bytes], max_items: int) -> Iterator[bytes]:
    """JSON arrays of pre-encoded items, each within KV's item count and request size limits."""
    for batch in json_batches(items, max_items, limits.BULK_REQUEST_MAX_BYTES):
        yield b"[" + b",".join(batch) + b"]"



def _path(endpoint: str, key: str) -> str:
    limits.validate_key(key)
    return f"/{endpoint}/{quote(key, safe='')}"


class CloudflareKVNamespace(KVNamespace):
    """One Workers KV namespace reached over the REST API; behaves like LocalKVNamespace."""

    propagation_delay = 60.0  # KV: visible elsewhere (and in list) within about 60 s

    def __init__(self, account_id: str, namespace_id: str, api_token: str, *,
                 base_url: str = DEFAULT_BASE_URL, timeout: Timeout = (3.05, 10.0),
                 retries: int = 3, backoff_factor: float = 0.3,
                 read_timeout: Timeout = (1.0, 2.0), read_retries: int = 0,
                 budget: Optional[RequestBudget] = _DEFAULT_BUDGET) -> None:
        for name, value in (("account_id", account_id), ("namespace_id", namespace_id),
                            ("base_url", base_url)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {value!r}")
            if not value.strip():
                raise ValueError(f"{name} must not be empty, got {value!r}")
        self.account_id = account_id
        self.namespace_id = namespace_id
        self.base_url = check_base_url(base_url)
        root = (f"{self.base_url}/accounts/{quote(account_id, safe='')}"
                f"/storage/kv/namespaces/{quote(namespace_id, safe='')}")
        self._rest = RestTransport(
            root, BearerAuth(api_token), timeout=timeout, read_timeout=read_timeout,
            retries=retries, read_retries=read_retries, backoff_factor=backoff_factor,
            budget=RequestBudget() if budget is _DEFAULT_BUDGET else budget)

    @classmethod
    def from_env(cls, **kwargs: Any) -> "CloudflareKVNamespace":
        """Credentials from CLOUDFLARE_* variables; CLOUDFLARE_API_BASE_URL optionally."""
        values = {arg: os.environ.get(var, "").strip() for arg, var in _ENV.items()}
        missing = [_ENV[arg] for arg, value in values.items() if not value]
        if missing:
            raise ValueError(f"missing environment variable(s): {', '.join(missing)}")
        base_url = os.environ.get("CLOUDFLARE_API_BASE_URL", "").strip()
        if base_url:
            kwargs.setdefault("base_url", base_url)
        return cls(values["account_id"], values["namespace_id"], values["api_token"], **kwargs)

    def __repr__(self) -> str:
        return (f"CloudflareKVNamespace(account_id={self.account_id!r}, "
                f"namespace_id={self.namespace_id!r}, base_url={self.base_url!r})")

    @property
    def budget(self) -> Optional[RequestBudget]:
        """The request budget every call is paid from (None: unlimited)."""
        return self._rest.budget

    def get(self, key: str) -> Optional[bytes]:
        response = self._rest.call("GET", _path("values", key), read=True)
        if response.status_code == 200:
            return response.content
        if is_missing(response):
            return None
        raise api_error(response, "get")

    def get_with_metadata(self, key: str) -> Optional[ValueWithMetadata]:
        """Two requests (value, then metadata); None if the key vanishes in between."""
        response = self._rest.call("GET", _path("values", key))
        if is_missing(response):
            return None
        if response.status_code != 200:
            raise api_error(response, "get")
        with parsing("get"):
            header = response.headers.get("expiration")
            expiration = int(header) if header else None
        meta = self._rest.call("GET", _path("metadata", key))
        if is_missing(meta):
            return None
        metadata = envelope(meta, "metadata").get("result")
        return ValueWithMetadata(response.content, metadata, expiration)

    def put(self, key: str, value: bytes, *, expiration: Optional[int] = None,
            expiration_ttl: Optional[int] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> None:
        checked = limits.validate_put(key, value, expiration=expiration,
                                      expiration_ttl=expiration_ttl, metadata=metadata,
                                      now=time.time())
        params = ({"expiration_ttl": expiration_ttl} if expiration_ttl is not None
                  else {"expiration": expiration} if expiration is not None else {})
        if checked.metadata is None:
            body: Dict[str, Any] = {"data": checked.value,
                                    "headers": {"Content-Type": "application/octet-stream"}}
        else:
            body = {"files": [("value", (None, checked.value, "application/octet-stream")),
                              ("metadata", (None, checked.metadata, "application/json"))]}
        envelope(self._rest.call("PUT", _path("values", key), params=params, write=True, **body),
                 "put")

    def delete(self, key: str) -> None:
        response = self._rest.call("DELETE", _path("values", key))
        if not is_missing(response):
            envelope(response, "delete")

    def _bulk(self, method: str, path: str, items: List[bytes], max_items: int,
              write: bool = False) -> List[str]:
        """Send pre-encoded items in as few requests as KV allows, paying for all of them up
        front so a budget that cannot cover the whole call sends nothing."""
        bodies = list(_json_array(items, max_items))
        self._rest.spend(len(bodies))
        unsuccessful: List[str] = []
        for body in bodies:
            response = self._rest.send(method, path, write=write, data=body,
                                       headers={"Content-Type": "application/json"})
            result = envelope(response, path).get("result")
            with parsing(path):
                failed = (result or {}).get("unsuccessful_keys") or []
                unsuccessful.extend(str(key) for key in failed)
        return unsuccessful

    def bulk_put(self, pairs: Sequence[KVPair]) -> List[str]:
        """Values travel base64-encoded (they are binary). Every pair is checked before anything
        is sent; if a request fails, KVError is raised and earlier chunks stay written."""
        now = time.time()
        items = []
        for pair in pairs:
            items.append(encode_json(bulk_put_item(pair, now)))
        return self._bulk("PUT", "/bulk", items, limits.BULK_WRITE_MAX_ITEMS, write=True)

    def bulk_delete(self, keys: Sequence[str]) -> List[str]:
        items = []
        for key in keys:
            limits.validate_key(key)
            items.append(encode_json(key))
        return self._bulk("POST", "/bulk/delete", items, limits.BULK_DELETE_MAX_ITEMS)

    def bulk_get(self, keys: Sequence[str]) -> Dict[str, Optional[bytes]]:
        """Values come back as UTF-8 text (KV's bulk read has no binary type): use ``get`` for
        binary values."""
        found: Dict[str, Optional[bytes]] = {}
        for batch, values in self._bulk_get(keys):
            for key in batch:
                text = values.get(key)
                with parsing("bulk get"):
                    found[key] = None if text is None else text.encode("utf-8")
        return {key: found[key] for key in keys}

    def bulk_metadata(self, keys: Sequence[str]) -> Dict[str, Optional[Mapping[str, Any]]]:
        """One bulk read per 100 keys (values come along as text and are dropped: KV's bulk
        read has no metadata-only form)."""
        found: Dict[str, Optional[Mapping[str, Any]]] = {}
        for batch, result in self._bulk_get(keys, with_metadata=True):
            for key in batch:
                item = result.get(key)
                with parsing("bulk get"):
                    found[key] = None if item is None else dict(item.get("metadata") or {})
        return found

    def _bulk_get(self, keys: Sequence[str], with_metadata: bool = False
                  ) -> Iterator[Tuple[List[str], Dict[str, Any]]]:
        """Each batch of at most 100 distinct keys with its ``values`` mapping, all paid for up
        front (a budget that cannot cover the whole call sends nothing)."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            limits.validate_key(key)
        batches = list(chunked(unique, limits.BULK_GET_MAX_KEYS))
        self._rest.spend(len(batches))
        for batch in batches:
            response = self._rest.send("POST", "/bulk/get", json={
                "keys": batch, "type": "text", "withMetadata": with_metadata})
            result: Any = envelope(response, "bulk get").get("result")
            with parsing("bulk get"):
                values = result["values"]
                if not isinstance(values, dict):
                    raise TypeError("values is not an object")
            yield batch, values

    def list(self, prefix: str = "", limit: int = 1000, cursor: Optional[str] = None) -> ListPage:
        return list_page(self._rest, prefix, limit, cursor)

    def close(self) -> None:
        self._rest.close()
