"""orm/tree.py: what a Peewee query object does, read from its tree, is what the parser says of the
SQL Peewee renders from it; shapes the walk can't vouch for fall back to the parser."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Tuple

import peewee
import pytest
from peewee import JOIN, SQL, Case, Entity, Select, Table, Value, ValuesList, Window, fn
from peewee import Tuple as Row

from peewee_kvcache.orm import database as database_module
from peewee_kvcache.orm import tree
from peewee_kvcache.orm.tree import analyze_query
from peewee_kvcache.sql import memo
from peewee_kvcache.sql.analysis import analyze_sql
from peewee_kvcache.sql.dialects import DIALECTS as PARSERS
from peewee_kvcache.sql.info import SqlInfo
from peewee_kvcache.sql.volatile import volatile_call

from .models import ALL as LIVE_MODELS
from .models import Badge, Comment, Post, User

DATABASES: Dict[str, peewee.Database] = {
    "sqlite": peewee.SqliteDatabase(":memory:"),
    "postgres": peewee.PostgresqlDatabase("x"),
    "mysql": peewee.MySQLDatabase("x"),
}


class Writer(peewee.Model):
    name = peewee.CharField(unique=True)


class Novel(peewee.Model):
    writer = peewee.ForeignKeyField(Writer, backref="novels")
    title = peewee.CharField()
    pages = peewee.IntegerField(default=0)


class Critique(peewee.Model):
    novel = peewee.ForeignKeyField(Novel, backref="critiques")
    stars = peewee.IntegerField()


class Shelf(peewee.Model):
    """A table in another schema, with a mixed-case name."""
    label = peewee.CharField()

    class Meta:
        schema = "library"
        table_name = "Shelf"


class Genre(peewee.Model):
    parent = peewee.ForeignKeyField("self", null=True)
    name = peewee.CharField()


MODELS = [Writer, Novel, Critique, Shelf, Genre]
COUNTER = Table("counter", ("id", "hits"), schema="stats")
LOG = Table("Event_Log", ("id", "kind"))
W2 = Writer.alias("w2")


def _cte() -> Any:
    recent = Novel.select(Novel.writer).where(Novel.pages > 10).cte("recent")
    return Writer.select().join(recent, on=(Writer.id == recent.c.writer_id)).with_cte(recent)


def _recursive_cte() -> Any:
    base = (Genre.select(Genre.id, Genre.name).where(Genre.parent.is_null())
            .cte("tree", recursive=True, columns=("id", "name")))
    step = Genre.select(Genre.id, Genre.name).join(base, on=(Genre.parent == base.c.id))
    chain = base.union_all(step)
    return chain.select_from(chain.c.id, chain.c.name)


def _cte_shadowing_a_table() -> Any:
    critique = Novel.select(Novel.id).where(Novel.pages > 1).cte("critique")
    return (Writer.select().join(Novel).join(critique, on=(Novel.id == critique.c.id))
            .with_cte(critique))


def _cte_naming_a_later_cte() -> Any:
    first = Table("later").select(SQL("1")).cte("first")
    later = Novel.select(Novel.id).cte("later")
    return Select([first], [first.c.x]).with_cte(first, later)


def _nested_ctes() -> Any:
    inner = Critique.select(Critique.novel).cte("inner_c")
    sub = Select([inner], [inner.c.novel_id]).with_cte(inner)
    outer = Writer.select(Writer.id).cte("outer_c")
    return (Novel.select().join(outer, on=(Novel.writer == outer.c.id))
            .where(Novel.id.in_(sub)).with_cte(outer))


def _subquery_in_from() -> Any:
    per_writer = (Novel.select(Novel.writer, fn.COUNT(Novel.id).alias("n"))
                  .group_by(Novel.writer).alias("per_writer"))
    return (Writer.select(Writer.name, per_writer.c.n)
            .join(per_writer, on=(Writer.id == per_writer.c.writer_id)))


def _subquery_in_select() -> Any:
    count = Novel.select(fn.COUNT(Novel.id)).where(Novel.writer == Writer.id)
    return Writer.select(Writer.name, count.alias("n"))


def _window() -> Any:
    return Novel.select(Novel.title, fn.ROW_NUMBER().over(partition_by=[Novel.writer],
                                                          order_by=[Novel.pages.desc()]))


def _named_window() -> Any:
    window = Window(partition_by=[Novel.writer], order_by=[Novel.id],
                    start=Window.preceding(2), end=Window.CURRENT_ROW)
    return Novel.select(fn.SUM(Novel.pages).over(window)).window(window)


def _count_wrapper() -> Any:
    return Select([Writer.select().join(Novel).alias("_wrapped")], [fn.COUNT(SQL("1"))])


def _exists_wrapper() -> Any:
    return Select(columns=[fn.EXISTS(Novel.select(SQL("1")).where(Novel.pages > 3))])


def _instance_filter() -> Any:
    writer = Writer(id=3, name="w")
    return Novel.select().where(Novel.writer == writer)


def _escaped_like() -> Any:
    return Writer.select().where(Writer.name.contains("50%_off"))


def _values_list() -> Any:
    rows = ValuesList([(1, "a"), (2, "b")], columns=("id", "name"), alias="v")
    return Select([rows], [rows.c.id]).join(Writer, on=(Writer.id == rows.c.id))


def _update_from() -> Any:
    return (Novel.update(title=Writer.name).from_(Writer).where(Novel.writer == Writer.id))


def _update_with_subquery() -> Any:
    best = Critique.select(fn.MAX(Critique.stars)).where(Critique.novel == Novel.id)
    return Novel.update(pages=best).where(Novel.writer.in_(Writer.select(Writer.id)))


def _delete_with_join_subquery() -> Any:
    doomed = Novel.select(Novel.id).join(Writer).where(Writer.name == "x")
    return Critique.delete().where(Critique.novel.in_(doomed))


def _compound_ordered() -> Any:
    return (Writer.select(Writer.name).order_by(Writer.name).limit(3)
            | Novel.select(Novel.title)).order_by(SQL("1")).limit(5)


ALL = ("sqlite", "postgres", "mysql")
PG = ("postgres",)
NOT_SQLITE = ("postgres", "mysql")
NOT_MYSQL = ("sqlite", "postgres")

#: name -> (builder, dialects)
CORPUS: Dict[str, Tuple[Callable[[], Any], Tuple[str, ...]]] = {
    "select": (lambda: Writer.select(), ALL),
    "where": (lambda: Writer.select().where((Writer.name == "a") & (Writer.id > 2)), ALL),
    "in_list": (lambda: Writer.select().where(Writer.id.in_([1, 2, 3, 4])), ALL),
    "not_in_list": (lambda: Writer.select().where(Writer.id.not_in(range(7))), ALL),
    "empty_in_list": (lambda: Writer.select().where(Writer.id.in_([])), ALL),
    "tuple_in": (lambda: Novel.select().where(Row(Novel.writer, Novel.title)
                                               .in_([(1, "a"), (2, "b")])), NOT_SQLITE),
    "order_limit_offset": (lambda: Writer.select().order_by(Writer.name.desc()).limit(5)
                           .offset(10), ALL),
    "paginate": (lambda: Writer.select().paginate(3, 20), ALL),
    "get": (lambda: Writer.select().where(Writer.name == "a").paginate(1, 1), ALL),
    "distinct": (lambda: Novel.select(Novel.writer).distinct(), ALL),
    "distinct_on": (lambda: Novel.select().distinct(Novel.writer), PG),
    "join": (lambda: Novel.select(Novel, Writer).join(Writer), ALL),
    "left_joins": (lambda: Novel.select().join(Writer, JOIN.LEFT_OUTER).switch(Novel)
                   .join(Critique, JOIN.LEFT_OUTER), ALL),
    "cross_join": (lambda: Writer.select().join(Shelf, JOIN.CROSS), ALL),
    "self_join_alias": (lambda: Writer.select(Writer.name, W2.name)
                        .join(W2, on=(W2.id > Writer.id)), ALL),
    "schema_model": (lambda: Shelf.select().where(Shelf.label.startswith("a")), ALL),
    "schema_join": (lambda: Writer.select().join(Shelf, on=(Shelf.id == Writer.id)), ALL),
    "group_having": (lambda: Writer.select(Writer.name, fn.COUNT(Novel.id).alias("n"))
                     .join(Novel).group_by(Writer.name).having(fn.COUNT(Novel.id) > 1), ALL),
    "subquery_in_where": (lambda: Writer.select().where(
        Writer.id.in_(Novel.select(Novel.writer).where(Novel.title.contains("x")))), ALL),
    "subquery_in_from": (_subquery_in_from, ALL),
    "subquery_in_select": (_subquery_in_select, ALL),
    "scalar_subquery": (lambda: Writer.select().where(
        Writer.id == Novel.select(fn.MAX(Novel.writer))), ALL),
    "exists": (lambda: Writer.select().where(fn.EXISTS(
        Novel.select().where(Novel.writer == Writer.id))), ALL),
    "having_subquery": (lambda: Novel.select(Novel.writer).group_by(Novel.writer).having(
        fn.COUNT(Novel.id) > Critique.select(fn.COUNT(Critique.id))), ALL),
    "count_wrapper": (_count_wrapper, ALL),
    "exists_wrapper": (_exists_wrapper, ALL),
    "cte": (_cte, ALL),
    "recursive_cte": (_recursive_cte, ALL),
    "cte_shadowing_a_table": (_cte_shadowing_a_table, ALL),
    "cte_naming_a_later_cte": (_cte_naming_a_later_cte, ALL),
    "nested_ctes": (_nested_ctes, ALL),
    "union": (lambda: Writer.select(Writer.name) | Novel.select(Novel.title), ALL),
    "union_all": (lambda: Writer.select(Writer.name) + Shelf.select(Shelf.label), ALL),
    "intersect": (lambda: Writer.select(Writer.name) & Novel.select(Novel.title), ALL),
    "except": (lambda: Writer.select(Writer.name) - Novel.select(Novel.title), ALL),
    "nested_union": (lambda: (Writer.select(Writer.name) | Novel.select(Novel.title))
                     | Shelf.select(Shelf.label), ALL),
    "compound_ordered": (_compound_ordered, NOT_MYSQL),
    "for_update": (lambda: Writer.select().for_update(), NOT_SQLITE),
    "for_share": (lambda: Writer.select().for_update("FOR SHARE"), NOT_SQLITE),
    "for_update_nowait": (lambda: Writer.select().for_update(nowait=True), NOT_SQLITE),
    "for_update_in_subquery": (lambda: Writer.select().where(
        Writer.id.in_(Novel.select(Novel.writer).for_update())), PG),
    "random": (lambda: Writer.select(fn.random()), ALL),
    "now": (lambda: Writer.select().where(Writer.id < fn.now()), ALL),
    "NOW_in_subquery": (lambda: Writer.select().where(
        Writer.id.in_(Novel.select(Novel.writer).where(Novel.pages < fn.NOW()))), ALL),
    "sqlite_date_without_value": (lambda: Writer.select(fn.date()), ("sqlite",)),
    "sqlite_date_of_column": (lambda: Novel.select(fn.date(Novel.title)), ("sqlite",)),
    "strftime_two_arguments": (lambda: Novel.select(fn.strftime("%Y", Novel.title)),
                               ("sqlite",)),
    "strftime_one_argument": (lambda: Novel.select(fn.strftime("%Y")), ("sqlite",)),
    "nextval": (lambda: Writer.select(fn.nextval("seq")), PG),
    "set_config": (lambda: Writer.select(fn.set_config("a.b", "c", False)), PG),
    "deterministic_functions": (lambda: Novel.select(fn.LOWER(Novel.title),
                                                     fn.ABS(Novel.pages)), ALL),
    "window": (_window, ALL),
    "named_window": (_named_window, NOT_MYSQL),
    "case": (lambda: Novel.select(Case(Novel.pages, [(1, "one"), (2, "two")], "many")), ALL),
    "searched_case": (lambda: Novel.select(Case(None, [(Novel.pages > 100, "long")], "short")),
                      ALL),
    "cast": (lambda: Novel.select(Novel.pages.cast("text")), NOT_MYSQL),
    "between": (lambda: Novel.select().where(Novel.pages.between(1, 5)), ALL),
    "escaped_like": (_escaped_like, ALL),
    "regexp": (lambda: Writer.select().where(Writer.name.regexp("^a")), NOT_SQLITE),
    "is_null_and_not": (lambda: Genre.select().where(Genre.parent.is_null() & ~(Genre.id == 1)),
                        ALL),
    "arithmetic": (lambda: Novel.select((Novel.pages + 1) * 2 - Novel.id), ALL),
    "concat": (lambda: Writer.select(Writer.name.concat("!")), NOT_MYSQL),
    "model_instance_value": (_instance_filter, ALL),
    "value_node": (lambda: Writer.select(Value(1).alias("one")), ALL),
    "filter_aggregate": (lambda: Novel.select(fn.COUNT(Novel.id).filter(Novel.pages > 1)),
                         NOT_MYSQL),
    "values_list": (_values_list, PG),
    "table": (lambda: COUNTER.select(COUNTER.id).where(COUNTER.hits > 3), ALL),
    "table_star": (lambda: LOG.select(), ALL),
    "table_alias_join": (lambda: Writer.select(Writer.name).join(
        LOG.alias("l"), on=(Writer.id == LOG.alias("l").id)), ALL),
    "table_no_columns": (lambda: Table("Plain").select(), ALL),
    "insert": (lambda: Writer.insert(name="a"), ALL),
    "insert_defaults": (lambda: Novel.insert(writer=1, title="t"), ALL),
    "insert_many": (lambda: Writer.insert_many([{"name": "a"}, {"name": "b"}]), ALL),
    "insert_many_tuples": (lambda: Novel.insert_many([(1, "a", 2), (2, "b", 3)],
                                                     fields=[Novel.writer, Novel.title,
                                                             Novel.pages]), ALL),
    "insert_from": (lambda: Critique.insert_from(Novel.select(Novel.id, Novel.pages),
                                                 [Critique.novel, Critique.stars]), ALL),
    "insert_returning": (lambda: Writer.insert(name="a").returning(Writer.id, Writer.name), PG),
    "on_conflict_ignore": (lambda: Writer.insert(name="a").on_conflict_ignore(), ALL),
    "on_conflict_replace": (lambda: Writer.insert(name="a").on_conflict_replace(),
                            ("sqlite", "mysql")),
    "on_conflict_update": (lambda: Writer.insert(name="a").on_conflict(
        conflict_target=[Writer.name], update={Writer.name: Writer.name.concat("!")}),
        NOT_MYSQL),
    "on_conflict_preserve": (lambda: Writer.insert(name="a").on_conflict(
        conflict_target=[Writer.name], preserve=[Writer.name]), NOT_MYSQL),
    "on_duplicate_key": (lambda: Writer.insert(name="a").on_conflict(
        preserve=[Writer.name], update={Writer.id: Writer.id + 1}), ("mysql",)),
    "table_insert": (lambda: COUNTER.insert(id=1, hits=0), ALL),
    "update": (lambda: Novel.update(title="t").where(Novel.id == 1), ALL),
    "update_expression": (lambda: Novel.update(pages=Novel.pages + 1), ALL),
    "update_with_subquery": (_update_with_subquery, NOT_MYSQL),
    "update_from": (_update_from, NOT_MYSQL),
    "table_update": (lambda: COUNTER.update(hits=COUNTER.hits + 1).where(COUNTER.id == 1), ALL),
    "delete": (lambda: Novel.delete().where(Novel.title == "t"), ALL),
    "delete_with_join_subquery": (_delete_with_join_subquery, ALL),
    "delete_returning": (lambda: Novel.delete().returning(Novel.id), PG),
    "table_delete": (lambda: LOG.delete().where(LOG.kind == "x"), ALL),
}


def render(dialect: str, build: Callable[[], Any]) -> Tuple[Any, str]:
    """The query object and the SQL Peewee's ``execute`` would send for it on ``dialect``."""
    db = DATABASES[dialect]
    with db.bind_ctx(MODELS):
        COUNTER.bind(db), LOG.bind(db)
        query = build()
        returning = getattr(query, "_pk_returning", None)  # what Peewee 4's Insert._execute adds
        if returning is not None and query._returning is None and db.returning_clause:
            query._returning = returning()
        sql, _params = db.get_sql_context().sql(query).query()
    return query, sql


