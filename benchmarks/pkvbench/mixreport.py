"""The workload benchmark's results: per variant and L2 distance, the time both hosts spent on
their operations against no cache and against the two ideal caches (ideal.py), the per-path
ratios (each operation paired with the same operation of the no-cache run), where the time went,
KV requests and the cache's own counters. Everything is computed from one run."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .host import (DATABASE, EMBEDDED, GATEWAY, L1, L1_RECHECKED, L2, MEMORY, MISS, NO_CACHE,
                   REST, WRITE, HostReport, OpRecord)
from .floor import WriteFloor
from .ideal import IdealResult, ideal
from .markdown import Target, at_least, at_most, table
from .mix import HEAVY_AUTHORS, HEAVY_VARIANTS, JOIN_ROWS, KINDS, READ_KINDS, Mix, Op

LOCAL_HITS = (MEMORY, L1)
HITS = (MEMORY, L1, L1_RECHECKED, L2)
NEW_MISS = "new-SQL miss"  # a miss whose SQL text the process had not run before
CLASSES = (MEMORY, L1, L1_RECHECKED, L2, MISS, NEW_MISS, WRITE, DATABASE)


@dataclass(frozen=True)
class Variant:
    label: str
    kind: str  # host.NO_CACHE, EMBEDDED, REST or GATEWAY
    latency_ms: Optional[int] = None  # REST: the KV server's injected latency; GATEWAY: DELAY_MS

    @property
    def distance(self) -> str:
        if self.kind not in (REST, GATEWAY):
            return "in process" if self.kind == EMBEDDED else ""
        return "loopback" if not self.latency_ms else f"+{self.latency_ms} ms"

    @property
    def name(self) -> str:
        return f"{self.label} {self.distance}".strip()


@dataclass
class RunResult:
    variant: Variant
    hosts: List[HostReport]
    kv_requests: Dict[str, int] = field(default_factory=dict)  # by endpoint (or KV method)

    def pairs(self, baseline: "RunResult", ops: Sequence[Sequence[Op]]
              ) -> Iterator[Tuple[Op, OpRecord, OpRecord]]:
        """Every operation with its record here and in ``baseline`` (the no-cache run)."""
        for host, base in zip(self.hosts, baseline.hosts):
            yield from zip(ops[host.index], host.records, base.records)

    @property
    def total_us(self) -> float:
        return sum(r.micros for host in self.hosts for r in host.records)

    @property
    def n_ops(self) -> int:
        return sum(len(host.records) for host in self.hosts)


@dataclass
class WorkloadReport:
    command: str
    date: str
    facts: List[Tuple[str, str]]
    elapsed_s: float
    mix: Mix
    ops: List[List[Op]]
    runs: List[RunResult]
    #: the least a write can cost with this library's guarantees (None: not measured)
    write_floor: Optional[WriteFloor] = None

    @property
    def baseline(self) -> RunResult:
        return next(run for run in self.runs if run.variant.kind == NO_CACHE)

    @property
    def cached(self) -> List[RunResult]:
        return [run for run in self.runs if run.variant.kind != NO_CACHE]


def op_class(record: OpRecord) -> str:
    return NEW_MISS if record.served == MISS and record.new_text else record.served


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def hit_costs(report: WorkloadReport) -> Dict[str, Tuple[float, int]]:
    """Per read kind, the median µs of this library's memory and L1 hits over every cached run
    and host, and how many there were. A kind never hit takes the median of all hits."""
    samples: Dict[str, List[float]] = defaultdict(list)
    for run in report.cached:
        for host in run.hosts:
            for op, record in zip(report.ops[host.index], host.records):
                if record.served in LOCAL_HITS:
                    samples[op.kind].append(record.micros)
    everything = [x for values in samples.values() for x in values]
    if not everything:
        raise RuntimeError("no run served a single hit from memory or L1: nothing to measure "
                           "the ideal cache's hit cost with")
    return {kind: (statistics.median(samples[kind] or everything), len(samples[kind]))
            for kind in READ_KINDS}


@dataclass(frozen=True)
class Ideals:
    shared: IdealResult
    per_host: IdealResult
    hit_us: Dict[str, Tuple[float, int]]


def ideals(report: WorkloadReport) -> Ideals:
    uncached = [[r.micros for r in host.records] for host in report.baseline.hosts]
    hit_us = hit_costs(report)
    cost = {kind: value for kind, (value, _) in hit_us.items()}
    return Ideals(ideal(report.ops, uncached, cost, shared=True),
                  ideal(report.ops, uncached, cost, shared=False), hit_us)


@dataclass(frozen=True)
class PathRatio:
    """Over the chosen operations: the median of (time here / the same operation uncached), the
    ratio of their summed times, and how many there were."""

    median: Optional[float]
    summed: Optional[float]
    n: int

    def text(self, target: Optional[Target] = None) -> str:
        if self.median is None or self.summed is None:
            return "–"
        text = f"{self.median:.2f} · Σ {self.summed:.2f} ({self.n})"
        return f"{text} {target.check(self.median)}" if target else text


def paired_ratio(run: RunResult, report: WorkloadReport,
                 chosen: Callable[[Op, OpRecord], bool]) -> PathRatio:
    pairs = [(record.micros, base.micros) for op, record, base
             in run.pairs(report.baseline, report.ops) if chosen(op, record)]
    if not pairs:
        return PathRatio(None, None, 0)
    return PathRatio(median([here / there for here, there in pairs]),
                     sum(here for here, _ in pairs) / sum(there for _, there in pairs),
                     len(pairs))


PATHS: List[Tuple[str, Callable[[Op, OpRecord], bool], Optional[Target]]] = [
    ("miss / uncached", lambda op, r: op_class(r) == MISS, at_most(1.1)),
    ("new-SQL miss / uncached", lambda op, r: op_class(r) == NEW_MISS, at_most(1.1)),
    ("write / uncached write", lambda op, r: op.kind == "write", at_most(1.2)),
    ("L2 hit / uncached", lambda op, r: r.served == L2, None),
    ("L1 re-checked hit / uncached", lambda op, r: r.served == L1_RECHECKED, None),
    ("memory or L1 hit / uncached", lambda op, r: r.served in LOCAL_HITS, None),
]


def _seconds(us: float) -> str:
    return f"{us / 1e6:.2f}"


def _kv_per_1000(run: RunResult) -> str:
    if run.variant.kind == NO_CACHE:
        return "–"
    return f"{1000 * sum(run.kv_requests.values()) / run.n_ops:,.0f}"


def _hit_ratio(run: RunResult) -> str:
    reads = [r for host in run.hosts for r in host.records if r.served != WRITE]
    if run.variant.kind == NO_CACHE or not reads:
        return "–"
    return f"{sum(r.served in HITS for r in reads) / len(reads):.0%}"


def headline_table(report: WorkloadReport, best: Ideals) -> str:
    base = report.baseline.total_us
    rows = []
    for run in report.runs:
        total = run.total_us
        wall = max(host.wall_s for host in run.hosts)
        rows.append([run.variant.label, run.variant.distance, _seconds(total), f"{wall:.2f}",
                     f"{base / total:.2f}×", f"{best.shared.total_us / total:.2f}",
                     f"{best.per_host.total_us / total:.2f}", _hit_ratio(run),
                     _kv_per_1000(run)])
    for label, result in (("ideal, one shared store", best.shared),
                          ("ideal, a store per host", best.per_host)):
        rows.append([label, "", _seconds(result.total_us), "", f"{base / result.total_us:.2f}×",
                     "", "", f"{result.hit_ratio:.0%}", ""])
    return table(["variant", "L2 distance", "time, s (both hosts)", "wall, s",
                  "speed-up vs no cache", "of shared ideal", "of per-host ideal",
                  "reads served from cache", "KV requests / 1,000 ops"], rows, text_columns=2)


def paths_table(report: WorkloadReport) -> str:
    rows = [[run.variant.label, run.variant.distance]
            + [paired_ratio(run, report, chosen).text(target)
               for _, chosen, target in PATHS] for run in report.cached]
    header = [name if target is None else f"{name} ({target.symbol} {target.threshold:g})"
              for name, _, target in PATHS]
    return table(["variant", "L2 distance"] + header, rows, text_columns=2)


def time_table(report: WorkloadReport) -> str:
    """Per run and class of operation: how many, and the seconds they took together."""
    rows = []
    for run in report.runs:
        count: Dict[str, int] = defaultdict(int)
        spent: Dict[str, float] = defaultdict(float)
        for host in run.hosts:
            for record in host.records:
                count[op_class(record)] += 1
                spent[op_class(record)] += record.micros
        rows.append([run.variant.label, run.variant.distance]
                    + [f"{count[c]} / {_seconds(spent[c])}" if count[c] else "–"
                       for c in CLASSES])
    return table(["variant", "L2 distance"] + [f"{c}: n / s" for c in CLASSES], rows,
                 text_columns=2)


def _times(run: RunResult, report: WorkloadReport, kind: str) -> List[float]:
    return [record.micros for op, record, _ in run.pairs(report.baseline, report.ops)
            if op.kind == kind]


def shape_table(report: WorkloadReport, best: Ideals) -> str:
    """Per kind of operation: uncached median, the hit cost the ideal uses, and the mean time per
    operation in each run."""
    rows = []
    for kind in KINDS:
        uncached = _times(report.baseline, report, kind)
        hit = best.hit_us.get(kind)
        rows.append([kind, str(len(uncached)), f"{median(uncached) or 0:,.0f}",
                     f"{hit[0]:,.0f} ({hit[1]})" if hit else "–"]
                    + [f"{statistics.fmean(times):,.0f}" if times else "–"
                       for times in (_times(run, report, kind) for run in report.runs)])
    return table(["kind", "ops", "uncached median µs", "hit µs in the ideal (samples)"]
                 + [f"mean µs: {run.variant.name}" for run in report.runs], rows, text_columns=1)


#: get_stats() numbers that are not per host (read from the shared L2, or a ratio): not summed
NOT_ADDITIVE = ("hit_rate", "total_keys", "table_keys", "tag_keys")


def _summed(values: Sequence[Dict[str, object]]) -> Dict[str, float]:
    total: Dict[str, float] = defaultdict(int)
    for one in values:
        for name, value in one.items():
            if (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and name not in NOT_ADDITIVE):
                total[name] += value
    return total


def counters_table(report: WorkloadReport) -> str:
    """``get_stats()`` of both hosts, summed: every number that is not 0 in some run."""
    per_run = [_summed([host.stats for host in run.hosts]) for run in report.cached]
    names = sorted({name for stats in per_run for name, value in stats.items() if value})
    rows = [[name] + [f"{stats.get(name, 0):,.0f}" for stats in per_run] for name in names]
    return table(["get_stats(), both hosts"] + [run.variant.name for run in report.cached], rows,
                 text_columns=1)


def requests_table(report: WorkloadReport) -> str:
    runs = report.cached
    endpoints = sorted({name for run in runs for name, n in run.kv_requests.items() if n})
    rows = [[run.variant.label, run.variant.distance]
            + [f"{run.kv_requests.get(e, 0):,}" for e in endpoints]
            + [f"{sum(run.kv_requests.values()):,}"]
            + ["yes" if all(host.drained for host in run.hosts) else "NO"] for run in runs]
    return table(["variant", "L2 distance"] + endpoints + ["total", "drained"], rows,
                 text_columns=2)


def targets(report: WorkloadReport, best: Ideals) -> str:
    """The issue's targets, each from the run it is stated for."""
    lines = []
    by_name = {run.variant.name: run for run in report.cached}
    embedded = next((run for run in report.cached if run.variant.kind == EMBEDDED), None)
    far = next((run for run in report.cached
                if run.variant.kind == REST and run.variant.latency_ms == 40), None)
    if embedded is not None:
        value = best.shared.total_us / embedded.total_us
        lines.append(f"- embedded L2 ≥ 0.9 of the shared ideal: {value:.2f} "
                     f"{at_least(0.9).check(value)}")
    if far is not None:
        value = best.per_host.total_us / far.total_us
        lines.append(f"- REST L2 +40 ms ≥ 0.9 of the per-host ideal: {value:.2f} "
                     f"{at_least(0.9).check(value)}")
    for name, chosen, target in PATHS:
        if target is None:
            continue
        parts = [f"{run_name} {paired_ratio(run, report, chosen).text(target)}"
                 for run_name, run in by_name.items()]
        lines.append(f"- {name} {target.symbol} {target.threshold:g}: " + "; ".join(parts))
    floor = report.write_floor
    writes = [record.micros for host in report.baseline.hosts for record in host.records
              if record.served == WRITE]
    if floor is not None and writes:
        uncached = statistics.median(writes)
        lines.append(
            f"- the write's floor (pkvbench/floor.py, raw drivers): NOTIFY adds "
            f"{floor.notify_us:.0f} µs to a {floor.update_us:.0f} µs UPDATE, a durable local "
            f"record takes {floor.record_us:.0f} µs; on this run's median uncached write "
            f"({uncached:.0f} µs) no write keeping both can cost less than "
            f"{floor.ratio(uncached):.2f}× it")
    return "\n".join(lines)


