"""What a Peewee query object does, read from its query tree instead of parsing its SQL.

A query object's SQL text changes with every IN-list length, and parsing each new text costs
milliseconds; the query tree already names its tables. :func:`analyze_query` walks the tree and
returns the same :class:`SqlInfo` the parser (sql/analysis.py) gives for the SQL Peewee renders
from it: the tables read (past aliases and CTE names, as bare lower-case names), the table
written, whether a SELECT may be cached (a locking clause or a volatile function, by the rules of
sql/volatile.py), and whether it changes the session (``set_config()``).

A node is only trusted when its class renders with one of the ``__sql__`` methods read here (a
subclass overriding it is unknown), and raw text is only trusted in the few shapes Peewee itself
emits (``SQL('1')``, ``DISTINCT``, window frames, operators, cast types...). Anything else (raw
``SQL()`` text, an ``Entity`` used as a table, a writable CTE, an unknown node) gives None: the
statement is then parsed, as raw SQL is. A table missed here would serve stale rows, an extra one
only costs a cache miss: when in doubt, None.
"""
from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Set

import peewee

from ..sql.info import OPAQUE, SqlInfo
from ..sql.lexer import first_word
from ..sql.tables import table_key
from ..sql.volatile import volatile_call

log = logging.getLogger("peewee_kvcache")

Converter = Optional[Callable[[Any], Any]]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
_CAST_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*(?:\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\[\])*\Z")
_COLLATE = re.compile(r"COLLATE\s+[A-Za-z_][A-Za-z0-9_]*\Z", re.IGNORECASE)
_OPERATOR = re.compile(r"[-+*/%<>=!~@#&|^?:]+\Z")
_GLUE = re.compile(r"\s*(?:,|\.|AND|OR)?\s*\Z", re.IGNORECASE)
#: the words raw ``SQL()`` text may be made of: those Peewee emits itself (``SQL('1')`` in
#: count(), ``DISTINCT``, window frames, ``ESCAPE``...); none names a table or calls a function
_SAFE_WORDS = frozenset({
    "*", "=", "ALL", "AND", "ASC", "BETWEEN", "BY", "CURRENT", "DESC", "DISTINCT", "ELSE", "END",
    "ESCAPE", "EXCLUDE", "FALSE", "FIRST", "FOLLOWING", "GROUP", "GROUPS", "IN", "IS", "LAST", "NO",
    "NOT", "NULL", "NULLS", "OR", "ORDER", "OTHERS", "OVER", "PARTITION", "PRECEDING", "RANGE",
    "ROW", "ROWS", "THEN", "TIES", "TRUE", "UNBOUNDED", "WHEN",
})
_FRAME_TYPES = frozenset({None, "ROWS", "RANGE", "GROUPS"})
_LOCKS = frozenset({"FOR UPDATE", "FOR SHARE", "FOR NO KEY UPDATE", "FOR KEY SHARE",
                    "LOCK IN SHARE MODE"})
_CONFLICT_ACTIONS = frozenset({None, "IGNORE", "REPLACE", "UPDATE", "ROLLBACK", "ABORT", "FAIL"})
_COMPOUND_OPERATORS = frozenset({"UNION", "UNION ALL", "INTERSECT", "EXCEPT"})
_OPERATORS = frozenset(peewee.OP.values()) | frozenset(
    word for db in (peewee.SqliteDatabase, peewee.PostgresqlDatabase, peewee.MySQLDatabase)
    for word in db.operations.values())
_JOIN_TYPES = frozenset(peewee.JOIN.values())
#: how each kind of statement's text may begin (past comments and parentheses)
_LEADING_WORDS = {"select": frozenset({"SELECT", "WITH"}),
                  "insert": frozenset({"INSERT", "REPLACE", "WITH"}),
                  "update": frozenset({"UPDATE", "WITH"}), "delete": frozenset({"DELETE", "WITH"})}


class _Unsure(Exception):
    """The walk can't vouch for what a node renders: the statement is parsed instead."""


