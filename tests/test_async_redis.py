"""AsyncLocker on the real Redis (redis.asyncio): the parity scenarios of tests/test_redis.py.

Database 2 of the test server (test_redis.py uses 0, test_celery.py 1), each test in its own
key namespace, deleted afterwards. Every wait is bounded by a count and by time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import kannuki
from kannuki import AsyncLocker, LockLostError, LockNotAcquiredError
from kannuki.backends.redis_async import AsyncRedisBackend
from support import redis_namespace

redis = pytest.importorskip("redis")
aioredis = pytest.importorskip("redis.asyncio")

pytestmark = pytest.mark.redis

DB = 2
WAIT = 10.0  # seconds: the most any awaited step may take in these tests


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run one test coroutine, bounded by WAIT * 3."""
    return asyncio.run(asyncio.wait_for(main(), WAIT * 3))


@pytest.fixture
def url(redis_url: str) -> str:
    """The test server's URL on this file's database."""
    return redis_url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def namespace(url: str) -> Iterator[str]:
    """A fresh key namespace; every key under it is deleted afterwards."""
    with redis_namespace(url) as name:
        yield name


async def subscribers(url: str, channel: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.pubsub_numsub(channel))[0][1])
    finally:
        await client.aclose()


async def wait_for_subscriber(url: str, channel: str, count: int = 1) -> None:
    """Until ``count`` clients listen on ``channel`` (at most ~WAIT seconds)."""
    for _ in range(int(WAIT / 0.02)):
        if await subscribers(url, channel) == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"nobody subscribed to {channel} within {WAIT} s")


def test_acquire_release_excludes_another_locker(url: str, namespace: str) -> None:
    """A key held by one AsyncLocker cannot be taken by another until it is released."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace) as first,
            AsyncLocker(url, namespace=namespace) as second,
        ):
            lock = first.lock("job")
            assert await lock.acquire(timeout=0)
            assert lock.locked() and lock.token and lock.token > 0
            assert await second.held("job")
            assert not await second.lock("job").acquire(blocking=False)
            (holder,) = await second.holders("job")
            assert holder.token == lock.token and not holder.shared
            await lock.release()
            assert not lock.locked() and not await first.held("job")
            async with second.lock("job", timeout=5) as other:
                assert other.locked()
                assert not await first.lock("job").acquire(blocking=False)
            assert not await first.held("job")

    run(main)


def test_try_lock_and_waiter_woken_by_release(url: str, namespace: str) -> None:
    """try_lock gives up at once while held; a waiter wakes as soon as the holder releases."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace) as first,
            AsyncLocker(url, namespace=namespace) as second,
        ):

            async def work() -> str:
                return "done"

            holder = first.lock("job")
            await holder.acquire()
            assert await second.try_lock("job", work) is False
            waiting = second.lock("job")
            waiter = asyncio.create_task(waiting.acquire(timeout=WAIT))
            await wait_for_subscriber(url, f"{namespace}:released:job")
            started = time.monotonic()
            await holder.release()
            assert await asyncio.wait_for(waiter, WAIT) is True
            assert time.monotonic() - started < 2.0  # woken through pub/sub, not by a lease running out
            assert await first.try_lock("job", work) is False
            assert await second.force_release("job") == 1
            assert await first.try_lock("job", work) == "done"
            with pytest.raises(LockLostError):
                await waiting.release()

    run(main)