def comparable(info: SqlInfo) -> Tuple[Any, ...]:
    """What must agree: everything but the reason's wording (only whether there is one)."""
    return (info.kind, info.read_tables, info.written_tables, info.writes_unknown,
            info.cacheable, bool(info.reason), info.control, info.session)


@pytest.mark.parametrize("dialect,case", [
    (dialect, name) for name, (_, dialects) in CORPUS.items() for dialect in dialects])
def test_the_tree_says_what_the_parser_says(dialect: str, case: str) -> None:
    query, sql = render(dialect, CORPUS[case][0])
    walked = analyze_query(query, sql)
    assert walked is not None, sql
    assert comparable(walked) == comparable(analyze_sql(sql, dialect)), sql


def test_the_corpus_covers_every_verdict() -> None:
    """Reads of several tables, writes, volatile and locking selects, a session change."""
    infos = [analyze_query(*render(dialect, build))
             for build, dialects in CORPUS.values() for dialect in dialects]
    assert any(info.kind == "write" and info.read_tables for info in infos)
    assert any(info.kind == "select" and info.reason == "locking clause" for info in infos)
    assert any(info.kind == "select" and info.reason.startswith("volatile") for info in infos)
    assert any(info.session for info in infos)
    assert any(len(info.read_tables) >= 3 for info in infos)


