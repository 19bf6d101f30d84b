"""One host of the workload benchmark, in a process of its own (started with ``spawn``): its own
database connection, its own cache (process memory and an L1 directory of its own) in front of
the L2 the run shares between hosts, or plain Peewee for the no-cache baseline.

It replays its operation sequence, timing each operation alone and telling from the cache's
counters, outside the timed region, which level served it. Then it waits for its background L2
work, reports, waits while the coordinator reads the KV server's request counts, and only then
reads ``get_stats()`` (whose L2 listing would add requests). Over the KV gateway Worker the host
counts its own HTTP requests per endpoint as they leave (``SentRequests``)."""
from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

import peewee

from peewee_kvcache import (CachedPostgresqlDatabase, CloudflareKVCache, CloudflareKVNamespace,
                            LocalKVNamespace)
from peewee_kvcache.kv.base import KVNamespace
from peewee_kvcache.kv.worker import CloudflareWorkerKVNamespace
from peewee_kvcache.testing.workerd import SentRequests

from .mix import WARM_UP, Op, execute, query
from .workload import MODELS, PG, PG_DATABASE

NO_CACHE, EMBEDDED, REST, GATEWAY = "none", "embedded", "rest", "gateway"
DRAIN_TIMEOUT = 120.0  # seconds a host waits for its background L2 work before reporting
#: what served a read (from the counters that moved) or what an operation was
MEMORY, L1, L1_RECHECKED, L2, MISS, DATABASE, WRITE = (
    "memory", "L1", "L1 re-checked", "L2", "miss", "database", "write")


@dataclass(frozen=True)
class L2Spec:
    """The L2 a run's hosts share: none, a LocalKVNamespace directory, the KV server, or the
    gateway Worker in local workerd (``base_url`` and ``secret``: the run's own, test-only)."""

    kind: str
    directory: str = ""
    base_url: str = ""
    account_id: str = ""
    namespace_id: str = ""
    api_token: str = ""
    secret: str = ""

    def __repr__(self) -> str:  # neither the token nor the secret
        return f"L2Spec(kind={self.kind!r}, directory={self.directory!r}, url={self.base_url!r})"


@dataclass(frozen=True)
class HostSpec:
    index: int
    l2: L2Spec
    schema: str
    l1_directory: str
    prefix: str
    ops: Tuple[Op, ...]


class OpRecord(NamedTuple):
    micros: float
    served: str
    new_text: bool  # its SQL text was new to this process


@dataclass
class HostReport:
    index: int
    records: List[OpRecord]
    wall_s: float
    drained: bool  # its background L2 work finished within the drain timeout
    kv_calls: Dict[str, int] = field(default_factory=dict)  # embedded: calls; gateway: requests
    stats: Dict[str, Any] = field(default_factory=dict)  # get_stats().as_dict()


#: the operations of the KV interface (``list_all`` pages through ``list``, counted there)
KV_OPERATIONS = tuple(name for name, value in vars(KVNamespace).items()
                      if callable(value) and not name.startswith("_")
                      and name not in ("close", "list_all"))


