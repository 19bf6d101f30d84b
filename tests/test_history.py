"""Consistency across hosts, checked on randomized histories (issue "Consistency across hosts").

Four OS processes, each one "host" with its own L1 directory, share one Cloudflare-compatible KV
server (in this process, on loopback) and one PostgreSQL database. For a few seconds each runs a
seeded random mix of cached reads (one row, all rows, a join, a join with an aggregate, a total),
autocommit increments, transactions that commit 1-2 increments and transactions that roll back,
recording wall-clock times (see tests/history_worker.py). Then the merged history is checked:

- **bounded staleness**: a read that started at ``t`` returns, for every row, at least the newest
  value whose commit completed before ``t - BOUND`` (aggregates: at least the sum of those);
  ``BOUND = l1_max_age + max_put_delay + propagation_delay + MARGIN``, with NOTIFY and without;
- **nothing uncommitted**: every value read was committed (rolled-back writes add ``POISON``),
  and by a commit that had started before the read ended (aggregates: at most the sum of those);
- **read-your-writes**: a host reads at least what it committed itself earlier; a transaction
  reads its own uncommitted writes;
- a read the database answered is never stale at all (checks the harness' clocks).

``PKV_HISTORY_SEED`` replays a seed's operation mix (timing differs), ``PKV_HISTORY_SECONDS``
changes the length of the workload. The seed is in every assertion message and summary line.
"""
from __future__ import annotations

import bisect
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

import peewee
import pytest

from peewee_kvcache.testing.kv_server import KVServer
from tests.conftest import PG
from tests.history_worker import MODELS, role, schedule, seed_rows

# runs in the full tox environment (py311): see tox.ini
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
SECONDS = float(os.environ.get("PKV_HISTORY_SECONDS", "8"))
L1_MAX_AGE = 1.0
MAX_PUT_DELAY = 1.0
PROPAGATION = 0.0
OUTBOX_LEASE = 2.0
#: scheduling slack: the writer's 0.25 s tick plus CPU scheduling on a loaded 2-core machine
#: (4 workers, PostgreSQL, the KV server, and in CI a second tox environment); 2.51 s was seen
MARGIN = 1.0
BOUND = L1_MAX_AGE + MAX_PUT_DELAY + PROPAGATION + MARGIN
CACHE_OPTIONS = dict(l1_max_age=L1_MAX_AGE, max_put_delay=MAX_PUT_DELAY,
                     propagation_delay=PROPAGATION, outbox_lease=OUTBOX_LEASE)

Row = Tuple[str, int]


# -- running the hosts ------------------------------------------------------------------------
def run_hosts(tmp_path: Path, server: KVServer, schema: str, notify: bool, seed: int
              ) -> Tuple[List[Dict[str, Any]], float, str]:
    """Start the workers, let them run SECONDS, and return their histories, the start time and
    their output (every process is gone when this returns, also on failure)."""
    info = dict(base_url=server.base_url, account_id=server.account_id,
                namespace_id=server.namespace_id, api_token=server.api_token)
    go = tmp_path / "go"
    procs: List[subprocess.Popen] = []
    logs = []
    try:
        for i in range(WORKERS):
            config = dict(worker=i, seed=seed, server=info, l1=str(tmp_path / f"l1-{i}"),
                          schema=schema, pg=PG, notify=notify, cache_options=CACHE_OPTIONS,
                          think=0.01, ready=str(tmp_path / f"ready-{i}"), go=str(go),
                          out=str(tmp_path / f"history-{i}.json"))
            log = open(tmp_path / f"worker-{i}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "tests.history_worker",
                                           json.dumps(config)], cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready-{i}").exists() for i in range(WORKERS)):
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            assert not dead, f"seed={seed}: workers {dead} exited before they were ready:\n" + \
                output(logs)
            assert time.monotonic() < deadline, f"seed={seed}: workers not ready in 30 s\n" + \
                output(logs)
            time.sleep(0.02)
        start = time.time()
        tmp = tmp_path / "go.tmp"
        tmp.write_text(json.dumps([start, start + SECONDS]))
        os.replace(tmp, go)
        for proc in procs:
            proc.wait(timeout=SECONDS + 40)
        text = output(logs)
        assert all(p.returncode == 0 for p in procs), \
            f"seed={seed}: worker exit codes {[p.returncode for p in procs]}\n{text}"
        histories = [json.loads((tmp_path / f"history-{i}.json").read_text())
                     for i in range(WORKERS)]
        return histories, start, text
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def output(logs) -> str:
    parts = []
    for i, log in enumerate(logs):
        log.flush()
        log.seek(0)
        text = log.read()
        if text.strip():
            parts.append(f"--- worker {i} output ---\n{text[-4000:]}")
    return "\n".join(parts)


