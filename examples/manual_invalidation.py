"""Writes the cache cannot see, and invalidating by hand after them.

Every statement sent through the cached database is analysed, so its writes invalidate. A write
that bypasses it (another application, ``psql``, a cron job, a trigger touching other tables) is
invisible: cached reads stay stale until their TTL. Here the out-of-band write is simulated by
calling Peewee's own ``Database.execute_sql``, which skips the cache's analysis. The fix is
``db.cache.invalidate(tables=[...])`` in code, or ``peewee-kvcache invalidate --table account``
from a shell.

    python examples/manual_invalidation.py
"""
from __future__ import annotations

import peewee

from common import example_database, show


class Account(peewee.Model):
    owner = peewee.CharField(max_length=64, unique=True)
    balance = peewee.IntegerField()

    class Meta:
        table_name = "example_account"


def main() -> None:
    with example_database() as db:
        db.bind([Account])
        db.drop_tables([Account], safe=True)
        db.create_tables([Account])
        Account.create(owner="ada", balance=100)

        def balance() -> int:
            return (Account.select(Account.balance).where(Account.owner == "ada")
                    .with_cache(ex=300).scalar())

        def out_of_band_write() -> str:
            sql = f"UPDATE example_account SET balance = 250 WHERE owner = {db.param}"
            peewee.Database.execute_sql(db, sql, ("ada",))  # the cache's analysis is skipped
            return "UPDATE ... SET balance = 250"

        show(db, "balance", balance)
        show(db, "balance again: hit", balance)
        show(db, "write behind the cache's back", out_of_band_write)
        assert show(db, "balance: stale, still cached", balance) == 100
        show(db, "db.cache.invalidate(tables=[Account])",
             lambda: db.cache.invalidate(tables=[Account]))
        assert show(db, "balance: fresh from the database", balance) == 250
        db.drop_tables([Account])


if __name__ == "__main__":
    main()
