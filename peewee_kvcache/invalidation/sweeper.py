"""The L2 side of invalidation: durable sweep jobs, their retries and late re-sweeps.

A write's sweep is recorded in the outbox (L1 directory) before the database commit, together
with its flags, in one local transaction; run by the background writer after it (with the bump
the write owes, see :meth:`L1Store.bump_later`; writes in quick succession share one sweep),
retried with backoff until KV accepts it, and repeated once ``propagation_delay + max_put_delay``
later for markers KV's ``list`` did not show yet and for other hosts' writes still in flight.
Without a usable L1 the jobs live in this process's memory.

The sweeper knows its collaborators only: the outbox and the L1 store (this host), the L2 gateway,
two durations, and the fault path. It never runs anything in the background itself: the cache
hands the sweeps it returns, and :meth:`Sweeper.run_due` as the tick, to its background writer.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..core import forksafe
from ..core.config import now_ms, real_monotonic
from ..core.faults import Report
from ..core.names import EVERYTHING
from ..l2.gateway import L2Gateway
from ..levels.l1 import L1_FAULTS
from .outbox import Job

#: the shortest time between two sweeps of completed writes: a write waits at most this long
#: for its sweep beyond the writer's own queue, and a burst of writes costs one sweep per
#: interval (one KV listing per name, one local transaction), not one per write
SWEEP_INTERVAL_S = 0.02


def _boundaries(jobs: List[Job]) -> Dict[str, int]:
    """Each name to sweep, with the latest boundary among the jobs naming it."""
    boundaries: Dict[str, int] = {}
    for job in jobs:
        for name in job.names:
            boundaries[name] = max(boundaries.get(name, 0), job.before_ms or 0)
    return boundaries


class _Completed:
    """Writes whose statement is done, for the writer's sweep task (one queued at a time)."""

    def __init__(self) -> None:
        self._jobs: List[Job] = []
        self._queued = False
        self._last_sweep = 0.0  # real_monotonic()
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """The parent's completed writes are the parent's to sweep (their jobs stay in the
        outbox should it not)."""
        self._jobs = []
        self._queued = False

    def add(self, job: Job) -> bool:
        """True when no task is queued to take ``job``: the caller queues one."""
        with self._lock:
            self._jobs.append(job)
            if self._queued:
                return False
            self._queued = True
            return True

    def take(self) -> List[Job]:
        """In the task: the writes completed so far. Sweeps start at most every
        :data:`SWEEP_INTERVAL_S`, so writes in quick succession share one."""
        wait = self._last_sweep + SWEEP_INTERVAL_S - real_monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            self._queued = False  # a write completing from here on queues the next task
            jobs, self._jobs = self._jobs, []
        return jobs

    def swept(self) -> None:
        self._last_sweep = real_monotonic()