def test_timeout_is_not_acquired(url: str, namespace: str) -> None:
    """A wait with a timeout ends after about that long; lock_or_raise raises LockNotAcquiredError."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace) as first,
            AsyncLocker(url, namespace=namespace) as second,
        ):
            async with first.lock("busy"):
                started = time.monotonic()
                assert not await second.lock("busy").acquire(timeout=0.3)
                assert 0.25 <= time.monotonic() - started < 3.0

                async def never() -> None:
                    raise AssertionError("ran without the lock")

                with pytest.raises(LockNotAcquiredError):
                    await second.lock_or_raise("busy", never, timeout=0.2)
            assert await subscribers(url, f"{namespace}:released:busy") == 0

    run(main)


def test_shared_holders_coexist_and_exclude_writers(url: str, namespace: str) -> None:
    """Readers share a key; a writer waits for them all; readers wait for a writer."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace) as first,
            AsyncLocker(url, namespace=namespace) as second,
        ):
            reader1, reader2 = first.lock("doc", shared=True), second.lock("doc", shared=True)
            assert await reader1.acquire(timeout=0) and await reader2.acquire(timeout=0)
            holders = await first.holders("doc")
            assert sorted(h.token for h in holders) == sorted([reader1.token, reader2.token])
            assert all(h.shared for h in holders)
            assert not await first.lock("doc").acquire(blocking=False)
            await reader1.release()
            writer = first.lock("doc")
            waiting = asyncio.create_task(writer.acquire(timeout=WAIT))
            await wait_for_subscriber(url, f"{namespace}:released:doc")
            assert not waiting.done()
            await reader2.release()
            assert await asyncio.wait_for(waiting, WAIT) is True
            assert not await second.lock("doc", shared=True).acquire(blocking=False)
            await writer.release()

    run(main)


def test_tokens_strictly_increase_per_key(url: str, namespace: str) -> None:
    """Fencing tokens grow with every acquisition of a key, across lockers, modes and a lost counter."""

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        async with (
            AsyncLocker(url, namespace=namespace) as first,
            AsyncLocker(url, namespace=namespace) as second,
        ):
            tokens = []
            for i in range(12):
                lock = (first, second)[i % 2].lock("fence", shared=i % 3 == 0)
                assert await lock.acquire(timeout=5)
                tokens.append(lock.token)
                await lock.release()
                if i == 6:  # the store forgets its counter (FLUSHALL, restart without persistence)
                    await client.delete(f"{namespace}:token:fence")
        await client.aclose()
        assert tokens == sorted(set(tokens))
        assert all(isinstance(token, int) and token > 0 for token in tokens)

    run(main)


def test_lease_is_renewed_while_held_longer_than_its_ttl(url: str, namespace: str) -> None:
    """A 0.6 s lease held for 2 s stays ours: renewed every ttl/3, and nobody else can take it."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace, ttl=0.6) as holder,
            AsyncLocker(url, namespace=namespace, ttl=30) as other,
        ):
            lock = holder.lock("renewed")
            assert await lock.acquire(timeout=0)
            assert lock.grant is not None and lock.grant.ttl == 0.6
            deadline = time.monotonic() + 2.0
            tries = 0
            while time.monotonic() < deadline and tries < 40:
                await asyncio.sleep(0.1)
                tries += 1
                assert not await other.lock("renewed").acquire(blocking=False)
            assert tries >= 10
            assert lock.locked() and not lock.lost
            await lock.ensure_held()
            (record,) = await other.holders("renewed")
            assert record.token == lock.token
            await lock.release()
            assert holder.stats().renewed >= 3
            assert holder.stats().lost == 0

    run(main)


def test_lease_deleted_behind_our_back_is_lost_at_release(url: str, namespace: str) -> None:
    """A lease someone deleted is reported lost: release() raises LockLostError and lost is set."""

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        async with AsyncLocker(url, namespace=namespace, ttl=30) as locker:
            lock = locker.lock("stolen")
            assert await lock.acquire(timeout=0)
            assert await client.delete(f"{namespace}:lock:stolen") == 1
            with pytest.raises(LockLostError, match="'stolen'"):
                await lock.release()
            assert not lock.locked()
            assert locker.stats().lost == 1
            # ensure_held() finds the same kind of loss before any release
            again = locker.lock("stolen")
            assert await again.acquire(timeout=0)
            await lock_check_passes(again)
            await client.delete(f"{namespace}:lock:stolen")
            with pytest.raises(LockLostError):
                await again.ensure_held()
            assert again.lost
            with pytest.raises(LockLostError):
                await again.release()
            assert locker.stats().lost == 2
        await client.aclose()

    run(main)


async def lock_check_passes(lock: Any) -> None:
    await lock.ensure_held()
    assert not lock.lost


def test_cancelled_waiter_leaves_nothing_held(url: str, namespace: str) -> None:
    """A task cancelled while it waits holds nothing, leaves no subscription, and the key frees normally."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace) as first,
            AsyncLocker(url, namespace=namespace) as second,
        ):
            holder = first.lock("job")
            await holder.acquire()
            waiters = [asyncio.create_task(second.lock("job").acquire(timeout=WAIT)) for _ in range(3)]
            # The first waiter listens on Redis; the others queue in-process behind it.
            await wait_for_subscriber(url, f"{namespace}:released:job")
            for waiter in waiters:
                waiter.cancel()
            for waiter in waiters:
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(waiter, WAIT)
            await holder.release()
            assert not await first.held("job")
            for _ in range(int(WAIT / 0.02)):  # the subscription is closed (bounded wait for the server)
                if await subscribers(url, f"{namespace}:released:job") == 0:
                    break
                await asyncio.sleep(0.02)
            assert await subscribers(url, f"{namespace}:released:job") == 0
            late = second.lock("job")
            assert await late.acquire(timeout=0)
            await late.release()

    run(main)


