"""PostgreSQL: a write's NOTIFY travels in the write's own round trip (notify.py).

An autocommit write is sent as ``SELECT pg_notify(...); <the statement>`` and a COMMIT as
``SELECT pg_notify(...); COMMIT``: one implicit (or the open) transaction, so the notification is
delivered exactly when the write commits. These tests count what reaches the driver, check that
the statement's own results are untouched, and read the notifications a listener got up to a
sentinel sent afterwards (PostgreSQL delivers notifications in commit order), so "nothing was
sent" is an observation, not a timeout.
"""
from __future__ import annotations

import json
import logging
import select
import time
import uuid
from typing import Any, Iterator, List, Tuple

import peewee
import psycopg2
import psycopg2.extensions
import pytest

from peewee_kvcache import CachedPostgresqlDatabase
from peewee_kvcache.orm.database import CachedDatabase
from peewee_kvcache.orm.notify import NotifyInline, PostgresNotifications

from .conftest import PG


class Item(peewee.Model):
    name = peewee.CharField(unique=True)
    n = peewee.IntegerField(default=0)


class CountingCursor(psycopg2.extensions.cursor):
    """Records every text the database's connections send (one entry, one round trip)."""

    sent: List[Tuple[int, str]] = []

    def execute(self, query: Any, vars: Any = None) -> Any:  # noqa: A002 - psycopg2's name
        CountingCursor.sent.append((id(self.connection), query))
        return super().execute(query, vars)


class Refused(Exception):
    """Stands in for psycopg2's error when PostgreSQL refuses pg_notify (no EXECUTE on it)."""

    pgcode = "42501"


