"""CloudflareKVNamespace: the KVNamespace interface over Cloudflare's Workers KV REST API.

The REST API allows only 1,200 requests per 5 minutes per token and locks a client out for 5 minutes
past that, so every request is paid for from a client-side budget first, every argument is checked
against KV's limits before anything is sent, and bulk calls are used wherever KV offers them.
Retries (connection/read errors, 429, 5xx, ``Retry-After``) are urllib3's, on one pooled session.
The API token lives only in the session's Authorization header: it is never stored elsewhere,
logged, shown by ``repr`` or carried by an exception.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from ..core import forksafe
from ..core.config import check_number
from . import limits
from .base import KVError, KVNamespace, KVOutcomeUnknown, KeyInfo, KVPair, ListPage, ValueWithMetadata, chunked

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
ERR_KEY_NOT_FOUND = 10009
_RETRY_STATUSES = frozenset([429, *range(500, 600)])
_MAX_RETRY_AFTER = 10.0
_DEFAULT_BUDGET: Any = object()  # "argument not given", as None means "no budget"
_ENV = {"account_id": "CLOUDFLARE_ACCOUNT_ID", "namespace_id": "CLOUDFLARE_KV_NAMESPACE_ID",
        "api_token": "CLOUDFLARE_API_TOKEN"}


class BudgetExhausted(KVError):
    """The request budget is spent; nothing was sent, so the caller should skip L2 for now."""


class RequestBudget:
    """Thread-safe token bucket that never lets more than ``capacity`` requests through in any
    window of ``period`` seconds (Cloudflare locks a token out for 5 minutes past 1,200 / 5 min).

    The bucket holds at most ``burst`` tokens (default a sixth of ``capacity``) and refills at
    ``(capacity - burst) / period`` per second, so a full bucket plus a whole period of refill is
    exactly ``capacity``. Share one instance between namespaces that use the same API token.
    """

    def __init__(self, capacity: float = 1200, period: float = 300.0,
                 burst: Optional[float] = None) -> None:
        check_number("capacity", capacity)
        check_number("period", period)
        burst = capacity / 6 if burst is None else check_number("burst", burst)
        if not 1 <= burst <= capacity:
            raise ValueError(f"burst must be between 1 and capacity={capacity!r}, got {burst!r}")
        self.capacity = float(capacity)
        self.period = float(period)
        self.burst = float(burst)
        self._rate = (self.capacity - self.burst) / self.period
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")

    def __repr__(self) -> str:
        return f"RequestBudget({self.capacity:g}, {self.period:g}, burst={self.burst:g})"

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if all are available; never blocks."""
        with self._lock:
            self._refill()
            if self._tokens < n:
                return False
            self._tokens -= n
            return True

    def remaining(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens


class _Retry(Retry):
    """urllib3's Retry with ``Retry-After`` capped: a 5-minute lockout must not park a thread."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), _MAX_RETRY_AFTER)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(url: str) -> str:
    """Plain http would expose the token on the wire; only a loopback test server may use it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host and (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))):
        return url.rstrip("/")
    raise ValueError(f"base_url must be https:// (http:// only for a loopback host): {url!r}")


def _check_timeout(name: str, value: Any) -> None:
    """Seconds, or a (connect, read) pair of them, each > 0. None is refused: without a timeout
    a hung KV would hold a query (or the writer thread) forever."""
    parts = value if isinstance(value, tuple) else (value,)
    try:
        if len(parts) != 2 and isinstance(value, tuple):
            raise ValueError
        for part in parts:
            check_number(name, part)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be seconds > 0 or a (connect, read) pair of them, got "
                        f"{value!r}") from None


def _pooled_session(authorization: str, retry: Retry) -> requests.Session:
    """A session with its own connection pool; the token lives only in its header."""
    session = requests.Session()
    session.headers["Authorization"] = authorization
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _json_array(items: List[bytes], max_items: int) -> Iterator[bytes]:
    """JSON arrays of pre-encoded items, each within KV's item count and request size limits."""
    batch: List[bytes] = []
    size = 2
    for item in items:
        if batch and (len(batch) == max_items
                      or size + len(item) + 1 > limits.BULK_REQUEST_MAX_BYTES):
            yield b"[" + b",".join(batch) + b"]"
            batch, size = [], 2
        batch.append(item)
        size += len(item) + 1
    if batch:
        yield b"[" + b",".join(batch) + b"]"


