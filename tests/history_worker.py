"""One "host" of the randomized history check in tests/test_history.py (a subprocess entry point).

Run as ``python -m tests.history_worker '<json>'`` from the repository root. The worker opens its
own cache (its own L1 directory, the shared KV server over HTTP) and a cached PostgreSQL database,
starts its NOTIFY listener when asked to, creates the file ``config["ready"]`` and waits for the
file ``config["go"]``, which holds the wall-clock time to stop at. Until then it runs a seeded
random mix of cached reads, autocommit increments, committed transactions and rolled-back
transactions, recording each with ``time.time()`` stamps, and finally writes its history as JSON
to ``config["out"]``:

- ``reads``: ``{"kind", "t0", "t1", "rows": [[table, id, value], ...], "sums": [[table, [ids],
  sum], ...], "src": "l1" | "l2" | "db", "recheck": bool, "txn": bool, "own": {...}}`` — ``own``
  (reads inside a transaction that wrote) maps "table:id" to the value the transaction wrote;
- ``commits``: ``{"table", "id", "value", "cs", "ce", "kind"}`` — ``cs`` just before the COMMIT
  (for autocommit writes: before the statement) was sent, ``ce`` once the call returned;
- ``poison``: ``[table, id, value]`` written by transactions that rolled back (never committed);
- ``errors``: tracebacks of operations that raised (a healthy run has none);
- ``stats``: ``cache.get_stats().as_dict()`` after draining.

Every committed write is ``value = value + 1`` (so each row's committed values are 1, 2, 3, ...
in commit order) and every rolled-back write adds ``POISON``, a value no commit can reach.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

import peewee
from peewee import fn

from peewee_kvcache import CachedPostgresqlDatabase, CloudflareKVCache
from peewee_kvcache.kv.cloudflare import CloudflareKVNamespace

POISON = 1_000_000
COUNTERS = (1, 2, 3, 4)
BUCKETS = (1, 2)
BUCKET_OF = {1: 1, 2: 1, 3: 2, 4: 2}
TTL = 60  # long enough that only invalidation and l1_max_age end entries during a run


class Bucket(peewee.Model):
    value = peewee.IntegerField(default=0)

    class Meta:
        table_name = "hist_bucket"


class Counter(peewee.Model):
    bucket_id = peewee.IntegerField()
    value = peewee.IntegerField(default=0)

    class Meta:
        table_name = "hist_counter"


MODELS = [Bucket, Counter]
TABLES = {"counter": Counter, "bucket": Bucket}
Obs = Tuple[List[List[Any]], List[List[Any]]]


def seed_rows(db: peewee.Database) -> None:
    """Create the two tables with every value 0 (run by the test, on a plain database)."""
    with db.bind_ctx(MODELS):
        db.drop_tables(MODELS, safe=True)
        db.create_tables(MODELS)
        for b in BUCKETS:
            Bucket.create(id=b, value=0)
        for c in COUNTERS:
            Counter.create(id=c, bucket_id=BUCKET_OF[c], value=0)


# -- reads: each returns (rows, sums): per-row observations and aggregates over counters --------
def read_counter(rng: random.Random) -> Obs:
    r = rng.choice(COUNTERS)
    rows = list(Counter.select(Counter.id, Counter.value).where(Counter.id == r)
                .with_cache(ex=TTL).tuples())
    return [["counter", i, v] for i, v in rows], []


def read_bucket(rng: random.Random) -> Obs:
    b = rng.choice(BUCKETS)
    rows = list(Bucket.select(Bucket.id, Bucket.value).where(Bucket.id == b)
                .with_cache(ex=TTL).tuples())
    return [["bucket", i, v] for i, v in rows], []


def read_all(rng: random.Random) -> Obs:
    rows = list(Counter.select(Counter.id, Counter.value).order_by(Counter.id)
                .with_cache(ex=TTL).tuples())
    return [["counter", i, v] for i, v in rows], []


def read_join(rng: random.Random) -> Obs:
    rows = list(Counter.select(Counter.id, Counter.value, Bucket.id, Bucket.value)
                .join(Bucket, on=(Counter.bucket_id == Bucket.id)).order_by(Counter.id)
                .with_cache(ex=TTL).tuples())
    out: List[List[Any]] = []
    for cid, cval, bid, bval in rows:
        out += [["counter", cid, cval], ["bucket", bid, bval]]
    return out, []


def read_group(rng: random.Random) -> Obs:
    """Join + aggregate: each bucket's value and the sum of its counters."""
    rows = list(Bucket.select(Bucket.id, Bucket.value, fn.SUM(Counter.value))
                .join(Counter, on=(Counter.bucket_id == Bucket.id))
                .group_by(Bucket.id, Bucket.value).order_by(Bucket.id)
                .with_cache(ex=TTL).tuples())
    members = {b: [c for c in COUNTERS if BUCKET_OF[c] == b] for b in BUCKETS}
    return ([["bucket", b, v] for b, v, _ in rows],
            [["counter", members[b], int(s)] for b, _, s in rows])


