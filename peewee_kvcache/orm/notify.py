"""Cross-host L1 eviction over PostgreSQL LISTEN/NOTIFY.

Another host's invalidation deletes L2 entries but cannot reach this host's L1. On PostgreSQL the
writer therefore also sends ``pg_notify``, inside the transaction that commits the write, so it is
delivered exactly when the write commits and never for a rollback or a failed statement; a
listener thread in every process bumps the named tokens in its own L1. Without it (or when a
notification is lost) ``l1_max_age`` still bounds staleness.

The notification travels in the write's own round trip: ``SELECT pg_notify(...);`` goes in front
of the statement's text, and a multi-statement simple query (psycopg2 sends one) runs as one
transaction whose result is the last statement's (rows, ``rowcount``, ``RETURNING``). An
autocommit write is then one implicit transaction with its notification; a COMMIT is sent as
``SELECT pg_notify(...); COMMIT``. Where that can't be done (psycopg 3 binds parameters on the
server, which allows one statement only; DDL and unknown writes may refuse a transaction block,
e.g. ``CREATE INDEX CONCURRENTLY``), the notification is a statement of its own: before a
COMMIT, after an autocommit write.

:class:`PostgresNotifications` mixes the hooks :class:`~.database.CachedDatabase` offers
(``_kv_broadcast``, ``_kv_before_read``) into a PostgreSQL database class, above it;
:class:`NotifyInline` sits below it, right above Peewee's class, and puts the notification into
the statement Peewee sends.
"""
from __future__ import annotations

import contextvars
import json
import logging
import select
import socket
import threading
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple)

import peewee

from ..core import forksafe
from ..core.names import EVERYTHING

log = logging.getLogger("peewee_kvcache")

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
MAX_PAYLOAD = 7900

Send = Callable[[], Any]

#: Where a write's notification goes (see :meth:`PostgresNotifications._kv_broadcast`): in the
#: statement, else after it (an autocommit write); in the statement, else before it (a statement
#: that commits a transaction); in a statement of its own after it (a write that may refuse to run
#: in a transaction block).
WITH, WITH_COMMIT, AFTER = "with", "with-commit", "after"

#: notifications remembered per database (see PostgresNotifications._kv_notifications)
_MEMO_MAX = 256

#: SQLSTATEs with which PostgreSQL refuses a notification: no EXECUTE on pg_notify (42501), the
#: NOTIFY queue full at commit (54000)
_REFUSED = ("42501", "54000")
_TXN_IDLE, _TXN_INERROR = 0, 3  # psycopg2.extensions.TRANSACTION_STATUS_IDLE / _INERROR

#: the notification the next statement a database sends in this context carries: (the database,
#: its channel, the payload); set around one send by PostgresNotifications, taken by NotifyInline
_CARRIED: "contextvars.ContextVar[Optional[Tuple[Any, str, str]]]" = contextvars.ContextVar(
    "peewee_kvcache_notify", default=None)


