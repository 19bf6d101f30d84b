"""What a SQL statement (or a ``;`` batch) does: the entry point of the SQL analysis.

One parser answers each question, whatever the statement: transaction control and session
statements (control.py), tables read and written and volatile functions (parsed.py). Cascades
through foreign keys (cascades.py) are the caller's step, for writes only.

This module imports sqlglot: the database reaches it through memo.py, on the first SQL text that
needs a parse, so that ``import peewee_kvcache`` does not pay for sqlglot.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import replace
from typing import List

from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from .control import SESSION_WORDS, TRANSACTION_WORDS, session_key, transaction
from .dialects import DIALECTS, keyword
from .info import SqlInfo, combine, unknown_write
from .lexer import first_word, leading_words
from .parsed import classify, rename

log = logging.getLogger("peewee_kvcache")

_NO_ROW_CHANGE = frozenset({
    "SET", "SHOW", "PRAGMA", "VACUUM", "ANALYZE", "ANALYSE", "LISTEN", "UNLISTEN", "NOTIFY", "USE",
    "CHECKPOINT", "REINDEX", "CLUSTER", "GRANT", "REVOKE", "LOCK", "UNLOCK", "DISCARD", "RESET",
    "DEALLOCATE", "ATTACH", "DETACH",
})
_EXPLAIN = frozenset({"EXPLAIN", "DESCRIBE", "DESC"})  # MySQL: DESCRIBE is a synonym of EXPLAIN
_OPAQUE = frozenset({"CALL", "DO", "EXECUTE", "EXEC"})  # run code whose writes the text hides
_STATEMENT_START = frozenset({
    "SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "VALUES", "TABLE", "CREATE",
    "EXECUTE", "DECLARE",
})
_DML_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "INTO"})


@functools.lru_cache(maxsize=4096)
def analyze_sql(sql: str, dialect: str) -> SqlInfo:
    """Classify ``sql`` (one statement or a ``;`` batch) as run on ``dialect``.

    SQL sqlglot can't read is a write to unknown tables (or, for a SELECT without DML words, an
    uncacheable read). So is SQL the analysis itself fails on: a fault, logged, never raised
    into the query."""
    if dialect not in DIALECTS:
        raise ValueError(f"unsupported dialect {dialect!r}; expected one of {sorted(DIALECTS)}")
    try:
        return _analyze(sql, DIALECTS[dialect])
    except Exception as exc:  # a bug met in sqlglot or here: whatever it is, err towards "more"
        log.warning("peewee_kvcache: SQL analysis failed (%s: %s); the statement counts as a "
                    "write to unknown tables", type(exc).__name__, exc)
        return unknown_write(f"analysis failed: {type(exc).__name__}")


def _analyze(sql: str, parser: Dialect) -> SqlInfo:
    body = sql.strip().rstrip(";")
    if ";" not in body:
        return _analyze_statement(body, parser)
    try:  # split on real semicolon tokens, not ones inside strings or $$ bodies
        tokens = parser.tokenize(sql)
    except SqlglotError as error:
        return unknown_write(f"cannot split statements: {error}")
    chunks: List[str] = []
    statement: List[Token] = []
    for token in tokens + [None]:
        if token is not None and token.token_type != TokenType.SEMICOLON:
            statement.append(token)
        elif statement:
            chunks.append(sql[statement[0].start:statement[-1].end + 1])
            statement = []
    infos = [_analyze_statement(chunk, parser) for chunk in chunks]
    return infos[0] if len(infos) == 1 else combine(infos)


def _set_statement(rest: str, parser: Dialect) -> SqlInfo:
    """MariaDB ``SET STATEMENT var = value [, ...] FOR statement`` (``rest`` follows SET): does
    what the statement does, under settings of its own (so it is never cached)."""
    tokens = parser.tokenize(rest)
    depth = 0
    for token, following in zip(tokens, tokens[1:]):
        depth += (token.token_type == TokenType.L_PAREN) - (token.token_type == TokenType.R_PAREN)
        if depth == 0 and keyword(token) == "FOR":
            inner = _analyze_statement(rest[following.start:], parser)
            return replace(inner, cacheable=False, reason=inner.reason or "SET STATEMENT ... FOR")
    return unknown_write("SET STATEMENT without FOR")


def _analyze_statement(sql: str, parser: Dialect) -> SqlInfo:
    word, offset = first_word(sql)
    if word in TRANSACTION_WORDS:
        control = transaction(sql, offset, parser)
        if control is not None:
            return control
    rest = sql[offset + len(word):]  # sqlglot tokenizes what follows EXPLAIN/RENAME as one string
    try:  # statements sqlglot can't parse whole: read from their tokens
        if word in _EXPLAIN:
            return _explain(rest, parser)
        if word == "SET" and leading_words(rest, 0, 1) == ["STATEMENT"]:
            return _set_statement(rest, parser)
        if word == "RENAME":
            return rename(rest, parser)
    except SqlglotError as error:
        return unknown_write(f"cannot tokenize {word}: {error}")
    if word in SESSION_WORDS:
        return SqlInfo("other", reason=f"{word} changes no rows",
                       session=session_key(word, rest, parser))
    if word in _NO_ROW_CHANGE or word == "START":
        return SqlInfo("other", reason=f"{word} changes no rows")
    if word in _OPAQUE:
        return unknown_write(f"{word} runs code whose writes are not visible")
    if word == "REPLACE":  # sqlglot keeps REPLACE INTO as opaque text; it touches what INSERT would
        sql = sql[:offset] + "INSERT" + sql[offset + len(word):]
    try:
        statements = [statement for statement in parser.parse(sql) if statement is not None]
    except (SqlglotError, RecursionError) as error:  # RecursionError: deeply nested SQL
        reason = f"parse failed: {(str(error).splitlines() or [type(error).__name__])[0][:200]}"
        if word in ("SELECT", "WITH") and not _may_write(sql, parser):
            return SqlInfo("select", reason=reason)
        return unknown_write(reason)
    infos = [classify(statement) for statement in statements]
    return infos[0] if len(infos) == 1 else combine(infos)


def _may_write(sql: str, parser: Dialect) -> bool:
    """Whether unparseable SELECT text has DML keywords (data-modifying CTE, SELECT INTO)."""
    try:
        tokens = parser.tokenize(sql)
    except SqlglotError:
        return True
    words = [""] + [keyword(token) for token in tokens]
    return any(word in _DML_WORDS and not (word == "UPDATE" and before in ("FOR", "KEY"))
               for before, word in zip(words, words[1:]))  # FOR [NO KEY] UPDATE is a lock


def _explain(rest: str, parser: Dialect) -> SqlInfo:
    """EXPLAIN (``rest`` follows the keyword) only plans a statement; EXPLAIN ANALYZE runs it."""
    tokens = parser.tokenize(rest)
    depth, analyze = 0, False
    for token in tokens:
        word = keyword(token)
        depth += (token.token_type == TokenType.L_PAREN) - (token.token_type == TokenType.R_PAREN)
        analyze = analyze or word in ("ANALYZE", "ANALYSE")
        if depth == 0 and word in _STATEMENT_START:
            inner = _analyze_statement(rest[token.start:], parser) if analyze else None
            if inner and (inner.written_tables or inner.writes_unknown):
                return replace(inner, cacheable=False, reason="EXPLAIN ANALYZE runs the statement")
            return SqlInfo("other", reason="EXPLAIN")
    if analyze:
        return unknown_write("EXPLAIN ANALYZE of an unrecognised statement")
    return SqlInfo("other", reason="EXPLAIN/DESCRIBE")