class CountingNamespace(LocalKVNamespace):
    """The embedded L2, counting calls of the KV interface as the KV server counts requests (a
    call made inside another, as a default bulk method's per-key reads, is not counted)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.calls: Counter = Counter()
        self._lock = threading.Lock()
        self._depth = threading.local()


def _counting(name: str) -> Callable[..., Any]:
    method = getattr(LocalKVNamespace, name)

    def counted(self: CountingNamespace, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(self._depth, "value", 0)
        if depth == 0:
            with self._lock:
                self.calls[name] += 1
        self._depth.value = depth + 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._depth.value = depth

    return counted


for _name in KV_OPERATIONS:
    setattr(CountingNamespace, _name, _counting(_name))


def served_by(before: Dict[str, int], after: Dict[str, int]) -> str:
    """Which level served a cached read, from the counters it moved."""
    def moved(name: str) -> bool:
        return after.get(name, 0) > before.get(name, 0)

    if moved("memory_hits"):
        return MEMORY
    if moved("l1_rechecks"):  # an aged L1 entry re-checked against L2 on the query's path
        return L1_RECHECKED if moved("hits") else MISS
    if moved("l1_hits"):
        return L1
    if moved("l2_hits"):
        return L2
    return MISS if moved("misses") else DATABASE


def _open(spec: HostSpec) -> Tuple[peewee.Database, Optional[CloudflareKVCache]]:
    options = f"-c search_path={spec.schema}"
    if spec.l2.kind == NO_CACHE:
        return peewee.PostgresqlDatabase(PG_DATABASE, options=options, **PG), None
    l2 = spec.l2
    namespace: KVNamespace
    if l2.kind == EMBEDDED:
        namespace = CountingNamespace(l2.directory)
    elif l2.kind == GATEWAY:  # the gateway's client: no request budget by default
        namespace = CloudflareWorkerKVNamespace(l2.base_url, l2.secret)
    else:  # the REST client with its default request budget
        namespace = CloudflareKVNamespace(l2.account_id, l2.namespace_id, l2.api_token,
                                          base_url=l2.base_url)
    cache = CloudflareKVCache(namespace, l1_directory=spec.l1_directory, prefix=spec.prefix)
    return CachedPostgresqlDatabase(PG_DATABASE, cache=cache, options=options, **PG), cache


def replay(ops: Tuple[Op, ...], cache: Optional[CloudflareKVCache]) -> List[OpRecord]:
    """Every operation timed alone (building the query, running it, materialising its rows);
    its SQL text and the cache's counters are read outside the timed region."""
    seen: Set[str] = set()
    records = []
    counters: Callable[[], Dict[str, int]] = (cache.counters.snapshot if cache is not None
                                              else dict)
    for op in ops:
        sql = query(op).sql()[0]
        new_text = sql not in seen
        seen.add(sql)
        before = counters()
        start = time.perf_counter_ns()
        execute(op, cache is not None)
        micros = (time.perf_counter_ns() - start) / 1000.0
        if op.kind == "write":
            served = WRITE
        else:
            served = served_by(before, counters()) if cache is not None else DATABASE
        records.append(OpRecord(micros, served, new_text))
    return records


def _warm_up(cache: Optional[CloudflareKVCache], sent: SentRequests) -> None:
    """What a process pays once, outside the sequence: imports and analysis done on first use,
    the NOTIFY listener started by the first cached read. A read and a write of the page-view
    counter (no read of the sequence depends on it); their L2 work is drained, their KV calls
    and requests forgotten."""
    for op in WARM_UP:
        execute(op, cache is not None)
    if cache is not None:
        cache.drain(DRAIN_TIMEOUT)
        if isinstance(cache.namespace, CountingNamespace):
            cache.namespace.calls.clear()
    sent.sent.clear()


def _kv_calls(cache: Optional[CloudflareKVCache], sent: SentRequests) -> Dict[str, int]:
    """What this host counted of its L2 traffic: the embedded namespace's calls, the gateway's
    requests per endpoint; nothing for the REST client (the KV server counts those)."""
    namespace = cache.namespace if cache is not None else None
    if isinstance(namespace, CountingNamespace):
        return dict(namespace.calls)
    return sent.by_path() if isinstance(namespace, CloudflareWorkerKVNamespace) else {}


def _run(spec: HostSpec, gate: Any, conn: Connection) -> None:
    with SentRequests() as sent:
        _run_counted(spec, gate, conn, sent)


def _run_counted(spec: HostSpec, gate: Any, conn: Connection, sent: SentRequests) -> None:
    db, cache = _open(spec)
    try:
        with db.bind_ctx(MODELS):
            db.connect()
            _warm_up(cache, sent)
            gate.wait()  # every host warmed up: the coordinator zeroes the KV server's counts
            gate.wait()  # go, together
            began = time.perf_counter()
            records = replay(spec.ops, cache)
            wall = time.perf_counter() - began
            drained = cache.drain(DRAIN_TIMEOUT) if cache is not None else True
            calls = _kv_calls(cache, sent)
            conn.send(("done", HostReport(spec.index, records, wall, drained, calls)))
            gate.wait()  # the coordinator has read the KV server's counts
            conn.send(("stats", cache.get_stats().as_dict() if cache is not None else {}))
    finally:
        if isinstance(db, CachedPostgresqlDatabase):
            db.stop_listener()
        db.close()
        if cache is not None:
            cache.close()


def main(spec: HostSpec, gate: Any, conn: Connection) -> None:
    """A host process's entry point; a failure is sent to the coordinator, never swallowed."""
    try:
        _run(spec, gate, conn)
    except BaseException:  # noqa: BLE001 - reported to the coordinator, which fails the run
        gate.abort()
        conn.send(("error", f"host {spec.index}: {traceback.format_exc()}"))
    finally:
        conn.close()
