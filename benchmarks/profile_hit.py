"""Profile a cache-hit path: N hits of one cached query (default: 10,000 L1 hits of the 1-row
single-table query on PostgreSQL), with unprofiled times per operation of the hit and the floors.

    python benchmarks/profile_hit.py [--variant "L1 hit"|"L1 disk hit"] [--hits 10000]
                                     [--backend postgres] [--shape select] [--rows 1]
                                     [--sort cumulative] [--top 15] [--match peewee_kvcache]

cProfile adds a fixed cost per Python call, so read its numbers as shares of the hit, and the
unprofiled µs per operation as the absolute.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from typing import Dict, Optional, Sequence

import diskcache

from pkvbench.timing import Variant
from pkvbench.variants import (FLOOR, FLOOR_SQL, L1_DISK, L1_HIT, MEM_FLOOR_SQL, Cell, floors,
                               ours)
from pkvbench.workload import BACKENDS, MODELS, SHAPES, open_environment


def repeat(variant: Variant, count: int) -> None:
    """``count`` operations, each after its untimed-in-the-matrix ``before`` hook (emptying the
    memory level for the disk hit: a dict clear, well under 1 µs)."""
    before, op = variant.before, variant.op
    for _ in range(count):
        before()
        op()


def per_op_us(variant: Variant, count: int) -> float:
    start = time.perf_counter_ns()
    repeat(variant, count)
    return (time.perf_counter_ns() - start) / 1000.0 / count


def profile(variant: Variant, count: int, sort: str, top: int, match: Optional[str]) -> None:
    """Print the ``top`` functions; with ``match``, only those whose full path matches it."""
    profiler = cProfile.Profile()
    profiler.enable()
    repeat(variant, count)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    if match is None:
        stats.strip_dirs().sort_stats(sort).print_stats(top)
    else:
        stats.sort_stats(sort).print_stats(match, top)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=[L1_HIT, L1_DISK], default=L1_HIT)
    parser.add_argument("--hits", type=int, default=10_000)
    parser.add_argument("--backend", choices=BACKENDS, default="postgres")
    parser.add_argument("--shape", choices=SHAPES, default="select")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--sort", default="cumulative", help="a pstats sort key, e.g. tottime")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--match", help="only functions whose file path matches this regex, "
                        "e.g. peewee_kvcache (full paths are then kept)")
    args = parser.parse_args(argv)
    with open_environment([args.backend], f"pkv_bench_{os.getpid()}") as env:
        backend = env.backends[0]
        cell = Cell(backend.name, args.shape, args.rows)
        with backend.cached.bind_ctx(MODELS), diskcache.Cache(str(env.workdir / "floor")) as store:
            found = {v.name: v for v in floors(backend, cell, store)
                     + ours(backend, cell, checked=False)}
            measured: Dict[str, Variant] = {name: found[name] for name in
                                            (args.variant, FLOOR, FLOOR_SQL, MEM_FLOOR_SQL)}
            for variant in measured.values():
                per_op_us(variant, 500)  # warm-up
            means = {name: per_op_us(v, args.hits) for name, v in measured.items()}
            print(f"{cell}, unprofiled mean of {args.hits:,}: " + ", ".join(
                f"{name} {us:.1f} µs" for name, us in means.items()))
            hits_before = backend.cache.counters.snapshot()["hits"]
            profile(measured[args.variant], args.hits, args.sort, args.top, args.match)
            served = backend.cache.counters.snapshot()["hits"] - hits_before
            print(f"hits counted while profiling: {served:,} of {args.hits:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
