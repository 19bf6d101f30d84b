"""strategy="all": every SELECT is cached without touching the queries; with_cache(False) opts out.

Good for read-mostly applications: ``Model.get()``, plain selects and aggregates are all cached
with the cache's ``default_ttl``. A read that must always be live (here the stock level a checkout
page shows) says ``with_cache(False)`` and goes to the database every time.

    python examples/strategy_all.py
"""
from __future__ import annotations

import peewee

from common import example_database, show


class Product(peewee.Model):
    name = peewee.CharField(max_length=64, unique=True)
    price = peewee.DecimalField(max_digits=8, decimal_places=2)
    stock = peewee.IntegerField()

    class Meta:
        table_name = "example_product"


def main() -> None:
    with example_database(strategy="all", default_ttl=60) as db:
        db.bind([Product])
        db.drop_tables([Product], safe=True)
        db.create_tables([Product])
        Product.insert_many([("lamp", "39.90", 12), ("desk", "249.00", 3), ("chair", "89.50", 8)],
                            fields=[Product.name, Product.price, Product.stock]).execute()

        def lamp_price() -> str:
            return f"{Product.get(Product.name == 'lamp').price:.2f}"  # no with_cache() needed

        def catalogue() -> list:
            return [p.name for p in Product.select().order_by(Product.name)]

        def stock_left() -> int:  # opted out: always read from the database
            return Product.select(peewee.fn.SUM(Product.stock)).with_cache(False).scalar()

        print("strategy='all': cached without with_cache(), except with_cache(False)\n")
        show(db, "Product.get(lamp)              (miss)", lamp_price)
        show(db, "Product.get(lamp) again        (hit)", lamp_price)
        show(db, "catalogue                      (miss)", catalogue)
        show(db, "catalogue again                (hit)", catalogue)
        show(db, "stock, with_cache(False)       (database)", stock_left)
        show(db, "stock again                    (database)", stock_left)
        show(db, "UPDATE lamp price              (write)",
             lambda: Product.update(price="35.00").where(Product.name == "lamp").execute())
        assert show(db, "Product.get(lamp)              (miss: new)", lamp_price) == "35.00"
        show(db, "Product.get(lamp) again        (hit)", lamp_price)
        db.drop_tables([Product])


if __name__ == "__main__":
    main()
