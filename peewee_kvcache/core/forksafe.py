"""Per-process state renewed in a forked child (gunicorn ``--preload``, uWSGI, Celery prefork,
``multiprocessing`` with fork).

Only the forking thread survives ``fork()``: a lock another thread held stays locked forever, a
background thread is gone while its queue and counters say it is busy, and a pooled socket or a
SQLite handle would be shared with the parent. Objects owning such state register here; their
renewal runs in the child right after the fork, before any other code, so it must not take a lock
the parent could have held: it only replaces state. Registration keeps a weak reference only, so
it never keeps an object alive.

SQLite's own mutexes (its allocator's among them) are copied too: a child forked while another
thread was inside SQLite hangs on its first SQLite call. So this library's background threads
hold a work lock while they work, and a fork first takes those locks: it waits (at most
``FORK_WAIT_S`` in all) until no background thread of ours is inside a call.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger("peewee_kvcache")

#: how long a fork waits for background threads to finish the work in hand
FORK_WAIT_S = 2.0

_Action = Optional[Callable[[Any], None]]
_hooks: Dict[int, Tuple["weakref.ref[Any]", _Action, _Action]] = {}  # ref, before, in child
_ids = itertools.count()
_fork_lock = threading.Lock()  # one fork at a time through the hooks below
_held: List[Any] = []  # work locks taken for the fork in progress
_deadline = 0.0  # when the fork in progress stops waiting for them
_BEFORE, _IN_CHILD = 0, 1  # positions among the actions of a _hooks entry


def _register(obj: Any, before: _Action, in_child: _Action) -> None:
    key = next(_ids)
    _hooks[key] = (weakref.ref(obj, lambda _ref: _hooks.pop(key, None)), before, in_child)


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every forked child for as long as its object lives."""
    _register(method.__self__, None, method.__func__)  # type: ignore[attr-defined]


def renew_locks(obj: Any, *attributes: str) -> None:
    """Give ``obj`` a fresh ``threading.Lock`` in each of ``attributes`` in every forked child
    (the parent's may have been held by a thread that does not exist there)."""
    def renew(target: Any) -> None:
        for name in attributes:
            setattr(target, name, threading.Lock())
    _register(obj, None, renew)


def hold_across_fork(obj: Any, attribute: str) -> None:
    """``obj.<attribute>`` is the lock a background thread holds while it works: a fork takes
    it first (the child gets a fresh one)."""
    def take(target: Any) -> None:
        lock = getattr(target, attribute)
        if lock.acquire(timeout=max(0.0, _deadline - time.monotonic())):
            _held.append(lock)
        else:
            log.warning("peewee_kvcache: forking while a background thread is still working "
                        "(waited %.1f s); the child may hang if it was inside SQLite",
                        FORK_WAIT_S)
    _register(obj, take, lambda target: setattr(target, attribute, threading.Lock()))


def _each(index: int) -> None:
    for ref, *actions in list(_hooks.values()):
        obj, action = ref(), actions[index]
        if obj is None or action is None:
            continue
        try:
            action(obj)
        except Exception:  # one object's failure must not leave the others unhandled
            log.exception("peewee_kvcache: preparing state for fork failed")


def _before() -> None:
    global _deadline
    _fork_lock.acquire()
    _deadline = time.monotonic() + FORK_WAIT_S
    _each(_BEFORE)


def _after_in_parent() -> None:
    while _held:
        _held.pop().release()
    _fork_lock.release()


def _after_in_child() -> None:
    global _fork_lock
    _held.clear()
    _fork_lock = threading.Lock()
    _each(_IN_CHILD)


if hasattr(os, "register_at_fork"):  # POSIX: the only platforms with fork()
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent,
                        after_in_child=_after_in_child)
