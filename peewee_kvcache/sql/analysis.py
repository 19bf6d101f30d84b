"""Which tables a SQL statement reads and writes, and how foreign-key cascades spread a write.

The cache tags every cached SELECT with the tables it read and drops those entries when a write
touches one of them, so a table missed here means stale results while an extra one only costs a
cache miss. Everything therefore errs towards "more": names are compared bare and lowercase, and
whatever cannot be resolved is reported as ``writes_unknown`` so the caller invalidates everything.

The same analysis, and no other, says what a statement does to its connection's transaction
(BEGIN, COMMIT, ROLLBACK however spelled or commented) and session (SET, USE, temporary tables):
the state the database layer keeps per connection.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import peewee
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.mysql import MySQL
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import Token, TokenType


@dataclass(frozen=True)
class SqlInfo:
    """What one SQL text does, as far as caching and invalidation are concerned."""

    kind: str  # "select" | "write" | "ddl" | "transaction" | "other"
    read_tables: FrozenSet[str] = frozenset()
    written_tables: FrozenSet[str] = frozenset()
    writes_unknown: bool = False
    cacheable: bool = False
    reason: str = ""
    #: what it does to the connection's transaction, in order: "begin", "commit", "rollback"
    control: Tuple[str, ...] = ()
    #: what it sets in the connection's session ("" nothing, :data:`OPAQUE` unknowable): see
    #: :func:`_session_key`
    session: str = ""
    #: a batch's statements, in order (empty for one statement)
    steps: Tuple["SqlInfo", ...] = ()


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


_DIALECTS: Dict[str, Dialect] = {
    "postgres": Postgres(), "mysql": _PeeweeMySQL(), "sqlite": SQLite(),
}

# First keywords settled without sqlglot: Peewee sends these constantly and sqlglot mis-parses some.
_TRANSACTION = frozenset({
    "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE", "XA",
})
_NO_ROW_CHANGE = frozenset({
    "SET", "SHOW", "PRAGMA", "VACUUM", "ANALYZE", "ANALYSE", "LISTEN", "UNLISTEN", "NOTIFY", "USE",
    "CHECKPOINT", "REINDEX", "CLUSTER", "GRANT", "REVOKE", "LOCK", "UNLOCK", "DISCARD", "RESET",
    "DEALLOCATE", "ATTACH", "DETACH",
})
#: a session change no other connection can be known to share (see :func:`_session_key`)
OPAQUE = "?"
_SESSION = frozenset({"SET", "RESET", "DISCARD", "USE", "ATTACH", "DETACH", "PRAGMA"})
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
_EXPLAIN = frozenset({"EXPLAIN", "DESCRIBE", "DESC"})  # MySQL: DESCRIBE is a synonym of EXPLAIN
_OPAQUE = frozenset({"CALL", "DO", "EXECUTE", "EXEC"})  # run code whose writes the text hides
_STATEMENT_START = frozenset({
    "SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "VALUES", "TABLE", "CREATE",
    "EXECUTE", "DECLARE",
})
_DML_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "INTO"})

# Functions whose result differs between calls (or sessions), or which have side effects.
_VOLATILE_NAMES = frozenset({
    "nextval", "setval", "currval", "lastval", "random", "rand", "randomblob", "random_bytes",
    "gen_random_bytes", "now", "current_timestamp", "current_date", "current_time",
    "current_datetime", "localtime", "localtimestamp", "clock_timestamp", "statement_timestamp",
    "transaction_timestamp",
    "timeofday", "sysdate", "utc_timestamp", "utc_date", "utc_time", "unix_timestamp", "curdate",
    "curtime", "uuid", "uuid_short", "gen_random_uuid", "get_lock", "release_lock",
    "release_all_locks", "is_free_lock", "is_used_lock", "sleep", "last_insert_id",
    "last_insert_rowid", "found_rows", "row_count", "changes", "total_changes", "connection_id",
    "pg_backend_pid", "set_config", "current_setting", "pg_notify", "current_user", "session_user",
    "current_role", "system_user", "user",
})
_VOLATILE_PREFIXES = (
    "uuid_generate_", "pg_advisory_", "pg_try_advisory_", "txid_", "pg_current_xact_id", "pg_sleep",
    "lo_", "dblink",
)
# sqlglot turns several of the above into typed nodes (NOW() -> CurrentTimestamp, ...). Looked up
# by name so that a class renamed by a later sqlglot can't break the import (the names above still
# catch those calls).
_VOLATILE_NODES = tuple(getattr(exp, name) for name in (
    "CurrentTimestamp", "CurrentDate", "CurrentTime", "CurrentDatetime", "Localtime",
    "Localtimestamp", "UtcTimestamp", "UtcDate", "UtcTime", "Rand", "Randn", "Uuid", "CurrentUser",
    "SessionUser",
) if hasattr(exp, name))
# SQLite's date/time functions default to 'now' when the time value is left out.
_NOW_BY_DEFAULT = frozenset({"date", "time", "datetime", "julianday", "unixepoch"})
_TIME_WORDS = frozenset({"now", "today", "tomorrow", "yesterday"})  # 'now' in SQLite and Postgres
_KIND_ORDER = ("other", "transaction", "select", "ddl", "write")
_OPEN_QUOTES = {'"': '"', "`": "`", "[": "]"}
_CASCADING_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})


def table_key(identifier: str) -> str:
    """How a table is named everywhere (stamps, invalidation, cascades): its identifier exactly
    as Peewee's ``table_name`` and the SQL parser give it (unquoted, unqualified), lower-cased."""
    return identifier.lower()


