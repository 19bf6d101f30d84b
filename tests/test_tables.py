"""Tests for peewee_kvcache.sql: SQL as Peewee really generates it, raw SQL, FK cascades."""
import gc
from typing import Any, Callable, Dict, FrozenSet, Iterable, NamedTuple, Optional, Tuple

import peewee
import pytest
from peewee import SQL, CharField, ForeignKeyField, IntegerField, Model, Select, fn

from peewee_kvcache.sql.analysis import analyze_sql
from peewee_kvcache.sql.cascades import cascade_closure
from peewee_kvcache.sql.info import OPAQUE, SqlInfo
from peewee_kvcache.sql.dialects import DIALECTS as SQLGLOT_DIALECTS
from peewee_kvcache.sql.tables import table_names_in

DATABASES: Dict[str, peewee.Database] = {
    "postgres": peewee.PostgresqlDatabase("x"),
    "mysql": peewee.MySQLDatabase("x"),
    "sqlite": peewee.SqliteDatabase(":memory:"),
}
DIALECTS = tuple(DATABASES)


class Author(Model):
    name = CharField(unique=True)


class Book(Model):
    author = ForeignKeyField(Author, backref="books")
    title = CharField()


class Review(Model):
    book = ForeignKeyField(Book, backref="reviews")
    stars = IntegerField()


MODELS = [Author, Book, Review]


def peewee_sql(dialect: str, build: Callable[[], Any]) -> str:
    """The SQL text Peewee sends for ``build()`` with the models bound to ``dialect``'s database."""
    db = DATABASES[dialect]
    with db.bind_ctx(MODELS):
        node = build()
        if isinstance(node, list):
            (node,) = node
        if hasattr(node, "bind") and not isinstance(node, peewee.Context):
            node = node.bind(db)
        sql, _params = node.query() if isinstance(node, peewee.Context) else node.sql()
    return sql


class Expect(NamedTuple):
    """What analyze_sql must report; ``cacheable`` None means "exactly when kind is select"."""

    kind: str
    reads: Iterable[str] = ()
    writes: Iterable[str] = ()
    cacheable: Optional[bool] = None
    unknown: bool = False


def check(info: SqlInfo, expect: Expect) -> None:
    cacheable = expect.kind == "select" if expect.cacheable is None else expect.cacheable
    assert info.kind == expect.kind, info
    assert info.read_tables == frozenset(expect.reads), info
    assert info.written_tables == frozenset(expect.writes), info
    assert info.writes_unknown is expect.unknown, info
    assert info.cacheable is cacheable, info
    assert (info.reason == "") is cacheable, info


def _cte_query():
    recent = Book.select(Book.author).where(Book.title == "x").cte("recent")
    return Author.select().join(recent, on=(Author.id == recent.c.author_id)).with_cte(recent)


def _recursive_cte_query():
    base = Author.select(Author.id).where(Author.id == 1).cte("chain", recursive=True)
    step = Author.select(Author.id).join(base, on=(Author.id == base.c.id + 1))
    chain = base.union_all(step)
    return chain.select_from(chain.c.id)


def _names():
    return Author.select(Author.name)


def _titles():
    return Book.select(Book.title)


def _count_wrapper():
    return Select([Author.select().join(Book).alias("_w")], [fn.COUNT(SQL("1"))])


def _exists():
    return Author.select().where(fn.EXISTS(Book.select().where(Book.author == Author.id)))


def _having_subquery():
    count = fn.COUNT(Book.id)
    return (Book.select(Book.author, count).group_by(Book.author)
            .having(count > Review.select(fn.COUNT(Review.id))))


def _update_subquery():
    authors = Author.select(Author.id).where(Author.name == "a")
    return Book.update(title="t").where(Book.author.in_(authors))


AB, AUTHOR, BOOK = {"author", "book"}, {"author"}, {"book"}
PG_MY, PG_LITE, MY_LITE = ("postgres", "mysql"), ("postgres", "sqlite"), ("mysql", "sqlite")
LOCKED = Expect("select", AUTHOR, cacheable=False)

