"""L1: result entries and invalidation tokens in diskcache, shared by this host's processes.

Invalidation never searches for entries. Every name an entry depends on (a table, a tag, ``*`` for
"everything") has a token; an entry is stamped with the tokens it was computed under, read *before*
the query ran, and is valid only while all of them are unchanged. Bumping a token is therefore O(1),
needs no table→key index in L1, and closes the store race: a result whose snapshot predates a write
carries the pre-write token and is dead on arrival.

Tokens come from one counter (``seq``) bumped inside a diskcache transaction, so they only grow; a
transaction can compare them against the counter read at its BEGIN. A name never bumped has the
store's ``base`` token (≤ any counter value). Base and counter start at a random offset, so a wiped
token store can never revive an old stamp.
"""
from __future__ import annotations

import json
import mmap
import os
import random
import sqlite3
import struct
import uuid
from typing import Any, Callable, Dict, Iterable, List, NoReturn, Optional, Sequence, Tuple

import diskcache
import msgpack

from ..core.config import now_ms
from .entry import Entry

_SEQ = "seq"
_UNBUMPED = "unbumped"
_BASE = "base"
_U64 = struct.Struct("<Q")


#: ``release`` value that lifts every unbumped flag this process holds (after a failed bump)
OWN_FLAGS = "*"


def _own_flags(marker: str) -> Callable[[str], bool]:
    """Which flag owners ("pid:invalidation") ``bump(release=marker)`` lifts."""
    if marker == OWN_FLAGS:
        prefix = f"{os.getpid()}:"
        return lambda owner: owner.startswith(prefix)
    return lambda owner: owner.partition(":")[2] == marker


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