def payload(origin: str, names: Sequence[str], everything: str) -> str:
    """JSON payload; a list too long for NOTIFY degrades to "everything"."""
    text = json.dumps({"o": origin, "n": list(names)}, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        text = json.dumps({"o": origin, "n": [everything]}, separators=(",", ":"))
    return text


def inline(sql: str, params: Any, channel: str, text: str) -> Tuple[str, Any]:
    """``sql`` and ``params`` with ``pg_notify(channel, text)`` in front, in the same text.

    Peewee always lets psycopg2 interpolate (it passes ``params or ()``), so the statement's own
    ``%`` are already escaped and the notification's values can be parameters too: positional in
    front of a sequence, named beside a mapping."""
    if isinstance(params, Mapping) and params:
        named = {**params, "pkv_notify_channel": channel, "pkv_notify_payload": text}
        return ("SELECT pg_notify(%(pkv_notify_channel)s, %(pkv_notify_payload)s); " + sql,
                named)
    return "SELECT pg_notify(%s, %s); " + sql, (channel, text, *(params or ()))


def _refused(exc: BaseException) -> bool:
    """Whether PostgreSQL's error may be its refusal of the notification (Peewee keeps the
    driver's exception as ``orig``)."""
    return getattr(getattr(exc, "orig", None), "pgcode", None) in _REFUSED


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
        #: a socket pair the thread waits on beside its connection: stop() wakes it at once
        self._wake: Optional[Tuple[socket.socket, socket.socket]] = None
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
        self._wake = None

    @property
    def needs_start(self) -> bool:
        """True until :meth:`start` ran in this process (again in a forked child)."""
        return self._thread is None

    def start(self) -> None:
        """Start the thread unless it runs (callers serialise calls: see the database)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._run, args=(self._wake,),
                                        name="peewee-kvcache-listen", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once LISTEN is in place (tests and startup hooks use it)."""
        return self._ready.wait(timeout)

    def request_stop(self) -> None:
        """Ask the thread to end: it wakes at once and closes its connection."""
        self._stop.set()
        wake = self._wake
        if wake is not None:
            try:
                wake[1].send(b"x")
            except OSError:  # the thread has ended and closed it
                pass

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(self._poll_s * 2)

    def _run(self, wake: Tuple[socket.socket, socket.socket]) -> None:
        try:
            self._serve(wake[0])
        finally:
            for end in wake:
                end.close()

    def _serve(self, woken: socket.socket) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen(woken)
                backoff = 0.5
            except Exception as exc:  # the thread's top: whatever the driver raises, retry
                self._ready.clear()
                log.warning("peewee_kvcache: NOTIFY listener lost its connection (%s: %s); "
                            "retrying in %.1f s (L1 entries stay bounded by l1_max_age)",
                            type(exc).__name__, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _listen(self, woken: socket.socket) -> None:
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'LISTEN "{self._channel}"')
            self._ready.set()
            while not self._stop.is_set():
                if conn in select.select([conn, woken], [], [], self._poll_s)[0]:
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


if TYPE_CHECKING:  # mixins: type-checked as the database they are mixed into
    from ..cache.facade import CloudflareKVCache
    _PostgresqlDatabase = peewee.PostgresqlDatabase
else:
    _PostgresqlDatabase = object


class PostgresNotifications(_PostgresqlDatabase):
    """Cross-host L1 eviction for PostgreSQL: ``pg_notify`` inside the writing transaction and a
    LISTEN thread per database object. ``notify=False`` turns both off. Mix in before
    :class:`~.database.CachedDatabase`."""

    cache: "CloudflareKVCache"  # these three are CachedDatabase's
    _state: Any
    _run: Callable[..., Any]

    def __init__(self, database: Any, *args: Any, notify: bool = True, **kwargs: Any):
        if not isinstance(notify, bool):
            raise TypeError(f"notify must be a bool, got {notify!r}")
        self._kv_notify = notify
        self._kv_listener: Optional[Listener] = None
        self._kv_listener_lock = threading.Lock()  # one LISTEN thread, however many readers
        #: names -> the notification a write of them carries (channel, payload): the same few
        #: sets of names are written again and again
        self._kv_notifications: Dict[Tuple[str, ...], Tuple[str, str]] = {}
        forksafe.renew_locks(self, "_kv_listener_lock")
        super().__init__(database, *args, **kwargs)

    def _kv_broadcast(self, names: Sequence[str], send: Send, where: str) -> Send:
        """``send`` made to notify other hosts of ``names`` exactly when its statement's
        transaction commits; ``where``: :data:`WITH`, :data:`WITH_COMMIT` or :data:`AFTER`."""
        if not (self._kv_notify and names):
            return send
        key = tuple(names)
        notification = self._kv_notifications.get(key)
        if notification is None:
            cache = self.cache
            notification = (cache.channel, payload(cache.origin, names, EVERYTHING))
            if len(self._kv_notifications) >= _MEMO_MAX:
                self._kv_notifications.clear()
            self._kv_notifications[key] = notification
        if where == AFTER or not self._kv_inline():
            return self._kv_apart(notification, send, before=where == WITH_COMMIT)
        carried = (self, *notification)

        def carrying() -> Any:
            token = _CARRIED.set(carried)  # NotifyInline takes it into the statement
            try:
                return send()
            finally:
                _CARRIED.reset(token)
        return carrying

    def _kv_apart(self, notification: Tuple[str, str], send: Send, before: bool) -> Send:
        """``send`` and the notification as a statement of its own, before or after it (after
        also when it failed: a statement outside a transaction block may have changed rows)."""
        def apart() -> Any:
            if before:
                self._kv_notify_now(notification)
                return send()
            try:
                return send()
            finally:
                self._kv_notify_now(notification)
        return apart

    def _kv_notify_now(self, notification: Tuple[str, str]) -> None:
        try:
            self._run("SELECT pg_notify(%s, %s)", notification)
        except peewee.PeeweeException as exc:  # l1_max_age still bounds other hosts' staleness
            log.warning("peewee_kvcache: NOTIFY failed (%s: %s)", type(exc).__name__, exc)

    def _kv_inline(self) -> bool:
        """psycopg2 interpolates on the client, so one text may hold two statements; psycopg 3
        (Peewee 4 may use it) binds parameters on the server: one statement only."""
        return type(getattr(self, "_adapter", None)).__name__ != "Psycopg3Adapter"

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
                params = dict(self.connect_params)
                database = self.database
                cache = self.cache
                self._kv_listener = Listener(lambda: psycopg2.connect(dbname=database, **params),
                                             cache.channel, cache.origin, cache.evict_local)
                weakref.finalize(self, self._kv_listener.request_stop)  # its connection too
            self._kv_listener.start()
            return self._kv_listener

    def stop_listener(self) -> None:
        if self._kv_listener is not None:
            self._kv_listener.stop()


class NotifyInline(_PostgresqlDatabase):
    """Puts the notification :class:`PostgresNotifications` carries into the statement the
    database sends next, in the same round trip. Mix in below
    :class:`~.database.CachedDatabase`, right above Peewee's PostgreSQL class."""

    _state: Any  # Peewee's connection state

    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        carried = _CARRIED.get()
        if carried is None or carried[0] is not self:
            return super().execute_sql(sql, params, *args, **kwargs)
        _CARRIED.set(None)  # one statement carries it
        conn = None if self.is_closed() else self._state.conn
        status = _TXN_IDLE if conn is None else conn.get_transaction_status()
        if status == _TXN_INERROR:
            # an aborted transaction: nothing this statement does can commit, nothing to tell
            return super().execute_sql(sql, params, *args, **kwargs)
        try:
            return super().execute_sql(*inline(sql, params, *carried[1:]),
                                       *args, **kwargs)
        except peewee.DatabaseError as exc:
            after = self._state.conn.get_transaction_status()
            if not (status == after == _TXN_IDLE and _refused(exc)):
                raise
            refusal = exc
        # No transaction was open, and the one this text ran in rolled back: the statement had
        # no effect. Send it alone (should it fail again, its own error is the one to raise).
        cursor = super().execute_sql(sql, params, *args, **kwargs)
        log.warning("peewee_kvcache: NOTIFY failed (%s: %s); the statement was sent without it",
                    type(refusal).__name__, refusal)
        return cursor

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        """COMMIT through :meth:`execute_sql` when it carries a notification (Peewee's own
        sends a bare COMMIT on a cursor)."""
        carried = _CARRIED.get()
        if carried is None or carried[0] is not self or self.is_closed():
            return super().commit(*args, **kwargs)
        NotifyInline.execute_sql(self, "COMMIT")
        return None