# -- the checker ------------------------------------------------------------------------------
class History:
    """The merged history, indexed per row for the checks."""

    def __init__(self, histories: List[Dict[str, Any]], start: float):
        self.start = start
        self.commits: Dict[Row, List[Dict[str, Any]]] = defaultdict(list)
        self.by_value: Dict[Row, Dict[int, Dict[str, Any]]] = defaultdict(dict)
        self.poison = set()
        self.reads: List[Dict[str, Any]] = []
        self.errors: List[str] = []
        for h in histories:
            w = h["worker"]
            for c in h["commits"]:
                c["worker"] = w
                self.commits[(c["table"], c["id"])].append(c)
                self.by_value[(c["table"], c["id"])][c["value"]] = c
            for r in h["reads"]:
                r["worker"] = w
                self.reads.append(r)
            self.poison |= {(t, i, v) for t, i, v in h["poison"]}
            self.errors += [f"worker {w}: {e}" for e in h["errors"]]
        self.reads.sort(key=lambda r: r["t0"])
        # per row: commits by completion time, with the running max of their values
        self.ce: Dict[Row, List[float]] = {}
        self.ce_max: Dict[Row, List[int]] = {}
        self.cs: Dict[Row, List[float]] = {}
        self.cs_max: Dict[Row, List[int]] = {}
        for row, commits in self.commits.items():
            self.ce[row], self.ce_max[row] = self._running_max(commits, "ce")
            self.cs[row], self.cs_max[row] = self._running_max(commits, "cs")
        # a host's own commits, in its program order
        self.own: Dict[Tuple[int, Row], List[Tuple[float, int]]] = defaultdict(list)
        for row, commits in self.commits.items():
            for c in commits:
                self.own[(c["worker"], row)].append((c["ce"], c["value"]))
        for seq in self.own.values():
            seq.sort()

    @staticmethod
    def _running_max(commits: List[Dict[str, Any]], stamp: str) -> Tuple[List[float], List[int]]:
        ordered = sorted(commits, key=lambda c: c[stamp])
        best, maxima = 0, []
        for c in ordered:
            best = max(best, c["value"])
            maxima.append(best)
        return [c[stamp] for c in ordered], maxima

    def newest_before(self, row: Row, t: float, stamp: str = "ce") -> int:
        """The largest value of ``row`` committed with ``stamp`` < t (0: the initial value)."""
        times = (self.ce if stamp == "ce" else self.cs).get(row, [])
        maxima = (self.ce_max if stamp == "ce" else self.cs_max).get(row, [])
        k = bisect.bisect_left(times, t)
        return maxima[k - 1] if k else 0

    def own_before(self, worker: int, row: Row, t: float) -> int:
        seq = self.own.get((worker, row), [])
        k = bisect.bisect_left(seq, (t, -1))
        return max((v for _, v in seq[:k]), default=0)

    def staleness(self, row: Row, value: int, t0: float) -> float:
        """How long before ``t0`` the first commit newer than ``value`` completed (0: none)."""
        newer = [c["ce"] for c in self.commits.get(row, ()) if c["value"] > value and c["ce"] < t0]
        return t0 - min(newer) if newer else 0.0

    def sum_staleness(self, rows: List[Row], total: int, t0: float) -> float:
        """The same for a sum: how long before t0 the sum of committed values first exceeded it."""
        events = sorted((c["ce"], row, c["value"]) for row in rows
                        for c in self.commits.get(row, ()) if c["ce"] < t0)
        current = {row: 0 for row in rows}
        for ce, row, value in events:
            current[row] = max(current[row], value)
            if sum(current.values()) > total:
                return t0 - ce
        return 0.0

    # -- formatting -------------------------------------------------------------------------
    def t(self, stamp: float) -> str:
        return f"{stamp - self.start:+.3f}s"

    def read_line(self, r: Dict[str, Any]) -> str:
        how = r["src"] + ("+recheck" if r["recheck"] else "") + (" in txn" if r["txn"] else "")
        return (f"read  w{r['worker']} {r['kind']:<7} [{self.t(r['t0'])} .. {self.t(r['t1'])}] "
                f"via {how}: rows={r['rows']} sums={r['sums']} own={r['own']}")

    def commit_lines(self, row: Row, r: Dict[str, Any], before: int = 4, after: int = 2
                     ) -> List[str]:
        """The commits of ``row`` around read ``r``: the last few that completed before it
        started, the first newer than the value it returned, and the first few after."""
        ordered = sorted(self.commits.get(row, ()), key=lambda c: c["ce"])
        k = bisect.bisect_left([c["ce"] for c in ordered], r["t0"])
        seen = [v for t, i, v in r["rows"] if (t, i) == row]
        newer = [c for c in ordered[:k] if seen and c["value"] > min(seen)]
        picked = ordered[max(0, k - before):k + after] + newer[:1]
        lines = []
        for c in sorted({id(c): c for c in picked}.values(), key=lambda c: c["ce"]):
            first = " <- first newer commit" if newer and c is newer[0] else ""
            lines.append(f"    write w{c['worker']} {c['kind']:<11} {row[0]}:{row[1]}="
                         f"{c['value']} commit [{self.t(c['cs'])} .. {self.t(c['ce'])}]{first}")
        return lines


