"""How a type checker sees ``with_cache``: called as a function it is typed, and keeps the query's
own type (a chained call after it still knows its model)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import peewee
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SNIPPET = '''
import peewee
from peewee_kvcache import with_cache

class User(peewee.Model):
    name = peewee.CharField()

reveal_type(with_cache(User.select(), ex=30))
reveal_type(with_cache(User.select(), tag=["a"]).where(User.name == "b"))
with_cache(User.select(), ex="30")
'''


@pytest.mark.skipif(int(peewee.__version__.split(".")[0]) < 4,
                    reason="Peewee 3 ships no type stubs: every query is Any there")
def test_with_cache_is_typed_for_type_checkers(tmp_path):
    (tmp_path / "snippet.py").write_text(SNIPPET)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(tmp_path / "snippet.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert [line.split("Revealed type is ")[-1] for line in lines if "Revealed" in line] == [
        '"peewee.ModelSelect[snippet.User]"'] * 2, done.stdout + done.stderr
    assert any(":10: error: Argument \"ex\"" in line for line in lines), done.stdout
