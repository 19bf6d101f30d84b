"""One background thread that sends L2 work off the query's path.

A miss must not wait for a network write, and KV's request budget is small, so queued entry writes
are coalesced: the thread lingers ``linger_s`` after the first put, then sends every put waiting in
the queue in one bulk request.
Other work (invalidation sweeps) runs in submission order between those batches. Every
``poll_s`` seconds the thread also runs ``tick`` (the durable outbox's retries and late sweeps).

At interpreter exit each open writer gets at most ``exit_timeout`` seconds to finish its queue (an
unreachable KV must not hold a process for minutes); sweeps left over stay in the durable outbox
for the next process. The exit hook holds writers weakly, so a closed cache can be freed.
"""
from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Tuple, Union

from ..core import forksafe
from ..kv.base import KVPair

log = logging.getLogger("peewee_kvcache")


@dataclass
class PutTask:
    """An entry to write. ``build()`` makes its KV pairs when sent; ``key_count`` sizes batches;
    ``still_valid`` is asked before sending and again after; past ``deadline``
    (:func:`~peewee_kvcache.core.config.real_monotonic`) it must not land (see cache)."""

    key_count: int
    build: Callable[[], List[KVPair]]
    still_valid: Callable[[], bool]
    started_ms: int
    #: the entry's stamp names: swept again if the write's outcome is unknown (it may land late)
    names: Tuple[str, ...] = ()
    deadline: float = math.inf
    #: this host's copy (L1), written here, off the query's path, before the L2 write
    keep_local: Optional[Callable[[], None]] = None


class Unordered:
    """Work that entry writes queued after it may overtake (a read that only measures): a batch
    of entry writes is gathered past it, not cut short by it."""

    def __init__(self, run: Callable[[], None]):
        self._run = run

    def __call__(self) -> None:
        self._run()


Task = Union[PutTask, Callable[[], None]]

#: writers not closed yet, drained (each for at most its ``exit_timeout``) at interpreter exit
_open_writers: "weakref.WeakSet[BackgroundWriter]" = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    """Every open writer's deadline counts from exit, so together they take no longer than the
    largest ``exit_timeout``."""
    started = time.monotonic()
    for writer in list(_open_writers):
        writer.drain(max(0.0, writer.exit_timeout - (time.monotonic() - started)))


class BackgroundWriter:
    """FIFO of L2 work served by one daemon thread, started lazily (and again after a fork).
    Once closed it stays closed: later work is dropped (and logged), no thread is started."""

    def __init__(self, send_puts: Callable[[List[PutTask]], None], tick: Callable[[], None],
                 poll_s: float = 0.25, linger_s: float = 0.2, max_batch: int = 1000,
                 exit_timeout: float = 1.0):
        self.exit_timeout = exit_timeout
        #: tasks submitted after close() or left queued by it (sweeps among them stay in the
        #: durable outbox)
        self.dropped = 0
        self._linger_s = linger_s
        self._lingering = False
        self._draining = 0  # threads in drain(): the writer must not linger for them
        self._send_puts = send_puts
        self._tick = tick
        self._poll_s = poll_s
        self._last_tick = 0.0
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: Deque[Task] = deque()
        self._busy = 0
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._working = threading.Lock()  # held while a batch or tick runs: fork waits for it
        _open_writers.add(self)
        forksafe.after_fork_in_child(self._after_fork)
        forksafe.hold_across_fork(self, "_working")

    def _after_fork(self) -> None:
        """The parent's thread did not survive the fork and its lock may be held forever; its
        queue is the parent's work (which the parent still does)."""
        self._cond = threading.Condition()
        self._queue = deque()
        self._busy = self._draining = 0
        self._lingering = False
        self._thread = None

    def start(self) -> None:
        """Run the thread now (e.g. to resume an outbox left by an earlier process)."""
        with self._cond:
            self._ensure_thread()

    def submit(self, task: Task) -> None:
        """Queue ``task``: run in submission order, batches of entry writes first gathered."""
        with self._cond:
            if not self._ensure_thread():
                self._drop(1, "submitted after close")
                return
            self._queue.append(task)
            self._busy += 1
            if not self._lingering or len(self._queue) >= self._max_batch:
                self._cond.notify_all()

    def submit_unordered(self, task: Callable[[], None]) -> None:
        """Queue ``task``, which entry writes queued after it may overtake (see Unordered)."""
        self.submit(Unordered(task))

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Block until all submitted work is done (cutting a linger short); False if ``timeout``
        passed first."""
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._busy == 0, timeout)
            finally:
                self._draining -= 1

    def pending(self) -> int:
        with self._cond:
            return self._busy

    def close(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` (default ``exit_timeout``) seconds for queued work, then drop
        what is left and let the thread end; True if nothing was left."""
        timeout = self.exit_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        drained = self.drain(timeout)
        with self._cond:
            self._closed = True
            if self._queue:
                self._busy -= len(self._queue)
                self._drop(len(self._queue), "left queued at close")
                self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        _open_writers.discard(self)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))  # idle: it ends at once
        return drained

    def _drop(self, count: int, why: str) -> None:
        """Count dropped work; logged the first time (a cache used after close() would flood)."""
        if not self.dropped:
            log.warning("peewee_kvcache: dropped %d L2 task(s) %s (invalidation sweeps stay in "
                        "the durable outbox for the next process)", count, why)
        self.dropped += count

    def _ensure_thread(self) -> bool:
        """Start the thread if it is not running; False once closed."""
        if self._closed:
            return False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="peewee-kvcache-writer",
                                            daemon=True)
            self._thread.start()
        return True

    def _next_batch(self) -> Optional[List[Task]]:
        """The next batch; [] when ``poll_s`` passed idle; None when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed, self._poll_s)
            if self._closed:
                return None
            if not self._queue:
                return []
            first = self._queue.popleft()
            if not isinstance(first, PutTask):
                return [first]
            if not self._draining and len(self._queue) < self._max_batch:  # let more arrive
                self._lingering = True
                self._cond.wait(self._linger_s)
                self._lingering = False
            batch: List[Task] = [first]
            size = first.key_count
            passed: List[Task] = []  # Unordered work the batch gathers past, left queued
            while self._queue and size < self._max_batch:
                task = self._queue[0]
                if isinstance(task, Unordered):
                    passed.append(self._queue.popleft())
                    continue
                if not isinstance(task, PutTask):
                    break
                self._queue.popleft()
                size += task.key_count
                batch.append(task)
            self._queue.extendleft(reversed(passed))
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            with self._working:
                self._work(batch)

    def _work(self, batch: List[Task]) -> None:
        """Run the tick when due, then ``batch``; every fault is logged, none ends the thread."""
        if time.monotonic() - self._last_tick >= self._poll_s:
            self._last_tick = time.monotonic()
            try:
                self._tick()
            except Exception:  # the thread's top: faults are handled inside, this is a bug
                log.exception("peewee_kvcache: background outbox work failed")
        if not batch:
            return
        try:
            if isinstance(batch[0], PutTask):
                self._send_puts(batch)  # type: ignore[arg-type]
            else:
                batch[0]()  # type: ignore[operator]
        except Exception:  # as above: a bug, shown with its traceback; the thread goes on
            log.exception("peewee_kvcache: background L2 work failed")
        finally:
            with self._cond:
                self._busy -= len(batch)
                self._cond.notify_all()
