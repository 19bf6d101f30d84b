"""sql/memo.py and the normal form of raw SQL: a text is analysed once, and raw SQL whose IN lists
or VALUES rows differ only in length shares one parse."""
from __future__ import annotations

from typing import Any, Iterator, List

import pytest

from peewee_kvcache import CachedSqliteDatabase
from peewee_kvcache.sql import memo
from peewee_kvcache.sql.analysis import analyze_sql
from peewee_kvcache.sql.dialects import DIALECTS
from peewee_kvcache.sql.lexer import normal_form


@pytest.fixture
def parses(monkeypatch) -> Iterator[List[str]]:
    """The texts sqlglot parses (every dialect), from a clean memo."""
    seen: List[str] = []
    for parser in DIALECTS.values():
        def spy(sql: str, *args: Any, _parse: Any = parser.parse, **kwargs: Any) -> Any:
            seen.append(sql)
            return _parse(sql, *args, **kwargs)
        monkeypatch.setattr(parser, "parse", spy)
    for dialect in DIALECTS:
        memo.texts(dialect).clear()
    analyze_sql.cache_clear()
    yield seen
    for dialect in DIALECTS:
        memo.texts(dialect).clear()
    analyze_sql.cache_clear()


@pytest.fixture
def db(cache, tmp_path) -> Iterator[CachedSqliteDatabase]:
    database = CachedSqliteDatabase(str(tmp_path / "memo.db"), cache=cache)
    database.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    yield database
    database.close()


def test_raw_in_lists_of_every_length_share_one_parse(db, parses) -> None:
    for length in range(1, 51):
        marks = ", ".join(["?"] * length)
        db.execute_sql(f'SELECT "name" FROM "item" WHERE "id" IN ({marks})', list(range(length)))
    assert len(parses) == 1, parses
    info = memo.texts("sqlite")['SELECT "name" FROM "item" WHERE "id" IN (?, ?, ?)']
    assert (info.kind, info.read_tables, info.cacheable) == ("select", {"item"}, True)


def test_raw_multi_row_inserts_share_one_parse(db, parses, cache) -> None:
    for rows in range(1, 21):
        marks = ", ".join(["(?, ?)"] * rows)
        params = [value for row in range(rows) for value in (None, f"n{row}")]
        db.execute_sql(f'INSERT INTO "item" ("id", "name") VALUES {marks}', params)
    assert len(parses) == 1, parses
    info = memo.texts("sqlite")['INSERT INTO "item" ("id", "name") VALUES (?, ?), (?, ?)']
    assert (info.kind, info.written_tables) == ("write", {"item"})


def test_a_text_is_analysed_once(parses) -> None:
    sql = "SELECT a FROM memo_once WHERE b = %s"
    first = memo.parse(sql, "postgres")
    memo.remember(memo.texts("postgres"), sql, first)
    assert memo.texts("postgres").get(sql) is first
    assert len(parses) == 1


def test_the_memo_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(memo, "MAX_TEXTS", 3)
    texts = memo.texts("mysql")
    texts.clear()
    info = analyze_sql("SELECT 1", "mysql")
    for i in range(4):
        memo.remember(texts, f"SELECT {i}", info)
    assert list(texts) == ["SELECT 3"]  # full: started over, and kept the newest
    texts.clear()


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError):
        memo.parse("SELECT 1", "oracle")


@pytest.mark.parametrize("sql,normal", [
    ("SELECT a FROM t WHERE b IN (?, ?, ?)", "SELECT a FROM t WHERE b IN (?)"),
    ("SELECT a FROM t WHERE b NOT IN (%s,%s)", "SELECT a FROM t WHERE b NOT IN (%s)"),
    ("select a from t where b in ( ? , ? )", "select a from t where b in ( ? )"),
    ("SELECT a FROM t WHERE (b, c) IN ((?, ?), (?, ?))",
     "SELECT a FROM t WHERE (b, c) IN ((?, ?))"),
    ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)", "INSERT INTO t (a, b) VALUES (?, ?)"),
    ('SELECT "x" FROM "t" WHERE "y" IN (?, ?) AND "z" IN (?, ?, ?)',
     'SELECT "x" FROM "t" WHERE "y" IN (?) AND "z" IN (?)'),
    # a function's arguments are no list: SQLite's strftime(f) alone means "now"
    ("SELECT strftime(?, ?) FROM t", "SELECT strftime(?, ?) FROM t"),
    ("SELECT a FROM t WHERE b IN (?, 1)", "SELECT a FROM t WHERE b IN (?, 1)"),
    ("SELECT a FROM t WHERE b IN (SELECT c FROM u)",
     "SELECT a FROM t WHERE b IN (SELECT c FROM u)"),
    # never inside quoted names, strings or comments
    ('SELECT a FROM "x IN (?, ?)"', 'SELECT a FROM "x IN (?, ?)"'),
    ("SELECT 'y IN (?, ?)' FROM t WHERE b IN (?, ?)", "SELECT 'y IN (?, ?)' FROM t WHERE b IN (?)"),
    ("SELECT a FROM `t IN (?, ?)`", "SELECT a FROM `t IN (?, ?)`"),
    ("SELECT a FROM [t IN (?, ?)]", "SELECT a FROM [t IN (?, ?)]"),
    ("SELECT a /* IN (?, ?) */ FROM t", "SELECT a /* IN (?, ?) */ FROM t"),
    ("SELECT a FROM t -- IN (?, ?)\n", "SELECT a FROM t -- IN (?, ?)\n"),
    # where a quote ends is unclear: left alone
    ("SELECT 'it\\'s' FROM t WHERE b IN (?, ?)", "SELECT 'it\\'s' FROM t WHERE b IN (?, ?)"),
    ("SELECT $$x$$ FROM t WHERE b IN (?, ?)", "SELECT $$x$$ FROM t WHERE b IN (?, ?)"),
    ("SELECT 'open FROM t WHERE b IN (?, ?)", "SELECT 'open FROM t WHERE b IN (?, ?)"),
    ("SELECT a FROM t_in (?, ?)", "SELECT a FROM t_in (?, ?)"),
    # a "/" and a "*" on either side of a quoted name are no comment
    ('SELECT a/"b"*c FROM t WHERE x IN (?, ?)', 'SELECT a/"b"*c FROM t WHERE x IN (?)'),
])
def test_normal_form(sql: str, normal: str) -> None:
    assert normal_form(sql) == normal


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", [
    "SELECT a FROM t WHERE b IN ({}) AND c IN (SELECT d FROM u WHERE e IN ({}))",
    "INSERT INTO t (a, b) VALUES {}",
    "DELETE FROM t WHERE a IN ({})",
])
def test_the_normal_form_means_the_same(dialect: str, sql: str) -> None:
    mark = "?" if dialect == "sqlite" else "%s"
    marks = ", ".join([mark] * 7)
    rows = ", ".join([f"({mark}, {mark})"] * 7)
    text = sql.format(*([rows] if "VALUES" in sql else [marks, marks]))
    assert normal_form(text) != text
    assert analyze_sql(normal_form(text), dialect) == analyze_sql(text, dialect)
