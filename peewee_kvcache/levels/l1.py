"""L1: result entries (diskcache) and invalidation tokens (the state file), shared by this host's
processes.

Invalidation never searches for entries. Every name an entry depends on (a table, a tag, ``*`` for
"everything") has a token; an entry is stamped with the tokens it was computed under, read *before*
the query ran, and is valid only while all of them are unchanged. Bumping a token is therefore O(1),
needs no table→key index in L1, and closes the store race: a result whose snapshot predates a write
carries the pre-write token and is dead on arrival.

Tokens come from one counter (``seq``) moved on inside a transaction of the state file, so they
only grow; a transaction can compare them against the counter read at its BEGIN. A name never
bumped has the store's ``base`` token (≤ any counter value). Base and counter start at a random
offset, so a wiped token store can never revive an old stamp.
"""
from __future__ import annotations

import mmap
import os
import sqlite3
import struct
import threading
import uuid
from typing import Any, Callable, Dict, Iterable, List, NoReturn, Optional, Sequence, Tuple

import diskcache
import msgpack

from ..core import forksafe
from ..core.config import now_ms
from .entry import Entry
from .state import BASE, SEQ, StateFile, chunks, init_counter, marks, next_seq, setting

_U64 = struct.Struct("<Q")


def _set_tokens(conn: sqlite3.Connection, token: int, names: Sequence[Tuple[str, int]]) -> None:
    """Inside a transaction: give (name, invalidated at ms) pairs ``token``; a name's
    invalidation time only moves forward (0: unchanged)."""
    conn.executemany("UPDATE token SET token = ?, invalidated_ms = MAX(COALESCE(invalidated_ms, 0),"
                     " ?) WHERE name = ?", [(token, at_ms, name) for name, at_ms in names])
    conn.executemany("INSERT OR IGNORE INTO token VALUES (?, ?, ?)",
                     [(name, token, at_ms) for name, at_ms in names])


def _release(conn: sqlite3.Connection, flags: Iterable[Tuple[str, str]]) -> None:
    """Inside a transaction: drop the unbumped flags (name, marker) of those invalidations
    (other writers' flags stay)."""
    conn.executemany("DELETE FROM unbumped WHERE name = ? AND marker = ?", flags)


def _all(values: Any, kind: type) -> bool:
    """A tuple of ``kind`` values only (bool is not an int here)."""
    return isinstance(values, tuple) and all(type(v) is kind for v in values)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a pid of another PID namespace counts as dead: its flags
    are then bumped early, which is safe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class L1Error(Exception):
    """L1 failed in a way of its own (besides SQLite, OS and lock-timeout errors)."""


class L1Unavailable(L1Error, RuntimeError):
    """The L1 directory could not be opened."""


class CorruptL1(L1Error):
    """A value read from the L1 directory is not one this library wrote."""


#: what an L1 store (and the outbox beside it) raises when its directory fails: the cache counts
#: them as ``l1_errors`` and goes on without L1
L1_FAULTS = (L1Error, sqlite3.Error, OSError, diskcache.Timeout)