def analyze_query(query: Any, sql: str) -> Optional[SqlInfo]:
    """What ``query`` does, as sql/analysis.py would say of ``sql``, the text Peewee rendered from
    it; None when the tree holds a node whose SQL this walk can't vouch for, or when ``sql`` does
    not begin as ``query``'s statement would (the caller then parses ``sql``)."""
    if first_word(sql)[0] not in _LEADING_WORDS.get(_kind_of(query), ()):
        return None
    try:
        return _Walk().statement(query)
    except _Unsure:
        return None
    except Exception as exc:  # noqa: BLE001 - a bug met in the walk: the parser takes over
        log.warning("peewee_kvcache: reading a %s's tree failed (%s: %s); its SQL is parsed "
                    "instead", type(query).__name__, type(exc).__name__, exc)
        return None


def _kind_of(query: Any) -> str:
    for kind, base in (("select", peewee.SelectBase), ("insert", peewee.Insert),
                       ("update", peewee.Update), ("delete", peewee.Delete)):
        if isinstance(query, base):
            return kind
    return ""


def _sql_of(node: Any) -> Any:
    return getattr(type(node), "__sql__", None)


def _query_sql_of(query: Any) -> Any:
    """A query's ``__sql__``, or None when its class overrides a method Peewee calls while
    rendering it (a query class of the user's may)."""
    cls = type(query)
    render = _QUERY_CLASSES.get(cls, _UNSEEN)
    if render is _UNSEEN:
        own = [name for name in _QUERY_HOOKS
               if getattr(getattr(cls, name, None), "__module__", "peewee") != "peewee"]
        render = _QUERY_CLASSES[cls] = None if own else _sql_of(query)
    return render


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, peewee.Model)