def read_total(rng: random.Random) -> Obs:
    total = Counter.select(fn.SUM(Counter.value)).with_cache(ex=TTL).scalar()
    return [], [["counter", list(COUNTERS), int(total)]]


READS = [(read_counter, 3), (read_bucket, 2), (read_all, 2), (read_join, 2), (read_group, 2),
         (read_total, 1)]
EXPECTED_ROWS = {read_counter: 1, read_bucket: 1, read_all: 4, read_join: 8, read_group: 2,
                 read_total: 0}


def schedule(seed: int, seconds: float, table: str) -> List[Tuple[float, float, bool]]:
    """The seeded phases of one table, as (start, end, busy) offsets from the start of the
    workload: the table is written only in its busy phases. Quiet phases let entries age past
    ``l1_max_age`` and show how long a stale entry outlives the table's last write; the tables'
    phases are independent, so hosts keep writing (and their background writers stay busy) while
    a table is quiet."""
    rng = random.Random(f"{seed}-schedule-{table}")
    phases, t, busy = [], 0.0, rng.random() < 0.5
    while t < seconds:
        length = rng.uniform(0.3, 1.5) if busy else rng.uniform(0.8, 2.8)
        phases.append((t, min(t + length, seconds), busy))
        t, busy = t + length, not busy
    return phases


#: operation weights (read, autocommit write, committed transaction, rolled-back transaction)
#: for the two kinds of hosts: writers, and read-mostly hosts whose L1 entries get old
ROLES = {"writer": (70, 15, 8, 7), "reader": (95, 1, 1, 3)}


def role(worker: int) -> str:
    return "writer" if worker % 2 == 0 else "reader"


def add(model: Any, rid: int, amount: int) -> int:
    (value,) = (model.update(value=model.value + amount).where(model.id == rid)
                .returning(model.value).tuples().execute())
    return value[0]


def targets(rng: random.Random, tables=tuple(TABLES)) -> List[Tuple[str, int]]:
    """1-2 distinct rows of ``tables``, in one global lock order (counters before buckets, by
    id): no transaction can deadlock with another."""
    pool = [("counter", c) for c in COUNTERS if "counter" in tables] + \
           [("bucket", b) for b in BUCKETS if "bucket" in tables]
    chosen = rng.sample(pool, min(len(pool), rng.choice((1, 2))))
    return sorted(chosen, key=lambda t: (t[0] != "counter", t[1]))


