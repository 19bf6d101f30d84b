"""What a KVServer's request threads share: the identity they check, the store they serve, and
the test controls (request counts, injected faults, the rate limit, a standing latency)."""
from __future__ import annotations

import os
import threading
from typing import Dict, Optional, Tuple, Union

from ..kv.local import LocalKVNamespace
from .faults import Fault, FaultQueue
from .traffic import EndpointCounts, RateLimit


class ServerState:
    """A namespace served under ``account_id`` / ``namespace_id`` to holders of ``api_token``."""

    def __init__(self, data_dir: Union[str, "os.PathLike[str]"], *, api_token: str,
                 account_id: str, namespace_id: str,
                 rate_limit: Optional[Tuple[int, float]], latency: float = 0.0) -> None:
        if not api_token or not account_id or not namespace_id:
            raise ValueError("api_token, account_id and namespace_id must not be empty")
        self.latency = latency
        self.rate = RateLimit(rate_limit)
        self.api_token, self.rate_limit = api_token, rate_limit
        self.account_id, self.namespace_id = account_id, namespace_id
        self.namespace = LocalKVNamespace(data_dir)
        self.faults = FaultQueue()
        self.traffic = EndpointCounts()
        self._stopping = threading.Event()

    @property
    def latency(self) -> float:
        """Seconds every API request waits before it is handled, for as long as it is set: a KV
        that far away (Cloudflare's REST API from outside Cloudflare is tens of ms). Settable
        while serving; ``reset()`` keeps it. One-off delays are ``Fault("latency")``."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if type(seconds) not in (int, float) or not 0 <= seconds <= 3600:
            raise ValueError(f"latency must be a number of seconds from 0 to 3600, "
                             f"got {seconds!r}")
        self._latency = float(seconds)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sleep(self, seconds: float) -> None:
        """A fault's sleep, cut short when the server stops."""
        self._stopping.wait(seconds)

    def counts(self) -> Dict[str, int]:
        """Requests received per endpoint, whatever their outcome (faulted and refused too)."""
        return self.traffic.snapshot()

    def reset_counts(self) -> None:
        self.traffic.clear()

    def inject(self, fault: Fault) -> None:
        """Add a copy of ``fault`` (its ``times`` counts down here); the oldest match applies."""
        self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        """Clear counts, faults, the rate-limit window and every stored key."""
        self.traffic.clear()
        self.faults.clear()
        self.rate.clear()
        self.namespace.clear()