def test_cancelled_acquire_in_flight_leaves_nothing_held(url: str, namespace: str) -> None:
    """Cancelling an uncontended acquire at any point (the script maybe run, its reply lost) leaks no lease."""

    async def main() -> None:
        async with AsyncLocker(url, namespace=namespace) as locker:
            outcomes = {"acquired": 0, "cancelled": 0}
            for i in range(60):
                lock = locker.lock("flight")
                task = asyncio.create_task(lock.acquire(timeout=0))
                for _ in range(i % 6):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    assert await asyncio.wait_for(task, WAIT)
                    outcomes["acquired"] += 1
                    await lock.release()
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                assert not await locker.held("flight"), f"a lease stayed after round {i}: {outcomes}"
            assert outcomes["cancelled"] > 0

    run(main)


# -- the backend directly -------------------------------------------------------------------


def test_wraps_async_clients_only(url: str, namespace: str) -> None:
    """AsyncLocker(redis.asyncio.Redis) drives that client (left open); sync clients and others are refused."""

    async def main() -> None:
        assert not AsyncRedisBackend.wraps(redis.Redis())
        assert not AsyncRedisBackend.wraps(object())
        with pytest.raises(kannuki.ConfigurationError, match="url"):
            AsyncRedisBackend.from_connection(redis.Redis())
        for decode in (False, True):
            client = aioredis.Redis.from_url(url, decode_responses=decode)
            assert AsyncRedisBackend.wraps(client)
            backend = AsyncRedisBackend.from_connection(client, namespace=namespace, ttl=5)
            grant = await backend.acquire("wrapped", kannuki.lock_id("wrapped"), timeout=0)
            assert grant is not None and grant.ttl == 5
            assert await backend.check(grant)
            assert [h.name for h in await backend.list_held()] == ["wrapped"]
            await backend.release(grant)
            await backend.aclose()
            assert await client.ping()  # the caller's client is still the caller's
            await client.aclose()

    run(main)


class Proxy:
    """A client that is not redis-py's but has its interface (like valkey-py's): duck-typed."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.connection_pool = client.connection_pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await self._client.execute_command(*args, **options)


def test_wraps_a_duck_typed_async_client(url: str, namespace: str) -> None:
    """Any async client with redis-py's interface works: acquire, wait, release, check."""

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        proxy = Proxy(client)
        assert AsyncRedisBackend.wraps(proxy)
        first = AsyncRedisBackend.from_connection(proxy, namespace=namespace, ttl=5)
        second = AsyncRedisBackend.from_url(url, namespace=namespace)
        name, lock_id = "duck", kannuki.lock_id("duck")
        grant = await first.acquire(name, lock_id, timeout=0)
        assert grant is not None and await first.check(grant)
        assert await second.acquire(name, lock_id, timeout=0) is None
        later = asyncio.get_running_loop().call_later(
            0.2, lambda: asyncio.ensure_future(first.release(grant))
        )
        other = await second.acquire(name, lock_id, timeout=WAIT)
        later.cancel()
        assert other is not None and other.token > grant.token
        assert not await first.check(grant)
        assert await second.force_release(name, lock_id) == 1
        with pytest.raises(LockLostError):
            await second.release(other)
        await second.aclose()
        await client.aclose()

    run(main)