class Worker:
    def __init__(self, config: Dict[str, Any]):
        self.config = config
        self.rng = random.Random(f"{config['seed']}-{config['worker']}")
        server = config["server"]
        namespace = CloudflareKVNamespace(server["account_id"], server["namespace_id"],
                                          server["api_token"], base_url=server["base_url"],
                                          budget=None)
        self.cache = CloudflareKVCache(namespace, l1_directory=config["l1"],
                                       **config["cache_options"])
        self.db = CachedPostgresqlDatabase("test", cache=self.cache, notify=config["notify"],
                                           options=f"-c search_path={config['schema']}",
                                           **config["pg"])
        self.db.bind(MODELS)
        self.reads: List[Dict[str, Any]] = []
        self.commits: List[Dict[str, Any]] = []
        self.poison: List[List[Any]] = []
        self.errors: List[str] = []
        self.busy: Tuple[str, ...] = tuple(TABLES)  # tables that may be written right now

    # -- operations -------------------------------------------------------------------------
    def read(self, in_txn: bool = False, own: Optional[Dict[str, int]] = None) -> None:
        fn_, = self.rng.choices([f for f, _ in READS], [w for _, w in READS])
        before = self.cache.counters.snapshot()
        t0 = time.time()
        rows, sums = fn_(self.rng)
        t1 = time.time()
        after = self.cache.counters.snapshot()
        delta = {k: after[k] - before[k]
                 for k in ("hits", "memory_hits", "l1_hits", "l2_hits", "l1_rechecks")}
        if delta["hits"]:  # "l1": this host answered (its process memory or its L1 directory)
            src = "l1" if delta["memory_hits"] or delta["l1_hits"] else "l2"
        else:
            src = "db"
        if len(rows) != EXPECTED_ROWS[fn_] or bool(sums) != (fn_ in (read_group, read_total)):
            self.errors.append(f"{fn_.__name__} returned {rows!r} {sums!r}")
        self.reads.append(dict(kind=fn_.__name__[5:], t0=t0, t1=t1, rows=rows, sums=sums,
                               src=src, recheck=bool(delta["l1_rechecks"]), txn=in_txn,
                               own=own or {}))

    def write(self) -> None:
        table, rid = self.rng.choice(targets(self.rng, self.busy))
        cs = time.time()
        value = add(TABLES[table], rid, 1)
        self.commits.append(dict(table=table, id=rid, value=value, cs=cs, ce=time.time(),
                                 kind="autocommit"))

    def commit(self) -> None:
        written = []
        with self.db.atomic():
            if self.rng.random() < 0.3:
                self.read(in_txn=True)  # before any write: may be served from / stored in cache
            for table, rid in targets(self.rng, self.busy):
                written.append((table, rid, add(TABLES[table], rid, 1)))
            if self.rng.random() < 0.5:  # reads of written tables bypass the cache
                self.read(in_txn=True, own={f"{t}:{r}": v for t, r, v in written})
            time.sleep(self.rng.uniform(0, 0.02))
            cs = time.time()
        ce = time.time()
        for table, rid, value in written:
            self.commits.append(dict(table=table, id=rid, value=value, cs=cs, ce=ce,
                                     kind="transaction"))

    def rollback(self) -> None:
        with self.db.atomic() as txn:
            written = [(t, r, add(TABLES[t], r, POISON)) for t, r in targets(self.rng)]
            self.poison.extend([t, r, v] for t, r, v in written)
            if self.rng.random() < 0.5:
                self.read(in_txn=True, own={f"{t}:{r}": v for t, r, v in written})
            time.sleep(self.rng.uniform(0, 0.02))
            txn.rollback()

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> None:
        config = self.config
        self.db.connect()
        if config["notify"] and not self.db.start_listener().wait_ready(10):
            raise RuntimeError("NOTIFY listener not ready after 10 s")
        for _ in range(3):  # warm up imports, the parser's memo and the HTTP session
            self.read()
        self.reads.clear()
        open(config["ready"], "w").close()
        deadline = time.time() + 60
        while not os.path.exists(config["go"]):
            if time.time() > deadline:
                raise RuntimeError("no go signal within 60 s")
            time.sleep(0.005)
        with open(config["go"]) as f:
            start, end = json.load(f)
        phases = {table: [(start + a, start + b, busy)
                          for a, b, busy in schedule(config["seed"], end - start, table)]
                  for table in TABLES}
        ops = list(zip((self.read, self.write, self.commit, self.rollback),
                       ROLES[role(config["worker"])]))
        quiet = [(self.read, 95), (self.rollback, 5)]  # rollbacks commit nothing
        while True:
            now = time.time()
            if now >= end:
                break
            self.busy = tuple(table for table, spans in phases.items()
                              if any(a <= now < z and busy for a, z, busy in spans))
            choices = ops if self.busy else quiet
            op, = self.rng.choices([o for o, _ in choices], [w for _, w in choices])
            try:
                op()
            except Exception:  # recorded: the test fails on any error
                self.errors.append(traceback.format_exc())
            time.sleep(self.rng.uniform(0, config["think"]))

    def finish(self) -> Dict[str, Any]:
        drained = self.cache.drain(15)
        stats = self.cache.get_stats().as_dict()
        if not drained:
            self.errors.append("cache.drain(15) timed out")
        self.db.stop_listener()
        self.db.close()
        self.cache.close()
        return dict(worker=self.config["worker"], pid=os.getpid(), reads=self.reads,
                    commits=self.commits, poison=self.poison, errors=self.errors, stats=stats)


def main() -> None:
    config = json.loads(sys.argv[1])
    worker = Worker(config)
    try:
        worker.run()
    finally:
        history = worker.finish()
        tmp = config["out"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(history, f)
        os.replace(tmp, config["out"])
    print("done", flush=True)


if __name__ == "__main__":
    main()