def table_names_in(reference: str) -> FrozenSet[str]:
    """The tables a user-written name may mean: the text as one identifier (a table may be
    called ``my.table`` or ``we"ird``) and, read as a SQL reference (quotes, a schema qualifier),
    its last part. Invalidating both costs at most a needless miss; missing one serves stale rows.
    """
    text = reference.strip()
    last = _last_part(text)
    return frozenset({table_key(text)} | ({table_key(last)} if last else set()))


def _last_part(reference: str) -> Optional[str]:
    """The last name of a dotted, possibly quoted SQL reference; None if a quote is left open."""
    current: List[str] = []
    quote, i = "", 0
    while i < len(reference):
        char = reference[i]
        if quote and char == quote and reference[i + 1:i + 2] == quote:  # doubled = literal quote
            current.append(char)
            i += 1
        elif quote and char == quote:
            quote = ""
        elif quote:
            current.append(char)
        elif char in _OPEN_QUOTES:
            quote = _OPEN_QUOTES[char]
        elif char == ".":
            current = []
        else:
            current.append(char)
        i += 1
    return None if quote else "".join(current).strip()


def _unknown_write(reason: str) -> SqlInfo:
    return SqlInfo("write", writes_unknown=True, reason=reason)


@functools.lru_cache(maxsize=4096)
def analyze_sql(sql: str, dialect: str) -> SqlInfo:
    """Classify ``sql`` (one statement or a ``;`` batch) as run on ``dialect``."""
    if dialect not in _DIALECTS:
        raise ValueError(f"unsupported dialect {dialect!r}; expected one of {sorted(_DIALECTS)}")
    parser = _DIALECTS[dialect]
    body = sql.strip().rstrip(";")
    if ";" not in body:
        return _analyze_statement(body, parser)
    try:  # split on real semicolon tokens, not ones inside strings or $$ bodies
        tokens = parser.tokenize(sql)
    except Exception as error:
        return _unknown_write(f"cannot split statements: {error}")
    chunks: List[str] = []
    statement: List[Token] = []
    for token in tokens + [None]:
        if token is not None and token.token_type != TokenType.SEMICOLON:
            statement.append(token)
        elif statement:
            chunks.append(sql[statement[0].start:statement[-1].end + 1])
            statement = []
    infos = [_analyze_statement(chunk, parser) for chunk in chunks]
    return infos[0] if len(infos) == 1 else _combine(infos)


def _combine(infos: List[SqlInfo]) -> SqlInfo:
    """A batch does everything its statements do; it is never cached as a whole."""
    if not infos:
        return SqlInfo("other", reason="empty statement")
    return SqlInfo(
        kind=max((info.kind for info in infos), key=_KIND_ORDER.index),
        read_tables=frozenset().union(*(info.read_tables for info in infos)),
        written_tables=frozenset().union(*(info.written_tables for info in infos)),
        writes_unknown=any(info.writes_unknown for info in infos),
        reason="multiple statements",
        control=tuple(action for info in infos for action in info.control),
        session=next((info.session for info in infos if info.session), ""),
        steps=tuple(infos),
    )


