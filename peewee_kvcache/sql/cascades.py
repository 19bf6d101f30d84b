"""How foreign-key cascades spread a write: the tables whose rows change with the written ones
through ON DELETE / ON UPDATE actions declared on Peewee models."""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Set

import peewee

from .tables import table_key

_CASCADING_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})


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