class _Walk:
    """One walk of a statement's tree: what it found so far."""

    def __init__(self) -> None:
        self.reads: Set[str] = set()
        self.volatile = ""  # the first volatile call met
        self.locking = False
        self.session = False  # set_config() called

    # --- statements ---------------------------------------------------------------------------

    def statement(self, query: Any) -> SqlInfo:
        render = _query_sql_of(query)
        if render in _QUERIES:
            self.query(query, frozenset())
            reason = "locking clause" if self.locking else self.volatile
            return SqlInfo("select", frozenset(self.reads), cacheable=not reason, reason=reason,
                           session=OPAQUE if self.session else "")
        writer = _WRITES.get(render)
        if writer is None:
            raise _Unsure
        visible = self.ctes(query, frozenset())
        written = self.target(query.table)
        writer(self, query, visible)
        for column in query._returning or ():  # RETURNING: rendered in the source scope
            self.expr(column, visible, True)
        return SqlInfo("write", frozenset(self.reads), frozenset({written}),
                       reason="write statement", session=OPAQUE if self.session else "")

    def target(self, table: Any) -> str:
        """The table an INSERT/UPDATE/DELETE writes (a model's or a ``Table``)."""
        if _is_model(table):
            table = table._meta.table
        if _sql_of(table) is not peewee.Table.__sql__:
            raise _Unsure
        return table_key(table._path[-1])

    # --- queries ------------------------------------------------------------------------------

    def query(self, query: Any, visible: FrozenSet[str]) -> None:
        """A SELECT or compound SELECT, whole or as a subquery; ``visible``: the CTE names in
        scope where it stands."""
        walk = _QUERIES.get(_query_sql_of(query))
        if walk is None:
            raise _Unsure  # a write inside a read, raw SQL, an unknown query class
        walk(self, query, visible)

    def select(self, query: Any, visible: FrozenSet[str]) -> None:
        visible = self.ctes(query, visible)
        distinct = query._distinct
        for column in distinct if isinstance(distinct, (list, tuple)) else ():
            self.expr(column, visible, False)
        for column in query._returning or ():
            self.expr(column, visible, True)
        for source in query._from_list or ():
            self.source(source, visible)
        self.expr(query._where, visible, False)
        for column in query._group_by or ():
            self.expr(column, visible, False)
        self.expr(query._having, visible, False)
        for window in query._windows or ():
            self.expr(window, visible, False)
        self.ordering(query, visible)
        self.lock(query)

    def lock(self, query: Any) -> None:
        """FOR UPDATE and friends: Peewee 4 keeps a ``ForUpdate``, Peewee 3 the clause's text."""
        lock: Any = query._for_update
        if not lock:
            return
        of = getattr(query, "_for_update_of", None)
        if _sql_of(lock) is peewee.ForUpdate.__sql__:
            of, lock = lock._of, lock._expr
        elif isinstance(lock, peewee.Node):
            raise _Unsure
        if of is not None:
            raise _Unsure  # FOR UPDATE OF names aliases the parser takes for tables
        text = "FOR UPDATE" if lock is True else lock
        if not isinstance(text, str):
            raise _Unsure
        text = " ".join(text.upper().split())
        for suffix in (" NOWAIT", " SKIP LOCKED"):
            text = text[:-len(suffix)] if text.endswith(suffix) else text
        if text not in _LOCKS:
            raise _Unsure
        self.locking = True

    def compound(self, query: Any, visible: FrozenSet[str]) -> None:
        if query.op not in _COMPOUND_OPERATORS:
            raise _Unsure
        visible = self.ctes(query, visible)
        for member in (query.lhs, query.rhs):
            if getattr(member, "_cte_list", None):
                raise _Unsure  # how far a member's WITH reaches depends on the parentheses
            self.query(member, visible)
        self.ordering(query, visible)

    def ordering(self, query: Any, visible: FrozenSet[str]) -> None:
        for column in query._order_by or ():
            self.expr(column, visible, False)
        for bound in (query._limit, query._offset):
            if isinstance(bound, peewee.Node):
                self.expr(bound, visible, False)

    def ctes(self, query: Any, visible: FrozenSet[str]) -> FrozenSet[str]:
        """Walk the query's CTE bodies; the CTE names visible in its own body. Like the parser:
        in WITH RECURSIVE every CTE sees all of them, otherwise each sees the earlier ones."""
        ctes = getattr(query, "_cte_list", None)
        if not ctes:
            return visible
        names: List[str] = []
        for cte in ctes:
            if _sql_of(cte) is not peewee.CTE.__sql__ or not isinstance(cte._alias, str):
                raise _Unsure
            names.append(cte._alias.lower())
        recursive = any(cte._recursive for cte in ctes)
        for position, cte in enumerate(ctes):
            seen = names if recursive else names[:position]
            self.query(cte._query, visible | frozenset(seen))  # a writable CTE: _Unsure
            for column in cte._columns or ():
                self.expr(column, visible, False)
        return visible | frozenset(names)

    # --- FROM ---------------------------------------------------------------------------------

    def source(self, node: Any, visible: FrozenSet[str]) -> None:
        """An item of FROM (or of a JOIN, or of UPDATE ... FROM)."""
        if _is_model(node):
            node = node._meta.table
        render = _sql_of(node)
        if render is peewee.Table.__sql__:
            self.table(node._path, visible)
        elif render is peewee.ModelAlias.__sql__:
            self.table(node.model._meta.entity._path, visible)
        elif render is peewee.Join.__sql__:
            if node.join_type not in _JOIN_TYPES:
                raise _Unsure
            self.source(node.lhs, visible)
            self.source(node.rhs, visible)
            self.expr(node._on, visible, True)
        elif render is peewee.CTE.__sql__:  # a reference: the CTE's name, as a table name
            if not isinstance(node._alias, str):
                raise _Unsure
            self.table((node._alias,), visible)
        elif render is peewee.ValuesList.__sql__:
            self.values_list(node, visible, True)
        elif render in _QUERIES:
            self.query(node, visible)
        else:
            raise _Unsure  # an Entity or raw SQL used as a table, an unknown source

    def table(self, path: Any, visible: FrozenSet[str]) -> None:
        parts = [part for part in path if part]
        if not parts or not all(isinstance(part, str) for part in parts):
            raise _Unsure
        name = parts[-1]
        if len(parts) == 1 and name.lower() in visible:
            return  # a CTE's name (a qualified name never is one)
        self.reads.add(table_key(name))

    def values_list(self, node: Any, visible: FrozenSet[str], source: bool) -> None:
        for row in node._values:
            for value in row:
                self.expr(value, visible, source)

    # --- expressions --------------------------------------------------------------------------

    def expr(self, node: Any, visible: FrozenSet[str], source: bool,
             converter: Converter = None) -> None:
        """A node inside a statement. ``source``: rendered in Peewee's source scope (the select
        list, FROM, RETURNING), where an alias renders its expression; ``converter``: the one
        Peewee applies to plain values there (the field's ``db_value`` of a comparison)."""
        if node is None:
            return
        if not isinstance(node, peewee.Node):
            if _is_model(node):
                raise _Unsure  # a table where a value goes
            if isinstance(node, peewee.multi_types):  # rendered as a parenthesised list
                if iter(node) is node:
                    raise _Unsure  # an iterator: the rendering used it up
                for item in node:
                    self.expr(item, visible, source, converter)
                return
            self.value(node, None, converter, visible, source)
            return
        handler = _EXPRESSIONS.get(_sql_of(node))
        if handler is None:
            raise _Unsure
        handler(self, node, visible, source, converter)

    def value(self, value: Any, own: Any, converter: Converter, visible: FrozenSet[str],
              source: bool) -> None:
        """A plain value, as ``Context.value`` renders it: converted (by its own converter, or
        else the one in scope), a parameter unless the conversion made a node of it."""
        try:
            if own:
                value = own(value)
            elif own is None and converter:
                value = converter(value)
        except Exception as exc:  # noqa: BLE001 - rendering would have failed the same way
            raise _Unsure from exc
        if isinstance(value, peewee.Node):
            self.expr(value, visible, source)