def _first_word(sql: str) -> Tuple[str, int]:
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


def _words(sql: str, offset: int, count: int) -> List[str]:
    """Up to ``count`` keywords of ``sql`` from ``offset``, stopping at anything else."""
    words: List[str] = []
    while len(words) < count:
        word, start = _first_word(sql[offset:])
        if not word:
            break
        words.append(word)
        offset += start + len(word)
    return words


def _transaction(sql: str, offset: int, parser: Dialect) -> Optional[SqlInfo]:
    """What a statement starting with a :data:`_TRANSACTION` word does to the transaction;
    None when it is no transaction statement after all (``START SLAVE``, ``PREPARE p AS``)."""
    first, *rest = _words(sql, offset, 8)
    if first == "XA":
        return _xa(rest)
    if first == "PREPARE":  # PostgreSQL two-phase commit: the transaction ends here
        return _control("commit") if rest[:1] == ["TRANSACTION"] else None
    if first == "START" and rest[:1] != ["TRANSACTION"]:
        return None
    if first == "BEGIN" and rest[:2] == ["NOT", "ATOMIC"]:  # MariaDB compound statement
        return _unknown_write("BEGIN NOT ATOMIC runs code whose writes are not visible")
    if rest[:1] == ["PREPARED"]:  # COMMIT/ROLLBACK PREPARED: another transaction's writes
        return _unknown_write("COMMIT PREPARED") if first == "COMMIT" else _control()
    if first in ("BEGIN", "START"):  # MySQL commits an open transaction first
        return _control("commit", "begin") if isinstance(parser, MySQL) else _control("begin")
    if first in ("SAVEPOINT", "RELEASE") or "TO" in rest:  # ROLLBACK [WORK] TO [SAVEPOINT] s
        return _control()
    ending = "commit" if first in ("COMMIT", "END") else "rollback"  # ROLLBACK, ABORT
    chained = "CHAIN" in rest and rest[rest.index("CHAIN") - 1] != "NO"  # AND CHAIN: BEGIN again
    return _control(ending, "begin") if chained else _control(ending)


def _xa(words: List[str]) -> SqlInfo:
    """MySQL XA: START opens, PREPARE ends this connection's part, COMMIT may commit a prepared
    transaction of any connection (its tables unknown)."""
    verb = words[0] if words else ""
    info = _control(*_XA_ACTIONS.get(verb, ()))
    return replace(info, writes_unknown=True) if verb == "COMMIT" else info


def _control(*actions: str) -> SqlInfo:
    return SqlInfo("transaction", reason="transaction control", control=actions)


def _session_key(word: str, rest: str, parser: Dialect) -> str:
    """What a session statement (``rest`` follows ``word``) sets, as a key: statements with the
    same key overwrite the same settings with constants, so a connection's session is known from
    the last statement of each key, in order. "" when it leaves the session as it was (SHOW, SET
    TRANSACTION, PRAGMA table_info); :data:`OPAQUE` when its effect can't be keyed (an expression,
    a variable, a scope other than the session's own)."""
    try:
        tokens = parser.tokenize(rest)
    except Exception:
        return OPAQUE
    words = [_keyword(token) for token in tokens]
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
        if token.token_type in (TokenType.EQ, TokenType.COLON_EQ) or _keyword(token) == "TO":
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


def _set_statement(rest: str, parser: Dialect) -> SqlInfo:
    """MariaDB ``SET STATEMENT var = value [, ...] FOR statement`` (``rest`` follows SET): does
    what the statement does, under settings of its own (so it is never cached)."""
    try:
        tokens = parser.tokenize(rest)
    except Exception as error:
        return _unknown_write(f"cannot tokenize SET STATEMENT: {error}")
    depth = 0
    for token, following in zip(tokens, tokens[1:]):
        depth += (token.token_type == TokenType.L_PAREN) - (token.token_type == TokenType.R_PAREN)
        if depth == 0 and _keyword(token) == "FOR":
            inner = _analyze_statement(rest[following.start:], parser)
            return replace(inner, cacheable=False, reason=inner.reason or "SET STATEMENT ... FOR")
    return _unknown_write("SET STATEMENT without FOR")


