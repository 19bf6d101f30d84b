"""A durable queue of L2 invalidation sweeps, kept in the L1 directory.

A committed write whose KV deletes were not sent would leave stale entries in L2 until their TTL.
So a sweep is recorded here *before* the database commit (an extra sweep after a rollback is
harmless) and removed only once KV accepted it; failures are retried with backoff, by this process
or by any process sharing the directory, also after a restart or ``kill -9``.

Jobs are keyed ``{due_ms:015d}-{id}`` so iterating keys yields them in due order. A process takes a
job by re-keying it to ``now + lease`` inside a transaction: a worker that dies mid-sweep leaves a
job that becomes due again when the lease runs out.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Tuple

import diskcache
import msgpack

from ..levels.l1 import CorruptL1, stand_in

#: the longest wait between two attempts of a sweep: after an outage, the first sweep reaches KV
#: at most this long after the circuit breaker lets calls through again (see README)
MAX_BACKOFF_MS = 5_000


@dataclass(frozen=True)
class Job:
    """Sweep ``names`` from L2; ``sweep`` 1 is the commit-time sweep, 2 the late re-sweep, which
    deletes only results computed up to ``before_ms`` (the first sweep's boundary)."""

    job_id: str
    names: Tuple[str, ...]
    sweep: int = 1
    attempts: int = 0
    before_ms: Optional[int] = None
    #: False for a job that could not be recorded in the outbox (no usable L1): memory only
    durable: bool = True

    def retried(self, now_ms: int) -> Tuple[int, "Job"]:
        """When this job, having failed, runs again (exponential backoff, capped at
        ``MAX_BACKOFF_MS``), and the job counting that attempt."""
        delay = min(500 * 2 ** min(self.attempts, 16), MAX_BACKOFF_MS)
        return now_ms + delay, replace(self, attempts=self.attempts + 1)


def _key(due_ms: int, job_id: str) -> str:
    return f"{due_ms:015d}-{job_id}"


class Outbox:
    """Pending sweeps in a diskcache that never evicts."""

    lease_ms: int
    jobs: diskcache.Cache

    def __init__(self, directory: str, lease_ms: int = 30_000, timeout: float = 1.0):
        self.lease_ms = lease_ms
        self.jobs = diskcache.Cache(os.path.join(directory, "outbox"), eviction_policy="none",
                                    timeout=timeout)

    def add(self, names: Tuple[str, ...], due_ms: int, sweep: int = 1,
            before_ms: Optional[int] = None) -> Job:
        job = Job(uuid.uuid4().hex, tuple(names), sweep, 0, before_ms)
        self._put(job, due_ms)
        return job

    def _put(self, job: Job, due_ms: int) -> None:
        self.jobs.set(_key(due_ms, job.job_id),
                      msgpack.packb([list(job.names), job.sweep, job.attempts, job.before_ms]))

    def _find(self, job_id: str) -> Optional[str]:
        return next((k for k in self.jobs.iterkeys() if k.endswith("-" + job_id)), None)

    def claim(self, job_id: str, now_ms: int) -> Optional[Job]:
        """Lease one job by id (None if done or gone)."""
        with self.jobs.transact():
            key = self._find(job_id)
            return self._lease(key, now_ms) if key else None

    def claim_due(self, now_ms: int) -> Iterator[Job]:
        """Lease every job that is due, oldest first."""
        while True:
            with self.jobs.transact():
                key = next(iter(self.jobs.iterkeys()), None)
                if key is None or int(key.split("-", 1)[0]) > now_ms:
                    return
                job = self._lease(key, now_ms)
            yield job

    def _lease(self, key: str, now_ms: int) -> Job:
        try:
            names, sweep, attempts, before_ms = msgpack.unpackb(self.jobs.pop(key))
        except (ValueError, TypeError) as exc:
            raise CorruptL1(f"outbox job {key!r} is unreadable") from exc
        job = Job(key.split("-", 1)[1], tuple(names), sweep, attempts, before_ms)
        self._put(job, now_ms + self.lease_ms)
        return job

    def done(self, job: Job) -> None:
        with self.jobs.transact():
            key = self._find(job.job_id)
            if key:
                self.jobs.delete(key)

    def retry(self, job: Job, now_ms: int) -> None:
        """Reschedule a failed job with backoff (see :meth:`Job.retried`)."""
        due_ms, retried = job.retried(now_ms)
        with self.jobs.transact():
            key = self._find(job.job_id)
            if key:
                self.jobs.delete(key)
            self._put(retried, due_ms)

    def next_due_ms(self) -> Optional[int]:
        """When the next job is due (unix ms), for monitoring and tests; None when empty."""
        key = next(iter(self.jobs.iterkeys()), None)
        return int(key.split("-", 1)[0]) if key else None

    def __len__(self) -> int:
        return len(self.jobs)

    def close(self) -> None:
        self.jobs.close()


#: the outbox of an L1 directory that could not be opened (give it ``lease_ms``): nothing is ever
#: recorded there, so nothing is ever due (the writer asks every tick)
UnavailableOutbox = stand_in(Outbox, data=("lease_ms",),
                             claim_due=lambda self, now_ms: iter(()))
