"""Which tables a parsed statement (a sqlglot tree) reads and writes, and whether a SELECT may be
cached.

The cache tags every cached SELECT with the tables it read and drops those entries when a write
touches one of them, so a table missed here means stale results while an extra one only costs a
cache miss. Everything therefore errs towards "more": names are compared bare and lowercase, and
whatever cannot be resolved is reported as ``writes_unknown`` so the caller invalidates everything.
"""
from __future__ import annotations

from typing import List, Set, Tuple

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType

from .dialects import keyword
from .info import OPAQUE, SqlInfo, unknown_write
from .volatile import VOLATILE_NODE_CLASSES, time_word, volatile_call

_VOLATILE_NODES = tuple(getattr(exp, name) for name in VOLATILE_NODE_CLASSES if hasattr(exp, name))


def rename(rest: str, parser: Dialect) -> SqlInfo:
    """MySQL ``RENAME TABLE a TO b, c TO d`` (``rest`` follows RENAME); sqlglot keeps it opaque.
    Raises SqlglotError when ``rest`` can't be tokenized."""
    tokens = parser.tokenize(rest)
    if len(tokens) < 4 or tokens[0].text.upper() != "TABLE":
        return unknown_write("RENAME of something other than a table")
    names: Set[str] = set()
    last = ""
    for token in tokens[1:] + [None]:  # a name ends at TO, a comma or the end; keep its last part
        if token is None or keyword(token) == "TO" or token.token_type == TokenType.COMMA:
            names.update([last.lower()] if last else [])
            last = ""
        elif token.token_type != TokenType.DOT:
            last = token.text
    if not names:
        return unknown_write("RENAME TABLE without table names")
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


def classify(statement: exp.Expression) -> SqlInfo:
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
        return unknown_write(f"unrecognised statement {statement.key.upper()}")
    skip = {id(node) for node in targets + names}
    reads = frozenset(t.name.lower() for t in statement.find_all(exp.Table)
                      if id(t) not in skip and _is_table(t) and not _is_cte_reference(t))
    written = frozenset(t.name.lower() for t in targets if _is_table(t))
    reason = f"{kind} statement" if kind != "select" else ""
    if kind == "select":
        into = statement.find(exp.Into)
        reason = ("locking clause" if statement.find(exp.Lock) else
                  "SELECT INTO a variable" if into else volatile(statement))
    return SqlInfo(kind, reads, written, unknown, kind == "select" and not reason, reason,
                   session=OPAQUE if _changes_session(statement) else "")


def _changes_session(statement: exp.Expression) -> bool:
    """A temporary table or view shadows a table's name for this connection only; set_config()
    is SET in a function call."""
    if isinstance(statement, exp.Create) and statement.find(exp.TemporaryProperty):
        return True
    return any(call.name.lower() == "set_config" for call in statement.find_all(exp.Anonymous))


def volatile(tree: exp.Expression) -> str:
    """Why the result of ``tree`` may differ between runs ("" when it can't)."""
    for node in tree.find_all(exp.Func, exp.Literal):
        if isinstance(node, exp.Literal):
            if node.is_string and time_word(node.this):
                return f"time-dependent literal {node.sql()}"
            continue
        anonymous = isinstance(node, exp.Anonymous)
        names = {node.name.lower()} if anonymous else {name.lower() for name in node.sql_names()}
        arguments = sum(1 for _ in node.iter_expressions())
        if (isinstance(node, _VOLATILE_NODES)
                or any(volatile_call(name, arguments) for name in names)):
            return f"volatile function {node.sql()}"
    return ""