def _analyze_statement(sql: str, parser: Dialect) -> SqlInfo:
    word, offset = _first_word(sql)
    if word in _TRANSACTION:
        control = _transaction(sql, offset, parser)
        if control is not None:
            return control
    rest = sql[offset + len(word):]  # sqlglot tokenizes what follows EXPLAIN/RENAME as one string
    if word in _EXPLAIN:
        return _explain(rest, parser)
    if word == "SET" and _words(rest, 0, 1) == ["STATEMENT"]:
        return _set_statement(rest, parser)
    if word in _SESSION:
        return SqlInfo("other", reason=f"{word} changes no rows",
                       session=_session_key(word, rest, parser))
    if word in _NO_ROW_CHANGE or word == "START":
        return SqlInfo("other", reason=f"{word} changes no rows")
    if word in _OPAQUE:
        return _unknown_write(f"{word} runs code whose writes are not visible")
    if word == "RENAME":
        return _rename(rest, parser)
    if word == "REPLACE":  # sqlglot keeps REPLACE INTO as opaque text; it touches what INSERT would
        sql = sql[:offset] + "INSERT" + sql[offset + len(word):]
    try:
        statements = [statement for statement in parser.parse(sql) if statement is not None]
    except Exception as error:
        reason = f"parse failed: {(str(error).splitlines() or [type(error).__name__])[0][:200]}"
        if word in ("SELECT", "WITH") and not _may_write(sql, parser):
            return SqlInfo("select", reason=reason)
        return _unknown_write(reason)
    infos = [_classify(statement) for statement in statements]
    return infos[0] if len(infos) == 1 else _combine(infos)


def _may_write(sql: str, parser: Dialect) -> bool:
    """Whether unparseable SELECT text has DML keywords (data-modifying CTE, SELECT INTO)."""
    try:
        tokens = parser.tokenize(sql)
    except Exception:
        return True
    words = [""] + [_keyword(token) for token in tokens]
    return any(word in _DML_WORDS and not (word == "UPDATE" and before in ("FOR", "KEY"))
               for before, word in zip(words, words[1:]))  # FOR [NO KEY] UPDATE is a lock


def _keyword(token: Token) -> str:
    """The token's text upper-cased, or "" for a string or quoted name (never a keyword)."""
    quoted = token.token_type in (TokenType.STRING, TokenType.IDENTIFIER)
    return "" if quoted else token.text.upper()


def _explain(rest: str, parser: Dialect) -> SqlInfo:
    """EXPLAIN (``rest`` follows the keyword) only plans a statement; EXPLAIN ANALYZE runs it."""
    try:
        tokens = parser.tokenize(rest)
    except Exception as error:
        return _unknown_write(f"cannot tokenize EXPLAIN: {error}")
    depth, analyze = 0, False
    for token in tokens:
        word = _keyword(token)
        depth += (token.token_type == TokenType.L_PAREN) - (token.token_type == TokenType.R_PAREN)
        analyze = analyze or word in ("ANALYZE", "ANALYSE")
        if depth == 0 and word in _STATEMENT_START:
            inner = _analyze_statement(rest[token.start:], parser) if analyze else None
            if inner and (inner.written_tables or inner.writes_unknown):
                return replace(inner, cacheable=False, reason="EXPLAIN ANALYZE runs the statement")
            return SqlInfo("other", reason="EXPLAIN")
    if analyze:
        return _unknown_write("EXPLAIN ANALYZE of an unrecognised statement")
    return SqlInfo("other", reason="EXPLAIN/DESCRIBE")


def _rename(rest: str, parser: Dialect) -> SqlInfo:
    """MySQL ``RENAME TABLE a TO b, c TO d`` (``rest`` follows RENAME); sqlglot keeps it opaque."""
    try:
        tokens = parser.tokenize(rest)
    except Exception as error:
        return _unknown_write(f"cannot tokenize RENAME: {error}")
    if len(tokens) < 4 or tokens[0].text.upper() != "TABLE":
        return _unknown_write("RENAME of something other than a table")
    names: Set[str] = set()
    last = ""
    for token in tokens[1:] + [None]:  # a name ends at TO, a comma or the end; keep its last part
        if token is None or _keyword(token) == "TO" or token.token_type == TokenType.COMMA:
            names.update([last.lower()] if last else [])
            last = ""
        elif token.token_type != TokenType.DOT:
            last = token.text
    if not names:
        return _unknown_write("RENAME TABLE without table names")
    return SqlInfo("ddl", written_tables=frozenset(names), reason="RENAME TABLE")


