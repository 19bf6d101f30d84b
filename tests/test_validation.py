"""Bad input is refused where it is given, with an exception naming the parameter and the value
(never the API token's value); ``with_cache()`` on a query that cannot be cached says so."""
from __future__ import annotations

import math
import re
import warnings
import weakref

import peewee
import pytest

from peewee_kvcache import (CacheConfig, CachedResult, CachedSqliteDatabase, CloudflareKVCache,
                            CloudflareKVNamespace, RequestBudget)

RESULT = CachedResult(("id",), [(1,)])
TOKEN = "pkv-secret-token-4f1c"
NAN, INF = float("nan"), float("inf")


def shown(value) -> str:
    """A regex matching the repr of ``value`` in an error message."""
    return re.escape(repr(value))


# --- CloudflareKVCache(...) ---------------------------------------------------------------------

CACHE_CASES = [
    ("max_put_delay", -1, ValueError), ("max_put_delay", 0, ValueError),
    ("max_put_delay", "10", TypeError), ("max_put_delay", None, TypeError),
    ("max_put_delay", NAN, ValueError),
    ("outbox_lease", None, TypeError), ("outbox_lease", 0, ValueError),
    ("outbox_lease", -30, ValueError), ("outbox_lease", "30", TypeError),
    ("l1_size_limit", None, TypeError), ("l1_size_limit", 0, ValueError),
    ("l1_size_limit", -1, ValueError), ("l1_size_limit", 1.5, TypeError),
    ("l1_size_limit", "1G", TypeError),
    ("clock_skew", "1", TypeError), ("clock_skew", -1, ValueError), ("clock_skew", None, TypeError),
    ("clock_skew", INF, ValueError),
    ("memory_entries", -1, ValueError), ("memory_entries", 1.5, TypeError),
    ("memory_entries", None, TypeError), ("memory_entries", "10", TypeError),
    ("breaker_fail_max", 0, ValueError), ("breaker_fail_max", -1, ValueError),
    ("breaker_fail_max", 1.5, TypeError), ("breaker_fail_max", "5", TypeError),
    ("breaker_fail_max", True, TypeError),
    ("breaker_reset_timeout", 0, ValueError), ("breaker_reset_timeout", -1, ValueError),
    ("breaker_reset_timeout", "30", TypeError), ("breaker_reset_timeout", None, TypeError),
    ("breaker_reset_timeout", True, TypeError), ("breaker_reset_timeout", NAN, ValueError),
    ("propagation_delay", -1, ValueError), ("propagation_delay", "60", TypeError),
    ("propagation_delay", True, TypeError),
    ("stampede_wait", -1, ValueError), ("stampede_wait", "5", TypeError),
    ("stampede_wait", None, TypeError), ("stampede_wait", INF, ValueError),
    ("l1_max_age", 0, ValueError), ("l1_max_age", -5, ValueError), ("l1_max_age", "5", TypeError),
    ("l2_reads", "sometimes", ValueError), ("l2_reads", None, ValueError),
    ("l1_reads", "never", ValueError), ("l1_reads", 1, ValueError),
    ("namespace", "kv", TypeError), ("namespace", 123, TypeError),
    ("l1_directory", 123, TypeError), ("l1_directory", "", ValueError),
]


@pytest.mark.parametrize("name, value, error", CACHE_CASES,
                         ids=[f"{n}={v!r}" for n, v, _ in CACHE_CASES])
def test_bad_cache_argument_is_refused_naming_parameter_and_value(tmp_path, name, value, error):
    kwargs = {"l1_directory": str(tmp_path / "l1"), name: value}
    with pytest.raises(error) as info:
        CloudflareKVCache(**kwargs)
    message = str(info.value)
    assert name in message, message
    assert re.search(shown(value), message), message
    assert not (tmp_path / "l1").exists()                 # refused before anything was opened


