"""RestTransport: how requests reach Cloudflare's REST API, apart from what they ask for.

It owns the pooled sessions and their retry policies (urllib3's: connection/read errors, 429,
5xx, ``Retry-After``), the request budget paid before sending, and the reading of Cloudflare's
JSON envelopes into results or KVError. How a request proves who sent it is pluggable (a
``requests.auth.AuthBase``: :class:`BearerAuth` for Cloudflare's API token, an HMAC signer for the
KV gateway Worker); the credential lives only there: it is never logged, shown by ``repr`` or
carried by an exception.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import logging
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union, cast
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util import Retry

from ..core import forksafe
from ..core.config import check_number
from . import codes, limits
from .base import BudgetExhausted, KeyInfo, KVError, KVOutcomeUnknown, KVPair, ListPage
from .budget import RequestBudget

log = logging.getLogger(__name__)

Timeout = Union[float, Tuple[float, float]]

_RETRY_STATUSES = frozenset([429, *range(500, 600)])
_MAX_RETRY_AFTER = 10.0


class _Retry(Retry):
    """urllib3's Retry with ``Retry-After`` capped: a 5-minute lockout must not park a thread."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), _MAX_RETRY_AFTER)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: the only hosts plain http may reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return False


def check_base_url(url: str) -> str:
    """Plain http would expose the token on the wire; only a loopback test server may use it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host))):
        return url.rstrip("/")
    raise ValueError(f"base_url must be https:// (http:// only for a loopback host): {url!r}")


class BearerAuth(AuthBase):
    """Cloudflare's ``Authorization: Bearer <token>``; the token is held here only."""

    def __init__(self, api_token: Any) -> None:
        # one header value; its type may be named, the value never is
        if not isinstance(api_token, str):
            raise TypeError(f"api_token must be a str, got {type(api_token).__name__}")
        if not api_token or any(ch.isspace() or not ch.isprintable() for ch in api_token):
            raise ValueError("api_token must be non-empty, without whitespace or control chars")
        self._header = f"Bearer {api_token}"

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request


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


def _pooled_session(auth: AuthBase, retry: Retry) -> requests.Session:
    """A session with its own connection pool, authenticating each request with ``auth``."""
    session = requests.Session()
    session.auth = auth
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _new_session(auth: AuthBase, retries: int, backoff_factor: float,
                 resend: bool = True) -> requests.Session:
    """``resend=False``: no retry after a request may have reached KV (read errors, 5xx); only
    a refused connection or a 429 is sent again (urllib3 resends the same bytes: a signed
    request keeps its nonce, which the server then has not seen, or refused unprocessed)."""
    no_resend: Dict[str, Any] = {} if resend else {"read": 0, "other": 0}
    retry = _Retry(total=retries, backoff_factor=backoff_factor,
                   status_forcelist=_RETRY_STATUSES if resend else frozenset([429]),
                   allowed_methods=None, respect_retry_after_header=True,
                   raise_on_status=False, **no_resend)
    return _pooled_session(auth, retry)


def _errors(response: requests.Response) -> List[Any]:
    """The ``errors`` list of a response's envelope; empty for a body that is not one."""
    try:
        return list(response.json().get("errors") or [])
    except (ValueError, AttributeError, TypeError):  # not JSON, not an object, not a list
        return []


def is_missing(response: requests.Response) -> bool:
    """KV's answer for a key that does not exist (404 with code 10009)."""
    return response.status_code == 404 and any(
        isinstance(e, dict) and e.get("code") == codes.ERR_KEY_NOT_FOUND
        for e in _errors(response))


def api_error(response: requests.Response, what: str) -> KVError:
    """Cloudflare's first error from the envelope, or a generic one for an unreadable body."""
    errors = _errors(response)
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    code = first.get("code") if isinstance(first.get("code"), int) else None
    message = first.get("message") or f"{what}: HTTP {response.status_code} without a KV " \
        "API envelope"
    return KVError(str(message), code, response.status_code)


def envelope(response: requests.Response, what: str) -> Dict[str, Any]:
    """The JSON envelope of a successful call; KVError for failures and malformed bodies."""
    if response.ok:
        try:
            body = response.json()
        except ValueError:  # requests' JSONDecodeError
            body = None
        if isinstance(body, dict) and body.get("success") is True:
            return body
    raise api_error(response, what)


