"""The dialects sqlglot reads Peewee's SQL in, and what a sqlglot token says as a keyword.

Only the parsing side of the analysis imports this module (and so sqlglot): a statement built
from a Peewee query object is analysed from its query tree, never parsed (orm/tree.py).
"""
from __future__ import annotations

from typing import Dict

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


def keyword(token: Token) -> str:
    """The token's text upper-cased, or "" for a string or quoted name (never a keyword)."""
    quoted = token.token_type in (TokenType.STRING, TokenType.IDENTIFIER)
    return "" if quoted else token.text.upper()
