"""A durable queue of L2 invalidation sweeps, kept in the L1 directory's state file.

A committed write whose KV deletes were not sent would leave stale entries in L2 until their TTL.
So a sweep is recorded here *before* the database commit (an extra sweep after a rollback is
harmless) and removed only once KV accepted it; failures are retried with backoff, by this process
or by any process sharing the directory, also after a restart or ``kill -9``.

The jobs share the state file with the L1 tokens and flags (levels/state.py), so recording a
write's sweep and flagging its names is one local transaction. A process takes due jobs by moving
their due time to ``now + lease`` inside a transaction: a worker that dies mid-sweep leaves jobs
that become due again when the lease runs out.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import diskcache
import msgpack

from ..levels.l1 import CorruptL1, stand_in
from ..levels.state import StateFile, chunks, marks

#: the longest wait between two attempts of a sweep: after an outage, the first sweep reaches KV
#: at most this long after the circuit breaker lets calls through again (see README)
MAX_BACKOFF_MS = 5_000
#: jobs taken per claim (the writer claims again on its next tick)
CLAIM_MAX = 1000
_COLUMNS = "id, names, sweep, attempts, before_ms"


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


def _row(job: Job, due_ms: int) -> Tuple[Any, ...]:
    return (job.job_id, due_ms, json.dumps(list(job.names)), job.sweep, job.attempts,
            job.before_ms)


def _job(row: Sequence[Any]) -> Job:
    """A job read back; anything else than what :func:`_row` wrote is :class:`CorruptL1`."""
    job_id, names, sweep, attempts, before_ms = row
    try:
        parsed = json.loads(names)
    except (TypeError, ValueError) as exc:
        raise CorruptL1(f"outbox job {job_id!r} is unreadable") from exc
    if not (isinstance(parsed, list) and all(isinstance(n, str) for n in parsed)
            and type(sweep) is int and type(attempts) is int
            and (before_ms is None or type(before_ms) is int)):
        raise CorruptL1(f"outbox job {job_id!r} is malformed")
    return Job(str(job_id), tuple(parsed), sweep, attempts, before_ms)


class Outbox:
    """Pending sweeps in the ``job`` table of the L1 directory's state file. Its writes join a
    transaction the caller has open on that file (:meth:`StateFile.write`)."""

    lease_ms: int
    state: StateFile

    def __init__(self, directory: str, lease_ms: int = 30_000, timeout: float = 1.0):
        self.lease_ms = lease_ms
        self.state = StateFile.open(directory, timeout)
        self._import_legacy(os.path.join(directory, "outbox"))

    def _import_legacy(self, path: str) -> None:
        """Sweeps left by a version that kept them in a diskcache of their own join this outbox
        (once: that directory is removed)."""
        if not os.path.isdir(path):
            return
        legacy = diskcache.Cache(path, eviction_policy="none")
        try:
            with self.state.write() as conn:
                for key in list(legacy.iterkeys()):
                    due_ms, _, job_id = str(key).partition("-")
                    names, sweep, attempts, before_ms = msgpack.unpackb(legacy[key])
                    conn.execute("INSERT OR REPLACE INTO job VALUES (?, ?, ?, ?, ?, ?)",
                                 _row(Job(job_id, tuple(names), sweep, attempts, before_ms),
                                      int(due_ms)))
        finally:
            legacy.close()
        shutil.rmtree(path, ignore_errors=True)

    def add(self, names: Tuple[str, ...], due_ms: int, sweep: int = 1,
            before_ms: Optional[int] = None) -> Job:
        job = Job(os.urandom(16).hex(), tuple(names), sweep, 0, before_ms)
        with self.state.write() as conn:
            conn.execute("INSERT INTO job VALUES (?, ?, ?, ?, ?, ?)", _row(job, due_ms))
        return job

    def claim_due(self, now_ms: int) -> List[Job]:
        """Lease the jobs that are due (at most :data:`CLAIM_MAX`), oldest first. An unreadable
        job is dropped and raised as :class:`CorruptL1` (the others taken with it come back
        when their lease ends), so it can't stop the queue."""
        jobs: List[Job] = []
        corrupt: List[CorruptL1] = []
        with self.state.write() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM job WHERE due_ms <= ? ORDER BY due_ms"
                                " LIMIT ?", (now_ms, CLAIM_MAX)).fetchall()
            for row in rows:
                try:
                    jobs.append(_job(row))
                except CorruptL1 as exc:
                    corrupt.append(exc)
                    conn.execute("DELETE FROM job WHERE id = ?", (row[0],))
            conn.executemany("UPDATE job SET due_ms = ? WHERE id = ?",
                             [(now_ms + self.lease_ms, job.job_id) for job in jobs])
        if corrupt:
            raise corrupt[0]
        return jobs

    def done(self, jobs: Iterable[Job]) -> None:
        """Remove finished jobs."""
        ids = [job.job_id for job in jobs]
        with self.state.write() as conn:
            for part in chunks(ids):
                conn.execute(f"DELETE FROM job WHERE id IN ({marks(len(part))})", part)

    def retry(self, job: Job, now_ms: int) -> None:
        """Reschedule a failed job with backoff (see :meth:`Job.retried`)."""
        due_ms, retried = job.retried(now_ms)
        with self.state.write() as conn:
            conn.execute("INSERT OR REPLACE INTO job VALUES (?, ?, ?, ?, ?, ?)",
                         _row(retried, due_ms))

    def waiting(self) -> List[Job]:
        """Every job, due or leased, in due order (for operators and tests)."""
        return [_job(row) for row in self.state.read(f"SELECT {_COLUMNS} FROM job"
                                                     " ORDER BY due_ms")]

    def next_due_ms(self) -> Optional[int]:
        """When the next job is due (unix ms), for monitoring and tests; None when empty."""
        return self.state.read("SELECT MIN(due_ms) FROM job")[0][0]

    def __len__(self) -> int:
        return int(self.state.read("SELECT COUNT(*) FROM job")[0][0])

    def close(self) -> None:
        self.state.release()


#: the outbox of an L1 directory that could not be opened (give it ``lease_ms``): nothing is ever
#: recorded there, so nothing is ever due (the writer asks every tick)
UnavailableOutbox = stand_in(Outbox, data=("lease_ms",),
                             claim_due=lambda self, now_ms: iter(()))