def describe(report: WorkloadReport) -> str:
    mix, n = report.mix, len(report.ops[0])
    kinds = ", ".join(f"{kind} {getattr(mix, kind):.0%}" for kind in KINDS)
    writes = ", ".join(f"{table} {share:.0%}" for table, share in mix.write_targets)
    return f"""\
Two hosts, each a separate process with its own database connection and its own cache (process
memory + an L1 directory of its own), run {n:,} operations each, at the same time, sharing one
L2. The sequence is drawn from a seeded random source (a different seed per host, the same
popularity ranking): {kinds}; writes go to {writes} (autocommit `UPDATE` of one row; a write to
`item` invalidates every point and batch lookup, one to `review` every join and heavy aggregate).
Keys have Zipf-like popularity (rank r weighs 1/r^{mix.zipf_s:g}). Reads go through
`with_cache(ex=3600)` on `CachedPostgresqlDatabase` with the cache's default settings; the
baseline is plain `peewee.PostgresqlDatabase` on the same tables, same sequence.

- **point**: `Item.select().where(Item.id == k)` (10,000 items); **batch**: `Item.id.in_(ids)` with
  {mix.batch_lengths[0]}–{mix.batch_lengths[1]} ids (a new length is a new SQL text); **join**:
  {JOIN_ROWS} authors ⋈ books ⋈ reviews grouped by author (COUNT, SUM); **heavy**:
  {HEAVY_AUTHORS} authors' reviews aggregated, best 20 ({HEAVY_VARIANTS} overlapping windows).
- **embedded L2**: `LocalKVNamespace` on one directory both hosts open (no HTTP). **REST L2**:
  `CloudflareKVNamespace` with its default `RequestBudget` (1,200 requests / 5 min per host) on
  the project's Cloudflare-compatible KV server, every request delayed by the distance shown
  (`KVServer(latency=...)`); a fresh server store, L1 directories and key prefix per run.
  **gateway L2**: `CloudflareWorkerKVNamespace` (no request budget) on the project's KV gateway
  Worker (`worker/`) running in local workerd through Miniflare, every request delayed by the
  distance shown (its test-only `DELAY_MS` binding); a fresh workerd (empty KV) per run.
- **time**: the sum of both hosts' per-operation times (building the query, running it,
  materialising its rows); **wall**: the slower host, first operation to last. Background L2
  writes are drained after the last operation, untimed; their requests are counted. Before the
  sequence, each host connects and warms up outside it with a read and a write of a page-view
  counter (first-use imports, the NOTIFY listener): their KV requests are not counted, their
  miss, store and invalidation are in the counters.
- **served by** is read from the cache's counters around each operation (untimed): memory, L1,
  L1 re-checked (an aged L1 entry re-checked against L2 on the query's path), L2, miss;
  **new-SQL miss**: a miss whose SQL text this process had not run before.
- **ideal**: exact table-level invalidation, an instant store, a hit costing this library's
  median memory/L1 hit for that kind of operation (over every cached run), a miss or a write
  costing what that very operation took in the no-cache run; one store shared by both hosts,
  or one per host. "of … ideal" = ideal time ÷ this run's time (1.00 = as fast as the ideal).
- Per-path ratios: the median, over operations of that class, of (this run's time ÷ the same
  operation's time in the no-cache run) — the target applies to it; then Σ: their summed time ÷
  the same operations' summed time uncached (what they cost in total); the count in parentheses.
- KV requests: counted by the KV server per endpoint (REST); for the gateway, each host's HTTP
  requests per endpoint (`/v1/...`) counted as they leave its HTTP adapter; for the embedded
  L2, calls of the `KVNamespace` interface counted in each host.
"""


def render(report: WorkloadReport) -> str:
    best = ideals(report)
    facts = "\n".join(f"- {name}: {value}" for name, value in report.facts)
    return f"""# peewee_kvcache workload benchmark: two hosts, one L2, against an ideal cache

`{report.command}` — {report.date}, {report.elapsed_s / 60:.1f} min.

{facts}

{describe(report)}
## Time, speed-up and fraction of the ideal

{headline_table(report, best)}

## Targets (issue 11)

{targets(report, best)}

## Per-path ratios (median per operation · Σ of summed times, against uncached; count)

{paths_table(report)}

## Where the time went: operations by what served them (count / seconds, both hosts)

{time_table(report)}

## Per kind of operation

{shape_table(report, best)}

## KV requests (both hosts, including the drained background writes)

{requests_table(report)}

## Cache counters (`get_stats()`, both hosts summed)

{counters_table(report)}
"""
