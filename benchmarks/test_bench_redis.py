"""Uncontended try-acquire + release on Redis: kannuki beside the floor and the peers.

- floor: raw redis-py on one client, ``SET key token NX PX`` then a
  compare-and-delete Lua script by EVALSHA (two round trips, as kannuki);
- kannuki: ``Locker("redis://...").lock(key)`` with its defaults (fencing
  token, holder record, lease renewal bookkeeping), on the loaded core, and
  with the in-process table of the pure-Python core;
- python-redis-lock and pottery (Redlock with a single master).

Run: ``PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_redis.py --benchmark-only``
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kannuki
from kannuki import _pure

redis = pytest.importorskip("redis")

COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def floor(client: Any, key: str) -> Callable[[], None]:
    release = client.register_script(COMPARE_AND_DELETE)
    token = uuid.uuid4().hex

    def cycle() -> None:
        assert client.set(key, token, nx=True, px=30_000)
        assert release(keys=[key], args=[token]) == 1

    return cycle


def kannuki_lock(url: str, namespace: str, key: str, *, pure_table: bool = False) -> Callable[[], None]:
    locker = kannuki.Locker(url, namespace=namespace)
    if pure_table:
        locker.backend._table = _pure.LockTable()  # type: ignore[attr-defined]
    lock = locker.lock(key)

    def cycle() -> None:
        assert lock.acquire(blocking=False)
        lock.release()

    return cycle


def python_redis_lock(client: Any, key: str) -> Callable[[], None]:
    import redis_lock

    def cycle() -> None:
        lock = redis_lock.Lock(client, key, expire=30)
        assert lock.acquire(blocking=False)
        lock.release()

    return cycle


def pottery_redlock(client: Any, key: str) -> Callable[[], None]:
    from pottery import Redlock

    lock = Redlock(key=key, masters={client}, auto_release_time=30)

    def cycle() -> None:
        assert lock.acquire(blocking=False)
        lock.release()

    return cycle


@pytest.fixture
def namespace(redis_url: str, key_prefix: str) -> Iterator[str]:
    """A fresh key namespace, removed afterwards."""
    yield key_prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{key_prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.parametrize(
    "impl", ["floor-script", "kannuki-url", "kannuki-pure-table", "peer-python-redis-lock", "peer-pottery"]
)
def test_uncontended_acquire_release(benchmark: Any, redis_url: str, namespace: str, impl: str) -> None:
    """One try-acquire and one release of a free key, per implementation."""
    benchmark.group = "redis uncontended acquire+release"
    client = redis.Redis.from_url(redis_url)
    key = f"{namespace}:key"
    cycles = {
        "floor-script": lambda: floor(client, key),
        "kannuki-url": lambda: kannuki_lock(redis_url, namespace, "key"),
        "kannuki-pure-table": lambda: kannuki_lock(redis_url, namespace, "key", pure_table=True),
        "peer-python-redis-lock": lambda: python_redis_lock(client, key),
        "peer-pottery": lambda: pottery_redlock(client, key),
    }
    cycle = cycles[impl]()
    cycle()  # warm up: connect, load scripts
    benchmark(cycle)
    client.close()