class L1Store:
    """Entries and tokens in two diskcache caches under one directory.

    Tokens live in a cache that never evicts (eviction_policy "none"): losing a token would be safe
    (entries stamped with it die) but would needlessly drop entries. Entries may be culled freely.
    """

    directory: str
    #: identifies this L1 directory in NOTIFY payloads (its processes share the tokens)
    l1_id: str
    entries: diskcache.Cache
    meta: diskcache.Cache
    counter: SharedCounter

    def __init__(self, directory: str, size_limit: int = 1 << 30, timeout: float = 1.0):
        self.directory = directory
        self.entries = diskcache.Cache(os.path.join(directory, "entries"), size_limit=size_limit,
                                       timeout=timeout)
        self.meta = diskcache.Cache(os.path.join(directory, "tokens"), eviction_policy="none",
                                    timeout=timeout)
        self._init_counter()
        self.counter = SharedCounter(os.path.join(directory, "counter.bin"))
        with self.meta.transact():  # no bump commits between this read and its publish
            self.counter.publish(self.seq())
        self._snapshot: Tuple[Optional[int], Dict[str, int], Dict[str, List[str]]] = (None, {}, {})
        self.meta.add("l1_id", uuid.uuid4().hex)
        self.l1_id = self.meta.get("l1_id")

    def _init_counter(self) -> int:
        """Create base and counter if missing; returns the base."""
        start = random.getrandbits(40) << 20
        self.meta.add(_BASE, start)
        base = self.meta.get(_BASE)
        self.meta.add(_SEQ, base)
        return int(base)

    # -- tokens -----------------------------------------------------------------------------
    def seq(self) -> int:
        """The token counter; any bump after this read yields a larger token."""
        value = self.meta.get(_SEQ)
        if value is None:  # the token store was wiped under us: start again at a random offset
            self._init_counter()
            value = self.meta.get(_SEQ)
            self.counter.publish(int(value))
        return int(value)

    def bump(self, names: Iterable[str], at_ms: Optional[int] = None,
             release: Optional[str] = None) -> int:
        """Give every name a fresh token, killing every entry stamped with the old one, and
        remember when (wall clock, ``at_ms``): L2 entries computed before then are stale here.
        ``release``: the invalidation (see :meth:`mark_pending`) whose unbumped flags this ends,
        or :data:`OWN_FLAGS` for all of this process's."""
        names = list(names)
        with self.meta.transact():
            token = self._next_seq()
            for name in names:
                self.meta.set("v:" + name, token)
                if at_ms is not None:
                    self.meta.set("i:" + name, at_ms)
            if release is not None:
                self._release(names, release)
        self.counter.publish(token)
        return token

    def _next_seq(self) -> int:
        """Inside a transaction: the counter's next value (recreated first if it was wiped)."""
        self.seq()
        return int(self.meta.incr(_SEQ))

    def invalidated_at(self, names: Iterable[str]) -> int:
        """When (unix ms) any of ``names`` was last invalidated as seen by this host; 0 if never."""
        get = self.meta.get
        return max((get("i:" + name) or 0 for name in names), default=0)

    def tokens(self, names: Sequence[str]) -> Tuple[int, ...]:
        """Current tokens for ``names``; a name never bumped gets the base token."""
        values: List[Optional[int]] = [self.meta.get("v:" + name) for name in names]
        if None in values:
            base = self.meta.get(_BASE)
            if base is None:
                base = self._init_counter()
            for name, value in zip(names, values):
                if value is None:
                    self.meta.add("v:" + name, base)
            values = [self.meta.get("v:" + name) for name in names]
        return tuple(int(v) for v in values)  # type: ignore[arg-type]

    def is_current(self, names: Sequence[str], tokens: Sequence[int]) -> bool:
        """True while no name in the stamp has been bumped, and none awaits a bump.

        The hit path reads the shared counter, not one key per name: every bump (and every
        change of the unbumped flags) publishes a new counter value after committing, so tokens
        and flags read after seeing the counter at S are still current while it reads S. They
        are kept per S in this process.
        """
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
                current = self.meta.get("v:" + name)
                if current is None:
                    return False
                known[name] = current
            if current != token:
                return False
        return True

    def mark_pending(self, names: Iterable[str], marker: str) -> None:
        """Flag names whose invalidation ``marker`` is under way, before the write commits.

        Pending (``p:``): L2 must not be read for them until the sweep succeeded. Unbumped: no
        process on this host trusts their L1 entries until :meth:`bump` releases ``marker``. Both
        flags outlive a crash: a process killed between its COMMIT and its bump leaves them, and
        the first process to meet an unbumped flag of a dead owner bumps in its place (the
        outbox finishes the sweep)."""
        names = list(names)
        with self.meta.transact():
            for name in names:
                self.meta.set("p:" + name, marker)
            unbumped = self._unbumped()
            owner = f"{os.getpid()}:{marker}"
            for name in names:  # every writer's own flag: one writer's bump can't lift another's
                unbumped.setdefault(name, []).append(owner)
            self.meta.set(_UNBUMPED, json.dumps(unbumped))
            seq = self._next_seq()  # a new counter value tells every process to reload flags
        self.counter.publish(seq)

    def _unbumped(self) -> Dict[str, List[str]]:
        """Names awaiting their post-commit bump: name -> ["owner pid:invalidation", ...]."""
        raw = self.meta.get(_UNBUMPED)
        try:
            flags = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise CorruptL1("the unbumped flags are unreadable") from exc
        if not isinstance(flags, dict) or not all(isinstance(v, list) for v in flags.values()):
            raise CorruptL1("the unbumped flags are unreadable")
        return flags

    def _release(self, names: Iterable[str], marker: str) -> None:
        """Inside a transaction: drop ``marker``'s unbumped flags (other writers' flags stay).
        ``marker`` may also be :data:`OWN_FLAGS`: every flag of this process."""
        unbumped = self._unbumped()
        mine = _own_flags(marker)
        changed = False
        for name in names:
            owners = unbumped.get(name)
            if owners is None:
                continue
            kept = [owner for owner in owners if not mine(owner)]
            if kept != owners:
                changed = True
                if kept:
                    unbumped[name] = kept
                else:
                    del unbumped[name]
        if changed:
            self.meta.set(_UNBUMPED, json.dumps(unbumped))

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
        with self.meta.transact():
            for name in names:
                if self.meta.get("p:" + name) == marker:
                    self.meta.delete("p:" + name)

    def any_pending(self, names: Iterable[str]) -> bool:
        get = self.meta.get
        return any(get("p:" + name) is not None for name in names)

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
        with self.meta.transact():
            token = self.meta.incr(_SEQ)
            self.meta.set(_BASE, token)
            for key in list(self.meta.iterkeys()):
                if isinstance(key, str) and key.startswith("v:"):
                    self.meta.delete(key)
        self.counter.publish(token)

    def stats(self) -> Dict[str, int]:
        return {"l1_entries": len(self.entries), "l1_volume_bytes": self.entries.volume()}

    def close(self) -> None:
        self.entries.close()
        self.meta.close()
        self.counter.close()


#: the L1 store of a directory that could not be opened; give it ``l1_id=uuid.uuid4().hex``: this
#: process alone in NOTIFY payloads, as it shares no tokens with any other process
UnavailableStore = stand_in(L1Store, data=("directory", "l1_id"))
