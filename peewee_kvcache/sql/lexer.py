"""The dialects sqlglot reads Peewee's SQL in, and the keyword scanning done without sqlglot.

Transaction and session statements are recognised by their leading keywords (past comments and
parentheses): Peewee sends them constantly, and sqlglot mis-parses some.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.mysql import MySQL
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import Token, TokenType


class _PeeweeMySQL(MySQL):
    """MySQL as pymysql receives it: stock sqlglot reads the ``%s`` placeholder as a modulo."""

    class Parser(MySQL.Parser):
        PLACEHOLDER_PARSERS = {
            **MySQL.Parser.PLACEHOLDER_PARSERS,
            TokenType.MOD: lambda self: self._parse_pyformat(),
        }

        def _parse_pyformat(self) -> exp.Placeholder:
            """``%s``, the ``%`` already consumed. (``%(name)s`` still fails to parse, and so is
            handled as unparseable: sqlglot's MySQL parser takes ``%(`` for a function call.)"""
            self._match_text_seq("S")
            return exp.Placeholder()


DIALECTS: Dict[str, Dialect] = {
    "postgres": Postgres(), "mysql": _PeeweeMySQL(), "sqlite": SQLite(),
}


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


def keyword(token: Token) -> str:
    """The token's text upper-cased, or "" for a string or quoted name (never a keyword)."""
    quoted = token.token_type in (TokenType.STRING, TokenType.IDENTIFIER)
    return "" if quoted else token.text.upper()
