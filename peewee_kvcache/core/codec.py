"""Bytes <-> query results, as L1 and L2 store them.

L2 is shared and network-reachable, so nothing read back is ever unpickled: values are msgpack
with one explicit extension type per Python type a DB driver returns, and every other type is
refused on encode (the result then simply isn't cached) rather than coming back different.
Decoding is the cache-hit hot path: one ``msgpack.unpackb`` (C) plus a tuple() per row.
"""
from __future__ import annotations

import hashlib
import hmac
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Context, Decimal
from functools import lru_cache, partial
from itertools import chain
from struct import Struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from uuid import UUID

import msgpack
from msgpack import ExtType, Timestamp

FORMAT_VERSION: int = 1

_MAGIC = b"PKC"
_HEADER = Struct(">3sBB")  # magic, FORMAT_VERSION, flags
_FLAG_SIGNED = 0x01
_MAC_SIZE = hashlib.sha256().digest_size
# Tuples nest as extension payloads, each decoded by its own unpacker; the cap bounds that
# recursion for hostile input (each level costs C stack: 32 levels crashed a 256 KiB thread on
# Python 3.13), and encode enforces the same cap so every entry stays readable. Database values
# nest tuples a level or two deep (composite types) at most.
_MAX_TUPLE_DEPTH = 8


class CodecError(ValueError):
    """The bytes are not a valid entry: corrupt, another format version, or failed signature."""


class SignatureError(CodecError):
    """A signing secret is configured and the entry is unsigned or its signature is wrong."""


class UnsupportedValue(CodecError):
    """A value the codec cannot reproduce exactly; the caller should just not cache it."""


@dataclass(frozen=True)
class CachedResult:
    """A query result as the cursor produced it: column names and rows of values."""

    columns: Tuple[str, ...]
    rows: List[tuple]


# Extension type codes are part of the wire format: never renumber, only append.
_X_INT, _X_DECIMAL, _X_DATETIME, _X_DATETIME_TZ, _X_DATE = 1, 2, 3, 4, 5
_X_TIME, _X_TIME_TZ, _X_TIMEDELTA, _X_UUID, _X_TUPLE, _X_BYTEARRAY, _X_MEMORYVIEW = range(6, 13)

_DATE = Struct(">HBB")
_TIME = Struct(">BBBIB")  # hour, minute, second, microsecond, fold
_TIME_TZ = Struct(">BBBIBq")  # ... + utcoffset in microseconds
_DATETIME = Struct(">HBBBBBIB")
_DATETIME_TZ = Struct(">HBBBBBIBq")
_TIMEDELTA = Struct(">iII")
_MICROSECOND = timedelta(microseconds=1)
# str(Decimal) follows the thread's context (capitals), which would make param bytes vary.
_DECIMAL_CTX = Context(capitals=1)

# Types msgpack packs natively but lossily (bytearray/memoryview come back as bytes), containers
# whose contents need that same check, and raw msgpack ext objects that would impersonate ours.
_NEEDS_WALK = frozenset({list, dict, bytearray, memoryview, ExtType, Timestamp})


def _type_name(tp: type) -> str:
    return tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"


def _unsupported(value: Any, what: str = "value") -> UnsupportedValue:
    return UnsupportedValue(f"cannot cache a {what} of type {_type_name(type(value))}")


