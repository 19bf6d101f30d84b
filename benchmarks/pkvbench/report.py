"""The results as markdown (printed, and written to ``benchmarks/results.md``) and as a plot
(``benchmarks/latency.png``). Ratios are computed from medians of the same run; each target is
marked PASS or FAIL as measured."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .extras import READERS, RequestRow, ThroughputRow
from .markdown import Target, above, at_least, at_most, below, fmt_us, table
from .peer import PEER_HIT, PEER_UNCACHED
from .timing import Series
from .variants import (DOGPILE, FLOOR, FLOOR_SQL, L1_DISK, L1_HIT, L2_HIT, MEM_FLOOR_SQL, MEMOIZE,
                       MISS, UNCACHED, Cell)

LATENCY_COLUMNS = [UNCACHED, L1_HIT, L1_DISK, L2_HIT, MISS, FLOOR, FLOOR_SQL, MEM_FLOOR_SQL,
                   DOGPILE, MEMOIZE, PEER_UNCACHED, PEER_HIT]
TABLE_HEADER = "| backend | shape | rows |"
PLOTTED = [UNCACHED, L1_HIT, L1_DISK, L2_HIT, MISS, FLOOR, PEER_HIT]

Medians = Dict[str, float]


@dataclass
class CellResult:
    cell: Cell
    series: Dict[str, Series]
    rounds: int

    @property
    def medians(self) -> Medians:
        return {name: s.median for name, s in self.series.items()}


@dataclass
class Report:
    command: str
    date: str
    facts: List[Tuple[str, str]]
    elapsed_s: float
    cells: List[CellResult]
    requests: List[RequestRow]
    throughput: List[ThroughputRow]


def _speedup(m: Medians) -> float:
    return m[UNCACHED] / m[L1_HIT]


def _peer_speedup(m: Medians) -> float:
    return m[PEER_UNCACHED] / m[PEER_HIT]


@dataclass(frozen=True)
class Ratio:
    header: str
    value: Callable[[Medians], float]
    target: Optional[Target] = None
    suffix: str = ""


RATIOS = [
    Ratio("L1 hit / floor", lambda m: m[L1_HIT] / m[FLOOR], at_most(1.2)),
    Ratio("L1 hit / (floor+SQL)", lambda m: m[L1_HIT] / m[FLOOR_SQL]),
    Ratio("L1 hit / mem floor+SQL", lambda m: m[L1_HIT] / m[MEM_FLOOR_SQL]),
    Ratio("L1 disk hit / floor", lambda m: m[L1_DISK] / m[FLOOR]),
    Ratio("speed-up L1 hit", _speedup, suffix="×"),
    Ratio("speed-up floor", lambda m: m[UNCACHED] / m[FLOOR], suffix="×"),
    Ratio("L1 speed-up ÷ floor speed-up", lambda m: _speedup(m) / (m[UNCACHED] / m[FLOOR]),
          at_least(0.8)),
    Ratio("miss / uncached", lambda m: m[MISS] / m[UNCACHED], at_most(1.1)),
    Ratio("L1 hit / cachalot hit", lambda m: m[L1_HIT] / m[PEER_HIT], below(1.0)),
    Ratio("speed-up cachalot", _peer_speedup, suffix="×"),
    Ratio("our speed-up ÷ cachalot's", lambda m: _speedup(m) / _peer_speedup(m), above(1.0)),
]


def _key(cell: Cell) -> List[str]:
    return [cell.backend, cell.shape, f"{cell.size:,}"]


def latencytable(cells: List[CellResult], statistic: str) -> str:
    """Per cell, ``statistic`` ("median" or "p95") of every variant in µs, and the rounds."""
    rows = [_key(c.cell) + [fmt_us(getattr(c.series[name], statistic)) for name in LATENCY_COLUMNS]
            + [str(c.rounds)] for c in cells]
    return table(["backend", "shape", "rows"] + LATENCY_COLUMNS + ["rounds"], rows)


def _ratio_cell(ratio: Ratio, medians: Medians) -> str:
    value = ratio.value(medians)
    text = f"{value:.2f}{ratio.suffix}"
    return f"{text} {ratio.target.check(value)}" if ratio.target else text


def _ratio_header(ratio: Ratio) -> str:
    if ratio.target is None:
        return ratio.header
    return f"{ratio.header} ({ratio.target.symbol} {ratio.target.threshold:g})"


def ratiotable(cells: List[CellResult]) -> str:
    rows = [_key(c.cell) + [_ratio_cell(r, c.medians) for r in RATIOS] for c in cells]
    return table(["backend", "shape", "rows"] + [_ratio_header(r) for r in RATIOS], rows)


def target_summary(cells: List[CellResult]) -> str:
    """PASS count per target, so a regression or an improvement shows in one line."""
    parts = []
    for ratio in RATIOS:
        if ratio.target is not None:
            passed = sum(ratio.target.check(ratio.value(c.medians)) == "PASS" for c in cells)
            parts.append(f"{_ratio_header(ratio)}: {passed}/{len(cells)} PASS")
    return "; ".join(parts)


def requeststable(rows: List[RequestRow]) -> str:
    body = [[r.operation, str(r.ops), f"{r.per_op:.2f}",
             ", ".join(f"{k} {v / r.ops:.2f}" for k, v in sorted(r.counts.items())) or "none",
             f"{r.latency_ms:.3g}"] for r in rows]
    return table(["operation", "ops", "KV requests / op", "by endpoint / op",
                   "latency ms (median)"], body, text_columns=1)


def throughputtable(rows: List[ThroughputRow]) -> str:
    body = []
    for r in rows:
        ratio = "" if r.hit_ratio is None else f"{r.hit_ratio:.0%}"
        body.append([r.backend, "peewee_kvcache" if r.cached else "Peewee alone", r.target,
                     f"{r.reads / r.seconds:,.0f}", f"{r.writes / r.seconds:,.0f}", ratio,
                     str(r.faults) if r.cached else "", f"{r.kv_requests / r.seconds:,.0f}",
                     f"{r.drain_seconds:.2f}" if r.cached else ""])
    return table(["backend", "cache", "writes update", "reads/s", "writes/s",
                   "reads served from cache", "cache faults", "KV requests/s", "drain after, s"],
                  body)


DESCRIPTION = f"""\
Every cell times its variants round-robin in the same process, one operation per variant per
round, in a rotating order, in several windows spread over the run (samples merged); each
variant's counters are checked after every operation (an "L1 hit" that missed would abort the
run). Times are per operation, µs, including building the Peewee query.

