"""What a statement does to its connection's transaction (BEGIN, COMMIT, ROLLBACK however spelled
or commented, MySQL XA, PostgreSQL two-phase commit) and session (SET, USE, PRAGMA, ATTACH...).

The only parser of these: the Peewee layer keeps per-connection state from its answers.
"""
from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Tuple

from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.mysql import MySQL
from sqlglot.dialects.sqlite import SQLite
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from .dialects import keyword
from .info import OPAQUE, SqlInfo, unknown_write
from .lexer import leading_words

# First keywords settled without sqlglot: Peewee sends these constantly and sqlglot mis-parses some.
TRANSACTION_WORDS = frozenset({
    "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE", "XA",
})
SESSION_WORDS = frozenset({"SET", "RESET", "DISCARD", "USE", "ATTACH", "DETACH", "PRAGMA"})
# SET forms named by keywords, not by a variable: (leading words, key; "" = no session change)
_SET_FORMS = (
    (("TRANSACTION",), ""), (("CONSTRAINTS",), ""), (("SESSION", "TRANSACTION"), ""),
    (("SESSION", "CHARACTERISTICS"), ""), (("PASSWORD",), ""), (("DEFAULT", "ROLE"), ""),
    (("SESSION", "AUTHORIZATION"), "session authorization"), (("SESSION", "ROLE"), "role"),
    (("ROLE",), "role"), (("SESSION", "TIME", "ZONE"), "timezone"), (("TIME", "ZONE"), "timezone"),
    (("NAMES",), "names"), (("CHARACTER", "SET"), "charset"), (("CHARSET",), "charset"),
)
_XA_ACTIONS = {"START": ("begin",), "BEGIN": ("begin",), "PREPARE": ("commit",),
               "COMMIT": ("commit",), "ROLLBACK": ("rollback",)}
_SET_SCOPES = frozenset({"LOCAL", "GLOBAL", "PERSIST", "PERSIST_ONLY"})  # not this session's own
# SQLite pragmas that never change what a query returns (tuning, integrity, introspection)
_PRAGMAS_UNRELATED = frozenset({
    "busy_timeout", "cache_size", "cache_spill", "journal_mode", "journal_size_limit",
    "synchronous", "mmap_size", "temp_store", "wal_autocheckpoint", "threads", "soft_heap_limit",
    "hard_heap_limit", "analysis_limit", "automatic_index", "cell_size_check",
    "checkpoint_fullfsync", "fullfsync", "locking_mode", "max_page_count", "page_size",
    "secure_delete", "auto_vacuum", "optimize",
    "foreign_keys", "defer_foreign_keys", "recursive_triggers", "ignore_check_constraints",
    "query_only", "application_id", "user_version", "table_info", "table_xinfo", "table_list",
    "index_info", "index_xinfo", "index_list", "foreign_key_list", "foreign_key_check",
    "integrity_check", "quick_check", "database_list", "collation_list", "function_list",
    "module_list", "pragma_list", "compile_options", "wal_checkpoint", "incremental_vacuum",
    "shrink_memory",
})
_CONSTANT_TOKENS = frozenset({
    TokenType.STRING, TokenType.NUMBER, TokenType.IDENTIFIER, TokenType.VAR, TokenType.COMMA,
    TokenType.DASH, TokenType.PLUS, TokenType.DOT, TokenType.PLACEHOLDER, TokenType.MOD,
})


def transaction(sql: str, offset: int, parser: Dialect) -> Optional[SqlInfo]:
    """What a statement starting with a :data:`TRANSACTION_WORDS` word does to the transaction;
    None when it is no transaction statement after all (``START SLAVE``, ``PREPARE p AS``)."""
    first, *rest = leading_words(sql, offset, 8)
    if first == "XA":
        return _xa(rest)
    if first == "PREPARE":  # PostgreSQL two-phase commit: the transaction ends here
        return _control("commit") if rest[:1] == ["TRANSACTION"] else None
    if first == "START" and rest[:1] != ["TRANSACTION"]:
        return None
    if first == "BEGIN" and rest[:2] == ["NOT", "ATOMIC"]:  # MariaDB compound statement
        return unknown_write("BEGIN NOT ATOMIC runs code whose writes are not visible")
    if rest[:1] == ["PREPARED"]:  # COMMIT/ROLLBACK PREPARED: another transaction's writes
        return unknown_write("COMMIT PREPARED") if first == "COMMIT" else _control()
    if first in ("BEGIN", "START"):  # MySQL commits an open transaction first
        return _control("commit", "begin") if isinstance(parser, MySQL) else _control("begin")
    if first in ("SAVEPOINT", "RELEASE") and isinstance(parser, SQLite):
        return _sqlite_savepoint(first, sql[offset:], parser)
    if first in ("SAVEPOINT", "RELEASE") or "TO" in rest:  # ROLLBACK [WORK] TO [SAVEPOINT] s
        return _control()
    ending = "commit" if first in ("COMMIT", "END") else "rollback"  # ROLLBACK, ABORT
    chained = "CHAIN" in rest and rest[rest.index("CHAIN") - 1] != "NO"  # AND CHAIN: BEGIN again
    return _control(ending, "begin") if chained else _control(ending)


