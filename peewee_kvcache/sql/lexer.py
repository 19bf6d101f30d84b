"""Keyword scanning done without sqlglot, and the normal form raw SQL is memoised under.

Transaction and session statements are recognised by their leading keywords (past comments and
parentheses): Peewee sends them constantly, and sqlglot mis-parses some. Raw SQL with an IN list
or a multi-row VALUES is memoised under its text with each such list cut to one element
(:func:`normal_form`): its tables, its volatility and its effect on the session are those of any
other length, and a new length must not cost a new parse.
"""
from __future__ import annotations

import re
from typing import List, Tuple

_PLACEHOLDER = r"(?:\?|%s)"
_ROW = rf"\(\s*{_PLACEHOLDER}(?:\s*,\s*{_PLACEHOLDER})*\s*\)"
_NOT_AFTER = r"(?<![\w$.\"`\]])"  # a whole keyword, not the end of a name
#: ``IN (?, ?, ?)`` -> ``IN (?)``
_IN_LIST = re.compile(rf"{_NOT_AFTER}(IN\s*\(\s*{_PLACEHOLDER})(?:\s*,\s*{_PLACEHOLDER})+(?=\s*\))",
                      re.IGNORECASE)
#: ``VALUES (?, ?), (?, ?)`` -> ``VALUES (?, ?)``; ``IN ((?, ?), (?, ?))`` -> ``IN ((?, ?))``
_ROWS = re.compile(rf"{_NOT_AFTER}((?:VALUES\s*|IN\s*\(\s*){_ROW})(?:\s*,\s*{_ROW})+",
                   re.IGNORECASE)
#: what the lists are never cut inside: quoted names, strings, comments
_QUOTED = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]"""
                     r"""|--[^\n]*|/\*.*?\*/)""", re.DOTALL)
_UNSURE = ("\\", "$")  # backslash escapes, dollar quoting: where a quote ends is not plain to see


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


def normal_form(sql: str) -> str:
    """``sql`` with every IN list of placeholders and every multi-row VALUES of placeholder rows
    cut to its first element, outside quotes and comments; ``sql`` itself when where quotes end is
    in any doubt (a backslash, a ``$``, an unclosed quote)."""
    if any(char in sql for char in _UNSURE):
        return sql
    parts = _QUOTED.split(sql)  # even indexes are outside quotes and comments
    outside = "\n".join(parts[0::2])
    if any(mark in outside for mark in ("'", '"', "`", "[", "/*")):
        return sql  # a quote or comment left open
    for i in range(0, len(parts), 2):
        if "%s" in parts[i] or "?" in parts[i]:  # no list to cut where there is no placeholder
            parts[i] = _IN_LIST.sub(r"\1", _ROWS.sub(r"\1", parts[i]))
    return "".join(parts)
