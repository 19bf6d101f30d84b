"""The L1 directory's state file: tokens, flags and the invalidation outbox in one SQLite database.

A write's bookkeeping before its statement (the outbox job, the flags) and after it (the new
tokens, the flags lifted) must each be durable, and cheap: each is one transaction in this file
(issue 11, "a write at uncached cost"). The tables are this library's own; diskcache keeps the
result entries, which it culls and expires.

Every object opening the same directory in a process shares one :class:`StateFile` (the L1 store
and the outbox do), so their writes can share a transaction. Each thread has its own connection,
and a forked child opens its own, leaving the parent's alone. Writes take the lock up front
(``BEGIN IMMEDIATE``) and queue on the busy timeout; ``write()`` nests, an inner block joining the
outer transaction, and what must follow the data being committed (the shared counter's publish)
runs after the outermost COMMIT. WAL with ``synchronous=NORMAL``: a committed transaction
survives its process being killed; reaching the disk before a power loss is left to the OS, as
diskcache does.
"""
from __future__ import annotations

import os
import random
import sqlite3
import threading
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from ..core import forksafe
from ..core.sqlite import ThreadConnection, ThreadConnections, use_wal

FILE_NAME = "state.sqlite3"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS setting (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    # a name's token and when (unix ms) this host last invalidated it
    "CREATE TABLE IF NOT EXISTS token (name TEXT PRIMARY KEY, token INTEGER NOT NULL,"
    " invalidated_ms INTEGER) WITHOUT ROWID",
    # a name whose L2 sweep is under way (marker: the invalidation that owns the flag)
    "CREATE TABLE IF NOT EXISTS pending (name TEXT PRIMARY KEY, marker TEXT NOT NULL)"
    " WITHOUT ROWID",
    # a name whose post-commit bump is still to come, one row per writer
    "CREATE TABLE IF NOT EXISTS unbumped (name TEXT NOT NULL, marker TEXT NOT NULL,"
    " pid INTEGER NOT NULL, PRIMARY KEY (name, marker)) WITHOUT ROWID",
    # the invalidation outbox (invalidation/outbox.py)
    "CREATE TABLE IF NOT EXISTS job (id TEXT PRIMARY KEY, due_ms INTEGER NOT NULL,"
    " names TEXT NOT NULL, sweep INTEGER NOT NULL, attempts INTEGER NOT NULL,"
    " before_ms INTEGER) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS job_due ON job (due_ms)",
)

#: names per statement in ``IN (...)`` lists (SQLite's older limit is 999 parameters)
_CHUNK = 500


#: the token counter and the token of names never bumped, in the ``setting`` table
SEQ, BASE = "seq", "base"
_SETTING = "SELECT value FROM setting WHERE key = ?"


def init_counter(conn: sqlite3.Connection) -> int:
    """Inside a transaction: create base and counter if missing (at a random offset, so a wiped
    state can never revive an old stamp); returns the base."""
    conn.execute("INSERT OR IGNORE INTO setting VALUES (?, ?)",
                 (BASE, random.getrandbits(40) << 20))
    base = int(conn.execute(_SETTING, (BASE,)).fetchone()[0])
    conn.execute("INSERT OR IGNORE INTO setting VALUES (?, ?)", (SEQ, base))
    return base


def setting(conn: sqlite3.Connection, key: str) -> Any:
    """Inside a transaction: a setting's value (the counter recreated if the state was wiped)."""
    row = conn.execute(_SETTING, (key,)).fetchone()
    if row is None:
        init_counter(conn)
        row = conn.execute(_SETTING, (key,)).fetchone()
    return row[0] if row is not None else None


#: UPDATE ... RETURNING (SQLite 3.35): the counter moved and read in one statement
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def next_seq(conn: sqlite3.Connection) -> int:
    """Inside a transaction: move the token counter on; its new value."""
    if _RETURNING:
        row = conn.execute("UPDATE setting SET value = value + 1 WHERE key = ? RETURNING value",
                           (SEQ,)).fetchone()
        if row is not None:
            return int(row[0])
    seq = int(setting(conn, SEQ)) + 1  # (recreated first if the state was wiped)
    conn.execute("UPDATE setting SET value = ? WHERE key = ?", (seq, SEQ))
    return seq


def marks(count: int) -> str:
    """``?,?,...`` for an ``IN`` list of ``count`` values."""
    return ",".join("?" * count)


def chunks(names: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(names), _CHUNK):
        yield names[start:start + _CHUNK]


class StateClosed(sqlite3.ProgrammingError):
    """The state file was closed (an SQLite error, so callers count it as an L1 fault)."""


