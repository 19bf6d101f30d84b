"""SQLite files this library keeps (the local KV store, the L1 state file): one connection per
thread, never closed under a running statement, and WAL mode for a file that several processes may
open (and create) at the same moment.

The busy timeout does not cover the switch to WAL: the ``journal_mode`` pragma reads the file's
header under a read lock, then upgrades to the write lock to rewrite it. SQLite never waits for
such an upgrade while another connection holds the write lock (both could be waiting for the
other), it fails at once with "database is locked" — what two processes opening a new file
together meet. So the switch is retried until the connection's busy timeout has passed; a retry
after the winner's switch finds the file in WAL mode and only reads.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Callable, Dict, Generic, List, Optional, TypeVar

from . import forksafe

#: first pause between attempts (doubled each time, up to the second)
FIRST_PAUSE_S = 0.001
MAX_PAUSE_S = 0.05


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put ``conn``'s file in WAL mode, retrying a lock conflict for up to ``timeout`` seconds.

    Raises ``sqlite3.OperationalError`` when the file is still locked after ``timeout`` or when
    SQLite keeps another journal mode (a file system without WAL support)."""
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE_S
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            # SQLITE_BUSY's message (sqlite_errorcode only exists from Python 3.11)
            if str(exc) != "database is locked" or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE_S)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(f"SQLite kept journal mode {mode!r} instead of WAL")
        return


class ThreadConnection:
    """One thread's connection. Its lock is held for every use and for closing it, so a
    connection is never closed under a running statement (SQLite would crash, not raise)."""

    def __init__(self, conn: sqlite3.Connection, lock: Optional[Any] = None) -> None:
        self.conn = conn
        self.lock = lock if lock is not None else threading.Lock()
        self.closed = False

    def close_if_idle(self) -> bool:
        """Close now unless its thread is using it (that thread then closes it when done)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            self.closed = True
            self.conn.close()
        finally:
            self.lock.release()
        return True


H = TypeVar("H", bound=ThreadConnection)


class ThreadConnections(Generic[H]):
    """One connection per thread to the SQLite file ``path``, opened on first use by
    ``connect`` (which applies the file's pragmas) and wrapped by ``wrap``; ``closed_error``
    makes the exception a use after :meth:`close` raises. (A thread that ended left its
    connection idle: a new thread given the same ident takes it over.)"""

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 wrap: Callable[[sqlite3.Connection], H],
                 closed_error: Callable[[], Exception]) -> None:
        self._connect = connect
        self._wrap = wrap
        self.closed_error = closed_error
        self.closed = False
        self._lock = threading.Lock()
        self._handles: Dict[int, H] = {}
        self._inherited: List[H] = []
        forksafe.renew_locks(self, "_lock")
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """SQLite handles must not cross fork(), and closing them in the child could checkpoint
        or remove the parent's WAL: they are kept unreferenced-but-alive instead."""
        self._inherited.extend(self._handles.values())
        self._handles = {}

    def get(self) -> H:
        """This thread's connection."""
        ident = threading.get_ident()
        handle = self._handles.get(ident)
        if handle is not None:
            return handle
        if self.closed:
            raise self.closed_error()
        conn = self._connect()
        try:
            with self._lock:
                if self.closed:
                    raise self.closed_error()
                handle = self._handles[ident] = self._wrap(conn)
        except BaseException:
            conn.close()  # nobody else ever saw it
            raise
        return handle

    def close(self) -> None:
        """Close every connection: idle ones now, busy ones by their threads when their
        statement ends (they check :attr:`closed`). Later uses raise ``closed_error()``."""
        with self._lock:
            self.closed = True
            handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            handle.close_if_idle()
