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
    for name, justify in (("query", "left"), ("L1", "center"), ("L2", "center"),
                          ("served by", "left"), ("ms", "right"), ("rows", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for run in step.runs:
        table.add_row(run.query, run.l1, run.l2, run.served_by, f"{run.ms:.2f}", str(run.rows))
    return table


def demo_summary(report: DemoReport) -> Sequence[Any]:
    """The measured timings and the final ``get_stats()``, as renderables."""
    timing = Table(title="Time per read (median, ms)", title_justify="left",
                   caption="L1 pays off for reads that cost more than a local lookup: the join "
                   "here; over a network database every read does", caption_justify="left")
    for name in ("query", "database", "L1 hit", "L2 hit", "database / L1"):
        timing.add_column(name, justify="left" if name == "query" else "right")
    for query, ms in report.timings_ms.items():
        timing.add_row(query, f"{ms['database']:.3f}", f"{ms['l1']:.3f}", f"{ms['l2']:.3f}",
                       f"{ms['database'] / ms['l1']:.1f}x" if ms["l1"] else "-")
    stats = report.final_stats
    shown = ("hits", "misses", "hit_rate", "memory_hits", "l1_hits", "l2_hits", "stores",
             "invalidations", "bypassed_in_transaction", "total_keys", "table_keys", "l1_entries")
    final = key_value_table("Final db.cache.get_stats()",
                            {name: stats[name] for name in shown})
    return [timing, final]


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