class _Handle(ThreadConnection):
    """One thread's connection, its lock re-entered by a write nested in another."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn, threading.RLock())
        self.depth = 0  # write() blocks open on this connection
        self.after_commit: List[Callable[[], None]] = []
        self.after_rollback: List[Callable[[], None]] = []


class StateFile:
    """``<directory>/state.sqlite3``, shared in this process by everything that opens it (see
    :meth:`open`); :meth:`release` once per :meth:`open`."""

    def __init__(self, path: str, timeout: float):
        self.path = path
        self._timeout = timeout
        self._connections = ThreadConnections(
            self._connect, _Handle, lambda: StateClosed(f"L1 state {path!r} is closed"))
        self._users = 0
        #: this process's writers queue here, not on SQLite's busy handler (which sleeps 1 ms
        #: and more between tries); other processes' writers still meet the busy handler
        self._writing = threading.Lock()
        forksafe.renew_locks(self, "_writing")
        with self.write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    # -- sharing ----------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str, timeout: float = 1.0) -> "StateFile":
        """The state file of ``directory`` (created if missing), shared with every other user
        in this process."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.realpath(os.path.join(directory, FILE_NAME))
        with _registry.lock:
            state = _registry.files.get(path)
            if state is None:
                state = _registry.files[path] = cls(path, timeout)
            state._users += 1
            return state

    def release(self) -> None:
        """One user is done; the last one closes this process's connections (idle ones now,
        busy ones by their threads when their statement ends)."""
        with _registry.lock:
            self._users -= 1
            if self._users > 0:
                return
            if _registry.files.get(self.path) is self:
                del _registry.files[self.path]
        self._connections.close()

    # -- connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            # small pages: a transaction writes each page it touches to the WAL (a new file only)
            conn.execute("PRAGMA page_size = 1024")
            use_wal(conn, self._timeout)  # (processes may create the file together)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        handle = self._connections.get()
        with handle.lock:
            if handle.closed:  # release() took it between the lookup and the lock
                raise StateClosed(f"L1 state {self.path!r} is closed")
            rows = handle.conn.execute(sql, params).fetchall()
        if self._connections.closed and handle.depth == 0:  # release() found it busy
            handle.close_if_idle()
        return rows

    def write(self) -> "_Write":
        """``with state.write() as conn``: a write transaction, or the one this thread has open
        (joined: the outermost block commits, or rolls back on an exception)."""
        return _Write(self)

    def after_rollback(self, action: Callable[[], None]) -> None:
        """Inside :meth:`write`: run ``action`` should the outermost transaction roll back
        (or fail to commit)."""
        handle = self._connections.get()
        if handle.depth:
            handle.after_rollback.append(action)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this thread's outermost :meth:`write` committed (at once
        outside one)."""
        handle = self._connections.get()
        if handle.depth:
            handle.after_commit.append(action)
        else:
            action()


class _Write:
    """One ``with`` block of :meth:`StateFile.write` (a class, not a generator: it runs on
    every write's path)."""

    __slots__ = ("_state", "_handle", "_outer")

    def __init__(self, state: StateFile):
        self._state = state

    def __enter__(self) -> sqlite3.Connection:
        state = self._state
        handle = self._handle = state._connections.get()
        handle.lock.acquire()
        try:
            if handle.closed:  # release() took it between the lookup and the lock
                raise StateClosed(f"L1 state {state.path!r} is closed")
            self._outer = not handle.depth
            if self._outer:
                if not state._writing.acquire(timeout=state._timeout):
                    raise sqlite3.OperationalError(f"L1 state {state.path!r}: another thread "
                                                   f"held the write lock {state._timeout} s")
                try:
                    handle.conn.execute("BEGIN IMMEDIATE")
                except BaseException:
                    state._writing.release()
                    raise
            handle.depth += 1
        except BaseException:
            handle.lock.release()
            raise
        return handle.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        state, handle = self._state, self._handle
        handle.depth -= 1
        if not self._outer:  # an exception goes on to the outermost block
            handle.lock.release()
            return
        after: List[Callable[[], None]] = []
        try:
            if exc_type is None:
                try:
                    handle.conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                after, handle.after_commit, handle.after_rollback = handle.after_commit, [], []
            else:
                self._rollback()
        finally:
            state._writing.release()
            handle.lock.release()
            if state._connections.closed:  # release() found it busy: closed by its thread
                handle.close_if_idle()
        for action in after:
            action()

    def _rollback(self) -> None:
        handle = self._handle
        undo, handle.after_rollback, handle.after_commit = handle.after_rollback, [], []
        try:
            if handle.conn.in_transaction:
                handle.conn.execute("ROLLBACK")
        finally:
            for action in undo:
                action()


class _Registry:
    """The state files open in this process, by path."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: Dict[str, StateFile] = {}
        forksafe.renew_locks(self, "lock")


_registry = _Registry()
