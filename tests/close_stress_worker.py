"""Run by test_lifecycle.py in a subprocess under faulthandler (closing a SQLite connection under a
running statement was a segmentation fault: here a traceback and exit code 139, not a dead pytest).

``rounds DIRECTORY N``: two caches share one LocalKVNamespace; each round closes one while the
other's background sweep reads and deletes.
``busy DIRECTORY``: close() while another thread's write waits on SQLite's busy timeout.
"""
from __future__ import annotations

import faulthandler
import os
import sqlite3
import sys
import threading

from peewee_kvcache import CloudflareKVCache, LocalKVNamespace
from peewee_kvcache.core.codec import CachedResult
from peewee_kvcache.kv.base import KVError


class SignallingNamespace(LocalKVNamespace):
    """Sets ``sweeping`` when a sweep starts listing, so the close lands during the sweep."""

    sweeping = threading.Event()

    def list(self, *args, **kwargs):
        self.sweeping.set()
        return super().list(*args, **kwargs)


def rounds(directory: str, count: str) -> None:
    row = CachedResult(("x",), ((1,),))
    for _ in range(int(count)):
        namespace = SignallingNamespace(os.path.join(directory, "kv"))
        closing = CloudflareKVCache(namespace, l1_directory=os.path.join(directory, "a"))
        sweeping = CloudflareKVCache(namespace, l1_directory=os.path.join(directory, "b"))
        for i in range(50):
            sweeping.put(f"k{i}", row, tables=["t"])
        assert sweeping.drain(10)
        SignallingNamespace.sweeping.clear()
        sweeping.invalidate(tables=["t"])
        assert SignallingNamespace.sweeping.wait(10)
        closing.close()
        sweeping.close()
    print("rounds done")


def busy(directory: str) -> None:
    """close() neither waits for nor closes a connection in use: its thread finishes the
    statement, then closes it; later calls raise KVError."""
    namespace = LocalKVNamespace(directory)
    blocker = sqlite3.connect(os.path.join(directory, "kv.sqlite3"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write below waits on the busy timeout, in SQLite
    outcome = []

    def write() -> None:
        try:
            namespace.put("key", b"value")
            outcome.append("written")
        except KVError as exc:
            outcome.append(repr(exc))

    writer = threading.Thread(target=write)
    writer.start()
    while sys._current_frames()[writer.ident].f_code.co_name != "_write":  # in the statement
        threading.Event().wait(0.01)
    closer = threading.Thread(target=namespace.close)
    closer.start()
    closer.join(5)
    print("close returned" if not closer.is_alive() else "close blocked", flush=True)
    blocker.execute("ROLLBACK")
    writer.join(10)
    blocker.close()
    print("outcome", outcome, flush=True)
    try:
        namespace.get("key")
    except KVError as exc:
        print("after close:", exc, flush=True)


if __name__ == "__main__":
    faulthandler.enable()
    {"rounds": rounds, "busy": busy}[sys.argv[1]](*sys.argv[2:])
