"""Models and subprocess entry points for tests/test_faults.py.

Run as ``python -m tests.fault_worker '<json>'`` from the repository root:

- ``{"action": "write", ...}`` commits ``UPDATE fault_item SET name = <new>`` through a cached
  SQLite database, prints ``committed`` and then sleeps until it is killed. With
  ``"die_before_bump": true`` the process stops right after the COMMIT, before the cache bumps
  its L1 tokens or starts the L2 sweep (the window a ``kill -9`` can hit).
- ``{"action": "recover", ...}`` only builds a cache on the given L1 directory (as a restarted
  process would), waits until no commit-time sweep is left in its outbox and prints the cache's
  stats as JSON.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict

import peewee

from peewee_kvcache import CachedSqliteDatabase, CloudflareKVCache
from peewee_kvcache.kv.cloudflare import CloudflareKVNamespace


class Item(peewee.Model):
    name = peewee.CharField(max_length=64)
    score = peewee.IntegerField(default=0)

    class Meta:
        table_name = "fault_item"


class Other(peewee.Model):
    """A table the tests never write while KV is failing."""
    name = peewee.CharField(max_length=64)

    class Meta:
        table_name = "fault_other"


MODELS = [Item, Other]

#: short client timeouts keep every fault quick (README defaults are 3.05 s / 10 s, 3 retries)
FAST = dict(read_timeout=(0.5, 0.5), timeout=(0.5, 0.5), retries=1, backoff_factor=0.01)


def namespace(server: Dict[str, str], **options: Any) -> CloudflareKVNamespace:
    """A REST client for the test KV server described by ``server`` (no request budget)."""
    kwargs: Dict[str, Any] = dict(FAST, base_url=server["base_url"], budget=None)
    kwargs.update(options)
    for name in ("timeout", "read_timeout"):  # JSON turned the (connect, read) tuples into lists
        if isinstance(kwargs[name], list):
            kwargs[name] = tuple(kwargs[name])
    return CloudflareKVNamespace(server["account_id"], server["namespace_id"],
                                 server["api_token"], **kwargs)


def first_sweeps(outbox: Any) -> int:
    """Commit-time sweeps (sweep 1) waiting in an outbox; late re-sweeps are not counted."""
    return sum(job.sweep == 1 for job in outbox.waiting())


def _write(args: Dict[str, Any]) -> None:
    cache = CloudflareKVCache(namespace(args["server"], **args.get("client", {})),
                              l1_directory=args["l1"], outbox_lease=args.get("outbox_lease", 1),
                              propagation_delay=0)
    db = CachedSqliteDatabase(args["db"], cache=cache)
    db.bind(MODELS)
    if args.get("die_before_bump"):
        def hang(job: Any) -> None:  # the COMMIT went through; the process "dies" here
            print("committed", flush=True)
            time.sleep(3600)
        cache._invalidations._complete = hang  # type: ignore[method-assign]
    if args.get("die_before_settle"):
        def never() -> None:  # the write completed; the bump it owes never comes
            time.sleep(3600)
        cache.l1.settle = never  # type: ignore[method-assign]
    Item.update(name=args["new"]).execute()
    print("committed", flush=True)
    time.sleep(3600)


def _recover(args: Dict[str, Any]) -> None:
    cache = CloudflareKVCache(namespace(args["server"]), l1_directory=args["l1"], outbox_lease=1,
                              propagation_delay=0)
    deadline = time.monotonic() + args.get("timeout", 20)
    while first_sweeps(cache.outbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    cache.drain(10)
    print(json.dumps(dict(cache.get_stats().as_dict(), first_sweeps=first_sweeps(cache.outbox))),
          flush=True)
    cache.close()


def main() -> None:
    args = json.loads(sys.argv[1])
    {"write": _write, "recover": _recover}[args["action"]](args)


if __name__ == "__main__":
    main()
