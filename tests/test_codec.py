"""Codec: exact type-for-type round trips, refusal of everything else, entry integrity, params."""
import enum
import gc
import itertools
import os
import random
import sqlite3
import struct
import threading
import uuid
from collections import OrderedDict
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgpack
import pytest

from peewee_kvcache.core.codec import (
    _MAX_TUPLE_DEPTH, FORMAT_VERSION, CachedResult, CodecError, UnsupportedValue, always_encodes,
    decode_entry, decode_entry_full, encode_entry, encode_params,
)

SECRET = b"s3cr3t-signing-key-for-tests"
TZ_IST = timezone(timedelta(hours=5, minutes=30))
TZ_ODD = timezone(-timedelta(hours=3, minutes=7, seconds=5, microseconds=11))


def assert_same(a, b, path="value"):
    """Exact equality: same type at every level, float bits, Decimal digits, offsets, fold."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, float):
        assert struct.pack(">d", a) == struct.pack(">d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, Decimal):
        assert str(a) == str(b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, memoryview):
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys/order differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (datetime, time)):
        assert a == b and a.fold == b.fold and a.utcoffset() == b.utcoffset(), \
            f"{path}: {a!r} != {b!r}"
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), path
        assert b.tzinfo is None or type(b.tzinfo) is timezone, path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def roundtrip(value):
    result, _ = decode_entry(encode_entry(CachedResult(("v",), [(value,)]), None))
    return result.rows[0][0]


VALUES = [
    None, True, False,
    0, 1, -1, 127, 128, -33, 2**31, 2**63 - 1, -2**63, 2**64 - 1, 2**64, -2**63 - 1, 2**70,
    -(2**200), 10**5000,
    0.0, -0.0, 1.5, -2.25, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, 0.1,
    "", "plain", "héllo ✓ 𝄞", "\ud800lone surrogate", "x" * 70000, "\x00",
    b"", b"\x00\xff\x10", bytearray(b"ab\x00"), bytearray(), memoryview(b"\x01\x02"),
    memoryview(b""),
    Decimal("1.10"), Decimal("1.0"), Decimal("-0"), Decimal("0E-7"), Decimal("1E+2"),
    Decimal("NaN"),
    Decimal("-sNaN"), Decimal("NaN123"), Decimal("Infinity"), Decimal("-Infinity"), Decimal(2**70),
    Decimal("123456789012345678901234567890.123456789012345678901234567890"),
    datetime(2020, 1, 2, 3, 4, 5, 678901), datetime(2021, 11, 7, 1, 30, fold=1),
    datetime.min, datetime.max,
    datetime(2020, 1, 2, 3, 4, 5, 6, timezone.utc), datetime(2020, 6, 1, 12, 0, 0, 1, TZ_IST),
    datetime(1999, 12, 31, 23, 59, 59, 999999, TZ_ODD),
    datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
    date(2020, 1, 1), date.min, date.max,
    time(12, 0), time(23, 59, 59, 999999), time(1, 2, 3, 4, fold=1), time(12, tzinfo=timezone.utc),
    time(12, 0, tzinfo=timezone(timedelta(hours=2))), time(0, 0, 0, 1, TZ_ODD),
    timedelta(0), timedelta(days=1), timedelta(-1, 5, 7), timedelta.max, timedelta.min,
    uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=0),
    [], [1, [2, [3]]], [None, None], [Decimal("1.10"), Decimal("2"), None], ["a", b"b"],
    (), (1, "a"), ((1,), [2]), ([(),[()]],),
    {}, {"a": [1, 2, {"b": None}], "c": "d", "e": {"f": [True, 1.5]}}, {"z": 1, "a": 2},
    {b"k": 1, "k": 2}, [bytearray(b"x"), memoryview(b"y")], ({"a": (1, bytearray(b"z"))},),
    [datetime(2020, 1, 1, tzinfo=TZ_IST), uuid.UUID(int=1), 2**100],
]


@pytest.mark.parametrize("value", VALUES,
                         ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(VALUES)])
def test_value_round_trips_type_for_type(value):
    assert_same(value, roundtrip(value))


def test_aware_datetime_with_zoneinfo_comes_back_as_fixed_offset():
    tz = ZoneInfo("America/New_York")
    for original in (datetime(2021, 11, 7, 1, 30, tzinfo=tz),
                     datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=tz),
                     datetime(2021, 7, 1, 8, 0, 0, 123, tzinfo=tz)):
        back = roundtrip(original)
        assert type(back.tzinfo) is timezone
        # PEP 495: ambiguous local times never compare equal across zones, so compare instants.
        assert back.astimezone(timezone.utc) == original.astimezone(timezone.utc)
        assert back.utcoffset() == original.utcoffset() and back.fold == original.fold
        assert back.replace(tzinfo=None) == original.replace(tzinfo=None)


def test_whole_result_round_trips_rows_as_tuples():
    rows = [tuple(VALUES[i:i + 4]) for i in range(0, len(VALUES) - 3, 4)]
    result = CachedResult(("a", "b", "c", "d"), rows)
    back, expires = decode_entry(encode_entry(result, 1_700_000_000_000))
    assert expires == 1_700_000_000_000
    assert back.columns == ("a", "b", "c", "d") and type(back.columns) is tuple
    assert all(type(row) is tuple for row in back.rows) and type(back.rows) is list
    assert_same(result.rows, back.rows)


@pytest.mark.parametrize("rows", [[], [()], [(), ()]])
def test_empty_shapes(rows):
    columns = ("x",) if rows == [] else ()
    back, _ = decode_entry(encode_entry(CachedResult(columns, rows), None))
    assert back == CachedResult(columns, rows)


def test_list_rows_are_accepted_and_come_back_as_tuples():
    back, _ = decode_entry(encode_entry(CachedResult(("a", "b"), [[1, [2]]]), None))
    assert back.rows == [(1, [2])] and type(back.rows[0][1]) is list


def test_json_object_order_is_preserved():
    value = {"zeta": 1, "alpha": {"y": 2, "b": 3}}
    assert list(roundtrip(value)) == ["zeta", "alpha"]
    assert list(roundtrip(value)["alpha"]) == ["y", "b"]


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Big(int):
    pass


class Real(float):
    pass


class Dec(Decimal):
    pass


class Items(list):
    pass


class Thing:
    pass


UNSUPPORTED = [
    ({1, 2}, "set"),
    (frozenset(), "frozenset"),
    (Thing(), "Thing"),
    (Color.RED, "Color"),
    (Name("x"), "Name"),
    (Big(3), "Big"),
    (Big(2**70), "Big"),
    (Real(1.5), "Real"),
    (Dec("1"), "Dec"),
    (Items([1]), "Items"),
    (OrderedDict(a=1), "OrderedDict"),
    (1j, "complex"),
    ({1: "a"}, "int"),
    ({("a",): 1}, "tuple"),
    ({None: 1}, "NoneType"),
    ({Name("k"): 1}, "Name"),
    ([1, [2, {3}]], "set"),
    ((1, (Thing(),)), "Thing"),
    ({"a": {"b": Color.RED}}, "Color"),
    ({"a": [{1: 2}]}, "int"),
    (msgpack.ExtType(2, b"1.0"), "ExtType"),
    (msgpack.Timestamp(1), "Timestamp"),
    ([msgpack.ExtType(1, b"")], "ExtType"),
]


@pytest.mark.parametrize("value,type_name", UNSUPPORTED, ids=lambda v: str(v)[:30])
def test_unsupported_value_raises_naming_the_type(value, type_name):
    with pytest.raises(UnsupportedValue, match=type_name):
        encode_entry(CachedResult(("v",), [(value,)]), None)
    with pytest.raises(UnsupportedValue, match=type_name):
        encode_params([value])


@pytest.mark.parametrize("value", VALUES + [value for value, _ in UNSUPPORTED],
                         ids=lambda v: type(v).__name__)
def test_a_result_said_to_always_encode_does(value):
    """The writer thread encodes such results later (cache/stores.py): the promise must hold;
    containers, whose contents may be refused, and lookalike subclasses are never promised."""
    result = CachedResult(("v", "w"), [(value, 1), ("x", None)])
    if always_encodes(result):
        assert type(value) in (type(None), bool, int, float, str, bytes, Decimal, datetime, date,
                               time, timedelta, uuid.UUID)
        decode_entry(encode_entry(result, None))
    else:
        assert type(value) in (list, dict, tuple, bytearray, memoryview) or value in (
            v for v, _ in UNSUPPORTED)
    assert not always_encodes(CachedResult((1,), [(1,)]))  # a column name must be a str


def test_unsupported_is_a_codec_error_and_value_error():
    assert issubclass(UnsupportedValue, CodecError) and issubclass(CodecError, ValueError)


def test_non_string_column_name_is_unsupported():
    with pytest.raises(UnsupportedValue, match="int"):
        encode_entry(CachedResult((1,), [(1,)]), None)


def test_row_width_mismatch_is_refused():
    with pytest.raises(CodecError):
        encode_entry(CachedResult(("a", "b"), [(1,)]), None)


@pytest.mark.parametrize("expires", [None, 0, 1, 1_700_000_000_123, 2**63 - 1, 2**70, -5])
def test_expires_at_round_trips(expires):
    _, back = decode_entry(encode_entry(CachedResult(("a",), [(1,)]), expires))
    assert back == expires and type(back) is type(expires)


@pytest.mark.parametrize("expires", [1.5, "1", True])
def test_expires_at_must_be_int_or_none(expires):
    with pytest.raises(TypeError):
        encode_entry(CachedResult((), []), expires)


RESULT = CachedResult(("id", "name", "at"),
                      [(1, "a", datetime(2020, 1, 1, tzinfo=TZ_IST)), (2, None, None)])


def test_header_layout():
    unsigned = encode_entry(RESULT, None)
    signed = encode_entry(RESULT, None, SECRET)
    assert unsigned[:3] == signed[:3] == b"PKC"
    assert unsigned[3] == signed[3] == FORMAT_VERSION
    assert (unsigned[4], signed[4]) == (0, 1)
    assert len(signed) == len(unsigned) + 32 and signed[37:] == unsigned[5:]


def test_signed_entry_decodes_with_the_right_secret():
    back, expires = decode_entry(encode_entry(RESULT, 42, SECRET), SECRET)
    assert back == RESULT and expires == 42


def test_signed_entry_is_accepted_without_a_configured_secret():
    assert decode_entry(encode_entry(RESULT, 42, SECRET)) == (RESULT, 42)


def test_every_tampered_byte_of_a_signed_entry_is_rejected():
    entry = encode_entry(RESULT, 42, SECRET)
    for i in range(len(entry)):
        for flip in (0x01, 0x80):
            tampered = bytearray(entry)
            tampered[i] ^= flip
            with pytest.raises(CodecError):
                decode_entry(bytes(tampered), SECRET)


def test_wrong_secret_is_rejected_without_leaking_either_key():
    other = b"another-secret"
    with pytest.raises(CodecError) as info:
        decode_entry(encode_entry(RESULT, None, SECRET), other)
    message = repr(info.value.args) + repr(info.value.__cause__)
    assert SECRET.decode() not in message and other.decode() not in message


def test_unsigned_entry_is_rejected_when_a_secret_is_configured():
    with pytest.raises(CodecError):
        decode_entry(encode_entry(RESULT, None), SECRET)


def test_signature_missing_from_a_signed_entry_is_rejected():
    entry = encode_entry(RESULT, None, SECRET)
    with pytest.raises(CodecError):
        decode_entry(entry[:5] + entry[37:], SECRET)
    with pytest.raises(CodecError):
        decode_entry(entry[:20], SECRET)


def test_empty_secret_is_refused():
    with pytest.raises(ValueError):
        encode_entry(RESULT, None, b"")
    with pytest.raises(ValueError):
        decode_entry(encode_entry(RESULT, None, SECRET), b"")


def _raw_entry(payload):
    """A raw entry; a 3-item payload gets the 4th item (created_at_ms) as None."""
    if isinstance(payload, list) and len(payload) == 3:
        payload = payload + [None]
    return b"PKC" + bytes([FORMAT_VERSION, 0]) + msgpack.packb(payload, use_bin_type=True)


@pytest.mark.parametrize("data", [
    b"", b"PK", b"PKC\x01", b"XKC\x01\x00\x94\xc0\x90\x90\xc0",
    b"PKC\x02\x00\x94\xc0\x90\x90\xc0", b"PKC\x00\x00\x94\xc0\x90\x90\xc0",
    b"PKC\x01\x02\x94\xc0\x90\x90\xc0", b"PKC\x01\x00", b"PKC\x01\x00\xc1",
    b"PKC\x01\x00\x94\xc0\x90\x90\xc0\x00", b"PKC\x01\x00\x94\xc0\x90\x90",
    b"PKC\x01\x00\x93\xc0\x90\x90", _raw_entry([None, [], [], "x"]),
    _raw_entry([None, [], [], 1.5]), _raw_entry([None, [], [], None, None]),
    _raw_entry({}), _raw_entry([None, []]), _raw_entry(["1", [], []]),
    _raw_entry([True, [], []]), _raw_entry([1.5, [], []]), _raw_entry([None, "ab", []]),
    _raw_entry([None, [1], [[1]]]), _raw_entry([None, ["a"], "x"]),
    _raw_entry([None, ["a"], [[1, 2]]]), _raw_entry([None, ["a"], [{"a": 1}]]),
    _raw_entry([None, ["a"], ["a"]]), _raw_entry([None, ["a"], [[]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(99, b"")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(3, b"\x00")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(5, b"\x07\xe4\x0d\x01")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(
        4, b"\x07\xe4\x01\x01" + bytes(9) + (10**12).to_bytes(8, "big"))]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(2, b"not a number")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(2, b"\xff")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(9, b"short")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(10, b"\x01")]]]),
    _raw_entry([None, ["a"], [[msgpack.ExtType(10, b"\xc1")]]]),
    _raw_entry([None, ["a"], [[{1: 2}]]]),
    b"PKC\x01\x00\x93\xc0\x91\xa1a\x91\x91" + b"\x91" * 100_000 + b"\xc0",
])
def test_malformed_entries_raise_codec_error(data):
    with pytest.raises(CodecError):
        decode_entry(data)


def test_every_truncation_raises_codec_error():
    entry = encode_entry(CachedResult(("a",), [(v,) for v in VALUES[:60]]), 7, SECRET)
    for cut in range(len(entry)):
        with pytest.raises(CodecError):
            decode_entry(entry[:cut])


def test_random_corruption_never_escapes_as_another_exception():
    entry = encode_entry(CachedResult(("a", "b"), [(v, v) for v in VALUES[:80]]), 7)
    rng = random.Random(1234)
    for _ in range(2000):
        damaged = bytearray(entry)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(5, len(damaged))] = rng.randrange(256)
        try:
            decode_entry(bytes(damaged))
        except CodecError:
            pass


def _nested_tuple(levels):
    value = ()
    for _ in range(levels - 1):
        value = (value,)
    return value


def test_tuples_nested_to_the_cap_round_trip_and_deeper_ones_are_refused():
    deepest = _nested_tuple(_MAX_TUPLE_DEPTH)
    assert_same(deepest, roundtrip(deepest))
    assert_same([deepest], roundtrip([deepest]))
    too_deep = _nested_tuple(_MAX_TUPLE_DEPTH + 1)
    with pytest.raises(UnsupportedValue, match="nested"):
        encode_entry(CachedResult(("v",), [(too_deep,)]), None)
    with pytest.raises(UnsupportedValue, match="nested"):
        encode_params([too_deep])


def test_absurdly_deep_lists_are_unsupported_not_a_crash():
    value = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(UnsupportedValue):
        encode_entry(CachedResult(("v",), [(value,)]), None)
    with pytest.raises(UnsupportedValue):
        encode_params([value])


@pytest.mark.parametrize("levels", [_MAX_TUPLE_DEPTH + 1, 5000])
def test_hostile_tuple_nesting_is_rejected_even_on_a_small_thread_stack(levels):
    """Each nesting level is decoded by its own unpacker; this must not exhaust the C stack."""
    inner = msgpack.packb([])
    for _ in range(levels - 1):
        inner = msgpack.packb([msgpack.ExtType(10, inner)])
    data = _raw_entry([None, ["a"], [[msgpack.ExtType(10, inner)]]])
    outcome = []

    def decode():
        try:
            decode_entry(data)
        except CodecError as exc:
            outcome.append(exc)

    # The stack size is process-wide and garbage collection may run finalizers of earlier
    # tests' objects (SQLite connections closing) on whatever thread it interrupts: collect
    # first, keep the collector off the small stack, and give that size to this thread only.
    # (A py313 CI run once died with SIGSEGV in this test, not reproduced since.)
    gc.collect()
    gc.disable()
    try:
        previous = threading.stack_size(256 * 1024)
        try:
            thread = threading.Thread(target=decode)
            thread.start()
        finally:
            threading.stack_size(previous)
        thread.join()
    finally:
        gc.enable()
    assert len(outcome) == 1 and "nested" in str(outcome[0])


def test_decode_accepts_memoryview_input():
    assert decode_entry(memoryview(encode_entry(RESULT, 3))) == (RESULT, 3)


# ---- encode_params ----------------------------------------------------------------------------

DISTINCT_PARAMS = [
    None, "None", 0, False, "", b"", 0.0, -0.0, 1, True, 1.0, "1", b"1", bytearray(b"1"),
    memoryview(b"1"), [1], (1,), [], (), {}, [None], [[]], [()], {"a": 1}, {"a": True}, {b"a": 1},
    {"a": 1, "b": 2}, Decimal("1"), Decimal("1.0"), Decimal("1.00"), Decimal("-0"), Decimal("0"),
    Decimal("NaN"), 2**64, 2**64 + 1, -(2**64), 2**70, date(2020, 1, 1), datetime(2020, 1, 1),
    datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2020, 1, 1, 5, 30, tzinfo=TZ_IST),
    time(0), time(0, tzinfo=timezone.utc), timedelta(0), timedelta(1), uuid.UUID(int=1),
    uuid.UUID(int=0), float("nan"), float("inf"),
]


def test_distinct_single_params_never_collide():
    encoded = [encode_params([p]) for p in DISTINCT_PARAMS]
    for (i, a), (j, b) in itertools.combinations(enumerate(encoded), 2):
        assert a != b, f"{DISTINCT_PARAMS[i]!r} collides with {DISTINCT_PARAMS[j]!r}"


@pytest.mark.parametrize("a,b", [
    ([1, 2], [[1, 2]]), ([1, 2], [12]), (["a", "b"], ["ab"]), ([1, 2], [2, 1]), ([], [None]),
    ([(1, 2)], [[1, 2]]), ([{"a": [1]}], [{"a": (1,)}]), ([b"ab"], ["ab"]), ([None, None], [None]),
])
def test_distinct_param_lists_never_collide(a, b):
    assert encode_params(a) != encode_params(b)


@pytest.mark.parametrize("params", [
    [], [None, 1, "x", b"y", 1.5, Decimal("1.10"), datetime(2020, 1, 1, tzinfo=TZ_ODD), 2**80],
    [{"b": 1, "a": [1, {"d": 2, "c": 3}]}], [(1, (2, [3]))], [uuid.UUID(int=5), date.max, time.min],
])
def test_encode_params_is_deterministic(params):
    assert encode_params(params) == encode_params(list(params)) == encode_params(tuple(params))
    assert type(encode_params(params)) is bytes


def test_encode_params_sorts_dict_keys():
    assert encode_params([{"b": 1, "a": 2}]) == encode_params([{"a": 2, "b": 1}])
    assert encode_params([{b"k": 1, "k": 2}]) == encode_params([{"k": 2, b"k": 1}])


def test_encode_params_does_not_mutate_input():
    params = [{"b": 1, "a": [bytearray(b"x")]}]
    encode_params(params)
    assert list(params[0]) == ["b", "a"] and type(params[0]["a"][0]) is bytearray


# ---- real drivers ------------------------------------------------------------------------------

def test_sqlite_driver_values_round_trip():
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n, big INTEGER)")
        conn.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
                     (-7, -0.5, "héllo", b"\x00\x01", None, 9223372036854775807))
        cursor = conn.execute("SELECT i, r, s, b, n, big, 1.10, 'x' || 'y' FROM t")
        columns = tuple(d[0] for d in cursor.description)
        result = CachedResult(columns, cursor.fetchall())
    finally:
        conn.close()
    back, _ = decode_entry(encode_entry(result, None, SECRET), SECRET)
    assert back.columns == columns
    assert_same(result.rows, back.rows)


PG_SQL = ("SELECT 1.10::numeric, now(), '2020-01-01'::date, '12:00'::time, '12:00+02'::timetz, "
          "interval '1 day', gen_random_uuid(), '\\x0102'::bytea, '{\"a\":[1,2]}'::json, "
          "ARRAY[1,2], NULL, true, 2^70::numeric, 9223372036854775807::bigint")
PG_EXTRA_SQL = ("SELECT '2020-06-01 12:00:00.123456+00'::timestamptz, "
                "ARRAY[1.10, NULL, 2]::numeric[], "
                "ARRAY[NULL, NULL]::int[], '{\"a\":{\"b\":[1,null,\"x\",1.5]},\"z\":true}'::jsonb, "
                "'NaN'::numeric, '-0.0'::float8, 'Infinity'::float8, "
                "'2020-01-01 01:02:03.000004'::timestamp, "
                "'1 year 2 mons -3 days 04:05:06.7'::interval, ''::text, ''::bytea")


def _pg_connect():
    import psycopg2

    try:
        return psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
                                connect_timeout=3)
    except psycopg2.OperationalError as exc:
        if "CI" in os.environ:
            pytest.fail(f"PostgreSQL must be reachable in CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable at 127.0.0.1:5432 (set CI to make this fail): {exc}")


def test_postgres_driver_values_round_trip():
    import psycopg2.extras

    conn = _pg_connect()
    try:
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        results = []
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'Asia/Kolkata'")
            for sql in (PG_SQL, PG_EXTRA_SQL):
                cur.execute(sql)
                results.append(CachedResult(tuple(d[0] for d in cur.description), cur.fetchall()))
    finally:
        conn.close()
    row = results[0].rows[0]
    assert isinstance(row[1], datetime) and row[1].utcoffset() == timedelta(hours=5, minutes=30)
    assert type(row[6]) is uuid.UUID and type(row[7]) is memoryview and row[12] >= 2**70
    for result in results:
        back, _ = decode_entry(encode_entry(result, 1, SECRET), SECRET)
        assert back.columns == result.columns
        assert_same(result.rows, back.rows)


def test_created_at_round_trips():
    data = encode_entry(RESULT, 5000, created_at_ms=1234)
    assert decode_entry_full(data) == (RESULT, 5000, 1234)
    assert decode_entry_full(encode_entry(RESULT, None)) == (RESULT, None, None)
    with pytest.raises(TypeError):
        encode_entry(RESULT, None, created_at_ms=1.5)


def test_signature_binds_the_entry_to_its_key():
    """A signed entry copied under another key must not verify there."""
    result = CachedResult(("a",), [(1,)])
    data = encode_entry(result, None, b"secret", context=b"key-1")
    assert decode_entry(data, b"secret", context=b"key-1")[0] == result
    with pytest.raises(CodecError):
        decode_entry(data, b"secret", context=b"key-2")
