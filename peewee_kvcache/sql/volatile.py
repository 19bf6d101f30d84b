"""Functions whose result differs between calls (or sessions), or which have side effects: a
SELECT calling one is never cached."""
from __future__ import annotations

from sqlglot import exp

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


def volatile(tree: exp.Expression) -> str:
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
