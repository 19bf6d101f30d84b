"""One background thread that sends L2 work off the query's path.

A miss must not wait for a network write, and KV's request budget is small, so queued entry writes
are coalesced: the thread lingers ``linger_s`` after the first put, then sends every put waiting in
the queue in one bulk request.
Other work (invalidation sweeps) runs in submission order between those batches. Every
``poll_s`` seconds the thread also runs ``tick`` (the durable outbox's retries and late sweeps).
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Tuple, Union

from .kv.base import KVPair

log = logging.getLogger("peewee_kvcache")


@dataclass
class PutTask:
    """An entry to write. ``build()`` makes its KV pairs when sent; ``key_count`` sizes batches;
    ``still_valid`` is asked before sending and again after; past ``deadline``
    (:func:`~peewee_kvcache.config.real_monotonic`) it must not land (see cache)."""

    key_count: int
    build: Callable[[], List[KVPair]]
    still_valid: Callable[[], bool]
    started_ms: int
    #: the entry's stamp names: swept again if the write's outcome is unknown (it may land late)
    names: Tuple[str, ...] = ()
    deadline: float = math.inf


Task = Union[PutTask, Callable[[], None]]


class BackgroundWriter:
    """FIFO of L2 work served by one daemon thread, started lazily (and again after a fork)."""

    def __init__(self, send_puts: Callable[[List[PutTask]], None], tick: Callable[[], None],
                 poll_s: float = 0.25, linger_s: float = 0.2, max_batch: int = 1000,
                 exit_timeout: float = 10.0):
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
        self._pid = os.getpid()
        self._closed = False
        atexit.register(self.drain, exit_timeout)

    def start(self) -> None:
        """Run the thread now (e.g. to resume an outbox left by an earlier process)."""
        with self._cond:
            self._ensure_thread()

    def submit(self, task: Task) -> None:
        with self._cond:
            self._ensure_thread()
            self._queue.append(task)
            self._busy += 1
            if not self._lingering or len(self._queue) >= self._max_batch:
                self._cond.notify_all()

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

    def close(self, timeout: Optional[float] = 10.0) -> bool:
        drained = self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return drained

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread and queue are not ours
            self._pid, self._thread, self._busy = os.getpid(), None, 0
            self._queue.clear()
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="peewee-kvcache-writer",
                                            daemon=True)
            self._thread.start()

    def _next_batch(self) -> Optional[List[Task]]:
        """The next batch; [] when ``poll_s`` passed idle; None when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed, self._poll_s)
            if self._closed and not self._queue:
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
            while self._queue and isinstance(self._queue[0], PutTask) and size < self._max_batch:
                task = self._queue.popleft()
                size += task.key_count  # type: ignore[union-attr]
                batch.append(task)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if time.monotonic() - self._last_tick >= self._poll_s:
                self._last_tick = time.monotonic()
                try:
                    self._tick()
                except Exception:
                    log.exception("peewee_kvcache: background outbox work failed")
            if not batch:
                continue
            try:
                if isinstance(batch[0], PutTask):
                    self._send_puts(batch)  # type: ignore[arg-type]
                else:
                    batch[0]()  # type: ignore[operator]
            except Exception:  # the thread must survive any fault; callers degrade to the DB
                log.exception("peewee_kvcache: background L2 work failed")
            finally:
                with self._cond:
                    self._busy -= len(batch)
                    self._cond.notify_all()
