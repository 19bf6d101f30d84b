"""Why is (or isn't) a query cached: what the Peewee layer knows of it (tables, tags, whether and
why not it can be cached, its key) joined with what each cache level holds for it.

Debug panels and key inspection are what users of query caches ask for most after backends and
stampedes; this answers the question a log line can't: "why did this query hit the database?".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple

import peewee

from ..core.codec import UnsupportedValue
from ..core.names import stamp_names
from ..sql.info import SqlInfo
from .keys import result_key
from .query import CacheOptions, find_options, options_for


#: the cache's half: (key, names, shape) -> what memory, L1 and L2 hold and what would serve
Probe = Callable[[str, Sequence[str], Optional[Hashable]], Dict[str, Any]]


@dataclass(frozen=True)
class Explanation:
    """The answer of ``explain``; ``str()`` for people, :meth:`as_dict` for scripts."""

    sql: str
    tables: Tuple[str, ...]
    tags: Tuple[str, ...]
    cacheable: bool
    #: why it is not cached ("" when it is)
    reason: str
    key: Optional[str] = None
    #: memory, l1, l2: what each holds for the key (see ``CloudflareKVCache.probe``)
    levels: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: "memory", "l1", "l2" or "database": what would answer it now
    served_by: str = "database"
    #: whether a miss in memory of its shape reads L1 and asks L2 before the database, and
    #: what that is judged on
    l1_asked_on_miss: Optional[bool] = None
    l2_asked_on_miss: Optional[bool] = None
    costs: Optional[Dict[str, Optional[float]]] = None
    l1_ms: Optional[float] = None
    l2_ms: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"query:      {self.sql}",
                 f"tables:     {', '.join(self.tables) or '-'}",
                 f"tags:       {', '.join(self.tags) or '-'}",
                 f"cacheable:  {'yes' if self.cacheable else 'no: ' + self.reason}"]
        if self.key is not None:
            lines.append(f"key:        {self.key}")
        for level in ("memory", "l1", "l2"):
            if level in self.levels:
                lines.append(f"{level + ':':<11} {_describe(self.levels[level])}")
        lines.append(f"served by:  {self.served_by}")
        if self.l2_asked_on_miss is not None:
            lines.append(f"on a miss:  {_miss_path(self)}")
        return "\n".join(lines)


def _describe(level: Dict[str, Any]) -> str:
    if not level.get("holds"):
        return "nothing"
    parts = ["holds it" if level.get("valid") else "holds an invalidated or expired copy"]
    if level.get("expires_in_s") is not None:
        parts.append(f"expires in {level['expires_in_s']:.1f} s")
    if level.get("checked_s_ago") is not None:
        parts.append(f"checked against L2 {level['checked_s_ago']:.1f} s ago")
    return ", ".join(parts)


def _miss_path(explained: Explanation) -> str:
    costs = explained.costs
    asked = [(level, ms, rate) for level, asks, ms, rate in (
        ("L1", explained.l1_asked_on_miss, explained.l1_ms, "l1_hit_rate"),
        ("L2", explained.l2_asked_on_miss, explained.l2_ms, "l2_hit_rate")) if asks]
    path = ", ".join(f"reads {level}" for level, _, _ in asked) or "skips L1 and L2"
    judged = [f"{level} {ms:.2f} ms, had it {costs[rate]:.0%} of the time"
              for level, ms, rate in asked
              if costs is not None and ms is not None and costs[rate] is not None]
    if costs is not None:
        judged.insert(0, f"database {costs['db_ms']:.2f} ms")
    return f"{path}, then the database" + (f" ({'; '.join(judged)})" if judged else "")


def explain(database: Any, query: Any, probe: Probe, params: Sequence[Any] = (),
            as_query: bool = False) -> Explanation:
    """Explain ``query`` (a Peewee query object or a SQL string with ``params``) on
    ``database`` (a ``CachedDatabase``), with ``probe`` telling what the cache's levels hold
    (see the module doc). A SQL string is raw SQL, never cached, unless ``as_query``: the text
    of a query object run with ``with_cache()`` (what the command line explains). Nothing is
    run; L2 is read once."""
    if isinstance(query, str):
        sql, options = query, (CacheOptions() if as_query else None)
        why_not = "" if as_query else ("raw SQL is not cached: run it as a query object with "
                                       "with_cache()")
    elif isinstance(query, peewee.Query):
        sql, params = database.get_sql_context().sql(query).query()
        options = options_for(query, database.cache.strategy)
        why_not = _not_selected(query, database.cache.strategy) if options is None else ""
    else:
        raise TypeError(f"query must be a Peewee query or a SQL string, got "
                        f"{type(query).__name__}")
    info: SqlInfo = database._kv_texts.get(sql) or database._kv_analyze(
        sql, None if isinstance(query, str) else query)
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list or tuple, got {params!r}")
    tags = options.tags if options is not None else ()
    names = stamp_names(info.read_tables, tags, options.auto_invalidate if options else True)
    why_not = why_not or _not_cacheable(database, info, names)
    explained = Explanation(sql=sql, tables=tuple(sorted(info.read_tables)), tags=tuple(tags),
                            cacheable=not why_not, reason=why_not)
    session = database._kv_session(True)  # the key depends on the connection's session
    try:
        key = result_key(session.identity, session.hashes, sql, params,
                         options or CacheOptions())
    except UnsupportedValue as exc:
        return replace(explained, reason=explained.reason or str(exc), cacheable=False)
    held = probe(key, names, info.shape or sql)
    served_by = held["served_by"] if not why_not else "database"
    return replace(explained, key=key, levels=held["levels"], served_by=served_by,
                   l1_asked_on_miss=held["l1_asked_on_miss"] if not why_not else None,
                   l2_asked_on_miss=held["l2_asked_on_miss"] if not why_not else None,
                   costs=held["costs"], l1_ms=held["l1_ms"], l2_ms=held["l2_ms"])


def _not_selected(query: Any, strategy: str) -> str:
    if not isinstance(query, peewee.SelectBase):
        return "not a SELECT: a write invalidates, it is never cached"
    options = find_options(query)
    if options is not None and not options.enabled:
        return "with_cache(False) opts it out"
    return f"no with_cache() and strategy is {strategy!r} (use with_cache() or strategy='all')"


def _not_cacheable(database: Any, info: SqlInfo, names: Tuple[str, ...]) -> str:
    if info.kind != "select":
        return f"not a SELECT ({info.kind})"
    if not info.cacheable:
        return info.reason or "not cacheable"
    txn = database._kv_open_transaction()
    if txn is not None and txn.bypasses(info.read_tables, names):
        return "inside a transaction that wrote one of its tables: it reads the database"
    return ""
