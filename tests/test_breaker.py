"""The circuit breaker: states, the half-open probe, ignored errors, and no serialised calls."""
import threading
import time

import pytest

from peewee_kvcache.l2.breaker import CircuitBreaker, CircuitOpenError


def fail():
    raise ConnectionError("down")


def test_opens_after_fail_max_consecutive_failures_and_refuses_without_calling():
    breaker = CircuitBreaker(fail_max=3, reset_timeout=60)
    calls = []
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.state == "closed"
    assert breaker.call(lambda: "ok") == "ok"          # a success resets the count
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: calls.append(1))
    assert calls == []


def test_half_open_probe_closes_on_success_and_reopens_on_failure():
    breaker = CircuitBreaker(fail_max=1, reset_timeout=0.2)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    time.sleep(0.25)
    assert breaker.state == "half-open"
    with pytest.raises(ConnectionError):
        breaker.call(fail)                             # the probe fails: open again
    assert breaker.state == "open"
    time.sleep(0.25)
    assert breaker.call(lambda: 42) == 42              # the probe succeeds: closed
    assert breaker.state == "closed"


def test_only_one_probe_at_a_time():
    breaker = CircuitBreaker(fail_max=1, reset_timeout=0.1)
    with pytest.raises(ConnectionError):
        breaker.call(fail)
    time.sleep(0.15)
    started, release = threading.Event(), threading.Event()

    def slow_probe():
        started.set()
        release.wait(5)
        return "probe"

    thread = threading.Thread(target=lambda: breaker.call(slow_probe))
    thread.start()
    assert started.wait(5)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "second")
    release.set()
    thread.join(5)
    assert breaker.state == "closed"


def test_ignored_errors_do_not_count():
    breaker = CircuitBreaker(fail_max=1, reset_timeout=60,
                             ignore=lambda exc: isinstance(exc, KeyError))
    for _ in range(5):
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["x"])
    assert breaker.state == "closed"


def test_calls_are_not_serialised():
    """A slow call in one thread must not delay another thread's call."""
    breaker = CircuitBreaker()
    inside, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: breaker.call(lambda: (inside.set(),
                                                                   release.wait(5))))
    thread.start()
    assert inside.wait(5)
    started = time.monotonic()
    assert breaker.call(lambda: "fast") == "fast"
    assert time.monotonic() - started < 0.5
    release.set()
    thread.join(5)


@pytest.mark.parametrize("kwargs", [{"fail_max": 0}, {"fail_max": 1.5}, {"reset_timeout": 0},
                                    {"reset_timeout": True}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises((TypeError, ValueError), match=next(iter(kwargs))):
        CircuitBreaker(**kwargs)