def check(h: History, bound: float) -> Tuple[List[str], Dict[str, Any]]:
    """Every violation (with the history lines that show it) and the measured staleness."""
    violations: List[str] = []
    worst: Dict[str, float] = defaultdict(float)
    worst_read: Dict[str, Any] = {}
    stale_reads = 0

    previous: Dict[Tuple[int, str], List[Dict[str, Any]]] = defaultdict(list)

    def violation(r: Dict[str, Any], what: str, rows: List[Row]) -> None:
        lines = [f"{what}", "  " + h.read_line(r)]
        lines += ["    earlier, same host and kind: " + h.read_line(p)
                  for p in previous[(r["worker"], r["kind"])][-3:]]
        for row in rows:
            lines += h.commit_lines(row, r)
        violations.append("\n".join(lines))

    for r in h.reads:
        t0, t1, w = r["t0"], r["t1"], r["worker"]
        read_stale = 0.0
        for table, rid, value in r["rows"]:
            row = (table, rid)
            own = r["own"].get(f"{table}:{rid}")
            if own is not None:  # this transaction's own uncommitted write
                if value != own:
                    violation(r, f"transaction did not read its own write {table}:{rid}={own}",
                              [row])
                continue
            commit = h.by_value.get(row, {}).get(value)
            if value != 0 and commit is None:
                what = "rolled back" if (table, rid, value) in h.poison else "never written"
                violation(r, f"read {table}:{rid}={value}, a value that was {what}", [row])
                continue
            if commit is not None and commit["cs"] > t1:
                violation(r, f"read {table}:{rid}={value} before its commit was even sent "
                             f"(dirty read)", [row])
            stale = h.staleness(row, value, t0)
            read_stale = max(read_stale, stale)
            if stale > bound:
                violation(r, f"stale read: {table}:{rid}={value} while "
                             f"{h.newest_before(row, t0 - bound)} had committed more than "
                             f"{bound:.2f} s before the read started (staleness {stale:.3f} s)",
                          [row])
            elif stale > 0 and r["src"] == "db":
                violation(r, f"the database returned {table}:{rid}={value}, older than a commit "
                             f"that completed before the query started (harness clock?)", [row])
            mine = h.own_before(w, row, t0)
            if value < mine:
                violation(r, f"read-your-writes: w{w} committed {table}:{rid}={mine} before this "
                             f"read but read {value}", [row])
        for table, ids, total in r["sums"]:
            rows = [(table, i) for i in ids]
            if any(f"{table}:{i}" in r["own"] for i in ids):
                continue  # includes the transaction's own uncommitted rows
            upper = sum(h.newest_before(row, t1, "cs") for row in rows)
            lower = sum(max(h.newest_before(row, t0 - bound), h.own_before(w, row, t0))
                        for row in rows)
            if total > upper:
                violation(r, f"sum over {table} {ids} = {total} exceeds every committed state "
                             f"(max {upper}): it includes an uncommitted value", rows)
            if total < lower:
                violation(r, f"stale or lost sum over {table} {ids} = {total} < {lower} (the "
                             f"values committed {bound:.2f} s before the read, or its own)", rows)
            stale = h.sum_staleness(rows, total, t0)
            read_stale = max(read_stale, stale)
            if stale > 0 and r["src"] == "db" and total >= lower:
                violation(r, f"the database returned sum {total} over {table} {ids}, older than "
                             f"commits that completed before the query started", rows)
        previous[(w, r["kind"])].append(r)
        if read_stale > 0:
            stale_reads += 1
        if read_stale > worst[r["src"]]:
            worst[r["src"]] = read_stale
            worst_read[r["src"]] = r
    measured = dict(max=max(worst.values(), default=0.0), by_source=dict(worst),
                    stale_reads=stale_reads, backwards=backwards(h),
                    worst_reads={k: h.read_line(v) for k, v in worst_read.items()})
    return violations, measured


