"""Key hashing: kannuki.lock_id (compiled and pure) beside zlib.crc32 and the peers' hashes.

Every contender hashes the same ~1000 mixed keys per round (short and long, ASCII and not),
each in a loop that makes one call per key, so no contender pays for an extra Python frame per key
(the floor and the crc32 peer, which do more than one call, have their loops written out).
SPEC §7: native >= 10x the pure twin, and within 2x of ``zlib.crc32`` (the floor).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import pytest

from kannuki import _pure

Hasher = Callable[[list[str]], int]


def _mixed_keys(count: int = 1000) -> list[str]:
    """Deterministic keys shaped like real lock names: ids, paths, long names, non-ASCII."""
    rng = random.Random(5)
    shapes = [
        lambda i: f"job:{i}",
        lambda i: f"invoices/{rng.randrange(2000, 2030)}/{rng.randrange(10**6):06d}",
        lambda i: f"tenant-{rng.randrange(10**4)}:report:" + "x" * rng.randrange(40, 200),
        lambda i: f"請求書/{i}/処理",
        lambda i: f"café-{i}-naïve-{rng.randrange(10**5)}",
        lambda i: f"🔒 lock {i}",
    ]
    return [shapes[i % len(shapes)](i) for i in range(count)]


KEYS = _mixed_keys()


def _each_key(hash_one: Callable[[str], int]) -> Hasher:
    """A hasher calling ``hash_one`` once per key, returning the last hash."""

    def run(keys: list[str]) -> int:
        last = 0
        for key in keys:
            last = hash_one(key)
        return last

    return run


def _kannuki(module_name: str) -> Hasher:
    if module_name == "native":
        native = pytest.importorskip("kannuki._native", reason="the compiled core is not built")
        return _each_key(native.lock_id)
    return _each_key(_pure.lock_id)


def _floor_crc32() -> Hasher:
    crc32 = zlib.crc32

    def run(keys: list[str]) -> int:
        last = 0
        for key in keys:
            last = crc32(key.encode())
        return last

    return run


def _peer_pals() -> Hasher:
    # pals derives its PostgreSQL bigint from sha1(name) (pals/core.py Locker._lock_num); call it as is.
    pals = pytest.importorskip("pals")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    locker = pals.Locker(None, create_engine_callable=lambda: sqlalchemy.create_engine("sqlite://"))
    return _each_key(locker._lock_num)


def _peer_with_advisory_lock() -> Hasher:
    # with_advisory_lock-style: CRC-32 of the name, as a signed 32-bit int for pg_advisory_lock(int, int).
    crc32 = zlib.crc32

    def run(keys: list[str]) -> int:
        last = 0
        for key in keys:
            value = crc32(key.encode())
            last = value - 0x1_0000_0000 if value & 0x8000_0000 else value
        return last

    return run


CONTENDERS = [
    pytest.param(_floor_crc32, id="floor-zlib.crc32"),
    pytest.param(lambda: _kannuki("native"), id="kannuki-native"),
    pytest.param(lambda: _kannuki("pure"), id="kannuki-pure"),
    pytest.param(_peer_pals, id="peer-pals.sha1"),
    pytest.param(_peer_with_advisory_lock, id="peer-with_advisory_lock.crc32"),
]


@pytest.mark.parametrize("make_hasher", CONTENDERS)
def test_lock_id(benchmark, make_hasher: Callable[[], Hasher]) -> None:
    """Hash the same 1000 mixed keys per round with each contender."""
    run = make_hasher()
    benchmark.group = f"core: lock_id over {len(KEYS)} keys"
    last = benchmark(run, KEYS)
    assert isinstance(last, int)


def test_native_and_pure_agree_on_the_benchmark_keys() -> None:
    """The compiled and pure lock_id agree on every benchmark key (a fast wrong hash is no win)."""
    native = pytest.importorskip("kannuki._native", reason="the compiled core is not built")
    assert [native.lock_id(k) for k in KEYS] == [_pure.lock_id(k) for k in KEYS]