@pytest.mark.parametrize("kwargs", [
    dict(max_put_delay=0.5, outbox_lease=1, l1_size_limit=1 << 20, clock_skew=0,
         memory_entries=0, breaker_fail_max=1, breaker_reset_timeout=0.1, propagation_delay=0,
         stampede_wait=0, l1_max_age=None, l1_reads="always", l2_reads="always"),
    dict(max_put_delay=10, clock_skew=2.5, propagation_delay=60.0, l1_max_age=0.5),
])
def test_good_cache_arguments_are_accepted(make_cache, kwargs):
    cache = make_cache(**kwargs)
    assert cache.put("q", RESULT, ["t"])
    assert cache.get("q", ["t"]) == RESULT


# --- the seed API -------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["ex=5", {"ex": 5}, 5], ids=repr)
def test_put_refuses_a_config_that_is_not_a_cache_config(cache, config):
    with pytest.raises(TypeError, match="config") as info:
        cache.put("q", RESULT, ["t"], config=config)
    assert re.search(shown(config), str(info.value))
    assert cache.get_stats().l1_errors == 0


@pytest.mark.parametrize("name", ["is_tag", "is_auto_invalidate"])
@pytest.mark.parametrize("value", ["yes", 1, None], ids=repr)
def test_seed_flags_must_be_bools(cache, name, value):
    for call in (lambda: cache.put("q", RESULT, ["t"], **{name: value}),
                 lambda: cache.get("q", ["t"], **{name: value})):
        with pytest.raises(TypeError, match=name) as info:
            call()
        assert re.search(shown(value), str(info.value))


@pytest.mark.parametrize("timeout, error", [("10", TypeError), (-1, ValueError), (NAN, ValueError)],
                         ids=repr)
def test_drain_timeout_is_checked(cache, timeout, error):
    with pytest.raises(error, match="timeout") as info:
        cache.drain(timeout)
    assert re.search(shown(timeout), str(info.value))
    assert cache.drain(0) and cache.drain(None)


# --- CloudflareKVNamespace(...) and RequestBudget(...) -------------------------------------------

NAMESPACE_CASES = [
    ("account_id", 123, TypeError), ("account_id", "", ValueError), ("account_id", None, TypeError),
    ("namespace_id", 456, TypeError), ("namespace_id", "", ValueError),
    ("timeout", "3", TypeError), ("timeout", 0, ValueError), ("timeout", -1.0, ValueError),
    ("timeout", None, TypeError), ("timeout", (1.0,), ValueError),
    ("timeout", (1.0, "x"), TypeError),
    ("timeout", (1.0, 2.0, 3.0), ValueError), ("timeout", NAN, ValueError),
    ("read_timeout", "x", TypeError), ("read_timeout", 0, ValueError),
    ("read_timeout", (0, 1), ValueError),
    ("budget", "lots", TypeError), ("budget", 1200, TypeError),
    ("retries", -1, ValueError), ("retries", "3", TypeError), ("retries", 1.5, TypeError),
    ("read_retries", -1, ValueError), ("read_retries", None, TypeError),
    ("backoff_factor", -0.1, ValueError), ("backoff_factor", "0.3", TypeError),
    ("base_url", 123, TypeError),
]


def make_namespace(**override):
    args = dict(account_id="acct", namespace_id="ns", api_token=TOKEN)
    args.update(override)
    return CloudflareKVNamespace(args.pop("account_id"), args.pop("namespace_id"),
                                 args.pop("api_token"), **args)


@pytest.mark.parametrize("name, value, error", NAMESPACE_CASES,
                         ids=[f"{n}={v!r}" for n, v, _ in NAMESPACE_CASES])
def test_bad_namespace_argument_is_refused_naming_parameter_and_value(name, value, error):
    with pytest.raises(error) as info:
        make_namespace(**{name: value})
    message = str(info.value)
    assert name in message and re.search(shown(value), message), message
    assert TOKEN not in message and TOKEN not in repr(info.value.args)


@pytest.mark.parametrize("token, error", [(12345678, TypeError), (b"pkv-bytes-token", TypeError),
                                          ("", ValueError), ("pkv token", ValueError),
                                          (None, TypeError)], ids=repr)
def test_bad_api_token_is_named_but_never_shown(token, error):
    with pytest.raises(error, match="api_token") as info:
        make_namespace(api_token=token)
    if token:
        assert str(token) not in str(info.value) and repr(token) not in str(info.value)