@contextmanager
def parsing(what: str) -> Iterator[None]:
    """A successful envelope whose result lacks the expected shape is a KVError too."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KVError(f"{what}: malformed response") from None


class RestTransport:
    """Sends requests under one URL root with three sessions: the query path's ``read`` (short
    timeout, few retries: it bounds what a failing KV adds to a query), ``write`` (never resends
    what may have reached KV) and the patient default for everything else."""

    def __init__(self, root: str, auth: AuthBase, *, timeout: Timeout, read_timeout: Timeout,
                 retries: int, read_retries: int, backoff_factor: float,
                 budget: Optional[RequestBudget]) -> None:
        _check_timeout("timeout", timeout)
        _check_timeout("read_timeout", read_timeout)
        check_number("retries", retries, integer=True, zero_ok=True)
        check_number("read_retries", read_retries, integer=True, zero_ok=True)
        check_number("backoff_factor", backoff_factor, zero_ok=True)
        if budget is not None and not isinstance(budget, RequestBudget):
            raise TypeError(f"budget must be a RequestBudget or None, got {budget!r}")
        self.root = root
        self.budget = budget
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._session = _new_session(auth, retries, backoff_factor)
        self._read_session = _new_session(auth, read_retries, backoff_factor)
        # A write whose answer did not come may still land after a retry did, and after the
        # invalidation that should have removed it: writes are resent only when KV refused them
        # (429) or the connection never opened; any other failure is reported as unknown.
        self._write_session = _new_session(auth, retries, backoff_factor, resend=False)
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """A forked child must never send on the parent's pooled sockets (two processes' bytes
        would interleave on one connection), nor wait on a pool lock a parent thread held: it
        gets new sessions with the same credentials and retry policies. Closing the inherited
        ones only closes this process's descriptors (no shutdown): the parent keeps its
        connections."""
        inherited = (self._session, self._read_session, self._write_session)
        self._session, self._read_session, self._write_session = (
            _pooled_session(cast(AuthBase, old.auth),
                            cast(HTTPAdapter, old.get_adapter("https://")).max_retries)
            for old in inherited)
        for old in inherited:
            old.close()

    def spend(self, requests_needed: int) -> None:
        """Pay for requests before sending any. Only first attempts are charged, not urllib3's
        retries: those happen while the API is failing anyway, and counting them would need a
        hook inside urllib3 for little gain."""
        if self.budget is not None and not self.budget.try_acquire(requests_needed):
            raise BudgetExhausted(f"request budget exhausted ({self.budget!r}); nothing was sent")

    def send(self, method: str, path: str, *, read: bool = False, write: bool = False,
             **kwargs: Any) -> requests.Response:
        """One request already paid for (with urllib3's retries; ``read`` selects the query-path
        session, ``write`` the one that never resends). A write that may have reached KV without
        an answer raises KVOutcomeUnknown. Failures become KVError built outside the ``except``
        block, so no chained requests exception (holding the headers) travels along."""
        started = time.monotonic()
        session, timeout = ((self._read_session, self._read_timeout) if read
                            else (self._write_session if write else self._session, self._timeout))
        try:
            response = session.request(method, self.root + path, timeout=timeout,
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

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request, paid for and sent."""
        self.spend(1)
        return self.send(method, path, **kwargs)

    def close(self) -> None:
        for session in (self._session, self._read_session, self._write_session):
            session.close()


def encode_json(item: Any) -> bytes:
    """One compact JSON item of a request body (ASCII: any key travels escaped, byte-exact)."""
    return json.dumps(item, separators=(",", ":")).encode("ascii")


def json_batches(items: List[bytes], max_items: int, max_bytes: int) -> Iterator[List[bytes]]:
    """Pre-encoded JSON items grouped for JSON-array request bodies within an item count and a
    body size (the REST API's and the gateway Worker's limits differ; the grouping does not)."""
    batch: List[bytes] = []
    size = 2
    for item in items:
        if batch and (len(batch) == max_items or size + len(item) + 1 > max_bytes):
            yield batch
            batch, size = [], 2
        batch.append(item)
        size += len(item) + 1
    if batch:
        yield batch


def list_page(rest: RestTransport, prefix: str, limit: int, cursor: Optional[str]) -> ListPage:
    """One page of keys: the REST API and the gateway Worker answer ``GET /keys`` alike."""
    limits.validate_prefix(prefix)
    params: Dict[str, Any] = {"limit": limits.validate_list_limit(limit)}
    if prefix:
        params["prefix"] = prefix
    if cursor:
        params["cursor"] = cursor
    body = envelope(rest.call("GET", "/keys", params=params), "list")
    with parsing("list"):
        keys = [KeyInfo(str(entry["name"]), entry.get("expiration"), entry.get("metadata"))
                for entry in body["result"]]
        next_cursor = (body.get("result_info") or {}).get("cursor") or None
    return ListPage(keys, next_cursor)


def bulk_put_item(pair: KVPair, now: float) -> Dict[str, Any]:
    """One pair, checked against KV's limits, as an item of a bulk write: the REST API's shape
    (a binary value in base64), which the gateway Worker takes as well."""
    checked = limits.validate_put(pair.key, pair.value, expiration=pair.expiration,
                                  expiration_ttl=pair.expiration_ttl, metadata=pair.metadata,
                                  now=now)
    item: Dict[str, Any] = {"key": pair.key, "base64": True,
                            "value": base64.b64encode(checked.value).decode("ascii")}
    if pair.expiration_ttl is not None:
        item["expiration_ttl"] = pair.expiration_ttl
    elif pair.expiration is not None:
        item["expiration"] = pair.expiration
    if pair.metadata is not None:
        item["metadata"] = pair.metadata
    return item
