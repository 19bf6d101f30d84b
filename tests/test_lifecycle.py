"""Closing and freeing: no SQLite handle is closed under a running statement, closed caches are
freed, a database's own default cache is closed with it, and exit waits a bounded time."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest

from peewee_kvcache import LocalKVNamespace
from peewee_kvcache.kv.base import KVError

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run_python(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def open_fds(suffix: str) -> List[str]:
    """This process's open files whose path ends with ``suffix``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(suffix):
            found.append(target)
    return found


def test_closing_one_cache_during_anothers_sweep_never_crashes(tmp_path):
    """The CI crash: SIGSEGV in the sweeping thread when another cache closed the namespace."""
    result = run_python(str(TESTS / "close_stress_worker.py"), str(tmp_path), "60")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rounds done" in result.stdout


def test_close_leaves_a_busy_connection_to_its_thread(tmp_path):
    """close() does not wait for (nor close) a connection in use: its thread finishes the
    statement, then closes it; later calls raise KVError."""
    namespace = LocalKVNamespace(tmp_path / "kv")
    blocker = sqlite3.connect(str(tmp_path / "kv" / "kv.sqlite3"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer below waits on the busy timeout, in SQLite
    outcome: List[object] = []

    def write() -> None:
        try:
            namespace.put("key", b"value")
            outcome.append("written")
        except KVError as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    while sys._current_frames()[writer.ident].f_code.co_name != "_write":  # in the statement
        threading.Event().wait(0.01)
    closer = threading.Thread(target=namespace.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "close() waited for a connection another thread was using"
    blocker.execute("ROLLBACK")
    writer.join(10)
    assert outcome == ["written"]
    blocker.close()
    assert open_fds("kv.sqlite3") == []  # the writer's thread closed its connection
    with pytest.raises(KVError, match="closed"):
        namespace.get("key")


def test_connections_of_ended_threads_are_closed(tmp_path):
    """Thread pools come and go: a connection whose thread ended is closed, not kept."""
    namespace = LocalKVNamespace(tmp_path / "kv")
    for _ in range(10):
        thread = threading.Thread(target=namespace.get, args=("key",))
        thread.start()
        thread.join()
    namespace.get("key")
    # this thread's, the last ended thread's, and one SQLite keeps for reuse while this process
    # holds locks on the file (closing it would drop them all): not one per thread
    assert len(open_fds("kv.sqlite3")) <= 3
    namespace.close()
    assert open_fds("kv.sqlite3") == []
