"""Fork safety (gunicorn --preload, uWSGI, Celery prefork, multiprocessing with fork): a child
forked while the writer is stuck in KV with work queued, and while another thread holds every
lock, reads, caches and invalidates (L1 and L2) and exits within a second; the parent goes on."""
from __future__ import annotations

import json
import os

import pytest

from peewee_kvcache.testing.kv_server import KVServer
from tests.test_lifecycle import TESTS, run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

CHECKS = ("read_hit", "cached_in_l2", "swept_from_l2", "fresh_after_write")


def fork_report(tmp_path, backend: str, schema=None, server=None, release_after=None) -> dict:
    config = {"dir": str(tmp_path), "backend": backend, "schema": schema, "server": server,
              "release_after": release_after}
    result = run_python(str(TESTS / "fork_worker.py"), json.dumps(config))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["parent_pending_at_fork"] >= 2  # one write stuck in KV, more queued
    assert report["child_exit"] == 0, (report, result.stderr[-3000:])
    assert report["child_total_s"] < 1.0, report
    for side in ("child", "parent"):
        assert all(report[side][check] for check in CHECKS), (side, report)
    assert report["parent"]["sees_child_write"], report
    return report


def test_fork_with_work_in_flight_and_locks_held_sqlite(tmp_path):
    fork_report(tmp_path, "sqlite")


def test_fork_waits_for_the_writers_work_in_hand(tmp_path):
    """A fork copies SQLite's own mutexes: forked while the writer was inside SQLite, a child
    hung on its first SQLite call (seen under gunicorn --preload). The fork now waits until the
    writer finished the work in hand: here a KV write that ends 0.3 s after the fork began."""
    report = fork_report(tmp_path, "sqlite", release_after=0.3)
    assert report["fork_s"] >= 0.25, report
    assert report["child"]["l2_entries_at_start"] > report["l2_entries_before_fork"], report


def test_fork_restarts_the_notify_listener_in_the_child(tmp_path, pg_schema):
    """The child starts its own LISTEN thread on its first cached read; the parent's LISTEN
    connection (a socket the child inherited) keeps working after the child exits."""
    report = fork_report(tmp_path, "postgres", schema=pg_schema)
    assert report["child"]["listener_ready"]
    assert report["parent"]["hears_other_hosts"]


def test_fork_gives_the_child_its_own_kv_connections(tmp_path):
    """Over the REST client: the child never sends on the parent's pooled keep-alive sockets
    (two processes' bytes would interleave on one connection), and the parent's still work."""
    with KVServer(tmp_path / "server", api_token="fork-token") as server:
        report = fork_report(tmp_path / "run", "sqlite", server={
            "base_url": server.base_url, "account_id": server.account_id,
            "namespace_id": server.namespace_id, "api_token": server.api_token})
    assert report["parent_kv_sockets_at_fork"] >= 1
    assert report["child"]["no_parent_kv_socket"]
