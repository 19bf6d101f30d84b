"""Cross-host L1 eviction over PostgreSQL LISTEN/NOTIFY.

Another host's invalidation deletes L2 entries but cannot reach this host's L1. On PostgreSQL the
writer therefore also sends ``pg_notify``: inside its transaction (delivered exactly when the
commit is, never for a rollback), or right after an autocommit write; a listener thread in every
process bumps the named tokens in its own L1. Without it (or when a notification is lost, e.g. a
crash between an autocommit write and its NOTIFY) ``l1_max_age`` still bounds staleness.

:class:`PostgresNotifications` mixes both into a PostgreSQL database class; it overrides only
the two hooks :class:`~.database.CachedDatabase` offers (``_kv_broadcast``, ``_kv_before_read``).
"""
from __future__ import annotations

import json
import logging
import select
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

import peewee

from ..core import forksafe
from ..core.names import EVERYTHING

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
            except Exception as exc:  # the thread's top: whatever the driver raises, retry
                self._ready.clear()
                log.warning("peewee_kvcache: NOTIFY listener lost its connection (%s: %s); "
                            "retrying in %.1f s (L1 entries stay bounded by l1_max_age)",
                            type(exc).__name__, exc, backoff)
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
        with self._working:  # on_names (the cache's evict_local) logs and counts its own faults
            self._on_names(data["n"])


class PostgresNotifications:
    """Cross-host L1 eviction for PostgreSQL: ``pg_notify`` inside the writing transaction and a
    LISTEN thread per database object. ``notify=False`` turns both off. Mix in before
    :class:`~.database.CachedDatabase`."""

    def __init__(self, database: Any, *args: Any, notify: bool = True, **kwargs: Any):
        if not isinstance(notify, bool):
            raise TypeError(f"notify must be a bool, got {notify!r}")
        self._kv_notify = notify
        self._kv_listener: Optional[Listener] = None
        self._kv_listener_lock = threading.Lock()  # one LISTEN thread, however many readers
        forksafe.renew_locks(self, "_kv_listener_lock")
        super().__init__(database, *args, **kwargs)  # type: ignore[call-arg]

    def _kv_broadcast(self, names: Sequence[str]) -> None:
        if not (self._kv_notify and names):
            return
        cache = self.cache  # type: ignore[attr-defined]
        try:
            self._run("SELECT pg_notify(%s, %s)",  # type: ignore[attr-defined]
                      (cache.channel, payload(cache.origin, names, EVERYTHING)))
        except peewee.PeeweeException as exc:  # l1_max_age still bounds other hosts' staleness
            log.warning("peewee_kvcache: NOTIFY failed (%s: %s)", type(exc).__name__, exc)

    def _kv_before_read(self) -> None:
        listener = self._kv_listener
        if self._kv_notify and (listener is None or listener.needs_start):  # e.g. after fork
            self.start_listener()

    def start_listener(self) -> Listener:
        """Start (once per process) the thread that evicts this host's L1 entries on other
        hosts' writes."""
        with self._kv_listener_lock:
            if self._kv_listener is None:
                import psycopg2
                params = dict(self.connect_params)  # type: ignore[attr-defined]
                database = self.database  # type: ignore[attr-defined]
                cache = self.cache  # type: ignore[attr-defined]
                self._kv_listener = Listener(lambda: psycopg2.connect(dbname=database, **params),
                                             cache.channel, cache.origin, cache.evict_local)
                weakref.finalize(self, self._kv_listener.request_stop)  # its connection too
            self._kv_listener.start()
            return self._kv_listener

    def stop_listener(self) -> None:
        if self._kv_listener is not None:
            self._kv_listener.stop()
