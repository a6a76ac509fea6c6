"""Key hashing: PostgreSQL's ``hashtextextended`` (lookup3) and full-name validation.

The byte order is always little-endian, so the IDs are the same on every
platform and equal ``SELECT hashtextextended('<full name>', 0)`` on a
little-endian server.
"""

from __future__ import annotations

import struct

MAX_NAME_BYTES = 65536

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_BLOCKS = struct.Struct("<3I")


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M32) ^ _rot(c, 4)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 6)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 8)
    b = (b + a) & _M32
    a = ((a - c) & _M32) ^ _rot(c, 16)
    c = (c + b) & _M32
    b = ((b - a) & _M32) ^ _rot(a, 19)
    a = (a + c) & _M32
    c = ((c - b) & _M32) ^ _rot(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c = ((c ^ b) - _rot(b, 14)) & _M32
    a = ((a ^ c) - _rot(c, 11)) & _M32
    b = ((b ^ a) - _rot(a, 25)) & _M32
    c = ((c ^ b) - _rot(b, 16)) & _M32
    a = ((a ^ c) - _rot(c, 4)) & _M32
    b = ((b ^ a) - _rot(a, 14)) & _M32
    c = ((c ^ b) - _rot(b, 24)) & _M32
    return a, b, c


def _hash_bytes(data: bytes, seed: int) -> int:
    """``hash_bytes_extended`` from PostgreSQL's src/common/hashfn.c, as an unsigned 64-bit int."""
    length = len(data)
    a = b = c = (0x9E3779B9 + (length & _M32) + 3923095) & _M32
    if seed:
        # PostgreSQL treats the seed as a 12-byte chunk of data mixed in first.
        a = (a + (seed >> 32)) & _M32
        b = (b + (seed & _M32)) & _M32
        a, b, c = _mix(a, b, c)
    full = length - length % 12
    for wa, wb, wc in _BLOCKS.iter_unpack(data[:full]):
        a, b, c = _mix((a + wa) & _M32, (b + wb) & _M32, (c + wc) & _M32)
    tail = data[full:]
    # The low byte of c is reserved for the length: tail bytes 8..10 go in above it.
    wa, wb, wc = _BLOCKS.unpack(tail[:8].ljust(8, b"\0") + b"\0" + tail[8:].ljust(3, b"\0"))
    a, b, c = _final((a + wa) & _M32, (b + wb) & _M32, (c + wc) & _M32)
    return (b << 32) | c


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def hash_text_extended(data: bytes, seed: int = 0) -> int:
    """PostgreSQL's ``hashtextextended`` over ``data`` with ``seed``, as a signed 64-bit int.

    ``seed`` is taken modulo 2**64 (a negative bigint seed in SQL is the same
    bits). Raises TypeError when ``data`` is not bytes-like or ``seed`` not an int.
    """
    if isinstance(data, str):
        raise TypeError("data must be bytes, not str; encode it to UTF-8 first")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if not -(1 << 63) <= seed < 1 << 64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    return _signed(_hash_bytes(memoryview(data).tobytes(), seed & _M64))


def _encoded(key: object, prefix: object) -> tuple[str, bytes]:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str or None, not {type(prefix).__name__}")
    # One canonical text for the name and the ID: a str subclass (``class Job(str, Enum)``) is
    # taken by its string value, never by its __str__ / __format__.
    key = str.__str__(key)
    if prefix is not None:
        prefix = str.__str__(prefix)
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("key is not encodable as UTF-8 (it contains a lone surrogate)") from None
    if prefix:
        try:
            raw = prefix.encode("utf-8") + b":" + raw
        except UnicodeEncodeError:
            raise ValueError("prefix is not encodable as UTF-8 (it contains a lone surrogate)") from None
        name = f"{prefix}:{key}"
    else:
        name = key
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(
            f"key is too long: the full lock name is {len(raw)} bytes of UTF-8, "
            f"the limit is {MAX_NAME_BYTES} bytes"
        )
    return name, raw


def full_name(key: str, prefix: str | None = None) -> str:
    """Validate ``key`` / ``prefix`` and return ``f"{prefix}:{key}"`` (``key`` with no prefix).

    Raises TypeError when ``key`` is not a str (or ``prefix`` not a str or None)
    and ValueError when ``key`` is empty, not UTF-8 encodable, or the full name
    is over MAX_NAME_BYTES of UTF-8.
    """
    return _encoded(key, prefix)[0]


def lock_id(key: str, prefix: str | None = None) -> int:
    """The signed 64-bit lock ID of ``key``: ``hashtextextended(full_name, 0)``."""
    return _signed(_hash_bytes(_encoded(key, prefix)[1], 0))


def name_and_id(key: str, prefix: str | None = None) -> tuple[str, int]:
    """``(full_name(key, prefix), lock_id(key, prefix))``, validating once."""
    name, raw = _encoded(key, prefix)
    return name, _signed(_hash_bytes(raw, 0))