class Unavailable:
    """Base of the stand-ins made by :func:`stand_in`: ``reason`` says why the directory
    could not be opened."""

    def __init__(self, directory: str, reason: BaseException, **data: Any):
        self.directory = directory
        self.reason = f"{type(reason).__name__}: {reason}"
        self.__dict__.update(data)

    def _fail(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise L1Unavailable(f"L1 directory {self.directory!r} unavailable ({self.reason})")

    def close(self) -> None:
        """Nothing was opened."""


def stand_in(store: type, data: Iterable[str], **methods: Callable[..., Any]) -> type:
    """A class standing in for ``store`` when its directory could not be opened (read-only,
    missing, a file, a full disk): each public method (and ``len``) and each handle (an annotated
    attribute not in ``data``) raises :class:`L1Unavailable`, so every cache path degrades as it
    does for a failing L1. ``data`` attributes are plain values given to the constructor;
    ``methods`` replace generated ones. Any other name is an AttributeError, as on the store."""
    members: Dict[str, Any] = {
        name: Unavailable._fail for name, value in vars(store).items()
        if callable(value) and (not name.startswith("_") or name == "__len__")
        and name not in vars(Unavailable)}
    members.update((name, property(Unavailable._fail)) for name in store.__annotations__
                   if name not in data)
    members.update(methods)
    return type("Unavailable" + store.__name__, (Unavailable,), members)


class SharedCounter:
    """The token counter's last committed value in an 8-byte memory-mapped file.

    The hit path must learn "has anything been invalidated?" for every hit; a diskcache read costs
    a SQLite query, reading a shared mapping costs nothing. Each bump publishes the counter here
    *after* its transaction committed (so a reader never pairs a new value with old tokens); the
    value is unique per bump, so any change, even out of order, means "reload the tokens".
    """

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def read(self) -> int:
        try:
            return _U64.unpack_from(self._map, 0)[0]
        except ValueError as exc:  # the mapping was closed with its store
            raise L1Error("the L1 store is closed") from exc

    def publish(self, value: int) -> None:
        try:
            _U64.pack_into(self._map, 0, value)
        except TypeError as exc:  # the mapping was closed with its store
            raise L1Error("the L1 store is closed") from exc

    def close(self) -> None:
        self._map.close()


Owed = Tuple[Tuple[str, ...], str, int]


class _Owed:
    """The bumps this process owes (see :meth:`L1Store.bump_later`): (names, marker, at_ms)."""

    def __init__(self) -> None:
        self._items: List[Owed] = []
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """The parent's owed bumps are the parent's to make (its flags name its pid)."""
        self._items = []

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, item: Owed) -> None:
        with self._lock:
            self._items.append(item)

    def make(self, conn: sqlite3.Connection, token: int, state: StateFile) -> None:
        """Inside a transaction of ``state``: make the owed bumps with ``token`` (a counter
        value it took); should the transaction roll back, they are owed again."""
        with self._lock:
            owed, self._items = self._items, []
        state.after_rollback(lambda: self._restore(owed))
        at: Dict[str, int] = {}
        for names, _, at_ms in owed:
            for name in names:
                at[name] = max(at.get(name, 0), at_ms)
        _set_tokens(conn, token, list(at.items()))
        _release(conn, [(name, marker) for names, marker, _ in owed for name in names])

    def _restore(self, items: List[Owed]) -> None:
        """Owed again, before any owed since."""
        with self._lock:
            self._items[:0] = items

    def touches(self, names: Sequence[str]) -> bool:
        items = self._items
        return bool(items) and any(not set(names).isdisjoint(item[0]) for item in items)


