"""Per-process state renewed in a forked child (gunicorn ``--preload``, uWSGI, Celery prefork,
``multiprocessing`` with fork).

Only the forking thread survives ``fork()``: a lock another thread held stays locked forever, a
background thread is gone while its queue and counters say it is busy, and a pooled socket or a
SQLite handle would be shared with the parent. Objects owning such state register a method here;
it runs in the child right after the fork, before any other code, so it must not take a lock the
parent could have held: it only replaces state. Registration keeps a weak reference only, so it
never keeps an object alive.
"""
from __future__ import annotations

import itertools
import logging
import os
import weakref
from typing import Callable, Dict

log = logging.getLogger("peewee_kvcache")

_hooks: Dict[int, "weakref.WeakMethod[Callable[[], None]]"] = {}
_ids = itertools.count()


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every forked child for as long as its object lives."""
    key = next(_ids)
    _hooks[key] = weakref.WeakMethod(method, lambda _ref: _hooks.pop(key, None))


def _run_hooks() -> None:
    for ref in list(_hooks.values()):
        method = ref()
        if method is None:
            continue
        try:
            method()
        except Exception:  # one object's failure must not leave the others unrenewed
            log.exception("peewee_kvcache: renewing state after fork failed")


if hasattr(os, "register_at_fork"):  # POSIX: the only platforms with fork()
    os.register_at_fork(after_in_child=_run_hooks)