# --- the statements that write: the target is settled by _Walk.statement -----------------------


def _insert(walk: _Walk, query: Any, visible: FrozenSet[str]) -> None:
    rows = query._insert
    if isinstance(rows, peewee.SelectQuery):
        walk.query(rows, visible)
    elif isinstance(rows, Mapping):
        _row(walk, rows.values(), visible)
    elif isinstance(rows, (list, tuple)):
        for row in rows:
            _row(walk, row.values() if isinstance(row, Mapping) else row, visible)
    elif rows is not None:
        raise _Unsure  # raw SQL, or an iterator of rows the rendering used up
    defaults: Mapping[Any, Any] = getattr(query, "get_default_data", dict)() or {}
    _row(walk, defaults.values(), visible)
    for column in query._columns or ():
        if isinstance(column, peewee.Node):
            walk.expr(column, visible, False)
    conflict = query._on_conflict
    if conflict is not None:
        _conflict(walk, conflict, visible)


def _row(walk: _Walk, values: Iterable[Any], visible: FrozenSet[str]) -> None:
    """An inserted row: a value that is a node is rendered as one (converters of plain
    values are not called: a write's reads are never used)."""
    if not isinstance(values, (list, tuple, type({}.values()))):
        raise _Unsure
    for value in values:
        if isinstance(value, peewee.Node):
            walk.expr(value, visible, False)


def _conflict(walk: _Walk, conflict: Any, visible: FrozenSet[str]) -> None:
    action = conflict._action
    if (action.upper() if isinstance(action, str) else action) not in _CONFLICT_ACTIONS:
        raise _Unsure
    for key, value in (conflict._update or {}).items():
        for node in (key, value):
            if isinstance(node, peewee.Node):
                walk.expr(node, visible, False)
    nodes = [*(conflict._preserve or ()), *(conflict._conflict_target or ()),
             conflict._where, conflict._conflict_where, conflict._conflict_constraint]
    for node in nodes:
        if isinstance(node, peewee.Node):
            walk.expr(node, visible, False)
        elif node is not None and not isinstance(node, str):
            raise _Unsure


def _update(walk: _Walk, query: Any, visible: FrozenSet[str]) -> None:
    for key, value in query._update.items():
        for node in (key, value):
            if isinstance(node, peewee.Node):
                walk.expr(node, visible, False)
    for source in getattr(query, "_from", None) or ():
        walk.source(source, visible)
    walk.expr(query._where, visible, False)
    walk.ordering(query, visible)


def _delete(walk: _Walk, query: Any, visible: FrozenSet[str]) -> None:
    walk.expr(query._where, visible, False)
    walk.ordering(query, visible)


# --- expressions: each renders as Peewee's __sql__ of that class does -------------------------