class Sweeper:
    """Sweep jobs of one cache, and what this process must distrust while they are pending.

    Request threads (prepare, complete) and the writer thread (run_due, jobs) share the state
    below; ``_lock`` guards every change and is held only for in-memory steps, never across L1
    or KV calls. The hit path reads ``_untrusted`` without it: that dict is replaced on each
    change, never modified, so a reader sees one whole version."""

    def __init__(self, outbox: Any, l1: Any, l2: L2Gateway, *, resweep_after_ms: int,
                 clock_skew_ms: int, fault: Report):
        """``outbox``, ``l1``: this host's :class:`~.outbox.Outbox` and
        :class:`~..levels.l1.L1Store` (or their stand-ins when the directory is unusable).
        ``resweep_after_ms``: ``propagation_delay + max_put_delay``, from a write to its late
        re-sweep. ``clock_skew_ms``: allowed between hosts when comparing entry times."""
        self._outbox = outbox
        self._l1 = l1
        self._l2 = l2
        self._resweep_after_ms = resweep_after_ms
        self._clock_skew_ms = clock_skew_ms
        self._fault = fault
        self._lock = threading.Lock()
        forksafe.renew_locks(self, "_lock")
        self._own_jobs: Set[str] = set()
        #: names whose L1 bump failed (see _bump) -> that failure's number
        self._untrusted: Dict[str, int] = {}
        self._failures = itertools.count()
        self._memory_jobs: List[Tuple[int, Job]] = []  # sweeps that could not be recorded
        self._memory_pending: Counter = Counter()  # their names: not read from L2 meanwhile
        self._completed = _Completed()

    def distrusts(self, names: Sequence[str]) -> bool:
        """True for names whose L1 invalidation failed: their L1 entries can't be trusted."""
        untrusted = self._untrusted
        return bool(untrusted) and not untrusted.keys().isdisjoint(names)

    def pending_in_memory(self, names: Sequence[str]) -> bool:
        """True while a sweep of one of ``names`` that the outbox couldn't record is pending."""
        with self._lock:
            return any(self._memory_pending[name] for name in names)

    def prepare(self, names: Sequence[str]) -> Optional[Job]:
        """Record the L2 sweep durably *before* the write commits, and stop this host reading
        the names from L2 until it succeeded. A crash after the commit leaves the job behind
        for the next process; a rollback only costs a needless sweep. Without a usable L1 the
        job lives in memory only (retried by this process)."""
        if not names:
            return None
        names = tuple(sorted(set(names)))
        try:
            with self._outbox.state.write():  # the job and the flags: one local transaction
                job = self._outbox.add(names, now_ms() + self._outbox.lease_ms)
                self._l1.mark_pending(names, job.job_id)
        except L1_FAULTS as exc:
            self._fault("l1_errors", "recording an invalidation failed (it is kept in memory)",
                        exc)
            job = Job("mem-" + uuid.uuid4().hex, names, durable=False)
            with self._lock:
                self._memory_pending.update(names)
        with self._lock:
            self._own_jobs.add(job.job_id)
        return job

    def complete(self, job: Job) -> Optional[Callable[[], None]]:
        """After the write: returns the task that sweeps L2 for it, for the background, or
        None when one is queued already (it takes this write too). Results whose query
        started after this moment saw the committed write: sweeps keep them.

        Its new tokens are owed, not made here (see :meth:`L1Store.bump_later`): its flags keep
        this host from trusting the names until then (read-your-writes), and the task makes
        them before sweeping, for every write completed meanwhile, whose sweeps go together:
        one listing per name, one local transaction. A job that could not be recorded left no
        flags: its bump is made at once."""
        job = Job(job.job_id, job.names, job.sweep, job.attempts, now_ms(), job.durable)
        if job.durable:
            self._l1.bump_later(job.names, job.job_id, job.before_ms)
        else:
            self._bump(job.names, job.job_id)
        return self._run_completed if self._completed.add(job) else None

    def _run_completed(self) -> None:
        """The writer's task for completed writes: their owed bumps at once, their sweeps (and
        the bumps owed by writes completed while they waited their turn) next."""
        self._settle()
        jobs = self._completed.take()
        self._settle()
        if jobs:
            self._run_jobs(jobs)
            self._completed.swept()

    def _settle(self, retry: bool = False) -> None:
        """Make the bumps this process owes (they stay owed on failure: retried each tick,
        where a failure again is not logged anew)."""
        try:
            self._l1.settle()
        except L1_FAULTS as exc:
            if not retry:
                self._fault("l1_errors", "L1 invalidation failed (its flags keep this host "
                            "from trusting those names until it succeeds)", exc)

    def sweep_late_write(self, names: Iterable[str], before_ms: int) -> None:
        """An L2 write whose outcome is unknown (it timed out) may still land, after the sweeps
        meant to remove it. It is assumed to land within ``max_put_delay``: sweep the entries'
        names once that (and ``propagation_delay``) has passed, deleting results computed up to
        ``before_ms`` (the latest of its queries' starts). "Everything" is left out: its prefix
        is every table's, and each entry is also listed under its own tables and tags."""
        indexed = tuple(sorted(set(names) - {EVERYTHING}))
        if not indexed:
            return  # entries that depend on nothing are never invalidated: nothing can be stale
        due = now_ms() + self._resweep_after_ms
        job = Job("late-" + uuid.uuid4().hex, indexed, sweep=2, before_ms=before_ms)
        try:
            self._schedule(job, due)
        except L1_FAULTS as exc:
            self._fault("l1_errors", "recording a late-write sweep failed (it is kept in memory)",
                        exc)
            self._schedule(replace(job, durable=False), due)

    def _bump(self, names: Sequence[str], job_id: str) -> None:
        """New tokens for ``names``, releasing job ``job_id``'s unbumped flags. If L1 can't take
        them (a full disk), this process stops trusting L1 entries of those names until a later
        bump succeeds (see :meth:`run_due`); flags there were stay, so this host's other
        processes don't trust them either."""
        try:
            self._l1.bump(names, now_ms(), job_id)
        except L1_FAULTS as exc:
            self._fault("l1_errors", "L1 invalidation failed (this process distrusts the cached "
                        "results of those names until it succeeds)", exc)
            with self._lock:
                failure = next(self._failures)
                self._untrusted = {**self._untrusted, **{name: failure for name in names}}

    def run_due(self) -> None:
        """Writer tick: retries, late re-sweeps and jobs other processes left behind."""
        self._settle(retry=True)
        untrusted = self._untrusted
        if untrusted:
            try:  # (flags a failed bump left are lifted by the bump owed for them: settle)
                self._l1.bump(tuple(untrusted), now_ms())
            except L1_FAULTS:  # the retry of a fault logged and counted when it happened
                pass  # still failing: those names stay untrusted
            else:  # trusted again, unless a bump failed since: that failure is newer than ours
                with self._lock:
                    self._untrusted = {name: failure for name, failure in self._untrusted.items()
                                       if untrusted.get(name) != failure}
        now = now_ms()
        with self._lock:
            due = [job for at, job in self._memory_jobs if at <= now]
            self._memory_jobs = [(at, job) for at, job in self._memory_jobs if at > now]
        try:
            due.extend(self._outbox.claim_due(now))
        except L1_FAULTS as exc:
            self._fault("l1_errors", "reading the invalidation outbox failed", exc)
        if due:
            self._run_jobs(due)

    def _run_jobs(self, jobs: List[Job]) -> None:
        """Sweep L2 for ``jobs`` together: each name listed once, up to the latest boundary
        among the jobs naming it (deleting more of what was computed before a write is always
        safe). Done in one local transaction; on failure each job is rescheduled with its
        backoff."""
        with self._lock:
            own = self._own_jobs.intersection(job.job_id for job in jobs)
        recovered = [job for job in jobs if job.sweep == 1 and job.job_id not in own]
        for job in recovered:
            self._bump(job.names, job.job_id)  # its writer may have died before bumping L1
        # a recovered job doesn't know when its write committed: now is safely later
        now = now_ms()
        jobs = [job if job.before_ms is not None else replace(job, before_ms=now)
                for job in jobs]
        if not self._sweep(_boundaries(jobs)):
            self._retry(jobs)
            return
        with self._lock:
            self._own_jobs.difference_update(job.job_id for job in jobs)
        durable = [job for job in jobs if job.durable]
        try:
            if durable:
                with self._outbox.state.write():  # one local transaction
                    self._finish(durable)
        except L1_FAULTS as exc:
            self._fault("l1_errors", "updating the invalidation outbox failed", exc)
        self._finish([job for job in jobs if not job.durable])

    def _finish(self, jobs: List[Job]) -> None:
        """Sweeps that succeeded (all durable, or none): done, their L2 flags lifted, their
        re-sweeps scheduled."""
        if jobs and jobs[0].durable:
            self._outbox.done(jobs)
        for job in jobs:
            if job.sweep != 1:
                continue
            if job.durable:
                self._l1.clear_pending(job.names, job.job_id)
            else:
                with self._lock:
                    self._memory_pending.subtract(job.names)
                    self._memory_pending += Counter()  # drops the names that reached zero
            # KV's list may not yet show other hosts' markers, and another host's write that
            # started before ours may still be in flight (at most max_put_delay): again, timed
            # from the write (not from this sweep, which may have run late).
            self._schedule(replace(job, sweep=2, attempts=0),
                           (job.before_ms or 0) + self._resweep_after_ms)

    def _retry(self, jobs: List[Job]) -> None:
        """Try ``jobs`` again later: in the outbox, or in memory when that fails too."""
        now = now_ms()
        durable = [job for job in jobs if job.durable]
        try:
            if durable:
                with self._outbox.state.write():  # one local transaction
                    for job in durable:
                        self._outbox.retry(job, now)
        except L1_FAULTS as exc:
            self._fault("l1_errors", "rescheduling an invalidation failed (it is kept in "
                        "memory)", exc)
        else:
            jobs = [job for job in jobs if not job.durable]
        for job in jobs:
            due_ms, retried = job.retried(now)
            with self._lock:
                self._memory_jobs.append((due_ms, replace(retried, durable=False)))

    def _schedule(self, job: Job, due_ms: int) -> None:
        """A further sweep due at ``due_ms``: in the outbox, or in memory without an L1."""
        if job.durable:
            self._outbox.add(job.names, due_ms, sweep=job.sweep, before_ms=job.before_ms)
        else:
            with self._lock:
                self._memory_jobs.append((due_ms, job))

    def _sweep(self, boundaries: Dict[str, int]) -> bool:
        """Delete each name's L2 keys of results computed up to its boundary (unix ms, plus
        the clock skew allowed between hosts) in one namespace sweep; True on success."""
        return self._l2.sweep({name: before_ms + self._clock_skew_ms
                               for name, before_ms in boundaries.items()})