class Shouting(peewee.Function):
    """A node whose SQL the walk has never read."""

    def __sql__(self, ctx: Any) -> Any:
        return ctx.literal("SHOUT()")


class Loud(peewee.CharField):
    def __sql__(self, ctx: Any) -> Any:
        return ctx.literal("UPPER(name)")


class Poem(peewee.Model):
    line = Loud()


def _writable_cte() -> Any:
    gone = Novel.delete().where(Novel.pages == 0).returning(Novel.writer).cte("gone")
    return Writer.select().where(Writer.id.in_(Select([gone], [gone.c.writer_id]))).with_cte(gone)


def _member_with_cte() -> Any:
    names = Writer.select(Writer.name).cte("names")
    return Select([names], [names.c.name]).with_cte(names) | Novel.select(Novel.title)


def _generator_rows() -> Any:
    return Writer.insert_many(({"name": name} for name in "ab"))


#: shapes whose SQL only the parser can vouch for
UNSURE: Dict[str, Callable[[], Any]] = {
    "raw_sql_where": lambda: Writer.select().where(SQL("id > 1")),
    "raw_sql_from": lambda: Select([SQL("writer")], [SQL("*")]),
    "entity_as_table": lambda: Select([Entity("writer")], [SQL("*")]),
    "raw_volatile_keyword": lambda: Writer.select(SQL("CURRENT_TIMESTAMP")),
    "raw_query": lambda: Writer.raw("SELECT * FROM writer"),
    "writable_cte": _writable_cte,
    "member_with_cte": _member_with_cte,
    "unknown_node": lambda: Writer.select(Shouting("x", ())),
    "field_with_own_sql": lambda: Poem.select(),
    "odd_cast": lambda: Writer.select(Writer.id.cast("int) FROM secret --")),
    "odd_function_name": lambda: Writer.select(peewee.Function("pg_catalog.now", ())),
    "odd_operator": lambda: Writer.select().where(
        peewee.Expression(Writer.id, "IN (SELECT 1) OR", 1)),
    "for_update_of": lambda: Writer.select().join(Novel).for_update(of=Writer),
    "generator_rows": _generator_rows,
    "value_literals": lambda: Writer.select(peewee.ValueLiterals(Value("now"))),
    "noop_select": lambda: Writer.noop(),
}