def _datetime_ext(v: datetime) -> ExtType:
    fields = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold)
    offset = v.utcoffset()
    if offset is None:
        return ExtType(_X_DATETIME, _DATETIME.pack(*fields))
    return ExtType(_X_DATETIME_TZ, _DATETIME_TZ.pack(*fields, offset // _MICROSECOND))


def _time_ext(v: time) -> ExtType:
    fields = (v.hour, v.minute, v.second, v.microsecond, v.fold)
    offset = v.utcoffset()
    if offset is None:
        return ExtType(_X_TIME, _TIME.pack(*fields))
    return ExtType(_X_TIME_TZ, _TIME_TZ.pack(*fields, offset // _MICROSECOND))


class _Encoder:
    """msgpack with our extension types; ``sort_keys`` makes dict encoding canonical for keys.

    ``depth`` counts enclosing tuples; each level packs its tuples' contents with the next one.
    """

    def __init__(self, sort_keys: bool, depth: int = 0):
        self._sort_keys = sort_keys
        self._depth = depth
        self._inner: Optional[_Encoder] = None
        self._ext: Dict[type, Callable[[Any], ExtType]] = {
            # msgpack hands exact ints to ``default`` only when they overflow 64 bits.
            int: lambda v: ExtType(_X_INT, v.to_bytes(v.bit_length() // 8 + 1, "big", signed=True)),
            Decimal: lambda v: ExtType(_X_DECIMAL, _DECIMAL_CTX.to_sci_string(v).encode("ascii")),
            datetime: _datetime_ext,
            date: lambda v: ExtType(_X_DATE, _DATE.pack(v.year, v.month, v.day)),
            time: _time_ext,
            timedelta: lambda v: ExtType(_X_TIMEDELTA,
                                         _TIMEDELTA.pack(v.days, v.seconds, v.microseconds)),
            UUID: lambda v: ExtType(_X_UUID, v.bytes),
            tuple: self._tuple_ext,
        }

    def _tuple_ext(self, value: tuple) -> ExtType:
        if self._inner is None:
            if self._depth == _MAX_TUPLE_DEPTH:
                raise UnsupportedValue(
                    f"cannot cache tuples nested more than {_MAX_TUPLE_DEPTH} deep")
            self._inner = _Encoder(self._sort_keys, self._depth + 1)
        return ExtType(_X_TUPLE, self._inner.pack(self._inner.walk(list(value))))

    def walk(self, value: Any) -> Any:
        """Fix up what msgpack would pack without asking ``default``; other values pass through."""
        tp = type(value)
        if tp is list:
            return [self.walk(v) if type(v) in _NEEDS_WALK else v for v in value]
        if tp is dict:
            for key in value:
                if type(key) is not str and type(key) is not bytes:
                    raise _unsupported(key, "dict key")
            items = value.items()
            if self._sort_keys:
                items = sorted(items, key=lambda kv: (type(kv[0]) is bytes, kv[0]))
            return {k: self.walk(v) if type(v) in _NEEDS_WALK else v for k, v in items}
        if tp is bytearray:
            return ExtType(_X_BYTEARRAY, bytes(value))
        if tp is memoryview:
            return ExtType(_X_MEMORYVIEW, value.tobytes())
        if tp in _NEEDS_WALK:
            raise _unsupported(value)
        return value

    def default(self, value: Any) -> ExtType:
        """msgpack's hook for every type it has no exact encoding for (strict_types=True)."""
        encode = self._ext.get(type(value))
        if encode is None:
            raise _unsupported(value)
        return encode(value)

    def pack(self, obj: Any) -> bytes:
        # A fresh Packer per call (inside packb) keeps this thread-safe.
        return msgpack.packb(obj, default=self.default, strict_types=True, use_bin_type=True,
                             unicode_errors="surrogatepass")


@contextmanager
def _limits_as_unsupported() -> Iterator[None]:
    """Values too deep to encode (msgpack's nesting limit, Python's recursion limit) aren't
    cached."""
    try:
        yield
    except CodecError:
        raise
    except (ValueError, RecursionError) as exc:
        raise UnsupportedValue(f"cannot cache this value: {exc}") from exc


_ENTRY_ENCODER = _Encoder(sort_keys=False)  # keep JSON object order as the driver returned it
_PARAMS_ENCODER = _Encoder(sort_keys=True)


@lru_cache(maxsize=128)
def _tz(offset_us: int) -> timezone:
    return timezone(timedelta(microseconds=offset_us))


def _decode_tuple(data: bytes, depth: int) -> tuple:
    if depth > _MAX_TUPLE_DEPTH:
        raise CodecError("tuples nested too deeply")
    # An Unpacker keeps its parse stack on the heap; a nested unpackb() would put ~40 KB on the
    # C stack per level, enough for crafted input to overflow a thread's stack.
    unpacker = msgpack.Unpacker(ext_hook=partial(_ext_hook, depth=depth),
                                unicode_errors="surrogatepass")
    unpacker.feed(data)
    items = list(unpacker)
    if len(items) != 1 or type(items[0]) is not list:
        raise CodecError("corrupt tuple value")
    return tuple(items[0])


def _datetime(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int, fold: int,
              offset_us: Optional[int] = None) -> datetime:
    tzinfo = None if offset_us is None else _tz(offset_us)
    return datetime(y, mo, d, h, mi, s, us, tzinfo, fold=fold)


def _time(h: int, mi: int, s: int, us: int, fold: int, offset_us: Optional[int] = None) -> time:
    return time(h, mi, s, us, None if offset_us is None else _tz(offset_us), fold=fold)


_DECODERS: Dict[int, Callable[[bytes], Any]] = {
    _X_INT: lambda b: int.from_bytes(b, "big", signed=True),
    _X_DECIMAL: lambda b: Decimal(b.decode("ascii"), _DECIMAL_CTX),
    _X_DATETIME: lambda b: _datetime(*_DATETIME.unpack(b)),
    _X_DATETIME_TZ: lambda b: _datetime(*_DATETIME_TZ.unpack(b)),
    _X_DATE: lambda b: date(*_DATE.unpack(b)),
    _X_TIME: lambda b: _time(*_TIME.unpack(b)),
    _X_TIME_TZ: lambda b: _time(*_TIME_TZ.unpack(b)),
    _X_TIMEDELTA: lambda b: timedelta(*_TIMEDELTA.unpack(b)),
    _X_UUID: lambda b: UUID(bytes=b),
    _X_BYTEARRAY: bytearray,
    _X_MEMORYVIEW: memoryview,
}


def _ext_hook(code: int, data: bytes, depth: int = 0) -> Any:
    if code == _X_TUPLE:
        return _decode_tuple(data, depth + 1)
    decode = _DECODERS.get(code)
    if decode is None:
        raise CodecError(f"unknown extension type {code}")
    return decode(data)


def _mac(secret: bytes, header: Any, payload: Any, context: bytes) -> bytes:
    """HMAC over header, context (the entry's key) and payload: a signed entry copied to another
    key fails the check, so a KV writer cannot serve one query's rows for another."""
    if not secret:
        raise ValueError("the signing secret must be non-empty bytes")
    mac = hmac.new(secret, header, hashlib.sha256)
    mac.update(len(context).to_bytes(4, "big"))
    mac.update(context)
    mac.update(payload)
    return mac.digest()


def encode_entry(result: CachedResult, expires_at_ms: Optional[int],
                 secret: Optional[bytes] = None, context: bytes = b"",
                 created_at_ms: Optional[int] = None) -> bytes:
    """Serialize one result; raises UnsupportedValue when any value would not round-trip."""
    if expires_at_ms is not None and type(expires_at_ms) is not int:
        raise TypeError("expires_at_ms must be an int or None")
    if created_at_ms is not None and type(created_at_ms) is not int:
        raise TypeError("created_at_ms must be an int or None")
    for name in result.columns:
        if type(name) is not str:
            raise _unsupported(name, "column name")
    width = frozenset((len(result.columns),))
    if not width.issuperset(map(len, result.rows)):
        raise CodecError("a row's width differs from the number of columns")
    walk = _ENTRY_ENCODER.walk
    with _limits_as_unsupported():
        rows = [list(row) if _NEEDS_WALK.isdisjoint(map(type, row)) else [walk(v) for v in row]
                for row in result.rows]
        payload = _ENTRY_ENCODER.pack([expires_at_ms, list(result.columns), rows, created_at_ms])
    if secret is None:
        return _HEADER.pack(_MAGIC, FORMAT_VERSION, 0) + payload
    header = _HEADER.pack(_MAGIC, FORMAT_VERSION, _FLAG_SIGNED)
    return header + _mac(secret, header, payload, context) + payload


_STR_ONLY = frozenset((str,))
_LIST_ONLY = frozenset((list,))
#: types whose every value encodes exactly and is never refused (a 4 GiB str or bytes aside)
_ALWAYS_ENCODED = frozenset({str, int, float, bool, type(None), bytes, Decimal, datetime, date,
                             time, timedelta, UUID})


def always_encodes(result: CachedResult) -> bool:
    """Whether :func:`encode_entry` cannot refuse ``result``: its encoding may then be made
    later, on another thread (a type check costs a fraction of encoding)."""
    return (_STR_ONLY.issuperset(map(type, result.columns))
            and _ALWAYS_ENCODED.issuperset(map(type, chain.from_iterable(result.rows))))


def _payload_start(view: memoryview, secret: Optional[bytes], context: bytes) -> int:
    """Where an entry's payload begins, after its header (and signature, checked when
    ``secret`` is given); CodecError for a defect."""
    if len(view) < _HEADER.size:
        raise CodecError("truncated cache entry")
    magic, version, flags = _HEADER.unpack_from(view)
    if magic != _MAGIC:
        raise CodecError("not a peewee_kvcache entry")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported cache entry format version {version}")
    if flags & ~_FLAG_SIGNED:
        raise CodecError(f"unknown cache entry flags {flags:#04x}")
    start = _HEADER.size
    if flags & _FLAG_SIGNED:
        start += _MAC_SIZE
        if len(view) < start:
            raise CodecError("truncated cache entry")
        if secret is not None:
            expected = _mac(secret, view[:_HEADER.size], view[start:], context)
            if not hmac.compare_digest(expected, view[_HEADER.size:start]):
                raise SignatureError("cache entry signature mismatch")
    elif secret is not None:
        raise SignatureError("unsigned cache entry while a signing secret is configured")
    return start


def decode_entry(data: bytes, secret: Optional[bytes] = None,
                 context: bytes = b"") -> Tuple[CachedResult, Optional[int]]:
    """Parse an entry into (result, expires_at_ms); any defect raises CodecError."""
    result, expires_at_ms, _ = decode_entry_full(data, secret, context)
    return result, expires_at_ms


def decode_entry_full(data: bytes, secret: Optional[bytes] = None, context: bytes = b""
                      ) -> Tuple[CachedResult, Optional[int], Optional[int]]:
    """Parse an entry into (result, expires_at_ms, created_at_ms); any defect raises CodecError,
    never garbage. ``created_at_ms`` is when its query started (None if the writer gave none)."""
    view = memoryview(data)
    start = _payload_start(view, secret, context)
    try:
        payload = msgpack.unpackb(view[start:], ext_hook=_ext_hook, unicode_errors="surrogatepass")
    except CodecError:
        raise
    except Exception as exc:  # anything a malformed buffer can provoke means "corrupt"
        raise CodecError(f"corrupt cache entry ({type(exc).__name__})") from exc
    if type(payload) is not list or len(payload) != 4:
        raise CodecError("cache entry payload has the wrong shape")
    expires_at_ms, columns, rows, created_at_ms = payload
    if not ((expires_at_ms is None or type(expires_at_ms) is int)
            and (created_at_ms is None or type(created_at_ms) is int)
            and type(columns) is list and _STR_ONLY.issuperset(map(type, columns))
            and type(rows) is list and _LIST_ONLY.issuperset(map(type, rows))
            and frozenset((len(columns),)).issuperset(map(len, rows))):
        raise CodecError("cache entry payload has the wrong shape")
    return CachedResult(tuple(columns), list(map(tuple, rows))), expires_at_ms, created_at_ms


def encode_params(params: Sequence[Any]) -> bytes:
    """Canonical, type-tagged bytes of query parameters, for hashing into a cache key.

    Values are tagged by exact type (1 vs True vs 1.0, [1] vs (1,), Decimal('1.0') vs '1.00' all
    differ) and dict keys are sorted, so equal inputs give equal bytes and unequal ones never do.
    """
    with _limits_as_unsupported():
        return _PARAMS_ENCODER.pack(_PARAMS_ENCODER.walk(list(params)))
