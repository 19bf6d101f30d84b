"""Functions whose result differs between calls (or sessions), or which have side effects: a
SELECT calling one is never cached.

The rules are stated on a call's name and argument count, so both readers of a statement apply
the same ones: the sqlglot tree of raw SQL (parsed.py) and Peewee's query tree (orm/tree.py).
Nothing here imports sqlglot.
"""
from __future__ import annotations

_VOLATILE_NAMES = frozenset({
    "nextval", "setval", "currval", "lastval", "random", "rand", "randn", "randomblob",
    "random_bytes", "gen_random_bytes", "now", "current_timestamp", "current_date", "current_time",
    "current_datetime", "localtime", "localtimestamp", "clock_timestamp", "statement_timestamp",
    "transaction_timestamp",
    "timeofday", "sysdate", "utc_timestamp", "utc_date", "utc_time", "unix_timestamp", "curdate",
    "curtime", "uuid", "uuid_short", "uuid_string", "gen_random_uuid", "generate_uuid", "get_lock",
    "release_lock", "release_all_locks", "is_free_lock", "is_used_lock", "sleep", "last_insert_id",
    "last_insert_rowid", "found_rows", "row_count", "changes", "total_changes", "connection_id",
    "pg_backend_pid", "set_config", "current_setting", "pg_notify", "current_user", "session_user",
    "current_role", "system_user", "user",
})
_VOLATILE_PREFIXES = (
    "uuid_generate_", "pg_advisory_", "pg_try_advisory_", "txid_", "pg_current_xact_id", "pg_sleep",
    "lo_", "dblink",
)
#: sqlglot turns several of the calls above into typed nodes (NOW() -> CurrentTimestamp, ...);
#: parsed.py looks these classes up by name, so that one renamed by a later sqlglot can't break
#: the import (the names above still catch those calls)
VOLATILE_NODE_CLASSES = (
    "CurrentTimestamp", "CurrentDate", "CurrentTime", "CurrentDatetime", "Localtime",
    "Localtimestamp", "UtcTimestamp", "UtcDate", "UtcTime", "Rand", "Randn", "Uuid", "CurrentUser",
    "SessionUser",
)
# SQLite's date/time functions default to 'now' when the time value is left out.
_NOW_BY_DEFAULT = frozenset({"date", "time", "datetime", "julianday", "unixepoch"})
_TIME_WORDS = frozenset({"now", "today", "tomorrow", "yesterday"})  # 'now' in SQLite and Postgres


def volatile_call(name: str, arguments: int) -> bool:
    """Whether calling the function ``name`` (lower-case) with ``arguments`` arguments may give
    another result on the next run."""
    return (name in _VOLATILE_NAMES or name.startswith(_VOLATILE_PREFIXES)
            or (name in _NOW_BY_DEFAULT and not arguments)
            or (name == "strftime" and arguments < 2))


def time_word(text: str) -> bool:
    """Whether a string literal means "the current time" ('now' in SQLite and PostgreSQL)."""
    return text.strip().lower() in _TIME_WORDS