def _is_table(node: exp.Expression) -> bool:
    """A named table, not a table function, VALUES list or @variable."""
    return isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier)


def _dml_targets(tree: exp.Expression) -> Tuple[List[exp.Expression], List[exp.Expression]]:
    """(target tables, table references that are merely names) of every DML node in ``tree``."""
    targets: List[exp.Expression] = []
    names: List[exp.Expression] = []
    for node in tree.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Copy, exp.Into):
        if isinstance(node.parent, exp.When):
            continue  # MERGE's INSERT/UPDATE/DELETE actions hit the MERGE target
        if isinstance(node, exp.Copy) and not node.args.get("kind"):
            continue  # COPY ... TO only reads
        if isinstance(node, exp.Into) and not _is_table(node.this):
            continue  # SELECT ... INTO @variable: no table written
        refs = node.args.get("tables") if isinstance(node, exp.Delete) else None
        if refs:  # MySQL DELETE t1, t2 FROM ...: the listed names are FROM aliases or tables
            names.extend(refs)
            ref_ids = {id(ref) for ref in refs}
            aliases = {table.alias_or_name.lower(): table
                       for table in node.find_all(exp.Table) if id(table) not in ref_ids}
            targets.extend(aliases.get(ref.name.lower(), ref) for ref in refs)
            continue
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        targets.append(target)
        if isinstance(node, (exp.Update, exp.Delete)) and isinstance(target, exp.Table):
            joins = target.args.get("joins") or []  # MySQL UPDATE a JOIN b / UPDATE a, b
            targets.extend(join.this for join in joins if _is_table(join.this))
    return targets, names


def _ddl_targets(ddl: exp.Expression) -> Tuple[List[exp.Expression], List[exp.Expression], bool]:
    """(tables changed, object names that are not tables read, whether more may change)."""
    kind = str(ddl.args.get("kind") or "").upper()
    if isinstance(ddl, exp.TruncateTable):  # CASCADE empties all referencing tables, whatever FK
        cascade = str(ddl.args.get("option") or "").upper() == "CASCADE"
        return list(ddl.expressions), [], cascade
    if isinstance(ddl, exp.Create) and kind == "INDEX":
        table = ddl.this.args.get("table") if isinstance(ddl.this, exp.Index) else None
        return ([table], [], False) if table is not None else ([], [], True)
    if isinstance(ddl, exp.Create) and kind in ("TABLE", "VIEW"):
        return [ddl.this.this if isinstance(ddl.this, exp.Schema) else ddl.this], [], False
    if isinstance(ddl, exp.Drop):
        dropped = ddl.args.get("tables") or [ddl.this]
        if kind == "INDEX":  # rows never change; MySQL's DROP INDEX i ON t still touches t
            on = [t for prop in ddl.find_all(exp.OnProperty) for t in prop.find_all(exp.Table)]
            return on, dropped, False
        if kind in ("TABLE", "VIEW"):  # CASCADE also drops dependent views
            return dropped, [], bool(ddl.args.get("cascade"))
        return [], dropped, True
    if isinstance(ddl, exp.Alter) and kind in ("TABLE", "VIEW"):  # covers RENAME TO: old and new
        return list(ddl.find_all(exp.Table)), [], False
    return [], [], True  # schemas, sequences, types, functions...: effects beyond one table


def _is_cte_reference(table: exp.Table) -> bool:
    """Whether ``table`` names a CTE visible where it stands (then it is not a real table)."""
    if table.args.get("db") or table.args.get("catalog"):
        return False
    name, node = table.name.lower(), table
    while node.parent is not None:
        parent = node.parent
        if isinstance(node, exp.CTE) and isinstance(parent, exp.With):
            position = next(i for i, cte in enumerate(parent.expressions) if cte is node)
            recursive = parent.args.get("recursive")
            visible = parent.expressions if recursive else parent.expressions[:position]
            if any(cte.alias_or_name.lower() == name for cte in visible):
                return True
            if parent.parent is None:
                return False
            node = parent.parent  # the owning query's CTEs are settled above; look further out
            continue
        withs = [child for child in parent.iter_expressions() if isinstance(child, exp.With)]
        if any(cte.alias_or_name.lower() == name for with_ in withs for cte in with_.expressions):
            return True
        node = parent
    return False