def backwards(h: History) -> int:
    """Observations of a row older than one the same host had already read (allowed within the
    bound: two cached queries over one row may differ in age; reported, not asserted)."""
    seen: Dict[Tuple[int, Row], int] = {}
    count = 0
    for r in h.reads:
        for table, rid, value in r["rows"]:
            if f"{table}:{rid}" in r["own"]:
                continue
            key = (r["worker"], (table, rid))
            if value < seen.get(key, 0):
                count += 1
            seen[key] = max(seen.get(key, 0), value)
    return count


def sanity(h: History, seed: int) -> None:
    """The harness itself: committed values per row are exactly 1..n, and nothing raised."""
    assert not h.errors, f"seed={seed}: operations raised:\n" + "\n".join(h.errors[:5])
    for row, commits in h.commits.items():
        values = sorted(c["value"] for c in commits)
        assert values == list(range(1, len(values) + 1)), \
            f"seed={seed}: {row} committed values are not 1..n: {values}"


# -- the test ---------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    with KVServer(tmp_path / "kv-server") as srv:
        yield srv


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "no-notify"])
def test_randomized_history_across_hosts(notify, pg_schema, server, tmp_path):
    seed = int(os.environ.get("PKV_HISTORY_SEED") or random.SystemRandom().randrange(1 << 31))
    mode = "notify" if notify else "no-notify"
    tag = f"[{mode} seed={seed}]"
    plain = peewee.PostgresqlDatabase("test", options=f"-c search_path={pg_schema}", **PG)
    seed_rows(plain)
    began = time.monotonic()
    try:
        histories, start, logs = run_hosts(tmp_path, server, pg_schema, notify, seed)
    finally:
        with plain.bind_ctx(MODELS):
            plain.drop_tables(MODELS, safe=True)
        plain.close()
    h = History(histories, start)
    violations, measured = check(h, BOUND)

    stats = [hist["stats"] for hist in histories]
    total = {k: sum(s[k] for s in stats) for k in (
        "hits", "misses", "memory_hits", "l1_hits", "l2_hits", "l1_rechecks", "remote_evictions",
        "l2_stale_rejected", "l2_puts_dropped_late", "stores_refused", "l2_skipped_pending",
        "l2_errors", "l1_errors", "invalidations", "bypassed_in_transaction")}
    sources = defaultdict(int)
    for r in h.reads:
        sources[r["src"]] += 1
    writes = sum(len(c) for c in h.commits.values())
    print(f"\nhistory {tag}: {len(h.reads)} reads ({dict(sources)}), {writes} committed writes, "
          f"{len(h.poison)} rolled-back writes in {SECONDS:.0f} s; bound {BOUND:.2f} s; "
          f"max staleness {measured['max']:.3f} s "
          f"(by source { {k: round(v, 3) for k, v in measured['by_source'].items()} }, "
          f"{measured['stale_reads']} reads stale at all, {measured['backwards']} row values older "
          f"than one the same host had read before); stats {total}; "
          f"run took {time.monotonic() - began:.1f} s")
    for table in ("counter", "bucket"):
        quiet = [f"{a:.1f}-{b:.1f}" for a, b, busy in schedule(seed, SECONDS, table) if not busy]
        print(f"  {table} quiet (s): {', '.join(quiet)}")
    for src, line in measured["worst_reads"].items():
        print(f"  worst {src}: {line}")
    (tmp_path / "history.json").write_text(json.dumps(dict(seed=seed, notify=notify, start=start,
                                                          histories=histories)))
    sanity(h, seed)
    assert not violations, (
        f"{tag}: {len(violations)} consistency violations (bound {BOUND:.2f} s = l1_max_age "
        f"{L1_MAX_AGE} + max_put_delay {MAX_PUT_DELAY} + propagation {PROPAGATION} + margin "
        f"{MARGIN}; times relative to the workload's start; full history in "
        f"{tmp_path / 'history.json'}):\n" + "\n".join(violations[:15]) +
        f"\nstats per worker: {stats}\n{logs[-3000:]}")
    assert total["l2_errors"] == 0 and total["l1_errors"] == 0, f"{tag}: cache faults: {total}"
    # the run exercised what it claims to: cache hits, database reads, writes from every writer
    assert sources["l1"] > 0 and sources["db"] > 0, f"{tag}: read sources {dict(sources)}"
    assert all(hist["commits"] for hist in histories if role(hist["worker"]) == "writer"), \
        f"{tag}: a writer committed nothing"
