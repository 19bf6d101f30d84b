"""The workload benchmark: its ideal cache and its operation sequence do what the report says
(fast, no database), and ``benchmarks/workload.py --quick`` still runs: exits 0, prints a row per
variant and L2 distance and the two ideal caches, with numbers that make sense (no speed is
asserted: that is the benchmark's job), and writes nothing.

The run needs PostgreSQL and (for the gateway L2) Node.js with the Worker's npm packages, whose
absence skips locally and fails in CI, as for every service-backed test; nothing of the
``bench`` extra."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest

from peewee_kvcache.testing.workerd import missing_parts
from tests.conftest import service_missing
from tests.test_benchmark_smoke import modified_at, require_postgres

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pkvbench.ideal import ideal  # noqa: E402 - the benchmark's helpers live beside its script
from pkvbench.mix import Mix, Op, sequence  # noqa: E402

SCRIPT = REPO / "benchmarks" / "workload.py"
RESULTS = REPO / "benchmarks" / "workload_results.md"
ROWS = [("no cache", ""), ("embedded L2", "in process"), ("REST L2", "loopback"),
        ("REST L2", "+40 ms"), ("gateway L2", "+40 ms"), ("ideal, one shared store", ""),
        ("ideal, a store per host", "")]
CACHED = slice(1, 5)  # the cached runs' rows



def test_ideal_cache_hits_exactly_what_no_write_made_stale_and_shares_only_a_shared_store():
    point, write = Op("point", (1,)), Op("write", (1, 5), "item")
    other_table = Op("write", (1, 5), "pageview")
    ops = [[point, point, other_table, point, write, point], [point]]
    uncached = [[10.0] * 6, [10.0]]
    hit = {"point": 1.0}
    # host 0 misses, host 1 (behind on its clock) then reads: a hit only in a shared store; host 0
    # hits twice (a write elsewhere changes nothing), and misses once its table was written
    shared = ideal(ops, uncached, hit, shared=True)
    per_host = ideal(ops, uncached, hit, shared=False)
    assert (shared.hits, shared.reads, shared.total_us) == (3, 5, 10 + 1 + 1 + 10 + 1 + 10 + 10)
    assert (per_host.hits, per_host.total_us) == (2, 10 + 1 + 10 + 1 + 10 + 10 + 10)


def test_sequence_is_seeded_and_keeps_the_mix():
    mix = Mix()
    ops = sequence(7, 3000, mix)
    assert ops == sequence(7, 3000, mix) != sequence(8, 3000, mix)
    kinds = Counter(op.kind for op in ops)
    for kind, count in kinds.items():
        assert abs(count / len(ops) - getattr(mix, kind)) < 0.02, kinds
    writes = Counter(op.target for op in ops if op.kind == "write")
    assert set(writes) == {table for table, _ in mix.write_targets}
    lengths = {len(op.args) for op in ops if op.kind == "batch"}
    assert len(lengths) > 10 and min(lengths) >= mix.batch_lengths[0]  # new SQL texts keep coming
    points = Counter(op.args for op in ops if op.kind == "point")
    assert points[(1,)] == max(points.values())  # rank 1 is the most popular key




def section(text: str, title: str) -> List[Dict[str, str]]:
    """The rows of the markdown table under ``## title``, as header → cell."""
    lines = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines if line.startswith("|")]
    header, body = rows[0], rows[2:]
    return [dict(zip(header, row)) for row in body]


def number(cell: str) -> float:
    return float(re.sub(r"[×,%]", "", cell.split()[0]))


@pytest.mark.slow  # two hosts × five variants: ~25 s alone, more on a busy machine
def test_quick_workload_benchmark_prints_every_variant_with_sane_numbers():
    require_postgres()
    reason = missing_parts()
    if reason:
        service_missing("the KV gateway Worker (workerd)", RuntimeError(reason))
    before = modified_at(RESULTS)
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert modified_at(RESULTS) == before  # --quick prints only

    rows = section(done.stdout, "Time, speed-up and fraction of the ideal")
    assert [(r["variant"], r["L2 distance"]) for r in rows] == ROWS
    for row in rows:
        assert number(row["time, s (both hosts)"]) > 0, row
    assert rows[0]["speed-up vs no cache"] == "1.00×"
    for row in rows[CACHED]:
        assert 0 < number(row["of shared ideal"]) < 5, row
        assert 0 < number(row["of per-host ideal"]) < 5, row
        assert 0 < number(row["reads served from cache"]) <= 100, row
        assert number(row["KV requests / 1,000 ops"]) > 0, row  # every write sweeps L2
    for row in rows[CACHED.stop:]:  # the ideals
        assert number(row["speed-up vs no cache"]) > 0, row
        assert 0 < number(row["reads served from cache"]) <= 100, row

    paths = section(done.stdout, "Per-path ratios")
    assert [(r["variant"], r["L2 distance"]) for r in paths] == ROWS[CACHED]
    writes = [row["write / uncached write (≤ 1.2)"] for row in paths]
    assert all(number(ratio) > 0 for ratio in writes), writes
    counts = {re.findall(r"\((\d+)\)", ratio)[0] for ratio in writes}
    assert len(counts) == 1, writes  # the same sequence in every run: the same writes

    floor = re.search(r"NOTIFY adds (-?\d+) µs to a (\d+) µs UPDATE, a durable local record "
                      r"takes (\d+) µs; .* can cost less than ([\d.]+)× it", done.stdout)
    assert floor is not None, done.stdout  # measured with the raw drivers, in the same run
    assert int(floor[2]) > 0 and int(floor[3]) > 0 and float(floor[4]) >= 1.0, floor[0]

    requests = section(done.stdout, "KV requests")
    assert [r["drained"] for r in requests] == ["yes"] * 4
    gateway = requests[-1]  # its sweeps are one request each: /v1/sweep, never a list
    assert gateway["variant"] == "gateway L2" and number(gateway["/v1/sweep"]) > 0, gateway
    assert gateway.get("/v1/keys", "0") == "0" and gateway.get("list", "0") == "0", gateway
    counters = {r["get_stats(), both hosts"]: r for r in section(done.stdout, "Cache counters")}
    assert {"hits", "misses", "stores", "invalidations"} <= set(counters)
