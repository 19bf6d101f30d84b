"""The local level: result entries and invalidation tokens in diskcache, shared by this host's processes.

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
import struct
import time
import uuid
from dataclasses import dataclass
from typing import (Any, Dict, Iterable, Iterator, List, NoReturn, Optional, Sequence,
                    Tuple)

import diskcache
import msgpack

_SEQ = "seq"
_UNBUMPED = "unbumped"
_BASE = "base"
_U64 = struct.Struct("<Q")


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


class L1Unavailable(RuntimeError):
    """The L1 directory could not be opened."""


class Unavailable:
    """Stands in for the L1 store and the outbox when their directory could not be opened
    (read-only, missing, a file, full disk): every operation raises :class:`L1Unavailable`, so
    each cache path degrades to the database as it does for a failing L1. Plain attributes keep
    their meaning (``directory``, ``lease_ms``, ``l1_id``)."""

    def __init__(self, directory: str, reason: BaseException, lease_ms: int = 30_000):
        self.directory = directory
        self.lease_ms = lease_ms
        #: this process alone in NOTIFY payloads: it shares no tokens with any other process
        self.l1_id = uuid.uuid4().hex
        self._reason = f"{type(reason).__name__}: {reason}"

    def _fail(self) -> NoReturn:
        raise L1Unavailable(f"L1 directory {self.directory!r} unavailable ({self._reason})")

    # the stores' own handles
    entries = meta = counter = jobs = property(_fail)

    # L1Store
    def seq(self) -> int:
        self._fail()

    def bump(self, names: Iterable[str], at_ms: Optional[int] = None,
             release: Optional[str] = None) -> int:
        self._fail()

    def invalidated_at(self, names: Iterable[str]) -> int:
        self._fail()

    def tokens(self, names: Sequence[str]) -> Tuple[int, ...]:
        self._fail()

    def is_current(self, names: Sequence[str], tokens: Sequence[int]) -> bool:
        self._fail()

    def mark_pending(self, names: Iterable[str], marker: str) -> None:
        self._fail()

    def clear_pending(self, names: Iterable[str], marker: str) -> None:
        self._fail()

    def any_pending(self, names: Iterable[str]) -> bool:
        self._fail()

    def get(self, key: str) -> Optional["L1Entry"]:
        self._fail()

    def set(self, key: str, entry: "L1Entry", now_ms: int) -> None:
        self._fail()

    def clear(self) -> None:
        self._fail()

    def stats(self) -> Dict[str, int]:
        self._fail()

    # Outbox
    def add(self, names: Tuple[str, ...], due_ms: int, sweep: int = 1,
            before_ms: Optional[int] = None) -> Any:
        self._fail()

    def claim(self, job_id: str, now_ms: int) -> Any:
        self._fail()

    def claim_due(self, now_ms: int) -> Iterator[Any]:
        """Nothing: no job could ever be recorded here (and the writer asks every tick)."""
        return iter(())

    def done(self, job: Any) -> None:
        self._fail()

    def retry(self, job: Any, now_ms: int) -> int:
        self._fail()

    def next_due_ms(self) -> Optional[int]:
        self._fail()

    def __len__(self) -> int:
        self._fail()

    def close(self) -> None:
        """Nothing was opened."""


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
        return _U64.unpack_from(self._map, 0)[0]

    def publish(self, value: int) -> None:
        _U64.pack_into(self._map, 0, value)

    def close(self) -> None:
        self._map.close()


@dataclass(frozen=True)
class L1Entry:
    """A stored entry: its stamp, absolute expiry (unix ms), the encoded result, and when it was
    last known to match L2 (unix ms; see ``l1_max_age``)."""

    names: Tuple[str, ...]
    tokens: Tuple[int, ...]
    expires_at_ms: int
    payload: bytes
    checked_at_ms: int


class L1Store:
    """Entries and tokens in two diskcache caches under one directory.

    Tokens live in a cache that never evicts (eviction_policy "none"): losing a token would be safe
    (entries stamped with it die) but would needlessly drop entries. Entries may be culled freely.
    """

    def __init__(self, directory: str, size_limit: int = 1 << 30, timeout: float = 1.0):
        self.directory = directory
        self.entries = diskcache.Cache(os.path.join(directory, "entries"), size_limit=size_limit,
                                       timeout=timeout)
        self.meta = diskcache.Cache(os.path.join(directory, "tokens"), eviction_policy="none",
                                    timeout=timeout)
        self._init_counter()
        self.counter = SharedCounter(os.path.join(directory, "counter.bin"))
        self.counter.publish(self.seq())
        self._snapshot: Tuple[Optional[int], Dict[str, int], Dict[str, str]] = (None, {}, {})
        self.meta.add("l1_id", uuid.uuid4().hex)
        #: identifies this L1 directory in NOTIFY payloads (its processes share the tokens)
        self.l1_id: str = self.meta.get("l1_id")

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
        ``release``: the invalidation (see :meth:`mark_pending`) whose unbumped flags this ends."""
        names = list(names)
        with self.meta.transact():
            self.seq()
            token = self.meta.incr(_SEQ)
            for name in names:
                self.meta.set("v:" + name, token)
                if at_ms is not None:
                    self.meta.set("i:" + name, at_ms)
            if release is not None:
                self._release(names, release)
        self.counter.publish(token)
        return token

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
            unbumped.update((name, f"{os.getpid()}:{marker}") for name in names)
            self.meta.set(_UNBUMPED, json.dumps(unbumped))
            self.seq()
            seq = self.meta.incr(_SEQ)  # a new counter value tells every process to reload flags
        self.counter.publish(seq)

    def _unbumped(self) -> Dict[str, str]:
        """Names awaiting their post-commit bump: name -> "owner pid:invalidation"."""
        raw = self.meta.get(_UNBUMPED)
        return json.loads(raw) if raw else {}

    def _release(self, names: Iterable[str], marker: str) -> None:
        """Inside a transaction: drop ``marker``'s unbumped flags (a later writer's flags stay)."""
        unbumped = self._unbumped()
        mine = [name for name in names if unbumped.get(name, "").partition(":")[2] == marker]
        if mine:
            for name in mine:
                del unbumped[name]
            self.meta.set(_UNBUMPED, json.dumps(unbumped))

    def _recover_unbumped(self, unbumped: Dict[str, str], names: Sequence[str]) -> None:
        """Bump in the place of a dead owner: its write may have committed (a bump is always
        safe; a live owner bumps again after its commit)."""
        for name in names:
            owner = unbumped.get(name)
            if owner is not None and not _alive(int(owner.partition(":")[0])):
                self.bump([name], int(time.time() * 1000), owner.partition(":")[2])

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
    def get(self, key: str) -> Optional[L1Entry]:
        raw = self.entries.get(key)
        if raw is None:
            return None
        return L1Entry(*msgpack.unpackb(raw, use_list=False))

    def set(self, key: str, entry: L1Entry, now_ms: int) -> None:
        raw = msgpack.packb([entry.names, entry.tokens, entry.expires_at_ms, entry.payload,
                             entry.checked_at_ms], use_bin_type=True)
        self.entries.set(key, raw, expire=max(entry.expires_at_ms - now_ms, 1) / 1000.0)

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
