"""Cross-host L1 eviction over PostgreSQL LISTEN/NOTIFY.

Another host's invalidation deletes L2 entries but cannot reach this host's L1. On PostgreSQL the
writer therefore also sends ``pg_notify``: inside its transaction (delivered exactly when the
commit is, never for a rollback), or right after an autocommit write; a listener thread in every
process bumps the named tokens in its own L1. Without it (or when a notification is lost, e.g. a
crash between an autocommit write and its NOTIFY) ``l1_max_age`` still bounds staleness.
"""
from __future__ import annotations

import json
import logging
import select
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..core import forksafe

log = logging.getLogger("peewee_kvcache")

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
MAX_PAYLOAD = 7900


def payload(origin: str, names: Sequence[str], everything: str) -> str:
    """JSON payload; a list too long for NOTIFY degrades to "everything"."""
    text = json.dumps({"o": origin, "n": list(names)}, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        text = json.dumps({"o": origin, "n": [everything]}, separators=(",", ":"))
    return text


def parse(text: str) -> Optional[Dict[str, Any]]:
    """The payload's origin and names, or None for a payload that isn't ours."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if (not isinstance(data, dict) or not isinstance(data.get("o"), str)
            or not isinstance(data.get("n"), list)
            or not all(isinstance(n, str) for n in data["n"])):
        return None
    return data


class Listener:
    """A daemon thread holding one LISTEN connection; reconnects with backoff after failures.
    A forked child starts its own (see :attr:`needs_start`)."""

    def __init__(self, connect: Callable[[], Any], channel: str, origin: str,
                 on_names: Callable[[List[str]], None], poll_s: float = 0.25):
        self._connect = connect
        self._channel = channel
        self._origin = origin
        self._on_names = on_names
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._working = threading.Lock()  # held while evicting (SQLite): fork waits for it
        forksafe.after_fork_in_child(self._after_fork)
        forksafe.hold_across_fork(self, "_working")

    def _after_fork(self) -> None:
        """The parent's thread did not survive the fork. Its connection (a socket shared with
        the parent) is left alone: the vanished thread's frame still references it, so it is
        never closed here, and the parent's LISTEN goes on."""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = None

    @property
    def needs_start(self) -> bool:
        """True until :meth:`start` ran in this process (again in a forked child)."""
        return self._thread is None

    def start(self) -> None:
        """Start the thread unless it runs (callers serialise calls: see the database)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="peewee-kvcache-listen",
                                        daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once LISTEN is in place (tests and startup hooks use it)."""
        return self._ready.wait(timeout)

    def request_stop(self) -> None:
        """Ask the thread to end (it closes its connection within ``poll_s``)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._poll_s * 2)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except Exception:
                self._ready.clear()
                log.warning("peewee_kvcache: NOTIFY listener lost its connection; retrying in "
                            "%.1f s (L1 entries stay bounded by l1_max_age)", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _listen(self) -> None:
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'LISTEN "{self._channel}"')
            self._ready.set()
            while not self._stop.is_set():
                if select.select([conn], [], [], self._poll_s)[0]:
                    conn.poll()
                    while conn.notifies:
                        self._handle(conn.notifies.pop(0).payload)
        finally:
            conn.close()

    def _handle(self, text: str) -> None:
        data = parse(text)
        if data is None or data["o"] == self._origin:  # this L1 bumped its tokens already
            return
        try:
            with self._working:
                self._on_names(data["n"])
        except Exception:
            log.warning("peewee_kvcache: L1 eviction from a notification failed",
                        exc_info=log.isEnabledFor(logging.DEBUG))