- **uncached**: the query on a plain Peewee database (same tables, same server).
- **L1 hit** (steady state: from the process's memory level in front of the L1 directory) /
  **L1 disk hit** (memory level emptied first: from diskcache) / **L2 hit** (`clear_local()`
  first) / **miss** (query + store; a fresh `lo` in `id BETWEEN lo AND n`, same rows, new key; the
  background L2 write drained untimed), all through `Cached*Database` and `with_cache(ex=3600)`.
  L2 is the Cloudflare-compatible KV server running in this process, over loopback HTTP: L2 times
  are the REST client's cost plus a Python server's, not Cloudflare's network round trip.
- **floor**: `diskcache.Cache.get` of the bytes our cache stored for the query + `decode_entry` +
  Peewee's own row materialisation over a `CachedCursor`; **floor+SQL** adds generating the SQL;
  **mem floor+SQL**: SQL generation + materialisation of rows decoded once (a memory hit's floor).
- **dogpile mem** / **diskcache memo**: a hand-rolled memoised function returning
  `list(query.dicts())` in dogpile.cache's memory backend / `diskcache.Cache.memoize`.
- **cachalot uncached** / **cachalot hit**: django-cachalot 2 with a `diskcache.DjangoCache`, Django
  models (`managed = False`) on the same tables, the same filter, joins and aggregates.
- Shapes: `select` = `Item.select().where(Item.id.between(1, n))` (rows of int, str, Decimal,
  datetime, int); `join` = author ⋈ book ⋈ review grouped by author with COUNT and SUM, n rows.
- Garbage collection stays on: p95s of the 1,000-row cells include gen-2 collections (~30 ms
  here) that any variant materialising 1,000 objects triggers, cached or not.
- Throughput: {READERS} threads read a hot set (10 `select` and 10 `join` queries of 10 rows) while
  1 thread runs autocommit UPDATEs, either of a review (invalidating the `join` half of the hot set
  at every write) or of a page-view counter no query reads. Cache faults: L1/L2 errors the cache
  counted meanwhile (each such read was answered by the database).
"""


def render(report: Report) -> str:
    facts = "\n".join(f"- {name}: {value}" for name, value in report.facts)
    return f"""# peewee_kvcache benchmark

`{report.command}` — {report.date}, {report.elapsed_s / 60:.1f} min.

{facts}

{DESCRIPTION}
## Latency per operation, median µs

{latencytable(report.cells, "median")}

## Ratios and targets (medians of the same run)

{ratiotable(report.cells)}

Targets: {target_summary(report.cells)}.

## Latency per operation, p95 µs

{latencytable(report.cells, "p95")}

## KV requests per operation (1-row `select`, server-side counts)

{requeststable(report.requests)}

## Throughput, {READERS} readers + 1 writer

{throughputtable(report.throughput)}
"""


def plot(cells: List[CellResult], path: Path) -> None:
    """Latency vs result size, log-log, one panel per backend and shape."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(c.cell.backend, c.cell.shape) for c in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (backend, shape) in zip(axes[0], panels):
        mine = sorted((c for c in cells if (c.cell.backend, c.cell.shape) == (backend, shape)),
                      key=lambda c: c.cell.size)
        sizes = [c.cell.size for c in mine]
        for name in PLOTTED:
            ax.plot(sizes, [c.series[name].median for c in mine], marker="o", label=name)
        ax.set(xscale="log", yscale="log", title=f"{backend} · {shape}", xlabel="rows",
               ylabel="median µs per operation")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
