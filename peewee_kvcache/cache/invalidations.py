"""Invalidation as the cache's callers start it: around a write, by hand, or heard from another
host. The sweeper does the work (durable L2 sweeps, token bumps); this module orders it around the
statement and hands the sweeps to the background writer."""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, List, Sequence, TypeVar

from ..core import forksafe
from ..core.config import now_ms
from ..core.faults import Report
from ..core.stats import Counters
from ..invalidation.outbox import Job
from ..invalidation.sweeper import Sweeper
from ..invalidation.writer import BackgroundWriter
from ..levels.l1 import L1_FAULTS

T = TypeVar("T")
Listener = Callable[[Sequence[str]], None]


@dataclass(eq=False)
class Invalidations:
    """Starts the invalidations of one cache."""

    l1: Any
    sweeper: Sweeper
    writer: BackgroundWriter
    counters: Counters
    fault: Report
    _listeners: List["weakref.WeakMethod[Listener]"] = field(default_factory=list, init=False)
    _listeners_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        forksafe.renew_locks(self, "_listeners_lock")

    def around(self, names: Sequence[str], run: Callable[[], T]) -> T:
        """Run a statement that changes ``names``: its L2 sweep is recorded durably before, the
        tokens bumped and the sweep sent after — also when it fails, as a failed statement may
        still have changed rows."""
        job = self.sweeper.prepare(names)
        try:
            return run()
        finally:
            if job is not None:
                self._complete(job)

    def now(self, names: Sequence[str]) -> None:
        """Invalidate by hand: tell the listeners (the Peewee layer repeats it at the COMMIT of
        a transaction open on the calling thread's connection), then as a write would."""
        with self._listeners_lock:
            listeners = [fn for fn in (ref() for ref in self._listeners) if fn is not None]
        for listener in listeners:
            listener(names)
        self.around(names, lambda: None)

    def on_invalidate(self, listener: Listener) -> None:
        """Call ``listener(names)`` (a bound method, held weakly) at every :meth:`now`."""
        with self._listeners_lock:
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            self._listeners.append(weakref.WeakMethod(listener))  # type: ignore[arg-type]

    def evict_local(self, names: Sequence[str]) -> None:
        """Another host's write, heard through NOTIFY: drop this host's L1 entries only (that
        host sweeps L2)."""
        try:
            self.l1.bump(names, now_ms())
            self.counters.incr("remote_evictions")
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 eviction for a remote write failed", exc)

    def _complete(self, job: Job) -> None:
        """After the write: its new tokens and its L2 sweep in the background (until the
        tokens are made, its flags keep this host from trusting the names)."""
        self.counters.incr("invalidations")
        task = self.sweeper.complete(job)
        if task is not None:  # else the task queued already takes this write too
            self.writer.submit(task)