# name -> (query builder, expectation, dialects Peewee generates it for)
PEEWEE_CASES: Dict[str, Tuple[Callable[[], Any], Expect, Tuple[str, ...]]] = {
    "select": (lambda: Author.select().where(Author.name == "a"), Expect("select", AUTHOR),
               DIALECTS),
    "join": (lambda: Book.select(Book, Author).join(Author), Expect("select", AB), DIALECTS),
    "subquery_in_where": (lambda: Author.select().where(Author.id.in_(Book.select(Book.author))),
                          Expect("select", AB), DIALECTS),
    "subquery_in_from": (lambda: Select([Book.select(Book.title).alias("sq")], [SQL("*")]),
                         Expect("select", BOOK), DIALECTS),
    "cte": (_cte_query, Expect("select", AB), DIALECTS),
    "recursive_cte": (_recursive_cte_query, Expect("select", AUTHOR), DIALECTS),
    "union": (lambda: _names() | _titles(), Expect("select", AB), DIALECTS),
    "union_all": (lambda: _names() + _titles(), Expect("select", AB), DIALECTS),
    "intersect": (lambda: _names() & _titles(), Expect("select", AB), DIALECTS),
    "except": (lambda: _names() - _titles(), Expect("select", AB), DIALECTS),
    "count_wrapper": (_count_wrapper, Expect("select", AB), DIALECTS),
    "exists": (_exists, Expect("select", AB), DIALECTS),
    "having_subquery": (_having_subquery, Expect("select", {"book", "review"}), DIALECTS),
    "paginate": (lambda: Author.select().order_by(Author.name).paginate(2, 10),
                 Expect("select", AUTHOR), DIALECTS),
    # Peewee refuses FOR UPDATE on SQLite, and the NO KEY / KEY variants exist only in Postgres.
    "for_update": (lambda: Author.select().for_update(), LOCKED, PG_MY),
    "for_share": (lambda: Author.select().for_update("FOR SHARE"), LOCKED, PG_MY),
    "for_update_nowait": (lambda: Author.select().for_update(nowait=True), LOCKED, PG_MY),
    "for_update_skip_locked": (lambda: Author.select().for_update("FOR UPDATE SKIP LOCKED"),
                               LOCKED, PG_MY),
    "for_no_key_update": (lambda: Author.select().for_update("FOR NO KEY UPDATE"), LOCKED,
                          ("postgres",)),
    "for_key_share": (lambda: Author.select().for_update("FOR KEY SHARE"), LOCKED, ("postgres",)),
    "insert": (lambda: Author.insert(name="a"), Expect("write", (), AUTHOR), DIALECTS),
    "insert_many": (lambda: Author.insert_many([{"name": "a"}, {"name": "b"}]),
                    Expect("write", (), AUTHOR), DIALECTS),
    "insert_from": (lambda: Review.insert_from(Book.select(Book.id, SQL("5")),
                                               [Review.book, Review.stars]),
                    Expect("write", BOOK, {"review"}), DIALECTS),
    "upsert": (lambda: Author.insert(name="x").on_conflict(conflict_target=[Author.name],
                                                           update={Author.name: "y"}),
               Expect("write", (), AUTHOR), PG_LITE),
    "upsert_mysql": (lambda: Author.insert(name="x").on_conflict(update={Author.name: "y"}),
                     Expect("write", (), AUTHOR), ("mysql",)),
    "insert_ignore": (lambda: Author.insert(name="x").on_conflict_ignore(),
                      Expect("write", (), AUTHOR), DIALECTS),
    "replace": (lambda: Author.replace(name="x"), Expect("write", (), AUTHOR), MY_LITE),
    "replace_many": (lambda: Author.replace_many([{"name": "x"}, {"name": "y"}]),
                     Expect("write", (), AUTHOR), MY_LITE),
    "update": (lambda: Book.update(title="t").where(Book.id == 1), Expect("write", (), BOOK),
               DIALECTS),
    "update_subquery": (_update_subquery, Expect("write", AUTHOR, BOOK), DIALECTS),
    "update_from": (lambda: Book.update(title=Author.name).from_(Author)
                    .where(Book.author == Author.id), Expect("write", AUTHOR, BOOK), PG_LITE),
    "delete": (lambda: Book.delete().where(Book.title == "t"), Expect("write", (), BOOK), DIALECTS),
    "delete_subquery": (lambda: Review.delete().where(Review.book.in_(Book.select(Book.id))),
                        Expect("write", BOOK, {"review"}), DIALECTS),
    # the FOREIGN KEY ... REFERENCES "author" clause counts as a read: harmless
    "create_table": (lambda: Book._schema._create_table(), Expect("ddl", AUTHOR, BOOK), DIALECTS),
    "create_indexes": (lambda: Book._schema._create_indexes(), Expect("ddl", (), BOOK), DIALECTS),
    "drop_table": (lambda: Book._schema._drop_table(), Expect("ddl", (), BOOK), DIALECTS),
    "truncate_table": (lambda: Book._schema._truncate_table(), Expect("ddl", (), BOOK), PG_MY),
    # Peewee truncates SQLite tables with DELETE FROM
    "truncate_table_sqlite": (lambda: Book._schema._truncate_table(), Expect("write", (), BOOK),
                              ("sqlite",)),
    # CASCADE empties every table referencing "book", whatever its FK's ON DELETE says
    "truncate_cascade": (lambda: Book._schema._truncate_table(cascade=True),
                         Expect("ddl", (), BOOK, unknown=True), ("postgres",)),
}