@pytest.mark.parametrize("case", UNSURE)
def test_what_the_walk_cannot_vouch_for_is_parsed(case: str) -> None:
    query, sql = render("postgres", UNSURE[case])
    assert analyze_query(query, sql) is None, sql


def test_a_text_that_is_not_the_querys_is_parsed() -> None:
    """The text handed over must begin as the query's statement would."""
    query, _ = render("sqlite", lambda: Writer.select())
    assert analyze_query(query, 'DELETE FROM "writer"') is None


def test_a_bug_in_the_walk_is_logged_and_parsed(monkeypatch, caplog) -> None:
    def broken(*args: Any) -> Any:
        raise KeyError("no such attribute")

    monkeypatch.setitem(tree._QUERIES, peewee.Select.__sql__, broken)
    query, sql = render("sqlite", lambda: Writer.select())
    with caplog.at_level(logging.WARNING, logger="peewee_kvcache"):
        assert analyze_query(query, sql) is None
    assert any("KeyError: 'no such attribute'" in record.getMessage()
               for record in caplog.records)


def test_volatile_names_cover_what_sqlglot_types_as_volatile() -> None:
    """Every function sqlglot's dialects turn into a volatile node is volatile by name too, so
    that a query object calling it (read without sqlglot) is not cached either."""
    names = {name for parser in PARSERS.values()
             for name in (*parser.parser_class.FUNCTIONS, *parser.parser_class.FUNCTION_PARSERS)
             if name.replace("_", "").isalnum()}
    missed: List[str] = []
    for dialect in PARSERS:
        for name in sorted(names):
            for arguments in range(3):
                sql = f"SELECT {name}({', '.join(['x'] * arguments)}) FROM t"
                info = analyze_sql(sql, dialect)
                if info.reason.startswith("volatile") and not volatile_call(name.lower(),
                                                                           arguments):
                    missed.append(f"{dialect}: {name} with {arguments} arguments")
    assert not missed