def _value(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
           converter: Converter) -> None:
    if node.multi:
        for item in node.values:
            walk.expr(item, visible, source, converter)
    elif not _is_model(node.value):  # a model as a value renders its alias
        walk.value(node.value, node.converter, converter, visible, source)

def _expression(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
                converter: Converter) -> None:
    if node.op not in _OPERATORS and not (isinstance(node.op, str)
                                          and _OPERATOR.match(node.op)):
        raise _Unsure
    lhs = node.lhs
    field = lhs.unwrap() if isinstance(lhs, peewee.WrappedNode) else lhs
    own = (field.db_value if isinstance(field, peewee.Field) and lhs._coerce else None)
    walk.expr(lhs, visible, source, own)
    walk.expr(node.rhs, visible, source, own)

def _function(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
              converter: Converter) -> None:
    name = node.name
    if not isinstance(name, str) or not _NAME.match(name) or node.arguments is None:
        raise _Unsure
    lowered = name.lower()
    if not walk.volatile and volatile_call(lowered, len(node.arguments)):
        walk.volatile = f"volatile function {name}()"
    walk.session = walk.session or lowered == "set_config"
    for argument in node.arguments:  # plain arguments are parameters, never converted
        if isinstance(argument, peewee.Node):
            walk.expr(argument, visible, source, converter)
    for column in node._order_by or ():
        walk.expr(column, visible, source, converter)
    walk.expr(node._filter, visible, source, converter)

def _node_list(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
               converter: Converter) -> None:
    if not isinstance(node.glue, str) or not _GLUE.match(node.glue):
        raise _Unsure
    for item in node.nodes:
        walk.expr(item, visible, source, converter)

def _raw(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
         converter: Converter) -> None:
    text = node.sql
    if not isinstance(text, str):
        raise _Unsure
    if not _COLLATE.match(text.strip()) and not all(
            word.upper() in _SAFE_WORDS or word.isdigit() for word in text.split()):
        raise _Unsure  # raw SQL: whatever it names, only the parser can say

def _column(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
            converter: Converter) -> None:
    """``table.column`` (a ``Column`` or a ``FieldAlias``): the source is only named (by its
    alias), never rendered whole."""
    owner = node.source
    if not (_is_model(owner) or _sql_of(owner) in _NAMED_SOURCES):
        raise _Unsure

def _alias(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
           converter: Converter) -> None:
    if source:  # elsewhere only the alias's name is rendered
        walk.expr(node.node, visible, source, converter)

def _wrapped(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
             converter: Converter) -> None:
    walk.expr(node.node, visible, source, converter)

def _qualified(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
               converter: Converter) -> None:
    """Rendered in the column scope (Peewee 3 always, Peewee 4 for ``Star``) a source is
    only named; anything else renders as usual."""
    inner = node.node
    column_scope = getattr(node, "_scope", peewee.SCOPE_COLUMN) == peewee.SCOPE_COLUMN
    if column_scope and (_is_model(inner) or _sql_of(inner) in _NAMED_SOURCES):
        return
    walk.expr(inner, visible, False, converter)

def _cast(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
          converter: Converter) -> None:
    if not isinstance(node._cast, str) or not _CAST_TYPE.match(node._cast.strip()):
        raise _Unsure
    walk.expr(node.node, visible, source, converter)

def _ordering(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
              converter: Converter) -> None:
    collation = node.collation
    if collation is not None and not (isinstance(collation, str) and _NAME.match(collation)):
        raise _Unsure
    walk.expr(node.node, visible, source, converter)

def _case(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
          converter: Converter) -> None:
    walk.expr(node.predicate, visible, source, converter)
    for condition, result in node.expression_tuples:
        walk.expr(condition, visible, source, converter)
        walk.expr(result, visible, source, converter)
    walk.expr(node.default, visible, source, converter)

def _window(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
            converter: Converter) -> None:
    if node.frame_type not in _FRAME_TYPES:
        raise _Unsure
    extends = node._extends
    if not (extends is None or isinstance(extends, (str, peewee.Window))):
        walk.expr(extends, visible, source, converter)
    for part in (*node.partition_by, *node.order_by, node.start, node.end,
                 getattr(node, "_exclude", None)):
        walk.expr(part, visible, source, converter)