@pytest.mark.parametrize("dialect,case", [
    (dialect, name) for name, (_, _, dialects) in PEEWEE_CASES.items() for dialect in dialects
])
def test_peewee_generated_sql(dialect: str, case: str) -> None:
    build, expect, _ = PEEWEE_CASES[case]
    check(analyze_sql(peewee_sql(dialect, build), dialect), expect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_placeholders_and_quoting_follow_the_driver(dialect: str) -> None:
    sql = peewee_sql(dialect, lambda: Author.select().where(Author.name == "a").limit(5).offset(9))
    assert ("?" if dialect == "sqlite" else "%s") in sql
    assert ("`author`" if dialect == "mysql" else '"author"') in sql
    check(analyze_sql(sql, dialect), Expect("select", AUTHOR))


def test_mysql_modulo_still_parses_next_to_placeholders() -> None:
    sql = "SELECT `x` % 2, MOD(`x`, 3) FROM `t` WHERE `y` = %s AND `z` IN (%s, %s)"
    check(analyze_sql(sql, "mysql"), Expect("select", {"t"}))


def test_mysql_named_placeholders_degrade_safely() -> None:
    check(analyze_sql("SELECT * FROM t WHERE z = %(name)s", "mysql"),
          Expect("select", cacheable=False))
    check(analyze_sql("DELETE FROM t WHERE z = %(name)s", "mysql"), Expect("write", unknown=True))


# --- raw SQL -----------------------------------------------------------------------------------

UNKNOWN = Expect("write", unknown=True)
RAW_CASES = [  # (dialects, sql, expectation)
    (DIALECTS, 'SELECT * FROM "public"."User" AS u', Expect("select", {"user"})),
    (("mysql",), "SELECT * FROM `shop`.`Order` JOIN `Item` ON 1 = 1",
     Expect("select", {"order", "item"})),
    (DIALECTS, "WITH c AS (SELECT * FROM a) SELECT * FROM c JOIN b ON c.id = b.id",
     Expect("select", {"a", "b"})),
    (DIALECTS, "WITH a AS (SELECT * FROM a) SELECT * FROM a", Expect("select", {"a"})),
    (DIALECTS, "WITH x AS (SELECT 1), y AS (SELECT * FROM x JOIN z ON 1 = 1) SELECT * FROM y",
     Expect("select", {"z"})),
    (DIALECTS, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
               "SELECT * FROM r", Expect("select")),
    (DIALECTS, "SELECT * FROM a WHERE a.x IN (WITH c AS (SELECT y FROM b) SELECT y FROM c)",
     Expect("select", {"a", "b"})),
    (DIALECTS, "SELECT (SELECT MAX(y) FROM b) AS m FROM a GROUP BY x "
               "HAVING COUNT(*) > (SELECT 1 FROM c)", Expect("select", {"a", "b", "c"})),
    (DIALECTS, "SELECT * FROM a EXCEPT SELECT * FROM b", Expect("select", {"a", "b"})),
    (DIALECTS, "SELECT * FROM a INTERSECT SELECT * FROM b", Expect("select", {"a", "b"})),
    (("postgres",), "SELECT * FROM generate_series(1, 10) AS g JOIN t ON t.id = g",
     Expect("select", {"t"})),
    (("postgres",), "SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.a_id = a.id) AS s",
     Expect("select", {"a", "b"})),
    (DIALECTS, "SELECT * FROM (VALUES (1), (2)) AS v(x)", Expect("select")),
    (("sqlite",), "SELECT j.value FROM t, json_each(t.doc) AS j", Expect("select", {"t"})),
    (DIALECTS, "SELECT 'a;b' FROM t", Expect("select", {"t"})),
    (DIALECTS, "SELECT * FROM t;", Expect("select", {"t"})),
    (("postgres",), "SELECT * FROM t WHERE x = %s", Expect("select", {"t"})),
    (("sqlite",), "SELECT * FROM t WHERE x = ? AND y = :name", Expect("select", {"t"})),
    (("postgres",), "WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d JOIN b ON 1 = 1",
     Expect("write", {"b"}, {"a"})),
    (("postgres",), "SELECT * INTO new_t FROM a", Expect("write", {"a"}, {"new_t"})),
    (("mysql",), "SELECT x INTO @v FROM a", Expect("select", {"a"}, cacheable=False)),
    # unparseable SELECT: not cacheable; only DML keywords in it make it a possible write
    (DIALECTS, "SELECT * FROM a WHERE", Expect("select", cacheable=False)),
    (("postgres",), "SELECT * FROM a WHERE x = ANY( FOR NO KEY UPDATE",
     Expect("select", cacheable=False)),
    (("postgres",), "WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d WHERE x = ANY(",
     UNKNOWN),
    (("postgres",), "SELECT * INTO t FROM a WHERE x = ANY(", UNKNOWN),
    # writes
    (("postgres",), "UPDATE a SET x = b.x FROM b WHERE a.id = b.id", Expect("write", {"b"}, {"a"})),
    (PG_LITE, "DELETE FROM a WHERE id IN (SELECT a_id FROM b)", Expect("write", {"b"}, {"a"})),
    (("postgres",), "DELETE FROM a USING b WHERE a.id = b.id", Expect("write", {"b"}, {"a"})),
    (("mysql",), "UPDATE a AS t1 JOIN b AS t2 ON t1.id = t2.aid SET t1.x = t2.x",
     Expect("write", (), {"a", "b"})),
    (("mysql",), "UPDATE a, b SET a.x = 1, b.y = 2 WHERE a.id = b.id",
     Expect("write", (), {"a", "b"})),
    (("mysql",), "DELETE t1 FROM a AS t1 JOIN b ON t1.id = b.id", Expect("write", {"b"}, {"a"})),
    (("mysql",), "DELETE t1, b FROM a AS t1 JOIN b ON t1.id = b.id JOIN c ON 1 = 1",
     Expect("write", {"c"}, {"a", "b"})),
    (("mysql",), "REPLACE INTO `a` (`x`) SELECT `y` FROM `b`", Expect("write", {"b"}, {"a"})),
    (("mysql",), "REPLACE `a` SET `x` = 1", Expect("write", (), {"a"})),
    (("mysql",), "INSERT INTO a (x) VALUES (%s) ON DUPLICATE KEY UPDATE x = VALUES(x)",
     Expect("write", (), {"a"})),
    (("sqlite",), "INSERT OR REPLACE INTO a (x) VALUES (?)", Expect("write", (), {"a"})),
    (("sqlite",), "REPLACE INTO a (x) VALUES (?)", Expect("write", (), {"a"})),
    (("postgres",), "INSERT INTO a (x) VALUES (1) ON CONFLICT (x) "
                    "DO UPDATE SET y = (SELECT MAX(y) FROM b)", Expect("write", {"b"}, {"a"})),
    (PG_LITE, "INSERT INTO a (x) VALUES (1) ON CONFLICT DO NOTHING", Expect("write", (), {"a"})),
    (("postgres",), "MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN UPDATE SET x = b.x "
                    "WHEN NOT MATCHED THEN INSERT (id, x) VALUES (b.id, b.x)",
     Expect("write", {"b"}, {"a"})),
    (("postgres",), "COPY a (x, y) FROM STDIN", Expect("write", (), {"a"})),
    (("postgres",), "COPY (SELECT * FROM a) TO STDOUT", Expect("other", {"a"})),
    # DDL
    (DIALECTS, "CREATE TABLE t AS SELECT * FROM a", Expect("ddl", {"a"}, {"t"})),
    (DIALECTS, "ALTER TABLE a ADD COLUMN c INT", Expect("ddl", (), {"a"})),
    (DIALECTS, "ALTER TABLE a RENAME TO b", Expect("ddl", (), {"a", "b"})),
    (("mysql",), "RENAME TABLE a TO b, `db`.`c` TO d", Expect("ddl", (), {"a", "b", "c", "d"})),
    (DIALECTS, "DROP TABLE a, b", Expect("ddl", (), {"a", "b"})),
    (("postgres",), "DROP TABLE a CASCADE", Expect("ddl", (), {"a"}, unknown=True)),
    (("postgres",), "TRUNCATE a, b", Expect("ddl", (), {"a", "b"})),
    (("postgres",), "TRUNCATE TABLE a, b RESTART IDENTITY CASCADE",
     Expect("ddl", (), {"a", "b"}, unknown=True)),
    (("mysql",), "TRUNCATE TABLE a", Expect("ddl", (), {"a"})),
    (DIALECTS, "CREATE INDEX i ON a (x)", Expect("ddl", (), {"a"})),
    (PG_LITE, "DROP INDEX IF EXISTS i", Expect("ddl")),
    (("mysql",), "DROP INDEX i ON a", Expect("ddl", (), {"a"})),
    (DIALECTS, "CREATE VIEW v AS SELECT * FROM a", Expect("ddl", {"a"}, {"v"})),
    (DIALECTS, "DROP VIEW v", Expect("ddl", (), {"v"})),
    (("postgres",), "CREATE SEQUENCE s", Expect("ddl", {"s"}, unknown=True)),
    # EXPLAIN plans; EXPLAIN ANALYZE runs the statement
    (DIALECTS, "EXPLAIN SELECT * FROM a", Expect("other")),
    (("postgres",), "EXPLAIN DELETE FROM a", Expect("other")),
    (("sqlite",), "EXPLAIN QUERY PLAN SELECT * FROM a", Expect("other")),
    (PG_MY, "EXPLAIN ANALYZE SELECT * FROM a", Expect("other")),
    (("postgres",), "EXPLAIN ANALYZE DELETE FROM a", Expect("write", (), {"a"})),
    (("postgres",), "EXPLAIN (ANALYZE, BUFFERS) UPDATE a SET x = (SELECT 1 FROM b)",
     Expect("write", {"b"}, {"a"})),
    (("postgres",), "EXPLAIN ANALYZE FROBNICATE", UNKNOWN),
    # opaque or unrecognised: invalidate everything
    (DIALECTS, "CALL refresh_totals()", UNKNOWN),
    (("postgres",), "DO $$ BEGIN DELETE FROM a; END $$", UNKNOWN),
    (("postgres",), "EXECUTE prepared_stmt(1)", UNKNOWN),
    (("postgres",), "REFRESH MATERIALIZED VIEW mv", UNKNOWN),
    (DIALECTS, "FROBNICATE the table", UNKNOWN),
    (DIALECTS, "frobnicate", UNKNOWN),
    (("mysql",), "RENAME USER a TO b", UNKNOWN),
    # batches: the union of their statements, never cacheable
    (DIALECTS, "BEGIN; DELETE FROM a; COMMIT;", Expect("write", (), {"a"})),
    (DIALECTS, "SELECT * FROM a; SELECT * FROM b", Expect("select", {"a", "b"}, cacheable=False)),
    (DIALECTS, 'SAVEPOINT "s1"; UPDATE a SET x = 1', Expect("write", (), {"a"})),
    (DIALECTS, "SELECT * FROM a; CALL p()", Expect("write", {"a"}, unknown=True)),
    (DIALECTS, "CREATE TABLE t (x INT); INSERT INTO t SELECT y FROM b",
     Expect("write", {"b"}, {"t"})),
    (DIALECTS, " ; ", Expect("other")),
]


@pytest.mark.parametrize("dialect,sql,expect", [
    (dialect, sql, expect) for dialects, sql, expect in RAW_CASES for dialect in dialects
])
def test_raw_sql(dialect: str, sql: str, expect: Expect) -> None:
    check(analyze_sql(sql, dialect), expect)


LOCKING = [
    ("postgres", "SELECT * FROM t FOR UPDATE"),
    ("postgres", "SELECT * FROM t FOR SHARE"),
    ("postgres", "SELECT * FROM t FOR NO KEY UPDATE"),
    ("postgres", "SELECT * FROM t FOR KEY SHARE"),
    ("postgres", "SELECT * FROM t FOR UPDATE NOWAIT"),
    ("postgres", "SELECT * FROM t FOR SHARE SKIP LOCKED"),
    ("postgres", "SELECT * FROM t WHERE id = %s FOR UPDATE OF t"),
    ("postgres", "SELECT * FROM (SELECT * FROM t FOR UPDATE) AS s"),
    ("mysql", "SELECT * FROM t WHERE id = %s FOR UPDATE"),
    ("mysql", "SELECT * FROM t LOCK IN SHARE MODE"),
    ("mysql", "SELECT * FROM t FOR SHARE SKIP LOCKED"),
    ("mysql", "SELECT * FROM t FOR UPDATE NOWAIT"),
]


@pytest.mark.parametrize("dialect,sql", LOCKING)
def test_locking_clause_is_not_cacheable(dialect: str, sql: str) -> None:
    info = analyze_sql(sql, dialect)
    check(info, Expect("select", {"t"}, cacheable=False))
    assert info.reason == "locking clause"


VOLATILE = [
    "nextval('s')", "setval('s', 1)", "currval('s')", "lastval()", "random()", "rand()",
    "randomblob(4)", "now()", "NOW()", "current_timestamp", "current_timestamp()", "current_date",
    "current_time", "localtime", "localtimestamp", "clock_timestamp()", "statement_timestamp()",
    "transaction_timestamp()", "timeofday()", "sysdate()", "utc_timestamp()", "unix_timestamp()",
    "unix_timestamp(x)", "curdate()", "curtime()", "uuid()", "uuid_short()", "gen_random_uuid()",
    "uuid_generate_v4()", "uuid_generate_v1mc()", "pg_advisory_lock(1)",
    "pg_advisory_xact_lock_shared(1)", "pg_try_advisory_lock(1)", "pg_try_advisory_xact_lock(1)",
    "txid_current()", "txid_snapshot_xmin(txid_current_snapshot())", "pg_current_xact_id()",
    "get_lock('l', 1)", "release_lock('l')", "is_free_lock('l')", "sleep(1)", "pg_sleep(1)",
    "pg_sleep_for('1s')", "last_insert_id()", "last_insert_rowid()", "found_rows()", "row_count()",
    "changes()", "total_changes()", "connection_id()", "pg_backend_pid()",
    "set_config('a', 'b', false)", "pg_notify('c', 'p')", "lo_import('/tmp/f')", "lo_unlink(1)",
    "dblink('c', 'q')", "dblink_exec('c', 'q')", "date('now')", "DATE('NOW')", "datetime('now')",
    "time('now')", "strftime('%s', 'now')", "julianday('now')", "unixepoch('now')", "unixepoch()",
    "date('now', 'start of month')", "strftime('%Y-%m', 'now', 'localtime')",
    "COALESCE(x, nextval('s'))", "UPPER(CAST(uuid() AS TEXT))", "current_user", "user()",
]


@pytest.mark.parametrize("dialect,expression", [
    (dialect, expression) for expression in VOLATILE for dialect in DIALECTS
    # SQLite has no LOCALTIME/LOCALTIMESTAMP keywords: there those names are plain columns.
    if not (dialect == "sqlite" and expression.startswith("localtime"))
])
def test_volatile_function_is_not_cacheable(dialect: str, expression: str) -> None:
    info = analyze_sql(f"SELECT {expression} AS v FROM t WHERE x > 0", dialect)
    check(info, Expect("select", {"t"}, cacheable=False))
    assert info.reason.startswith(("volatile function", "time-dependent literal")), info.reason


@pytest.mark.parametrize("expression", ["date()", "time()", "datetime()", "julianday()",
                                        "strftime('%Y')"])
def test_sqlite_time_functions_without_a_time_value_mean_now(expression: str) -> None:
    check(analyze_sql(f"SELECT {expression} FROM t", "sqlite"),
          Expect("select", {"t"}, cacheable=False))


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("where", ["created < 'now'", "x IN (SELECT y FROM u WHERE z = random())"])
def test_volatility_anywhere_in_the_tree(dialect: str, where: str) -> None:
    info = analyze_sql(f"SELECT x FROM t WHERE {where}", dialect)
    assert info.kind == "select" and not info.cacheable, info


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("expression", [
    "date(created)", "strftime('%Y', created)", "datetime(created, '+1 day')", "LOWER(name)",
    "COUNT(*)", "ABS(x) % 2", "'nowhere'", "julianday(created)", "unixepoch(created)",
])
def test_deterministic_functions_stay_cacheable(dialect: str, expression: str) -> None:
    check(analyze_sql(f"SELECT {expression} FROM t", dialect), Expect("select", {"t"}))


TRANSACTION = [
    "BEGIN", "begin", "BEGIN IMMEDIATE", "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "START TRANSACTION", "START TRANSACTION READ ONLY", "COMMIT", "commit;", "END", "ROLLBACK",
    "ABORT", 'SAVEPOINT "s7a9f3c";', 'RELEASE SAVEPOINT "s7a9f3c";',
    'ROLLBACK TO SAVEPOINT "s7a9f3c";', "RELEASE s1", "  /* c */ -- x\n COMMIT",
]
OTHER = [
    "SET search_path TO app", "SET NAMES utf8mb4", "set time zone 'UTC';", "SHOW TABLES",
    "SHOW INDEX FROM `book`", "PRAGMA foreign_keys = ON", 'PRAGMA "main".table_info("book")',
    "PRAGMA busy_timeout=5000;", "VACUUM", "VACUUM FULL a", "ANALYZE", "ANALYZE a", "LISTEN ch",
    "UNLISTEN *", "NOTIFY ch, 'x'", "DESCRIBE a", "DESC a", "USE shop", "CHECKPOINT",
    "REINDEX TABLE a", "CLUSTER a", "GRANT SELECT ON a TO bob", "REVOKE ALL ON a FROM bob",
    "LOCK TABLE a IN ACCESS EXCLUSIVE MODE", "UNLOCK TABLES", "DISCARD ALL", "RESET ALL",
    "DEALLOCATE p", "ATTACH DATABASE 'f.db' AS aux",
]


class _Forbidden:
    """Stands in for a sqlglot dialect to prove a statement never reached sqlglot."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"sqlglot {name}() called")


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", TRANSACTION)
def test_transaction_statements_skip_sqlglot(dialect: str, sql: str, monkeypatch) -> None:
    analyze_sql.cache_clear()
    monkeypatch.setitem(SQLGLOT_DIALECTS, dialect, _Forbidden())
    check(analyze_sql(sql, dialect), Expect("transaction"))
    analyze_sql.cache_clear()


@pytest.mark.parametrize("dialect,sql,control", [
    ("postgres", "/* app */ COMMIT", ("commit",)), ("sqlite", "commit;", ("commit",)),
    ("postgres", "END", ("commit",)), ("sqlite", "end transaction", ("commit",)),
    ("postgres", "ABORT", ("rollback",)), ("mysql", "-- x\nROLLBACK WORK", ("rollback",)),
    ("postgres", "ROLLBACK TO SAVEPOINT s1", ()), ("mysql", "rollback work to s1", ()),
    ("sqlite", 'RELEASE "s1"', ("release:s1",)), ("sqlite", 'SAVEPOINT "S1";', ("savepoint:s1",)),
    ("sqlite", "RELEASE SAVEPOINT s1", ("release:s1",)), ("postgres", "SAVEPOINT s1", ()),
    ("postgres", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ", ("begin",)),
    ("postgres", "begin work", ("begin",)), ("sqlite", "BEGIN EXCLUSIVE TRANSACTION", ("begin",)),
    ("mysql", "START TRANSACTION", ("commit", "begin")),  # MySQL commits an open one first
    ("postgres", "COMMIT AND CHAIN", ("commit", "begin")),
    ("mysql", "ROLLBACK AND NO CHAIN", ("rollback",)),
    ("mysql", "COMMIT AND CHAIN NO RELEASE", ("commit", "begin")),
    ("postgres", "PREPARE TRANSACTION 'x'", ("commit",)), ("postgres", "ROLLBACK PREPARED 'x'", ()),
    ("mysql", "XA START 'x'", ("begin",)), ("mysql", "XA END 'x'", ()),
    ("mysql", "XA PREPARE 'x'", ("commit",)), ("mysql", "XA ROLLBACK 'x'", ("rollback",)),
])
def test_transaction_control(dialect: str, sql: str, control: Tuple[str, ...]) -> None:
    """One parser says what a statement does to the transaction, however it is spelled."""
    info = analyze_sql(sql, dialect)
    assert (info.kind, info.control, info.writes_unknown) == ("transaction", control, False)


@pytest.mark.parametrize("dialect,sql,control", [
    ("postgres", "COMMIT PREPARED 'x'", ()), ("mysql", "XA COMMIT 'x'", ("commit",)),
])
def test_commits_of_a_prepared_transaction_write_unknown_tables(dialect, sql, control) -> None:
    info = analyze_sql(sql, dialect)
    assert info.writes_unknown and info.control == control


def test_a_batch_keeps_its_statements_in_order() -> None:
    info = analyze_sql("BEGIN; UPDATE a SET x = 1; /* c */ COMMIT;", "postgres")
    assert info.control == ("begin", "commit") and info.written_tables == {"a"}
    assert [step.kind for step in info.steps] == ["transaction", "write", "transaction"]


@pytest.mark.parametrize("dialect,sql", [("mysql", "START SLAVE"), ("mysql", "START REPLICA")])
def test_start_without_transaction_is_not_a_begin(dialect: str, sql: str) -> None:
    assert analyze_sql(sql, dialect).control == ()


@pytest.mark.parametrize("dialect,sql,key", [
    ("postgres", "SET search_path TO tenant2, public", "set:search_path"),
    ("postgres", "set SESSION search_path = 'x'", "set:search_path"),
    ("postgres", "RESET search_path", "set:search_path"),
    ("postgres", "SET ROLE reader", "set:role"), ("postgres", "RESET ROLE", "set:role"),
    ("postgres", "SET SESSION AUTHORIZATION u", "set:session authorization"),
    ("postgres", "SET TIME ZONE 'UTC'", "set:timezone"),
    ("postgres", "SET timezone = %s", "set:timezone"),
    ("postgres", "SET LOCAL search_path TO x", OPAQUE),
    ("postgres", "RESET ALL", "reset all"), ("postgres", "DISCARD ALL", "discard all"),
    ("postgres", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", ""),
    ("postgres", "SET CONSTRAINTS ALL DEFERRED", ""),
    ("postgres", "CREATE TEMP TABLE t (a int)", OPAQUE),
    ("postgres", "SELECT set_config('search_path', 'x', false)", OPAQUE),
    ("mysql", "USE shop", "use"), ("mysql", "SET NAMES utf8mb4", "set:names"),
    ("mysql", "SET @@session.sql_mode = 'x', time_zone = '+00:00'", "set:sql_mode,time_zone"),
    ("mysql", "SET @x = 1", "set:@x"), ("mysql", "SET @x = @x + 1", OPAQUE),
    ("mysql", "SET @@global.x = 1", OPAQUE), ("mysql", "SET x = (SELECT 1)", OPAQUE),
    ("mysql", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", ""),
    ("mysql", "CREATE TEMPORARY TABLE t (a int)", OPAQUE),
    ("sqlite", "PRAGMA case_sensitive_like = 1", "pragma:case_sensitive_like"),
    ("sqlite", "PRAGMA foreign_keys = ON", ""), ("sqlite", 'PRAGMA "main".table_info("book")', ""),
    ("sqlite", "PRAGMA busy_timeout", ""),
    ("sqlite", "ATTACH DATABASE 'f.db' AS aux", "attach:aux"),
    ("sqlite", "DETACH DATABASE aux", "attach:aux"), ("sqlite", "SELECT 1", ""),
    ("sqlite", "CREATE TABLE t (a int)", ""),
])
def test_session_keys(dialect: str, sql: str, key: str) -> None:
    """Statements with one key overwrite the same settings with constants; OPAQUE ones can't be
    matched with any other connection's."""
    assert analyze_sql(sql, dialect).session == key


def test_set_statement_for_does_what_its_statement_does() -> None:
    info = analyze_sql("SET STATEMENT max_statement_time = 1 FOR UPDATE t SET a = 1", "mysql")
    assert info.kind == "write" and info.written_tables == {"t"}
    select = analyze_sql("SET STATEMENT sql_mode = '' FOR SELECT * FROM t", "mysql")
    assert select.kind == "select" and not select.cacheable


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", OTHER)
def test_statements_that_change_no_rows(dialect: str, sql: str) -> None:
    check(analyze_sql(sql, dialect), Expect("other"))


@pytest.mark.parametrize("name,expected", [
    ('"public"."User"', {'"public"."user"', "user"}), ("public.User", {"public.user", "user"}),
    ("`shop`.`Order`", {"`shop`.`order`", "order"}), ("Book", {"book"}),
    ('"my.table"', {'"my.table"', "my.table"}), ("my.table", {"my.table", "table"}),
    ('"we""ird"', {'"we""ird"', 'we"ird'}), ('we"ird', {'we"ird'}),
    ("[dbo].[Item]", {"[dbo].[item]", "item"}), ("br[ack]et", {"br[ack]et", "bracket"}),
    ("back`tick", {"back`tick"}), ('  "T"  ', {'"t"', "t"}),
])
def test_table_names_in(name: str, expected: set) -> None:
    """A user-written name counts as the identifier it spells and as a SQL reference."""
    assert table_names_in(name) == expected


def test_results_are_memoised() -> None:
    first = analyze_sql("SELECT * FROM memo_t", "postgres")
    assert analyze_sql("SELECT * FROM memo_t", "postgres") is first
    assert analyze_sql.cache_info().maxsize == 4096


def test_unknown_dialect_is_rejected() -> None:
    with pytest.raises(ValueError):
        analyze_sql("SELECT 1", "oracle")


# --- foreign-key cascades ----------------------------------------------------------------------

class CcRoot(Model):
    class Meta:
        table_name = "cc_root"


class CcChild(Model):
    root = ForeignKeyField(CcRoot, on_delete="CASCADE")

    class Meta:
        table_name = "cc_child"


class CcGrandchild(Model):
    child = ForeignKeyField(CcChild, on_update="cascade")  # lower case, on_update only

    class Meta:
        table_name = "cc_grandchild"


class CcNullable(Model):
    root = ForeignKeyField(CcRoot, null=True, on_delete="SET NULL")

    class Meta:
        table_name = "cc_nullable"


class CcDefaulted(Model):
    child = ForeignKeyField(CcChild, default=1, on_delete="SET  DEFAULT")

    class Meta:
        table_name = "CC_Defaulted"


class CcPlain(Model):
    root = ForeignKeyField(CcRoot)  # no action: a delete is refused, nothing else changes
    restricted = ForeignKeyField(CcChild, on_delete="RESTRICT", on_update="NO ACTION")

    class Meta:
        table_name = "cc_plain"


class CyA(Model):
    b = peewee.DeferredForeignKey("CyB", null=True, on_delete="CASCADE")
    parent = ForeignKeyField("self", null=True, on_delete="CASCADE")

    class Meta:
        table_name = "cy_a"


class CyB(Model):
    a = ForeignKeyField(CyA, null=True, on_delete="CASCADE")

    class Meta:
        table_name = "cy_b"


class CcInherited(CcChild):  # a subclass model is its own table with the parent's FKs
    class Meta:
        table_name = "cc_inherited"


@pytest.mark.parametrize("start,expected", [
    ({"cc_root"}, {"cc_root", "cc_child", "cc_grandchild", "cc_nullable", "cc_defaulted",
                   "cc_inherited"}),
    ({"cc_child"}, {"cc_child", "cc_grandchild", "cc_defaulted"}),
    ({"CC_Grandchild"}, {"cc_grandchild"}),
    ({"cc_plain"}, {"cc_plain"}),
    ({"cy_a"}, {"cy_a", "cy_b"}),
    ({"cy_b"}, {"cy_a", "cy_b"}),
    ({"unrelated", "cc_nullable"}, {"unrelated", "cc_nullable"}),
    (set(), set()),
])
def test_cascade_closure(start, expected) -> None:
    assert cascade_closure(start) == frozenset(expected)


def test_cascade_closure_sees_models_defined_and_collected_at_runtime() -> None:
    def define() -> None:
        class RtParent(Model):
            class Meta:
                table_name = "rt_parent"

        class RtChild(Model):
            parent = ForeignKeyField(RtParent, on_delete="CASCADE")

            class Meta:
                table_name = "rt_child"

        assert cascade_closure(["rt_parent"]) == {"rt_parent", "rt_child"}

    define()
    gc.collect()
    assert cascade_closure(["rt_parent"]) == {"rt_parent"}


def test_cascade_closure_returns_frozenset_of_lowercase_names() -> None:
    result: FrozenSet[str] = cascade_closure(iter(["CC_PLAIN"]))
    assert result == frozenset({"cc_plain"}) and isinstance(result, frozenset)


def test_deeply_nested_sql_is_an_uncacheable_read() -> None:
    """sqlglot's recursion limit is an expected parse failure, not a fault."""
    info = analyze_sql("SELECT " + "(" * 3000 + "1" + ")" * 3000, "postgres")
    assert (info.kind, info.cacheable, info.writes_unknown) == ("select", False, False)
