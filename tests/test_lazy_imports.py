"""``import peewee_kvcache`` does not load sqlglot, and neither do query objects (their SQL is read
from Peewee's query tree); the first raw SQL statement does. Nor does it load requests (and
urllib3): only the Cloudflare REST client needs them. Each check runs in a fresh interpreter:
this one has long imported everything."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Dict, Optional

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


HTTP_SCRIPT = textwrap.dedent('''
    import sys, peewee
    import peewee_kvcache
    from peewee_kvcache import CachedSqliteDatabase

    def loaded():
        return sorted({"requests", "urllib3"} & set(sys.modules))

    print("after import", loaded())
    db = CachedSqliteDatabase(sys.argv[1])  # the default cache: L1 and a local KV namespace

    class Item(peewee.Model):
        name = peewee.TextField()

        class Meta:
            database = db

    db.create_tables([Item])
    Item.create(name="a")
    for _ in range(2):  # a miss stored in L1 and the local KV, then a hit
        assert [item.name for item in Item.select().with_cache()] == ["a"]
    assert db.cache.get_stats().hits == 1
    print("after cached queries", loaded())
    db.cache.close()
    from peewee_kvcache import CloudflareKVNamespace
    namespace = CloudflareKVNamespace("account", "namespace", "token")
    print("after building a CloudflareKVNamespace", loaded())
    namespace.close()
''')


def run(code: str, *args: str, env: Optional[Dict[str, str]] = None) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_import_does_not_load_sqlglot() -> None:
    assert run("import peewee_kvcache, sys; print('sqlglot' in sys.modules)").split() == ["False"]


def test_query_objects_do_not_load_sqlglot_and_raw_sql_does(tmp_path) -> None:
    lines = run(SCRIPT, str(tmp_path / "app.db"), str(tmp_path)).splitlines()
    assert lines == ["after import False", "after query objects False", "after raw SQL True"]


def test_the_local_kv_never_loads_requests_and_a_cloudflare_namespace_does(tmp_path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "user-cache"))  # the default directory
    lines = run(HTTP_SCRIPT, str(tmp_path / "app.db"), env=env).splitlines()
    assert lines == ["after import []", "after cached queries []",
                     "after building a CloudflareKVNamespace ['requests', 'urllib3']"]
    assert (tmp_path / "user-cache" / "peewee_kvcache" / "kv" / "kv.sqlite3").exists()