def _encode(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode("ascii")


class CloudflareKVNamespace(KVNamespace):
    """One Workers KV namespace reached over the REST API; behaves like LocalKVNamespace."""

    propagation_delay = 60.0  # KV: visible elsewhere (and in list) within about 60 s

    def __init__(self, account_id: str, namespace_id: str, api_token: str, *,
                 base_url: str = DEFAULT_BASE_URL,
                 timeout: Union[float, Tuple[float, float]] = (3.05, 10.0), retries: int = 3,
                 backoff_factor: float = 0.3,
                 read_timeout: Union[float, Tuple[float, float]] = (1.0, 2.0),
                 read_retries: int = 0,
                 budget: Optional[RequestBudget] = _DEFAULT_BUDGET) -> None:
        for name, value in (("account_id", account_id), ("namespace_id", namespace_id),
                            ("base_url", base_url)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {value!r}")
            if not value.strip():
                raise ValueError(f"{name} must not be empty, got {value!r}")
        if not isinstance(api_token, str):  # the value is never shown, only its type
            raise TypeError(f"api_token must be a str, got {type(api_token).__name__}")
        if not api_token or any(ch.isspace() or not ch.isprintable() for ch in api_token):
            raise ValueError("api_token must be non-empty, without whitespace or control chars")
        _check_timeout("timeout", timeout)
        _check_timeout("read_timeout", read_timeout)
        check_number("retries", retries, integer=True, zero_ok=True)
        check_number("read_retries", read_retries, integer=True, zero_ok=True)
        check_number("backoff_factor", backoff_factor, zero_ok=True)
        if budget is not _DEFAULT_BUDGET and budget is not None \
                and not isinstance(budget, RequestBudget):
            raise TypeError(f"budget must be a RequestBudget or None, got {budget!r}")
        self.account_id = account_id
        self.namespace_id = namespace_id
        self.base_url = _check_base_url(base_url)
        self.budget = RequestBudget() if budget is _DEFAULT_BUDGET else budget
        self._root = (f"{self.base_url}/accounts/{quote(account_id, safe='')}"
                      f"/storage/kv/namespaces/{quote(namespace_id, safe='')}")
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._session = self._new_session(api_token, retries, backoff_factor)
        # ``get`` runs on a query's path: its own short timeout and few retries bound the
        # latency a failing KV adds to a query; background writes keep the patient settings.
        self._read_session = self._new_session(api_token, read_retries, backoff_factor)
        # A write whose answer did not come may still land after a retry did, and after the
        # invalidation that should have removed it: writes are resent only when KV refused them
        # (429) or the connection never opened; any other failure is reported as unknown.
        self._write_session = self._new_session(api_token, retries, backoff_factor, resend=False)
        forksafe.after_fork_in_child(self._after_fork)

    @staticmethod
    def _new_session(api_token: str, retries: int, backoff_factor: float,
                     resend: bool = True) -> requests.Session:
        """``resend=False``: no retry after a request may have reached KV (read errors, 5xx)."""
        retry = _Retry(total=retries, backoff_factor=backoff_factor,
                       status_forcelist=_RETRY_STATUSES if resend else frozenset([429]),
                       allowed_methods=None, respect_retry_after_header=True,
                       raise_on_status=False, **({} if resend else {"read": 0, "other": 0}))
        return _pooled_session(f"Bearer {api_token}", retry)

    def _after_fork(self) -> None:
        """A forked child must never send on the parent's pooled sockets (two processes' bytes
        would interleave on one connection), nor wait on a pool lock a parent thread held: it
        gets new sessions with the same credentials and retry policies. Closing the inherited
        ones only closes this process's descriptors (no shutdown): the parent keeps its
        connections."""
        inherited = (self._session, self._read_session, self._write_session)
        self._session, self._read_session, self._write_session = (
            _pooled_session(old.headers["Authorization"], old.get_adapter("https://").max_retries)
            for old in inherited)
        for old in inherited:
            old.close()

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

    # --- transport ----------------------------------------------------------------------------

    def _spend(self, requests_needed: int) -> None:
        """Pay for requests before sending any. Only first attempts are charged, not urllib3's
        retries: those happen while the API is failing anyway, and counting them would need a
        hook inside urllib3 for little gain."""
        if self.budget is not None and not self.budget.try_acquire(requests_needed):
            raise BudgetExhausted(f"request budget exhausted ({self.budget!r}); nothing was sent")

    def _send(self, method: str, path: str, *, read: bool = False, write: bool = False,
              **kwargs: Any) -> requests.Response:
        """One request (with urllib3's retries; ``read`` selects the query-path session,
        ``write`` the one that never resends). A write that may have reached KV without an
        answer raises KVOutcomeUnknown. Failures become KVError built outside the ``except``
        block, so no chained requests exception (holding the headers) travels along."""
        started = time.monotonic()
        session, timeout = ((self._read_session, self._read_timeout) if read
                            else (self._write_session if write else self._session, self._timeout))
        try:
            response = session.request(method, self._root + path, timeout=timeout,
                                       allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            inner = exc.args[0] if exc.args else None
            root = getattr(inner, "reason", inner)
            reason = type(exc).__name__
            if isinstance(root, BaseException):
                reason += f" ({type(root).__name__})"
            # a connection that never opened carried nothing; any other failure may have
            maybe_sent = not (isinstance(exc, requests.ConnectTimeout)
                              or isinstance(root, urllib3.exceptions.NewConnectionError))
        else:
            log.debug("%s %s -> %s in %.3fs", method, path, response.status_code,
                      time.monotonic() - started)
            if write and response.status_code >= 500:
                raise KVOutcomeUnknown(f"{method} {path} failed: HTTP {response.status_code}",
                                       None, response.status_code)
            return response
        log.debug("%s %s failed: %s", method, path, reason)
        if write and maybe_sent:
            raise KVOutcomeUnknown(f"{method} {path} failed: {reason}")
        raise KVError(f"{method} {path} failed: {reason}")

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self._spend(1)
        return self._send(method, path, **kwargs)

    @staticmethod
    def _errors(response: requests.Response) -> List[Any]:
        try:
            return list(response.json().get("errors") or [])
        except (ValueError, AttributeError, TypeError):
            return []

    def _missing(self, response: requests.Response) -> bool:
        return response.status_code == 404 and any(
            isinstance(e, dict) and e.get("code") == ERR_KEY_NOT_FOUND
            for e in self._errors(response))

    def _error(self, response: requests.Response, what: str) -> KVError:
        """Cloudflare's first error from the envelope, or a generic one for an unreadable body."""
        errors = self._errors(response)
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        code = first.get("code") if isinstance(first.get("code"), int) else None
        message = first.get("message") or f"{what}: HTTP {response.status_code} without a KV " \
            "API envelope"
        return KVError(str(message), code, response.status_code)

    def _envelope(self, response: requests.Response, what: str) -> Dict[str, Any]:
        """The JSON envelope of a successful call; KVError for failures and malformed bodies."""
        if response.ok:
            try:
                envelope = response.json()
            except ValueError:
                envelope = None
            if isinstance(envelope, dict) and envelope.get("success") is True:
                return envelope
        raise self._error(response, what)

    @contextmanager
    def _parsing(self, what: str) -> Iterator[None]:
        """A successful envelope whose result lacks the expected shape is a KVError too."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KVError(f"{what}: malformed response") from None

    def _path(self, endpoint: str, key: str) -> str:
        limits.validate_key(key)
        return f"/{endpoint}/{quote(key, safe='')}"

    # --- KVNamespace --------------------------------------------------------------------------

    def get(self, key: str) -> Optional[bytes]:
        response = self._call("GET", self._path("values", key), read=True)
        if response.status_code == 200:
            return response.content
        if self._missing(response):
            return None
        raise self._error(response, "get")

    def get_with_metadata(self, key: str) -> Optional[ValueWithMetadata]:
        """Two requests (value, then metadata); None if the key vanishes in between."""
        response = self._call("GET", self._path("values", key))
        if self._missing(response):
            return None
        if response.status_code != 200:
            raise self._error(response, "get")
        with self._parsing("get"):
            header = response.headers.get("expiration")
            expiration = int(header) if header else None
        meta = self._call("GET", self._path("metadata", key))
        if self._missing(meta):
            return None
        metadata = self._envelope(meta, "metadata").get("result")
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
        self._envelope(self._call("PUT", self._path("values", key), params=params, write=True,
                                  **body), "put")

    def delete(self, key: str) -> None:
        response = self._call("DELETE", self._path("values", key))
        if not self._missing(response):
            self._envelope(response, "delete")

    def _bulk(self, method: str, path: str, items: List[bytes], max_items: int,
              write: bool = False) -> List[str]:
        """Send pre-encoded items in as few requests as KV allows, paying for all of them up
        front so a budget that cannot cover the whole call sends nothing."""
        bodies = list(_json_array(items, max_items))
        self._spend(len(bodies))
        unsuccessful: List[str] = []
        for body in bodies:
            response = self._send(method, path, write=write, data=body,
                                  headers={"Content-Type": "application/json"})
            result = self._envelope(response, path).get("result")
            with self._parsing(path):
                failed = (result or {}).get("unsuccessful_keys") or []
                unsuccessful.extend(str(key) for key in failed)
        return unsuccessful

    def bulk_put(self, pairs: Sequence[KVPair]) -> List[str]:
        """Values travel base64-encoded (they are binary). Every pair is checked before anything
        is sent; if a request fails, KVError is raised and earlier chunks stay written."""
        now = time.time()
        items = []
        for pair in pairs:
            checked = limits.validate_put(pair.key, pair.value, expiration=pair.expiration,
                                          expiration_ttl=pair.expiration_ttl,
                                          metadata=pair.metadata, now=now)
            item: Dict[str, Any] = {"key": pair.key, "base64": True,
                                    "value": base64.b64encode(checked.value).decode("ascii")}
            if pair.expiration_ttl is not None:
                item["expiration_ttl"] = pair.expiration_ttl
            elif pair.expiration is not None:
                item["expiration"] = pair.expiration
            if pair.metadata is not None:
                item["metadata"] = pair.metadata
            items.append(_encode(item))
        return self._bulk("PUT", "/bulk", items, limits.BULK_WRITE_MAX_ITEMS, write=True)

    def bulk_delete(self, keys: Sequence[str]) -> List[str]:
        items = []
        for key in keys:
            limits.validate_key(key)
            items.append(_encode(key))
        return self._bulk("POST", "/bulk/delete", items, limits.BULK_DELETE_MAX_ITEMS)

    def bulk_get(self, keys: Sequence[str]) -> Dict[str, Optional[bytes]]:
        """Values come back as UTF-8 text (KV's bulk read has no binary type): use ``get`` for
        binary values."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            limits.validate_key(key)
        batches = list(chunked(unique, limits.BULK_GET_MAX_KEYS))
        self._spend(len(batches))
        found: Dict[str, Optional[bytes]] = {}
        for batch in batches:
            response = self._send("POST", "/bulk/get", json={"keys": batch, "type": "text"})
            result = self._envelope(response, "bulk get").get("result")
            with self._parsing("bulk get"):
                values = result["values"]
                for key in batch:
                    text = values.get(key)
                    found[key] = None if text is None else text.encode("utf-8")
        return {key: found[key] for key in keys}

    def list(self, prefix: str = "", limit: int = 1000, cursor: Optional[str] = None) -> ListPage:
        limits.validate_prefix(prefix)
        params: Dict[str, Any] = {"limit": limits.validate_list_limit(limit)}
        if prefix:
            params["prefix"] = prefix
        if cursor:
            params["cursor"] = cursor
        envelope = self._envelope(self._call("GET", "/keys", params=params), "list")
        with self._parsing("list"):
            keys = [KeyInfo(str(entry["name"]), entry.get("expiration"), entry.get("metadata"))
                    for entry in envelope["result"]]
            next_cursor = (envelope.get("result_info") or {}).get("cursor") or None
        return ListPage(keys, next_cursor)

    def close(self) -> None:
        self._session.close()
        self._read_session.close()
        self._write_session.close()