class L1Store:
    """Entries in a diskcache (culled and expired freely); tokens and flags in the directory's
    state file (levels/state.py), which never evicts: losing a token would be safe (entries
    stamped with it die) but would needlessly drop entries."""

    directory: str
    #: identifies this L1 directory in NOTIFY payloads (its processes share the tokens)
    l1_id: str
    entries: diskcache.Cache
    #: tokens, flags and the outbox: the L1 store's writes join a transaction open on it
    state: StateFile
    counter: SharedCounter

    def __init__(self, directory: str, size_limit: int = 1 << 30, timeout: float = 1.0):
        self.directory = directory
        self.entries = diskcache.Cache(os.path.join(directory, "entries"), size_limit=size_limit,
                                       timeout=timeout)
        self.state = StateFile.open(directory, timeout)
        self.counter = SharedCounter(os.path.join(directory, "counter.bin"))
        with self.state.write() as conn:  # no bump commits between this read and its publish
            init_counter(conn)
            conn.execute("INSERT OR IGNORE INTO setting VALUES (?, ?)", ("l1_id", uuid.uuid4().hex))
            self.counter.publish(int(setting(conn, SEQ)))
            self.l1_id = str(setting(conn, "l1_id"))
        self._snapshot: Tuple[Optional[int], Dict[str, int], Dict[str, List[str]]] = (None, {}, {})
        self._owed = _Owed()

    # -- tokens -----------------------------------------------------------------------------
    def seq(self) -> int:
        """The token counter as last published: any bump committed after this read yields a
        larger token (one committed but not yet published too: the value read is then older,
        which only makes a transaction's baseline stricter). Bumps this process owes are made
        first, so a transaction beginning now finds its own earlier writes settled."""
        if self._owed:
            self.settle()
        return self.counter.read()

    def _next_seq(self, conn: sqlite3.Connection) -> int:
        """Inside a transaction: the counter's next value, published once it committed."""
        seq = next_seq(conn)
        self.state.after_commit(lambda: self.counter.publish(seq))
        return seq

    def bump(self, names: Iterable[str], at_ms: Optional[int] = None,
             release: Optional[str] = None) -> int:
        """Give every name a fresh token, killing every entry stamped with the old one, and
        remember when (wall clock, ``at_ms``): L2 entries computed before then are stale here.
        ``release``: the invalidation (see :meth:`mark_pending`) whose unbumped flags this ends.
        One transaction (or part of the one open on this thread)."""
        names = list(names)
        with self.state.write() as conn:
            token = self._next_seq(conn)
            _set_tokens(conn, token, [(name, at_ms or 0) for name in names])
            if release is not None:
                _release(conn, [(name, release) for name in names])
        return token

    def bump_later(self, names: Sequence[str], marker: str, at_ms: int) -> None:
        """The statement of invalidation ``marker`` is done: its bump (as :meth:`bump` with
        ``release=marker``) is owed. Until it is made, its unbumped flags keep every process on
        this host from trusting, and this one from storing, anything of those names, so it need
        not be made on the statement's path: :meth:`settle` makes every owed bump in one
        transaction, called by the writer thread, by this process's next invalidation (inside
        its own transaction), and by a read of those names here. A process killed before
        leaves its flags, which others recover (see :meth:`is_current`)."""
        self._owed.add((tuple(names), marker, at_ms))

    def settle(self) -> None:
        """Make the bumps owed (see :meth:`bump_later`): one new token for all their names,
        their flags lifted, in one transaction (or as part of the one open on this thread).
        If it fails they stay owed."""
        if self._owed:
            with self.state.write() as conn:
                self._owed.make(conn, self._next_seq(conn), self.state)

    def invalidated_at(self, names: Sequence[str]) -> int:
        """When (unix ms) any of ``names`` was last invalidated as seen by this host; 0 if never."""
        latest = 0
        for part in chunks(list(names)):
            row = self.state.read(f"SELECT MAX(invalidated_ms) FROM token WHERE name IN "
                                  f"({marks(len(part))})", part)
            latest = max(latest, row[0][0] or 0)
        return latest

    def tokens(self, names: Sequence[str]) -> Tuple[int, ...]:
        """Current tokens for ``names``; a name never bumped gets the base token. Like
        :meth:`is_current`, from the tokens this process read since the shared counter last
        moved when it has them all (a miss then reads no row)."""
        if self._owed.touches(names):
            self.settle()
        seq = self.counter.read()
        snapshot = self._snapshot
        if snapshot[0] == seq:
            known = [snapshot[1].get(name) for name in names]
            if None not in known:
                return tuple(token for token in known if token is not None)  # all are

        def read() -> Dict[str, Any]:
            found: Dict[str, Any] = {}
            for part in chunks(list(dict.fromkeys(names))):
                found.update(self.state.read(
                    f"SELECT name, token FROM token WHERE name IN ({marks(len(part))})", part))
            return found

        found = read()
        if len(found) < len(set(names)):
            with self.state.write() as conn:
                base = init_counter(conn)
                conn.executemany("INSERT OR IGNORE INTO token (name, token) VALUES (?, ?)",
                                 [(name, base) for name in names if name not in found])
            found = read()
        if snapshot[0] == seq:  # read after the counter showed seq: current while it does
            snapshot[1].update(found)
        return tuple(int(found[name]) for name in names)

    def is_current(self, names: Sequence[str], tokens: Sequence[int]) -> bool:
        """True while no name in the stamp has been bumped, and none awaits a bump.

        The hit path reads the shared counter, not one row per name: every bump (and every
        change of the unbumped flags) publishes a new counter value after committing, so tokens
        and flags read after seeing the counter at S are still current while it reads S. They
        are kept per S in this process.
        """
        if self._owed.touches(names):
            self.settle()
        seq = self.counter.read()
        snapshot = self._snapshot
        if snapshot[0] != seq:
            snapshot = self._snapshot = (seq, {}, self._unbumped())
        known, unbumped = snapshot[1], snapshot[2]
        if unbumped and not unbumped.keys().isdisjoint(names):
            self._recover_unbumped(unbumped, names)
            return False
        for name, token in zip(names, tokens):
            current = known.get(name)
            if current is None:
                rows = self.state.read("SELECT token FROM token WHERE name = ?", (name,))
                if not rows:
                    return False
                current = known[name] = rows[0][0]
            if current != token:
                return False
        return True

    def mark_pending(self, names: Iterable[str], marker: str) -> None:
        """Flag names whose invalidation ``marker`` is under way, before the write commits.

        Pending: L2 must not be read for them until the sweep succeeded. Unbumped: no process on
        this host trusts their L1 entries until a bump releases ``marker`` (:meth:`bump`,
        :meth:`settle`). Both flags outlive a crash: a process killed between its COMMIT and its
        bump leaves them, and the first process to meet an unbumped flag of a dead owner bumps
        in its place (the outbox finishes the sweep). One transaction (or part of the one open
        on this thread), which also makes the bumps this process owes (see
        :meth:`bump_later`)."""
        names = list(names)
        pid = os.getpid()
        with self.state.write() as conn:
            seq = self._next_seq(conn)  # a new counter value tells every process to reload flags
            if self._owed:
                self._owed.make(conn, seq, self.state)
            conn.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?)",
                             [(name, marker) for name in names])
            # every writer's own flag: one writer's bump can't lift another's
            conn.executemany("INSERT OR IGNORE INTO unbumped VALUES (?, ?, ?)",
                             [(name, marker, pid) for name in names])

    def _unbumped(self) -> Dict[str, List[str]]:
        """Names awaiting their post-commit bump: name -> ["owner pid:invalidation", ...]."""
        flags: Dict[str, List[str]] = {}
        for name, pid, marker in self.state.read("SELECT name, pid, marker FROM unbumped"):
            flags.setdefault(name, []).append(f"{pid}:{marker}")
        return flags

    def _recover_unbumped(self, unbumped: Dict[str, List[str]], names: Sequence[str]) -> None:
        """Bump in the place of a dead owner: its write may have committed (a bump is always
        safe; a live owner bumps again after its commit)."""
        for name in names:
            for owner in unbumped.get(name, ()):
                pid, _, marker = owner.partition(":")
                if not _alive(int(pid)):
                    self.bump([name], now_ms(), marker)

    def clear_pending(self, names: Iterable[str], marker: str) -> None:
        """Lift this invalidation's L2 flags, unless a later invalidation took them over."""
        with self.state.write() as conn:
            conn.executemany("DELETE FROM pending WHERE name = ? AND marker = ?",
                             [(name, marker) for name in names])

    def any_pending(self, names: Sequence[str]) -> bool:
        return any(self.state.read(f"SELECT 1 FROM pending WHERE name IN ({marks(len(part))})"
                                   " LIMIT 1", part) for part in chunks(list(names)))

    # -- entries ----------------------------------------------------------------------------
    def get(self, key: str) -> Optional[Entry[bytes]]:
        raw = self.entries.get(key)
        if raw is None:
            return None
        try:
            names, tokens, expires_at_ms, payload, checked_at_ms = msgpack.unpackb(
                raw, use_list=False)
        except (ValueError, TypeError) as exc:
            raise CorruptL1(f"L1 entry {key!r} is unreadable") from exc
        if not (_all(names, str) and _all(tokens, int) and len(names) == len(tokens)
                and type(expires_at_ms) is int and type(checked_at_ms) is int
                and isinstance(payload, bytes)):  # readable, but not an entry this library wrote
            raise CorruptL1(f"L1 entry {key!r} is malformed")
        return Entry(names, tokens, expires_at_ms, checked_at_ms, payload)

    def set(self, key: str, entry: Entry[bytes], now_ms: int) -> None:
        raw = msgpack.packb([entry.names, entry.tokens, entry.expires_at_ms, entry.value,
                             entry.checked_at_ms], use_bin_type=True)
        self.entries.set(key, raw, expire=max(entry.expires_at_ms - now_ms, 1) / 1000.0)

    def discard(self, key: str) -> None:
        """Drop one entry (found gone from L2 by a re-check)."""
        self.entries.delete(key)

    def clear(self) -> None:
        """Drop every entry and move every token past all stamps ever issued."""
        self.entries.clear()
        with self.state.write() as conn:
            token = self._next_seq(conn)
            conn.execute("UPDATE setting SET value = ? WHERE key = ?", (token, BASE))
            conn.execute("DELETE FROM token")

    def stats(self) -> Dict[str, int]:
        return {"l1_entries": len(self.entries), "l1_volume_bytes": self.entries.volume()}

    def close(self) -> None:
        try:  # flags of a live process would stop this host caching those names
            self.settle()
        except L1_FAULTS:  # they stay, and are recovered once this process is gone
            pass
        self.entries.close()
        self.state.release()
        self.counter.close()


#: the L1 store of a directory that could not be opened; give it ``l1_id=uuid.uuid4().hex``: this
#: process alone in NOTIFY payloads, as it shares no tokens with any other process
UnavailableStore = stand_in(L1Store, data=("directory", "l1_id"),
                            settle=lambda self: None)  # nothing can be owed: see bump_later