def _volatile(tree: exp.Expression) -> str:
    """Why the result of ``tree`` may differ between runs ("" when it can't)."""
    for node in tree.find_all(exp.Func, exp.Literal):
        if isinstance(node, exp.Literal):
            if node.is_string and node.this.strip().lower() in _TIME_WORDS:
                return f"time-dependent literal {node.sql()}"
            continue
        anonymous = isinstance(node, exp.Anonymous)
        names = {node.name.lower()} if anonymous else {name.lower() for name in node.sql_names()}
        arguments = sum(1 for _ in node.iter_expressions())
        if (isinstance(node, _VOLATILE_NODES) or names & _VOLATILE_NAMES
                or any(name.startswith(_VOLATILE_PREFIXES) for name in names)
                or (names & _NOW_BY_DEFAULT and not arguments)
                or ("strftime" in names and arguments < 2)):
            return f"volatile function {node.sql()}"
    return ""


def _classify(statement: exp.Expression) -> SqlInfo:
    targets, names = _dml_targets(statement)
    unknown = any(not _is_table(target) for target in targets)
    if isinstance(statement, (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)):
        kind, (ddl_targets, ddl_names, ddl_unknown) = "ddl", _ddl_targets(statement)
        targets, names, unknown = targets + ddl_targets, names + ddl_names, unknown or ddl_unknown
    elif isinstance(statement, (exp.Insert, exp.Update, exp.Delete, exp.Merge)) or targets:
        kind = "write"
    elif isinstance(statement, (exp.Query, exp.Values)):
        kind = "select"
    elif isinstance(statement, exp.Copy):  # COPY ... TO
        kind = "other"
    else:
        return _unknown_write(f"unrecognised statement {statement.key.upper()}")
    skip = {id(node) for node in targets + names}
    reads = frozenset(t.name.lower() for t in statement.find_all(exp.Table)
                      if id(t) not in skip and _is_table(t) and not _is_cte_reference(t))
    written = frozenset(t.name.lower() for t in targets if _is_table(t))
    reason = f"{kind} statement" if kind != "select" else ""
    if kind == "select":
        into = statement.find(exp.Into)
        reason = ("locking clause" if statement.find(exp.Lock) else
                  "SELECT INTO a variable" if into else _volatile(statement))
    return SqlInfo(kind, reads, written, unknown, kind == "select" and not reason, reason,
                   session=OPAQUE if _changes_session(statement) else "")


def _changes_session(statement: exp.Expression) -> bool:
    """A temporary table or view shadows a table's name for this connection only; set_config()
    is SET in a function call."""
    if isinstance(statement, exp.Create) and statement.find(exp.TemporaryProperty):
        return True
    return any(call.name.lower() == "set_config" for call in statement.find_all(exp.Anonymous))


def _cascades(field: peewee.ForeignKeyField) -> bool:
    return any(" ".join(str(action or "").upper().split()) in _CASCADING_ACTIONS
               for action in (field.on_delete, field.on_update))


def cascade_closure(tables: Iterable[str]) -> FrozenSet[str]:
    """``tables`` (as :func:`table_key` names them) plus every table whose rows change with them
    through ON DELETE/UPDATE actions.

    The model classes are walked on every call (it only runs for writes) so that models defined
    or garbage-collected at runtime are always accounted for.
    """
    dependents: Dict[str, Set[str]] = {}
    seen: Set[type] = set()
    pending = list(peewee.Model.__subclasses__())
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        pending.extend(model.__subclasses__())
        for field in model._meta.fields.values():
            if isinstance(field, peewee.ForeignKeyField) and _cascades(field):
                parent = table_key(field.rel_model._meta.table_name)
                dependents.setdefault(parent, set()).add(table_key(model._meta.table_name))
    closure = {table_key(table) for table in tables}
    pending_tables = list(closure)
    while pending_tables:
        for child in dependents.get(pending_tables.pop(), ()):
            if child not in closure:
                closure.add(child)
                pending_tables.append(child)
    return frozenset(closure)
