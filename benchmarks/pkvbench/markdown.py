"""What every benchmark report is written with: markdown tables, number formats and targets
checked as PASS or FAIL. Plain Python, so a report needs none of the ``bench`` extra."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Target:
    symbol: str
    compare: Callable[[float, float], bool]
    threshold: float

    def check(self, value: float) -> str:
        return "PASS" if self.compare(value, self.threshold) else "FAIL"


def at_most(x: float) -> Target:
    return Target("≤", operator.le, x)


def at_least(x: float) -> Target:
    return Target("≥", operator.ge, x)


def below(x: float) -> Target:
    return Target("<", operator.lt, x)


def above(x: float) -> Target:
    return Target(">", operator.gt, x)


def fmt_us(value: float) -> str:
    """Three significant figures at most, thousands separated: 3.21, 45.6, 789, 12,300."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 3) -> str:
    """A markdown table: the first ``text_columns`` left-aligned, numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < text_columns else "---:"
                            for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
