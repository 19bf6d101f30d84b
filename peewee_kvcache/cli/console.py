"""Terminal output of the command line: progress bars and tables, drawn with rich.

Kept apart from ``cli`` so the commands deal in data (what ``--json`` prints) and this module only
in how a person sees it. Progress goes to a terminal only: piped output stays clean for scripts.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

from rich.console import Console
from rich.progress import (BarColumn, Progress, SpinnerColumn, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from .demo import DemoReport, Step
from .maintenance import Progress as ProgressCallback

STDOUT = Console()
STDERR = Console(stderr=True)


def new_progress(console: Console) -> Progress:
    """A transient progress display, disabled when ``console`` is not a terminal."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=console,
                    transient=True, disable=not console.is_terminal)


@contextmanager
def key_progress(console: Console = STDERR) -> Iterator[ProgressCallback]:
    """A ``maintenance.Progress`` callback drawing one bar per phase (listing, deleting)."""
    with new_progress(console) as progress:
        tasks: Dict[str, TaskID] = {}

        def report(what: str, done: int, total: Optional[int]) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total, count="")
            count = f"{done:,} keys" if total is None else f"{done:,}/{total:,} keys"
            progress.update(tasks[what], completed=done, total=total, count=count)

        yield report


def _signed(value: int) -> str:
    return f"+{value}" if value >= 0 else str(value)


def step_view(step: Step, number: int, count: int) -> Any:
    """One demo step: each read with what L1 and L2 answered, and the counters it moved."""
    c = step.counters
    title = f"[bold]Step {number}/{count} · {step.title}[/bold]"
    moved = (f"hits {_signed(c['hits'])} (memory {_signed(c['memory_hits'])}, L1 "
             f"{_signed(c['l1_hits'])}, L2 {_signed(c['l2_hits'])}) · misses "
             f"{_signed(c['misses'])} · stores "
             f"{_signed(c['stores'])} · invalidations {_signed(c['invalidations'])}")
    if not step.runs:
        return f"{title}\n  {step.note}\n  [dim]{moved}[/dim]"
    table = Table(title=title, title_justify="left", caption=f"{step.note}\n[dim]{moved}[/dim]",
                  caption_justify="left")
    when = any(run.when for run in step.runs)  # a column only in a step that says so
    for name in (["when"] if when else []) + ["query", "L1", "L2", "served by", "ms", "rows"]:
        table.add_column(name, justify="right" if name in ("ms", "rows") else
                         "center" if name in ("L1", "L2") else "left")
    for run in step.runs:
        table.add_row(*([run.when] if when else []), run.query, run.l1, run.l2, run.served_by,
                      f"{run.ms:.2f}", str(run.rows))
    return table


def _ms(value: Optional[float]) -> str:
    return "not asked" if value is None else f"{value:.3f}"


#: what a hit saves, by backend: SQLite runs in this process, the others across a network
TIMING_NOTES = {
    "sqlite": "SQLite runs inside this process, so there is no network round trip to save: a "
              "hit pays off by what the query computes (the join here), not for a lookup by "
              "index.",
    "other": "Every database read here is a round trip to the database server: a hit saves it "
             "for every query, and for the join what the query computes as well.",
}


def demo_summary(report: DemoReport) -> Sequence[Any]:
    """The measured timings and the final ``get_stats()``, as renderables."""
    note = TIMING_NOTES["sqlite" if report.backend == "sqlite" else "other"]
    if any(ms["l2"] is None for ms in report.timings_ms.values()):
        note += " L2 not asked: the database answers that query faster than L2 would."
    timing = Table(title="Time per read (median, ms)", title_justify="left", caption=note,
                   caption_justify="left")
    for name in ("query", "database", "memory hit", "L2 hit", "database / memory"):
        timing.add_column(name, justify="left" if name == "query" else "right")
    for query, ms in report.timings_ms.items():
        database, memory = ms["database"], ms["memory"]
        timing.add_row(query, _ms(database), _ms(memory), _ms(ms["l2"]),
                       f"{database / memory:.1f}x" if database and memory else "-")
    stats = report.final_stats
    shown = ("hits", "misses", "hit_rate", "memory_hits", "l1_hits", "l2_hits",
             "l1_skipped_cost", "l2_skipped_cost", "stores", "invalidations",
             "bypassed_in_transaction", "total_keys", "table_keys", "l1_entries", "outbox_jobs",
             "pending_l2_work")
    final = key_value_table("Final db.cache.get_stats()", {name: stats[name] for name in shown})
    legend = (
        "l1_skipped_cost / l2_skipped_cost: misses that did not read L1 / ask L2 (for that "
        "query shape it would cost more than it saves). "
        "outbox_jobs: L2 sweeps kept in the L1 directory until KV has done them; after "
        "drain() these are the second sweeps every write gets "
        f"{report.resweep_after_s:g} s after its first (for cache writes still on their way "
        "to KV). pending_l2_work: L2 writes and sweeps queued in this process now (0: drain() "
        "waited for them).")
    return [timing, final, legend]


def key_value_table(title: str, values: Mapping[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, value in values.items():
        table.add_row(name, f"{value:.2f}" if isinstance(value, float) else str(value))
    return table


def counts_table(title: str, header: str, counts: Mapping[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(header)
    table.add_column("keys", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    return table
