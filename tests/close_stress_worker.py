"""Run by test_lifecycle.py in a subprocess under faulthandler: two caches share one
LocalKVNamespace; each round closes one while the other's background sweep reads and deletes.

Closing the namespace used to close the sweeping thread's SQLite connection under its running
statement: a segmentation fault, which faulthandler turns into a traceback and exit code 139.
Usage: close_stress_worker.py DIRECTORY ROUNDS
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading

from peewee_kvcache import CloudflareKVCache, LocalKVNamespace
from peewee_kvcache.codec import CachedResult


class SignallingNamespace(LocalKVNamespace):
    """Sets ``sweeping`` when a sweep starts listing, so the close lands during the sweep."""

    sweeping = threading.Event()

    def list(self, *args, **kwargs):
        self.sweeping.set()
        return super().list(*args, **kwargs)


def main(directory: str, rounds: int) -> None:
    row = CachedResult(("x",), ((1,),))
    for _ in range(rounds):
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


if __name__ == "__main__":
    faulthandler.enable()
    main(sys.argv[1], int(sys.argv[2]))
