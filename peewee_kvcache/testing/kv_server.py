"""KVServer: Cloudflare's Workers KV REST API served over real HTTP from a LocalKVNamespace.

Cloudflare cannot be reached from tests or a laptop, so the REST client, the cache and the CLI run
against this server: same paths, envelopes, limits, error codes and HTTP statuses (the checks are
``limits``' own, shared with the client). Tests also need the API's bad days, so faults and a rate
limit can be switched on from Python or over HTTP, and requests are counted per endpoint.
It binds to loopback only and never logs the API token. This module starts and stops it; the
shared state is ``state``'s, the request handling ``handler``'s, the faults ``faults``'.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Optional, Tuple, Union

from ..kv.transport import is_loopback
from .faults import Fault
from .handler import KVHTTPServer
from .routes import ADMIN_PREFIX
from .state import ServerState

# Fault too: suites written before ``peewee_kvcache.testing`` existed import it from here
__all__ = ["KVServer", "Fault"]


class KVServer(ServerState):
    """A Cloudflare-compatible Workers KV endpoint on loopback, backed by ``data_dir``.

    ``base_url`` is the API root a client's ``base_url`` takes (``http://HOST:PORT/client/v4``);
    the namespace lives under ``/accounts/{account_id}/storage/kv/namespaces/{namespace_id}``.
    ``rate_limit=(requests, per_seconds)`` answers 429 / code 971 / Retry-After past the budget
    (a sliding window), as Cloudflare does. ``latency`` (seconds, also settable while serving)
    delays every API request, as a KV that far away would. ``admin_url`` (``/__admin``) serves
    ``POST|DELETE faults``, ``GET counts`` and ``POST reset`` with the same token.
    """

    def __init__(self, data_dir: Union[str, "os.PathLike[str]"], *, host: str = "127.0.0.1",
                 port: int = 0, api_token: str = "local-dev-token",
                 account_id: str = "local-account", namespace_id: str = "local-namespace",
                 rate_limit: Optional[Tuple[int, float]] = None, latency: float = 0.0) -> None:
        if not is_loopback(host):
            raise ValueError(f"KVServer binds to loopback only, not {host!r}")
        super().__init__(data_dir, api_token=api_token, account_id=account_id,
                         namespace_id=namespace_id, rate_limit=rate_limit, latency=latency)
        self.host = host
        self._requested_port = port
        self._httpd: Optional[KVHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "KVServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (port 0 picks a free one), else the requested one."""
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/client/v4"

    @property
    def admin_url(self) -> str:
        return self.base_url[:-len("/client/v4")] + ADMIN_PREFIX.rstrip("/")

    def start(self) -> "KVServer":
        """Bind, then serve in a daemon thread."""
        if self._httpd is not None or self.stopping:
            raise RuntimeError("a KVServer starts once")
        self._httpd = KVHTTPServer((self.host, self._requested_port), self)
        # A short poll interval keeps stop() quick: shutdown() waits for the next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=f"kv-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake requests sleeping in faults, close the namespace."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self.namespace.close()