class RefusingServer(peewee.PostgresqlDatabase):
    """A server on which pg_notify is refused: a text starting with it fails at once, with the
    effect a real refusal has (the open transaction aborted, or the implicit one rolled back)."""

    def execute_sql(self, sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        if sql.startswith("SELECT pg_notify"):
            with pytest.raises(peewee.DataError):
                super().execute_sql("SELECT 1/0")
            message = "permission denied for function pg_notify"
            raise peewee.ProgrammingError(Refused(message), message)  # as Peewee wraps it
        return super().execute_sql(sql, params, *args, **kwargs)


class RefusingDatabase(PostgresNotifications, CachedDatabase, NotifyInline, RefusingServer):
    pass


class Notifications:
    """A LISTEN connection on the cache's channel."""

    def __init__(self, channel: str):
        self.channel = channel
        self.conn = psycopg2.connect(dbname="test", **PG)
        self.conn.autocommit = True
        self.conn.cursor().execute(f'LISTEN "{channel}"')
        self.other = psycopg2.connect(dbname="test", **PG)
        self.other.autocommit = True

    def until_sentinel(self) -> List[List[str]]:
        """The names of every notification committed before now."""
        sentinel = "sentinel-" + uuid.uuid4().hex
        self.other.cursor().execute("SELECT pg_notify(%s, %s)", (self.channel, sentinel))
        got: List[List[str]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            select.select([self.conn], [], [], 0.5)
            self.conn.poll()
            while self.conn.notifies:
                text = self.conn.notifies.pop(0).payload
                if text == sentinel:
                    return got
                got.append(json.loads(text)["n"])
        raise AssertionError("the sentinel notification never arrived")

    def close(self) -> None:
        self.conn.close()
        self.other.close()


@pytest.fixture
def pg(make_cache, pg_schema) -> Iterator[Tuple[CachedPostgresqlDatabase, Notifications]]:
    db = CachedPostgresqlDatabase("test", cache=make_cache(), cursor_factory=CountingCursor,
                                  options=f"-c search_path={pg_schema}", **PG)
    db.bind([Item])
    db.create_tables([Item])
    Item.create(name="a")
    heard = Notifications(db.cache.channel)
    yield db, heard
    heard.close()
    db.drop_tables([Item])
    db.close()
    db.stop_listener()


def sent_by(db: peewee.Database, action: Any) -> List[str]:
    """The texts ``action`` sent on ``db``'s connection."""
    conn = id(db.connection())
    CountingCursor.sent.clear()
    action()
    return [text for owner, text in CountingCursor.sent if owner == conn]


NAMES = [["t:item"]]


def test_an_autocommit_update_is_one_round_trip_with_its_notification(pg):
    db, heard = pg
    texts = sent_by(db, lambda: Item.update(n=1).where(Item.name == "a").execute())
    assert len(texts) == 1 and texts[0].startswith("SELECT pg_notify(")
    assert heard.until_sentinel() == NAMES
    assert Item.get(Item.name == "a").n == 1


def test_the_statement_keeps_its_own_results(pg):
    db, heard = pg
    assert Item.update(n=Item.n + 1).execute() == 1                       # rowcount
    assert Item.update(n=5).where(Item.name == "none").execute() == 0
    rows = list(Item.insert_many([{"name": "b"}, {"name": "c"}]).returning(Item.name).execute())
    assert sorted(row.name for row in rows) == ["b", "c"]               # RETURNING
    new_id = Item.insert(name="d").execute()                             # Peewee's RETURNING id
    assert Item.get_by_id(new_id).name == "d"
    cursor = db.execute_sql("UPDATE item SET name = name || '%%' WHERE name = %s", ("b",))
    assert cursor.rowcount == 1                                          # %-escapes and params
    db.execute_sql("UPDATE item SET name = 'c%%c' WHERE name = 'c'")     # escapes, no params
    db.execute_sql("UPDATE item SET n = %(n)s WHERE name = %(name)s", {"n": 7, "name": "d"})
    assert sorted((i.name, i.n) for i in Item.select()) == [
        ("a", 1), ("b%", 0), ("c%c", 0), ("d", 7)]
    assert heard.until_sentinel() == NAMES * 7


def test_a_failed_write_sends_no_notification(pg):
    db, heard = pg
    with pytest.raises(peewee.IntegrityError):
        Item.insert(name="a").execute()                                  # unique violation
    assert heard.until_sentinel() == []
    assert not db.in_transaction()
    assert Item.update(n=2).execute() == 1                               # the connection goes on
    assert heard.until_sentinel() == NAMES


def test_a_transaction_sends_its_notification_with_the_commit(pg):
    db, heard = pg
    with db.atomic():
        texts = sent_by(db, lambda: [Item.update(n=i).execute() for i in range(3)])
        assert not any("pg_notify" in text for text in texts)
        assert heard.until_sentinel() == []                              # nothing before COMMIT
        committed = sent_by(db, db.commit)  # atomic() commits again on exit, with nothing to tell
    assert len(committed) == 1 and committed[0].startswith("SELECT pg_notify(")
    assert committed[0].endswith("; COMMIT")
    assert heard.until_sentinel() == NAMES
    assert Item.get().n == 2


def test_a_rolled_back_transaction_sends_nothing(pg):
    db, heard = pg
    with db.atomic() as txn:
        Item.update(n=9).execute()
        txn.rollback()
    assert heard.until_sentinel() == []
    assert Item.get().n == 0


def test_a_commit_of_an_aborted_transaction_rolls_back_as_before(pg):
    """After an error the server rolls the transaction back at COMMIT; a notification in front
    would fail instead (and leave the transaction open): none is sent, nothing was committed."""
    db, heard = pg
    db.begin()
    Item.update(n=3).execute()
    with pytest.raises(peewee.IntegrityError):
        Item.insert(name="a").execute()
    db.commit()                                                          # no error, as in Peewee
    assert heard.until_sentinel() == []
    assert Item.get().n == 0
    assert Item.update(n=4).execute() == 1
    assert heard.until_sentinel() == NAMES


def test_a_raw_commit_carries_the_notification(pg):
    db, heard = pg
    db.execute_sql("BEGIN")
    Item.update(n=6).execute()
    texts = sent_by(db, lambda: db.execute_sql("COMMIT"))
    assert len(texts) == 1 and texts[0].startswith("SELECT pg_notify(")
    assert heard.until_sentinel() == NAMES
    assert Item.get().n == 6


def test_ddl_that_refuses_a_transaction_block_still_runs(pg):
    """CREATE INDEX CONCURRENTLY cannot run in a multi-statement text: a DDL statement's
    notification follows it, in a statement of its own."""
    db, heard = pg
    texts = sent_by(db, lambda: db.execute_sql("CREATE INDEX CONCURRENTLY item_n ON item (n)"))
    assert texts[0] == "CREATE INDEX CONCURRENTLY item_n ON item (n)"
    assert texts[1].startswith("SELECT pg_notify(")
    assert heard.until_sentinel() == NAMES


def test_a_refused_notification_does_not_fail_the_write(make_cache, pg_schema, caplog):
    """Without EXECUTE on pg_notify the text fails before the statement ran and the implicit
    transaction rolls back: the statement is sent again alone, and the refusal logged."""
    db = RefusingDatabase("test", cache=make_cache(), options=f"-c search_path={pg_schema}",
                          **PG)
    db.bind([Item])
    db.create_tables([Item])
    try:
        with caplog.at_level(logging.WARNING, logger="peewee_kvcache"):
            Item.create(name="x")
        assert [i.name for i in Item.select()] == ["x"]
        with pytest.raises(peewee.IntegrityError):                       # its own error wins
            Item.create(name="x")
        with pytest.raises(peewee.ProgrammingError):                     # a COMMIT can't resend:
            with db.atomic():                                            # the refusal aborted
                Item.update(n=1).execute()                               # its transaction
        assert Item.get().n == 0
    finally:
        db.drop_tables([Item])
        db.close()
        db.stop_listener()
    assert any("NOTIFY failed (ProgrammingError: permission denied for function pg_notify); "
               "the statement was sent without it" in record.getMessage()
               for record in caplog.records)