def _namespace(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
               converter: Converter) -> None:
    if str(node._namespace._name).upper() != "EXCLUDED":
        raise _Unsure

def _model(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
           converter: Converter) -> None:
    """A model instance renders its primary key (through the comparison's converter, for a
    foreign key)."""
    key = node._meta.primary_key
    if not isinstance(key, peewee.Field) or isinstance(key, peewee.CompositeKey):
        raise _Unsure
    if converter:
        try:
            converted = converter(node)
        except (TypeError, ValueError):  # Peewee falls back to the primary key too
            converted = None
        if isinstance(converted, peewee.Node):
            walk.expr(converted, visible, source)
    walk.value(getattr(node, key.name), key.db_value, None, visible, source)

def _query_expr(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
                converter: Converter) -> None:
    walk.query(node, visible)

def _values_expr(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
                 converter: Converter) -> None:
    walk.values_list(node, visible, source)

def _inert(walk: _Walk, node: Any, visible: FrozenSet[str], source: bool,
           converter: Converter) -> None:
    """Renders a quoted name or parameters only."""


_QUERIES: Dict[Any, Callable[[_Walk, Any, FrozenSet[str]], None]] = {
    peewee.Select.__sql__: _Walk.select,
    peewee.CompoundSelectQuery.__sql__: _Walk.compound,
}
_WRITES: Dict[Any, Callable[[_Walk, Any, FrozenSet[str]], None]] = {
    peewee.Insert.__sql__: _insert, peewee.Update.__sql__: _update,
    peewee.Delete.__sql__: _delete,
}
#: what Peewee's query classes call while rendering, besides ``__sql__``
_QUERY_HOOKS = (
    "__sql__", "__sql_selection__", "_apply_ordering", "_apply_subquery_alias", "apply_alias",
    "apply_column", "_subquery_parens", "_member_sql", "_member_style", "_wrap_parens",
    "apply_returning", "_set_table_alias", "_simple_insert", "_generate_insert", "_query_insert",
    "_default_values", "get_default_data", "get_default_columns",
)
_UNSEEN = object()
_QUERY_CLASSES: "weakref.WeakKeyDictionary[type, Any]" = weakref.WeakKeyDictionary()
#: sources that a column reference (``source.column``) names by their alias only
_NAMED_SOURCES = frozenset({
    peewee.Table.__sql__, peewee.ModelAlias.__sql__, peewee.Select.__sql__,
    peewee.CompoundSelectQuery.__sql__, peewee.CTE.__sql__, peewee.ValuesList.__sql__,
    peewee.Alias.__sql__,
})
_EXPRESSIONS: Dict[Any, Callable[..., None]] = {
    peewee.Select.__sql__: _query_expr,
    peewee.CompoundSelectQuery.__sql__: _query_expr,
    peewee.ValuesList.__sql__: _values_expr,
    peewee.Expression.__sql__: _expression,
    peewee.StringExpression.__sql__: _expression,
    peewee.Value.__sql__: _value,
    peewee.Function.__sql__: _function,
    peewee.NodeList.__sql__: _node_list,
    peewee.SQL.__sql__: _raw,
    peewee.Column.__sql__: _column,
    peewee.Field.__sql__: _inert,
    peewee.FieldAlias.__sql__: _column,
    peewee.Entity.__sql__: _inert,
    peewee.Star.__sql__: _inert,
    peewee.WindowAlias.__sql__: _inert,
    peewee.Alias.__sql__: _alias,
    peewee.BindTo.__sql__: _wrapped,
    peewee.Negated.__sql__: _wrapped,
    peewee.BitwiseNegated.__sql__: _wrapped,
    peewee._InFunction.__sql__: _wrapped,  # type: ignore[attr-defined]
    peewee.QualifiedNames.__sql__: _qualified,
    peewee.Cast.__sql__: _cast,
    peewee.Ordering.__sql__: _ordering,
    peewee.Case.__sql__: _case,
    peewee.Window.__sql__: _window,
    peewee.NamespaceAttribute.__sql__: _namespace,
    peewee.Model.__sql__: _model,
}
