"""What each SQL text does, memoised per dialect: the database consults this for every statement.

A text is analysed once. Query objects are read from Peewee's query tree (orm/tree.py) and
remembered here under their text; raw SQL is parsed (analysis.py), under its normal form
(lexer.py), so that IN lists of every length share one parse. sqlglot is imported on the first
parse, not before: an application that only runs query objects never loads it.
"""
from __future__ import annotations

from typing import Dict

from .info import SqlInfo
from .lexer import normal_form

#: texts remembered per dialect before the memo starts over (a full memo is cleared in place:
#: the databases hold it)
MAX_TEXTS = 4096
_MEMOS: Dict[str, Dict[str, SqlInfo]] = {}


def texts(dialect: str) -> Dict[str, SqlInfo]:
    """The memo of ``dialect``: SQL text -> its analysis (look up with ``.get(sql)``)."""
    return _MEMOS.setdefault(dialect, {})


def remember(memo: Dict[str, SqlInfo], sql: str, info: SqlInfo) -> SqlInfo:
    """Keep ``info`` as the analysis of ``sql`` in ``memo``; returns ``info``."""
    if len(memo) >= MAX_TEXTS:
        memo.clear()
    memo[sql] = info
    return info


def parse(sql: str, dialect: str) -> SqlInfo:
    """The analysis of raw SQL ``sql``, parsed once per normal form. Raises ValueError for an
    unknown dialect."""
    from .analysis import analyze_sql  # sqlglot: loaded by the first text that needs a parse
    return analyze_sql(normal_form(sql), dialect)

