"""The benchmark still runs: ``benchmarks/run.py --quick --no-write`` exits 0, prints its table
and writes nothing.

It needs the ``bench`` extra (Django, django-cachalot, dogpile.cache, matplotlib), which tox's
py311 environment installs and says so (PEEWEE_KVCACHE_BENCH=required): there the extra's absence
fails the test; elsewhere it skips it with the reason. It also needs PostgreSQL, whose absence
skips locally and fails in CI, as for every service-backed test.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import PG, service_missing

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
OUTPUTS = [REPO / "benchmarks" / "results.md", REPO / "benchmarks" / "latency.png"]
BENCH_EXTRA = {"django": "Django", "cachalot": "django-cachalot", "dogpile": "dogpile.cache",
               "matplotlib": "matplotlib"}
MISSING = [dist for module, dist in BENCH_EXTRA.items() if importlib.util.find_spec(module) is None]
TABLE_HEADER = "| backend | shape | rows | uncached | L1 hit |"

pytestmark = pytest.mark.slow


def require_bench_extra() -> None:
    if not MISSING:
        return
    message = (f"the bench extra is not installed (missing: {', '.join(MISSING)}): "
               f"pip install -e '.[bench]'")
    if os.environ.get("PEEWEE_KVCACHE_BENCH") == "required":
        pytest.fail(f"{message}; this environment must run the benchmark smoke test")
    pytest.skip(message)


def require_postgres() -> None:
    import psycopg2
    try:
        psycopg2.connect(dbname="test", connect_timeout=5, **PG).close()
    except Exception as exc:  # noqa: BLE001 - any connect failure means "service missing"
        service_missing("PostgreSQL", exc)


def modified_at(path: Path) -> Optional[int]:
    return path.stat().st_mtime_ns if path.exists() else None


def test_quick_benchmark_runs_and_prints_its_table():
    require_bench_extra()
    require_postgres()
    before = [modified_at(path) for path in OUTPUTS]
    result = subprocess.run([sys.executable, str(RUN), "--quick", "--no-write"], cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert TABLE_HEADER in result.stdout
    assert "## Ratios and targets" in result.stdout
    assert [modified_at(path) for path in OUTPUTS] == before  # --no-write wrote nothing
