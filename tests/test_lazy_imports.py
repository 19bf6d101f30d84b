"""``import peewee_kvcache`` does not load sqlglot, and neither do query objects (their SQL is read
from Peewee's query tree); the first raw SQL statement does. Each check runs in a fresh
interpreter: this one has long imported everything."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys, peewee
    from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache, LocalKVNamespace

    def loaded():
        return "sqlglot" in sys.modules

    print("after import", loaded())
    path, work = sys.argv[1], sys.argv[2]
    plain = peewee.SqliteDatabase(path)
    plain.execute_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    plain.close()
    cache = CloudflareKVCache(l1_directory=work + "/l1", namespace=LocalKVNamespace(work + "/kv"))
    db = CachedSqliteDatabase(path, cache=cache)

    class Item(peewee.Model):
        name = peewee.TextField()

        class Meta:
            database = db

    Item.create(name="a")
    Item.update(name="b").where(Item.id == 1).execute()
    for ids in ([1], [1, 2], [1, 2, 3]):
        assert [item.name for item in Item.select().where(Item.id.in_(ids)).with_cache()] == ["b"]
    assert Item.select().with_cache().count() == 1
    print("after query objects", loaded())
    db.execute_sql("SELECT 1")
    print("after raw SQL", loaded())
    cache.close()
''')


def run(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_import_does_not_load_sqlglot() -> None:
    assert run("import peewee_kvcache, sys; print('sqlglot' in sys.modules)").split() == ["False"]


def test_query_objects_do_not_load_sqlglot_and_raw_sql_does(tmp_path) -> None:
    lines = run(SCRIPT, str(tmp_path / "app.db"), str(tmp_path)).splitlines()
    assert lines == ["after import False", "after query objects False", "after raw SQL True"]