def test_good_namespace_arguments_are_accepted():
    ns = make_namespace(timeout=5, read_timeout=(0.5, 1), retries=0, read_retries=2,
                        backoff_factor=0, budget=None, base_url="https://example.com/v4")
    assert "acct" in repr(ns) and TOKEN not in repr(ns)
    ns.close()
    make_namespace(budget=RequestBudget(100, 60, burst=10)).close()


@pytest.mark.parametrize("kwargs, name", [
    ({"capacity": "lots"}, "capacity"), ({"capacity": 0}, "capacity"),
    ({"capacity": None}, "capacity"), ({"period": "x"}, "period"), ({"period": -1}, "period"),
    ({"period": INF}, "period"), ({"burst": "x"}, "burst"), ({"burst": 0.5}, "burst"),
    ({"capacity": 10, "burst": 11}, "burst"),
])
def test_bad_request_budget_is_refused_naming_parameter_and_value(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name) as info:
        RequestBudget(**kwargs)
    assert re.search(shown(kwargs[name]), str(info.value))


# --- with_cache(...) ----------------------------------------------------------------------------

class Thing(peewee.Model):
    name = peewee.CharField()


@pytest.mark.parametrize("keyword", ["ttl", "expire", "tags"])
def test_an_unknown_with_cache_keyword_names_with_cache_and_the_keyword(keyword):
    with pytest.raises(TypeError) as info:
        Thing.select().with_cache(**{keyword: 30})
    message = str(info.value)
    assert "with_cache" in message and repr(keyword) in message, message
    assert "make_options" not in message


def with_cache_warnings(*queries_of):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for make in queries_of:
            make().with_cache(ex=30)
    return [w for w in caught if issubclass(w.category, UserWarning)]


def test_with_cache_on_a_database_without_a_cache_warns_once_per_database(tmp_path):
    plain = peewee.SqliteDatabase(str(tmp_path / "plain.db"))
    other = peewee.SqliteDatabase(str(tmp_path / "other.db"))
    with plain.bind_ctx([Thing]):
        first = with_cache_warnings(Thing.select, Thing.select, lambda: Thing.select().where(
            Thing.name == "x"))
    assert len(first) == 1
    assert "with_cache" in str(first[0].message) and "plain.db" in str(first[0].message)
    assert first[0].filename == __file__                 # points at the user's call
    with plain.bind_ctx([Thing]):
        assert with_cache_warnings(Thing.select) == []   # once per database object
    with other.bind_ctx([Thing]):
        assert len(with_cache_warnings(Thing.select, Thing.select)) == 1


def test_with_cache_on_an_unbound_query_warns(monkeypatch):
    import peewee_kvcache.orm.query
    # as in a new process
    monkeypatch.setattr(peewee_kvcache.orm.query, "_warned", weakref.WeakSet())
    caught = with_cache_warnings(Thing.select, Thing.select)
    assert len(caught) == 1 and "no database" in str(caught[0].message)
    assert caught[0].filename == __file__


def test_with_cache_on_a_cached_database_does_not_warn(make_cache, tmp_path):
    db = CachedSqliteDatabase(str(tmp_path / "cached.db"), cache=make_cache())
    with db.bind_ctx([Thing]):
        assert with_cache_warnings(Thing.select) == []
    proxy = peewee.DatabaseProxy()

    class Late(peewee.Model):
        class Meta:
            database = proxy

    assert with_cache_warnings(Late.select) == []        # not initialised yet: can't tell
    proxy.initialize(db)
    assert with_cache_warnings(Late.select) == []
    db.close()


def test_one_number_check_names_parameter_and_value():
    from peewee_kvcache.core.config import check_number
    with pytest.raises(TypeError, match=r"wait must be a number, got '1'"):
        check_number("wait", "1")
    with pytest.raises(ValueError, match=r"count must be .*>= 0.*-1"):
        check_number("count", -1, integer=True, zero_ok=True)
    assert check_number("ratio", 0.5) == 0.5
    assert check_number("n", 0, integer=True, zero_ok=True) == 0
    with pytest.raises(ValueError, match="inf"):
        check_number("x", math.inf)
    with pytest.raises(TypeError, match="ex"):
        CacheConfig(ex=1.5)                              # expiries use the same helper
