"""What no cache keeping this library's write guarantees can take off a write, measured with the
raw drivers (no Peewee, no cache code) in the same run as the workload.

A write that other hosts' caches must hear of, and whose L2 sweep must survive the process being
killed right after the commit, pays at least for

- **NOTIFY**: the notification in the write's own round trip (``; SELECT pg_notify(...)``) and
  PostgreSQL's work at commit to queue it and signal every listening connection (each host has
  one, as the workload's hosts do), and
- **a durable local record** before the commit: one SQLite transaction in WAL mode with
  ``synchronous=NORMAL`` inserting one row (the outbox's job).

Each is the median difference (or time) over interleaved samples; the floor is what they add to
the run's median uncached write.
"""
from __future__ import annotations

import os
import select
import sqlite3
import statistics
import tempfile
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import List

import psycopg2

from .timing import Variant, time_once
from .workload import PG, PG_DATABASE

SAMPLES = 300
CHANNEL = "pkv_floor"
#: as long as a notification of two tables is (origin and names, JSON)
PAYLOAD = '{"o":"0123456789abcdef0123456789abcdef","n":["t:item","t:review"]}'


@dataclass(frozen=True)
class WriteFloor:
    update_us: float  # the raw UPDATE's median
    notify_us: float  # what the notification adds to it (median of the differences)
    record_us: float  # one durable local SQLite transaction of one row

    def ratio(self, uncached_write_us: float) -> float:
        """The least a write of ``uncached_write_us`` costs with both, as a ratio to it."""
        return (uncached_write_us + self.notify_us + self.record_us) / uncached_write_us


def _listening(stop: threading.Event) -> threading.Thread:
    """A connection LISTENing on the channel, drained by a thread, as every host has."""
    conn = psycopg2.connect(dbname=PG_DATABASE, **PG)
    conn.autocommit = True
    conn.cursor().execute(f"LISTEN {CHANNEL}")

    def drain() -> None:
        with closing(conn):
            while not stop.is_set():
                if select.select([conn], [], [], 0.05)[0]:
                    conn.poll()
                    conn.notifies.clear()

    thread = threading.Thread(target=drain, name="pkv-floor-listener", daemon=True)
    thread.start()
    return thread


def write_floor(schema: str, samples: int = SAMPLES) -> WriteFloor:
    """Measure the floor on ``schema``'s page-view table (a row no read depends on)."""
    update = "UPDATE pageview SET views = views + 1 WHERE id = 1"
    notified = f"{update}; SELECT pg_notify('{CHANNEL}', '{PAYLOAD}')"
    stop = threading.Event()
    listener = _listening(stop)
    plain: List[float] = []
    extra: List[float] = []
    try:
        with closing(psycopg2.connect(dbname=PG_DATABASE, options=f"-c search_path={schema}",
                                      **PG)) as conn:
            conn.autocommit = True
            cursor = conn.cursor()
            alone_variant = Variant("update", lambda: cursor.execute(update))
            notified_variant = Variant("update and notify", lambda: cursor.execute(notified))
            for _ in range(samples):
                alone = time_once(alone_variant)
                plain.append(alone)
                extra.append(time_once(notified_variant) - alone)
    finally:
        stop.set()
        listener.join(5)
    return WriteFloor(statistics.median(plain), statistics.median(extra),
                      _durable_record(samples))


def _durable_record(samples: int) -> float:
    with tempfile.TemporaryDirectory(prefix="pkv-floor-") as directory:
        conn = sqlite3.connect(os.path.join(directory, "state.sqlite3"), isolation_level=None)
        with closing(conn):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE job (id TEXT PRIMARY KEY, due_ms INTEGER, names TEXT)"
                         " WITHOUT ROWID")

            def record() -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO job VALUES (?, ?, ?)",
                             (os.urandom(16).hex(), 0, '["t:item"]'))
                conn.execute("COMMIT")

            recorded = Variant("durable record", record)
            return statistics.median(time_once(recorded) for _ in range(samples))