def test_every_statement_of_a_live_workload_agrees(db, bind, backend, monkeypatch) -> None:
    """On a real database, each statement Peewee's own helpers send (create, get, count, exists,
    save, bulk insert, prefetch, recursive delete, cached reads...) is read from its tree, and
    agrees with the parser."""
    bind(*LIVE_MODELS)
    memo.texts(db._kv_dialect).clear()
    seen: List[Tuple[Any, str, Any]] = []

    def spy(query: Any, sql: str) -> Any:
        info = analyze_query(query, sql)
        seen.append((query, sql, info))
        return info

    monkeypatch.setattr(database_module, "analyze_query", spy)
    ann = User.create(name="ann", score=3)
    bob = User.create(name="bob")
    post = Post.create(user=ann, title="p1")
    Comment.insert_many([{"post": post, "body": f"c{i}"} for i in range(3)]).execute()
    Badge.create(user=bob, label="b")
    ann.score += 1
    ann.save()
    assert User.get(User.name == "ann").score == 4
    assert User.get_or_none(User.name == "zed") is None
    assert User.select().where(User.score > 0).count() == 1
    assert User.select().where(User.name == "bob").exists()
    assert len(list(User.select().order_by(User.name).prefetch(Post, Comment))) == 2
    for ids in ([ann.id], [ann.id, bob.id], [ann.id, bob.id, 99]):
        assert len(User.select().where(User.id.in_(ids)).with_cache(ex=60)) == min(len(ids), 2)
    rows = (Post.select(Post.title, fn.COUNT(Comment.id).alias("n")).join(Comment)
            .group_by(Post.title).with_cache(ex=60))
    assert [(row.title, row.n) for row in rows] == [("p1", 3)]
    with db.atomic():
        User.update(score=User.score + 1).where(User.id.in_(Badge.select(Badge.user))).execute()
    bob.delete_instance(recursive=True)
    Comment.delete().where(Comment.post.in_(Post.select(Post.id).where(Post.user == ann))).execute()
    walked = [(sql, info) for _, sql, info in seen if info is not None]
    assert len(walked) >= 20
    assert not [sql for query, sql, info in seen if info is None
                and isinstance(query, (peewee.SelectBase, peewee.Insert, peewee.Update,
                                       peewee.Delete))]
    disagree = [sql for sql, info in walked
                if comparable(info) != comparable(analyze_sql(sql, db._kv_dialect))]
    assert not disagree


class OwnOrdering(peewee.ModelSelect):
    """A query class of the user's that changes how Peewee renders it."""

    def _apply_ordering(self, ctx: Any) -> Any:
        return ctx.literal(" UNION SELECT secret FROM vault")


class OwnMethod(peewee.ModelSelect):
    """One that only adds a method: rendered as Peewee's own."""

    def newest(self) -> Any:
        return self.order_by(Writer.id.desc())


def test_a_query_class_that_renders_differently_is_parsed() -> None:
    query, sql = render("sqlite", lambda: OwnOrdering(Writer, (Writer.id,)))
    assert "vault" in sql and analyze_query(query, sql) is None
    query, sql = render("sqlite", lambda: OwnMethod(Writer, (Writer.id,)).newest())
    assert analyze_query(query, sql) == analyze_sql(sql, "sqlite")
