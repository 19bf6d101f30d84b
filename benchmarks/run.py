"""Benchmark peewee_kvcache against plain Peewee, the floor any query-result cache must pay,
hand-rolled memoisation and django-cachalot, all measured side by side in one run.

    python benchmarks/run.py            # full run, < 5 min on 2 cores; writes results.md
                                        # and latency.png next to this file
    python benchmarks/run.py --quick    # ~30 s smoke run (the test suite runs it with --no-write)

Needs the ``bench`` extra (``pip install -e '.[bench]'``) and PostgreSQL on 127.0.0.1:5432
(user postgres, trust, database ``test``); the run works in a schema of its own and drops it.
Progress goes to stderr, the report (markdown) to stdout.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import diskcache
from dogpile.cache import make_region
from dogpile.cache.region import CacheRegion

from pkvbench import peer
from pkvbench.extras import invalidation, kv_requests, throughput
from pkvbench.machine import code_revision, cpu_model
from pkvbench.report import CellResult, Report, plot, render
from pkvbench.timing import Budget, Series, Variant, measure
from pkvbench.variants import UNCACHED, Cell, check_rows, floors, hand_rolled, ours, prime
from pkvbench.workload import (BACKENDS, MODELS, SHAPES, SIZES, Backend, Environment,
                               open_environment, server_version)

HERE = Path(__file__).resolve().parent
DISTRIBUTIONS = ["peewee", "peewee_kvcache", "diskcache", "msgpack", "sqlglot", "requests",
                 "psycopg2-binary", "Django", "django-cachalot", "dogpile.cache"]


@dataclass(frozen=True)
class Mode:
    """How much to measure: the full run or the smoke run. Each cell is measured in ``passes``
    windows spread over the run, so a burst of load elsewhere on the machine skews only one."""

    budget: Budget
    passes: int
    kv_ops: int
    invalidation_sizes: Tuple[int, ...]
    throughput_seconds: float


FULL = Mode(Budget(seconds=3.0, min_rounds=10, max_rounds=5000, warmup_rounds=2), passes=3,
            kv_ops=50, invalidation_sizes=(1, 1_000, 10_000), throughput_seconds=3.0)
QUICK = Mode(Budget(seconds=1.0, min_rounds=5, max_rounds=500, warmup_rounds=1), passes=1,
             kv_ops=5, invalidation_sizes=(1, 100), throughput_seconds=0.5)


@dataclass
class PreparedCell:
    backend: Backend
    cell: Cell
    variants: List[Variant]
    series: Dict[str, Series] = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(backend: Backend, cell: Cell, region: CacheRegion, memo: diskcache.Cache,
            floor_store: diskcache.Cache) -> PreparedCell:
    """Every variant of one (backend, shape, size), each checked to return the cell's rows."""
    with backend.cached.bind_ctx(MODELS):
        variants = (ours(backend, cell) + floors(backend, cell, floor_store)
                    + hand_rolled(backend, cell, region, memo) + peer.peer(cell))
        check_rows(variants, cell.size)
    return PreparedCell(backend, cell, variants)


def measure_pass(prepared: PreparedCell, budget: Budget) -> None:
    """One window of round-robin timing, added to the cell's samples. The query runs once first:
    other cells' L2 hits emptied the local levels meanwhile."""
    backend, cell = prepared.backend, prepared.cell
    with backend.cached.bind_ctx(MODELS):
        prime(backend, cell)
        gc.collect()
        started = time.monotonic()
        for name, series in measure(prepared.variants, budget).items():
            prepared.series.setdefault(name, Series()).samples.extend(series.samples)
    log(f"  {cell.backend:8} {cell.shape:6} {cell.size:>5} rows: "
        f"{len(prepared.series[UNCACHED].samples)} rounds so far, "
        f"this pass {time.monotonic() - started:.1f} s")


def measure_cells(env: Environment, mode: Mode) -> List[CellResult]:
    region = make_region().configure("dogpile.cache.memory")
    memo = diskcache.Cache(str(env.workdir / "memo"))
    floor_store = diskcache.Cache(str(env.workdir / "floor"))
    try:
        cells = [prepare(backend, Cell(backend.name, shape, size), region, memo, floor_store)
                 for backend in env.backends for shape in SHAPES for size in SIZES]
        for number in range(1, mode.passes + 1):
            log(f"pass {number} of {mode.passes}")
            for prepared in cells:
                measure_pass(prepared, mode.budget)
        return [CellResult(p.cell, p.series, len(p.series[UNCACHED].samples)) for p in cells]
    finally:
        memo.close()
        floor_store.close()


def machine_facts(env: Environment) -> List[Tuple[str, str]]:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in DISTRIBUTIONS)
    facts = [("CPU", f"{os.cpu_count()} × {cpu_model()}"), ("OS", platform.platform()),
             ("Python", platform.python_version()), ("Packages", versions),
             ("peewee_kvcache revision", code_revision()),
             ("Load average (1, 5, 15 min) at the end",
              ", ".join(f"{x:.2f}" for x in os.getloadavg()))]
    for backend in env.backends:
        label = "PostgreSQL (127.0.0.1, loopback)" if backend.name == "postgres" else "SQLite"
        facts.append((label, server_version(backend)))
    if not any(b.name == "sqlite" for b in env.backends):
        facts.append(("SQLite (L1 storage)", sqlite3.sqlite_version))
    return facts


def run(mode: Mode, backends: Sequence[str], command: str) -> Report:
    started = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open_environment(backends, f"pkv_bench_{os.getpid()}") as env:
        peer.configure({b.name: b.django for b in env.backends}, env.workdir / "django-cache")
        try:
            log("latency matrix")
            cells = measure_cells(env, mode)
            main = next((b for b in env.backends if b.name == "postgres"), env.backends[0])
            log(f"KV requests per operation ({main.name})")
            requests = (kv_requests(env, main, mode.kv_ops)
                        + invalidation(env, list(mode.invalidation_sizes)))
            log("throughput")
            rows = [row for b in env.backends
                    for row in throughput(env, b, mode.throughput_seconds)]
            facts = machine_facts(env)
        finally:
            peer.close([b.name for b in env.backends])
    return Report(command, date, facts, time.monotonic() - started, cells, requests, rows)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~30 s smoke run")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not write results.md and latency.png")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = " ".join(["python benchmarks/run.py", *argv])
    report = run(QUICK if args.quick else FULL, args.backends, command)
    text = render(report)
    print(text)
    if not args.no_write:
        (HERE / "results.md").write_text(text, encoding="utf-8")
        plot(report.cells, HERE / "latency.png")
        log(f"wrote {HERE / 'results.md'} and {HERE / 'latency.png'}")
    log(f"done in {report.elapsed_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
