"""Tags: name groups of cached queries and drop a whole group with ``invalidate(tags=...)``.

A tag is a label given with ``with_cache(tag=...)``. With ``auto_invalidate=False`` a result
ignores writes and lives until its TTL or until its tag is invalidated: right for pages that may
lag (a homepage rebuilt when an editor publishes), wrong for anything that must be exact.
Auto-invalidated results can carry tags too: a write *or* the tag drops them.

    python examples/tags.py
"""
from __future__ import annotations

import peewee

from common import example_database, show


class Article(peewee.Model):
    title = peewee.CharField(max_length=64)
    published = peewee.BooleanField(default=True)

    class Meta:
        table_name = "example_article"


def main() -> None:
    with example_database() as db:
        db.bind([Article])
        db.drop_tables([Article], safe=True)
        db.create_tables([Article])
        Article.insert_many([("Hello",), ("Second post",)], fields=[Article.title]).execute()

        def homepage() -> list:  # survives writes: only its TTL or its tag ends it
            query = Article.select(Article.title).where(Article.published).order_by(Article.id)
            return [a.title for a in query.with_cache(ex=300, tag="homepage",
                                                      auto_invalidate=False)]

        def article_count() -> int:  # auto-invalidated, and tagged as well
            return (Article.select().where(Article.published)
                    .with_cache(ex=300, tag=["homepage", "counters"]).count())

        show(db, "homepage (tag homepage, no auto-invalidation)", homepage)
        show(db, "homepage again: hit", homepage)
        show(db, "count (tags homepage + counters)", article_count)
        show(db, "publish a third article", lambda: Article.create(title="Third").title)
        assert show(db, "homepage: still the cached two", homepage) == ["Hello", "Second post"]
        show(db, "count: the write dropped it", article_count)
        show(db, "invalidate(tags='homepage')", lambda: db.cache.invalidate(tags="homepage"))
        assert len(show(db, "homepage: rebuilt with three", homepage)) == 3
        show(db, "count: dropped by the tag too", article_count)
        show(db, "invalidate(tags=['counters'])",
             lambda: db.cache.invalidate(tags=["counters"]))
        show(db, "count: dropped again", article_count)
        show(db, "homepage: untouched by 'counters'", homepage)
        db.drop_tables([Article])


if __name__ == "__main__":
    main()