def test_valkey_urls_are_redis_urls(url: str, namespace: str) -> None:
    """valkey:// and valkeys:// reach the same server as redis:// and rediss://, with the password hidden."""

    async def main() -> None:
        backend = AsyncRedisBackend.from_url(url.replace("redis://", "valkey://", 1), namespace=namespace)
        grant = await backend.acquire("v", kannuki.lock_id("v"), timeout=0)
        assert grant is not None
        plain = AsyncRedisBackend.from_url(url, namespace=namespace)
        assert await plain.held("v", kannuki.lock_id("v"))
        await backend.release(grant)
        await backend.aclose()
        await plain.aclose()
        tls = AsyncRedisBackend.from_url("valkeys://user:s3cret@127.0.0.1:6379/0")
        assert "s3cret" not in tls.describe() and tls.describe().startswith("valkeys://")
        assert "SSL" in tls.client.connection_pool.connection_class.__name__
        await tls.aclose()

    run(main)


def test_unreachable_server_is_backend_error(namespace: str) -> None:
    """Nothing listening: BackendError within the connect timeout, with the redis error as cause."""

    async def main() -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async with AsyncLocker(f"redis://127.0.0.1:{port}/0", connect_timeout=1) as locker:
            started = time.monotonic()
            with pytest.raises(kannuki.BackendError) as info:
                await locker.lock("down").acquire(timeout=0)
            assert time.monotonic() - started < 3.0
            assert isinstance(info.value.__cause__, redis.RedisError)

    run(main)


def test_item_12_connect_timeout_bounds_a_server_that_never_answers() -> None:
    """connect_timeout=1, socket_timeout=20: a server that accepts and stays silent is a BackendError in ~1 s."""

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # kept open, never answered

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with AsyncLocker(
                f"redis://127.0.0.1:{port}/0", connect_timeout=1, socket_timeout=20
            ) as locker:
                started = time.monotonic()
                with pytest.raises(kannuki.BackendError) as info:
                    await locker.lock("silent").acquire(timeout=0)
                elapsed = time.monotonic() - started
                assert accepted, "the client never connected"
                assert isinstance(info.value.__cause__, redis.RedisError)
                assert elapsed < 10, f"took {elapsed:.1f}s: socket_timeout, not connect_timeout, applied"
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    run(main)


# -- item 23: a waiting writer keeps new readers out ----------------------------------


async def overlapping_reader(
    locker: AsyncLocker, key: str, started: asyncio.Event, stop: asyncio.Event, errors: list[str]
) -> None:
    """Hand over hand: take the next shared lock (one try) before letting go of the last, so this
    reader always overlaps itself; only when the try is refused does it let go and wait its turn."""
    current = locker.lock(key, shared=True)
    if not await current.acquire(timeout=WAIT):
        errors.append("a reader could not start")
        return
    started.set()
    deadline = time.monotonic() + 2 * WAIT
    for _ in range(100_000):
        if stop.is_set() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.002)
        following = locker.lock(key, shared=True)
        got = await following.acquire(timeout=0)
        await current.release()
        if not got and not await following.acquire(timeout=WAIT):
            errors.append("a reader waited past the liveness bound")
            return
        current = following
    await current.release()


async def writer_gets_in_among_readers(readers: AsyncLocker, writers: AsyncLocker, key: str) -> None:
    """Two reader tasks overlap without a gap; a writer (another locker) must still get the key within WAIT."""
    stop = asyncio.Event()
    errors: list[str] = []
    starts = [asyncio.Event() for _ in range(2)]
    tasks = [asyncio.ensure_future(overlapping_reader(readers, key, s, stop, errors)) for s in starts]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), WAIT)
        writer = writers.lock(key)
        assert await writer.acquire(timeout=WAIT), "the writer starved behind overlapping readers"
        assert all(not h.shared for h in await writers.holders(key))
        await writer.release()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2 * WAIT)
    assert errors == []


def test_item_23_waiting_writer_is_not_starved_by_overlapping_readers(url: str, namespace: str) -> None:
    """A waiting writer's mark (N:writers:name, short PX) stops new readers; it gets in within WAIT."""

    async def main() -> None:
        async with (
            AsyncLocker(url, namespace=namespace) as readers,
            AsyncLocker(url, namespace=namespace) as writers,
        ):
            await writer_gets_in_among_readers(readers, writers, "doc")

    run(main)