def _sqlite_savepoint(word: str, statement: str, parser: Dialect) -> SqlInfo:
    """SQLite: a SAVEPOINT outside a transaction opens one, and the RELEASE of that savepoint
    commits it. Actions ``savepoint:<name>`` / ``release:<name>`` (names are case-insensitive);
    inside a transaction they change nothing."""
    try:
        tokens = [t for t in parser.tokenize(statement) if t.token_type != TokenType.SEMICOLON]
    except SqlglotError:
        return _control()
    if len(tokens) < 2:
        return _control()
    name = tokens[-1].text.split()[-1].strip('"`[]').lower()  # sqlglot: RELEASE's rest is one token
    return _control(("savepoint:" if word == "SAVEPOINT" else "release:") + name)


def _xa(words: List[str]) -> SqlInfo:
    """MySQL XA: START opens, PREPARE ends this connection's part, COMMIT may commit a prepared
    transaction of any connection (its tables unknown)."""
    verb = words[0] if words else ""
    info = _control(*_XA_ACTIONS.get(verb, ()))
    return replace(info, writes_unknown=True) if verb == "COMMIT" else info


def _control(*actions: str) -> SqlInfo:
    return SqlInfo("transaction", reason="transaction control", control=actions)


def session_key(word: str, rest: str, parser: Dialect) -> str:
    """What a session statement (``rest`` follows ``word``) sets, as a key: statements with the
    same key overwrite the same settings with constants, so a connection's session is known from
    the last statement of each key, in order. "" when it leaves the session as it was (SHOW, SET
    TRANSACTION, PRAGMA table_info); :data:`OPAQUE` when its effect can't be keyed (an expression,
    a variable, a scope other than the session's own)."""
    try:
        tokens = parser.tokenize(rest)
    except SqlglotError:
        return OPAQUE
    words = [keyword(token) for token in tokens]
    if word == "USE":
        return "use"
    if word == "DISCARD" or (word == "RESET" and words == ["ALL"]):
        return " ".join([word] + words).lower()
    if word in ("ATTACH", "DETACH"):  # ATTACH [DATABASE] 'file' AS name / DETACH [DATABASE] name
        return "attach:" + tokens[-1].text.lower() if tokens else OPAQUE
    if word == "PRAGMA":
        return _pragma_key(tokens)
    if word == "RESET":
        return "set:" + _set_form(words)[1] if words else OPAQUE
    forms = _set_form(words)
    if forms[0]:
        return ("set:" + forms[1] if _constant(tokens[forms[0]:]) else OPAQUE) if forms[1] else ""
    if words[:1] and words[0] in _SET_SCOPES:
        return OPAQUE
    if words[:1] == ["SESSION"]:
        tokens = tokens[1:]
    segments = [tokens]
    if isinstance(parser, MySQL):  # SET a = 1, b = 2 (PostgreSQL: SET a TO x, y is one list)
        segments = [[]]
        for token in tokens:
            if token.token_type == TokenType.COMMA:
                segments.append([])
            else:
                segments[-1].append(token)
    names = [_assigned(segment) for segment in segments]
    return OPAQUE if not all(names) else "set:" + ",".join(sorted(names))


def _set_form(words: List[str]) -> Tuple[int, str]:
    """(length, key) of the keyword form ``words`` start with; (0, name) for ``RESET name``."""
    for form, key in _SET_FORMS:
        if tuple(words[:len(form)]) == form:
            return len(form), key
    return 0, " ".join(words).lower()


def _assigned(tokens: List[Token]) -> str:
    """The variable ``name = constant`` (or ``name TO constant``) sets; "" if not that shape."""
    for i, token in enumerate(tokens):
        if token.token_type in (TokenType.EQ, TokenType.COLON_EQ) or keyword(token) == "TO":
            name = "".join(t.text for t in tokens[:i]).lower()
            for prefix in ("@@session.", "@@local.", "@@"):
                if name.startswith(prefix) and not name.startswith("@@global."):
                    name = name[len(prefix):]
                    break
            constant = i and not name.startswith("@@") and _constant(tokens[i + 1:])
            return name if constant else ""
    return ""


def _pragma_key(tokens: List[Token]) -> str:
    """``PRAGMA [schema.]name = value`` or ``name(value)`` sets ``name``; without a value it
    only reads it."""
    for i, token in enumerate(tokens):
        if token.token_type in (TokenType.EQ, TokenType.L_PAREN):
            name = tokens[i - 1].text.lower() if i else ""
            if name in _PRAGMAS_UNRELATED:
                return ""
            value = [t for t in tokens[i + 1:] if t.token_type != TokenType.R_PAREN]
            return "pragma:" + name if name and _constant(value) else OPAQUE
    return ""


def _constant(tokens: List[Token]) -> bool:
    """Whether a SET value is literals and bare words only (no variable, call or expression)."""
    return all((token.token_type in _CONSTANT_TOKENS or token.text.isidentifier())
               and not token.text.startswith("@") for token in tokens)
