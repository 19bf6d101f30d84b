"""Keyword scanning done without sqlglot.

Transaction and session statements are recognised by their leading keywords (past comments and
parentheses): Peewee sends them constantly, and sqlglot mis-parses some.
"""
from __future__ import annotations

from typing import List, Tuple


def first_word(sql: str) -> Tuple[str, int]:
    """The leading keyword, upper-cased, and its offset, past whitespace, comments and '('."""
    i, length = 0, len(sql)
    while i < length:
        if sql[i].isspace() or sql[i] == "(":
            i += 1
        elif sql.startswith(("--", "#"), i):
            i = length if sql.find("\n", i) < 0 else sql.find("\n", i) + 1
        elif sql.startswith("/*", i):
            i = length if sql.find("*/", i + 2) < 0 else sql.find("*/", i + 2) + 2
        else:
            break
    end = i
    while end < length and (sql[end].isalpha() or sql[end] == "_"):
        end += 1
    return sql[i:end].upper(), i


def leading_words(sql: str, offset: int, count: int) -> List[str]:
    """Up to ``count`` keywords of ``sql`` from ``offset``, stopping at anything else."""
    words: List[str] = []
    while len(words) < count:
        word, start = first_word(sql[offset:])
        if not word:
            break
        words.append(word)
        offset += start + len(word)
    return words
