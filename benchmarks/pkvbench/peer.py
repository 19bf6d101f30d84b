"""The nearest peer, django-cachalot: Django models over the very tables Peewee created
(``managed = False``), Django configured in-process with cachalot and a diskcache-backed cache
(the same storage engine as our L1), the same two queries, uncached and hot."""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Sequence

from .timing import Variant
from .variants import BenchmarkInvalid, Cell

PEER_UNCACHED, PEER_HIT = "cachalot uncached", "cachalot hit"


def configure(databases: Dict[str, Dict[str, Any]], cache_dir: Path) -> None:
    """Configure Django once for this process: one alias per backend, cachalot on."""
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.dummy"}, **databases},
        INSTALLED_APPS=["cachalot", "pkvbench"],  # pkvbench: reverse relations need an app
        CACHES={"default": {"BACKEND": "diskcache.DjangoCache", "LOCATION": str(cache_dir)}},
        USE_TZ=False,  # Peewee's DateTimeField holds naive datetimes
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


@functools.lru_cache(maxsize=None)
def models() -> SimpleNamespace:
    """Django models of the benchmark's tables; defined once, after ``configure``."""
    from django.db import models as m

    def meta(table: str) -> type:
        return type("Meta", (), {"app_label": "pkvbench", "managed": False, "db_table": table})

    class DjItem(m.Model):
        name = m.CharField(max_length=64)
        price = m.DecimalField(max_digits=10, decimal_places=2)
        created = m.DateTimeField()
        stock = m.IntegerField()
        Meta = meta("item")

    class DjAuthor(m.Model):
        name = m.CharField(max_length=64)
        Meta = meta("author")

    class DjBook(m.Model):
        author = m.ForeignKey(DjAuthor, m.DO_NOTHING, related_name="books")
        title = m.CharField(max_length=64)
        Meta = meta("book")

    class DjReview(m.Model):
        book = m.ForeignKey(DjBook, m.DO_NOTHING, related_name="reviews")
        stars = m.IntegerField()
        Meta = meta("review")

    return SimpleNamespace(Item=DjItem, Author=DjAuthor, Book=DjBook, Review=DjReview)


def queryset(alias: str, shape: str, n: int) -> Any:
    """The Django twin of the cell's Peewee query (same filter; same joins and aggregates)."""
    from django.db.models import Count, Sum

    dj = models()
    if shape == "select":
        return dj.Item.objects.using(alias).filter(id__range=(1, n))
    return (dj.Author.objects.using(alias).filter(id__range=(1, n))
            .annotate(n_reviews=Count("books__reviews"), stars=Sum("books__reviews__stars")))


def _sql_statements(alias: str, run: Callable[[], object]) -> int:
    """How many statements Django sent to the database while ``run`` ran."""
    from django.db import connections

    sent: List[str] = []

    def count(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        sent.append(sql)
        return execute(sql, *args)

    with connections[alias].execute_wrapper(count):
        run()
    return len(sent)


def peer(cell: Cell) -> List[Variant]:
    """cachalot with caching disabled (Django alone) and hot; the hot one is checked, once and
    untimed, to send no SQL at all."""
    from cachalot.api import cachalot_disabled

    alias, shape, n = cell.backend, cell.shape, cell.size

    def uncached() -> list:
        with cachalot_disabled():
            return list(queryset(alias, shape, n))

    def hot() -> list:
        return list(queryset(alias, shape, n))

    hot()
    if _sql_statements(alias, hot) != 0:
        raise BenchmarkInvalid(f"{cell}: cachalot's hot query still reached the database")
    return [Variant(PEER_UNCACHED, uncached), Variant(PEER_HIT, hot)]


def close(aliases: Sequence[str]) -> None:
    """Close Django's connections before the schema they point at is dropped."""
    from django.db import connections

    for alias in aliases:
        connections[alias].close()
