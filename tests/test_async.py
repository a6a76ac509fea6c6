"""AsyncLocker (SPEC §5 Async) on memory and the real PostgreSQL: verbs, contention, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import kannuki
from kannuki import AlreadyHeldError, LockNotAcquiredError, NotHeldError
from kannuki.aio import AsyncLock, AsyncLocker

WAIT = 10.0  # seconds: the most any awaited step may take in these tests


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run one test coroutine, bounded by WAIT * 3."""
    return asyncio.run(asyncio.wait_for(main(), WAIT * 3))


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["memory", "pg"])
def url(request: pytest.FixtureRequest) -> str:
    """A store URL: a fresh memory table, or the real PostgreSQL."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return request.getfixturevalue("pg_url")


def test_async_with_and_acquire_release(url: str) -> None:
    """async with holds the key; acquire() / release() / locked() / token behave like the sync Lock."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            lock = locker.lock("job")
            assert isinstance(lock, AsyncLock) and not lock.locked() and lock.token is None
            assert await lock.acquire() is True
            assert lock.locked() and lock.token and await locker.held("job")
            with pytest.raises(AlreadyHeldError):
                await lock.acquire()
            await lock.release()
            assert not lock.locked() and not await locker.held("job")
            with pytest.raises(NotHeldError, match="'job'"):
                await lock.release()
            async with locker.lock("job") as held:
                assert held.locked() and await locker.held("job")
            assert not await locker.held("job")
            assert lock.lock_id == locker.lock_id("job")

    run(main)


def test_three_verbs_accept_sync_and_async_functions(url: str) -> None:
    """with_lock / try_lock / lock_or_raise return fn's result (awaited when async) or False / raise."""

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> None:
        async with (
            AsyncLocker(url, key_prefix=prefix()) as locker,
            AsyncLocker(url, key_prefix=locker.options.key_prefix) as other,
        ):
            assert await locker.with_lock("k", double, 4) == 8
            assert await locker.try_lock("k", lambda: "sync") == "sync"
            assert await locker.lock_or_raise("k", double, x=1) == 2
            async with other.lock("k"):
                assert await locker.try_lock("k", double, 1) is False
                assert await locker.with_lock("k", double, 1, timeout=0.05) is False
                with pytest.raises(LockNotAcquiredError, match="'k' within 0.05s"):
                    await locker.lock_or_raise("k", double, 1, timeout=0.05)

    run(main)


def test_two_async_lockers_exclude_and_hand_over(url: str) -> None:
    """A waiter gets the key once the holder releases; no two tasks are ever inside at once."""

    async def main() -> None:
        key_prefix = prefix()
        async with AsyncLocker(url, key_prefix=key_prefix) as a, AsyncLocker(url, key_prefix=key_prefix) as b:
            inside, overlaps, done = [0], [0], []

            async def worker(locker: AsyncLocker) -> None:
                for _ in range(5):
                    async with locker.lock("counter", timeout=WAIT):
                        inside[0] += 1
                        overlaps[0] = max(overlaps[0], inside[0])
                        await asyncio.sleep(0.001)
                        inside[0] -= 1
                        done.append(1)

            await asyncio.gather(*(worker(locker) for locker in (a, b, a, b)))
            assert len(done) == 20 and overlaps[0] == 1

    run(main)


def test_timeout_is_honoured(url: str) -> None:
    """A blocked acquire(timeout=0.2) returns False after the timeout, not before, and emits a timeout."""
    events: list[kannuki.LockEvent] = []
    unsubscribe = kannuki.subscribe(events.append)

    async def main() -> None:
        key_prefix = prefix()
        async with AsyncLocker(url, key_prefix=key_prefix) as a, AsyncLocker(url, key_prefix=key_prefix) as b:
            async with a.lock("k"):
                started = time.monotonic()
                assert await b.lock("k").acquire(timeout=0.2) is False
                assert time.monotonic() - started >= 0.19
                assert await b.lock("k").acquire(blocking=False) is False
            stats = b.stats()
            assert stats.failed == 2 and stats.timeouts == 1 and stats.acquired == 0
            assert a.stats().acquired == 1 and a.stats().released == 1

    try:
        run(main)
    finally:
        unsubscribe()
    names = [e.name for e in events if e.key == "k"]
    assert names.count("acquired") == 1 and names.count("released") == 1
    assert "timeout" in names and "failed" in names and "waiting" in names


def test_shared_locks_coexist_and_block_exclusive(url: str) -> None:
    """Two shared holders at once; an exclusive one waits for both."""

    async def main() -> None:
        key_prefix = prefix()
        async with AsyncLocker(url, key_prefix=key_prefix) as a, AsyncLocker(url, key_prefix=key_prefix) as b:
            r1, r2 = a.lock("doc", shared=True), b.lock("doc", shared=True)
            assert await r1.acquire() and await r2.acquire(timeout=1)
            assert await a.lock("doc").acquire(blocking=False) is False
            await r1.release()
            assert await b.lock("doc").acquire(blocking=False) is False
            await r2.release()
            writer = a.lock("doc")
            assert await writer.acquire(timeout=1)
            assert await b.lock("doc", shared=True).acquire(blocking=False) is False
            await writer.release()

    run(main)


def test_async_and_sync_lockers_exclude_each_other(url: str) -> None:
    """A sync Locker and an AsyncLocker on the same store and key exclude each other both ways."""

    async def main() -> None:
        key_prefix = prefix()
        sync = kannuki.Locker(url, key_prefix=key_prefix)
        try:
            async with AsyncLocker(url, key_prefix=key_prefix) as locker:
                with sync.lock("k"):
                    assert await locker.held("k")
                    assert await locker.lock("k").acquire(timeout=0.05) is False
                    lock = locker.lock("k")
                    waiter = asyncio.ensure_future(lock.acquire(timeout=WAIT))
                    await asyncio.sleep(0.1)
                    assert not waiter.done()
                assert await asyncio.wait_for(waiter, WAIT) is True
                released = threading.Event()

                def sync_try() -> None:
                    if not sync.lock("k").acquire(blocking=False):
                        released.set()

                await asyncio.to_thread(sync_try)
                assert released.is_set()
                await lock.release()
                assert sync.lock("k").acquire(blocking=False)
        finally:
            sync.close()

    run(main)


def test_hostile_keys_are_harmless(url: str) -> None:
    """Quotes, SQL and non-ASCII in keys are just keys."""
    keys = ["'; DROP TABLE pg_locks; --", 'a"b\\c', "ключ/🔒", "x" * 1024]

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            for key in keys:
                async with locker.lock(key):
                    assert await locker.held(key)
                assert not await locker.held(key)

    run(main)


def test_bad_input_names_the_parameter(url: str) -> None:
    """The same errors as the sync API, naming the parameter; nothing held afterwards."""
    with pytest.raises(kannuki.ConfigurationError, match="strategy"):
        AsyncLocker(url, strategy="sometimes")
    with pytest.raises(kannuki.ConfigurationError, match="bogus"):
        AsyncLocker(url, bogus=1)
    with pytest.raises(kannuki.ConfigurationError, match="scheme"):
        AsyncLocker("gopher://127.0.0.1/test")

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            with pytest.raises(ValueError, match="key"):
                locker.lock("")
            with pytest.raises(TypeError, match="key"):
                locker.lock(42)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="timeout"):
                locker.lock("k", timeout=-1)
            with pytest.raises(ValueError, match="timeout"):
                await locker.lock("k").acquire(timeout=float("nan"))
            with pytest.raises(ValueError, match="strategy"):
                locker.lock("k", strategy="eventually")
            with pytest.raises(ValueError, match="key"):
                locker.lock("\ud800")
            assert not await locker.held("k")

    run(main)


def test_retry_strategy(url: str) -> None:
    """strategy='retry' gives up after its attempts and succeeds when the key frees up."""

    async def main() -> None:
        key_prefix = prefix()
        opts = {"key_prefix": key_prefix, "strategy": "retry", "retry_attempts": 3, "retry_interval": 0.01}
        async with AsyncLocker(url, **opts) as a, AsyncLocker(url, key_prefix=key_prefix) as b:
            holder = b.lock("k")
            await holder.acquire()
            with pytest.raises(LockNotAcquiredError, match="after 3 attempts"):
                async with a.lock("k"):
                    pass
            asyncio.get_running_loop().call_later(0.02, lambda: asyncio.ensure_future(holder.release()))
            retry_more = AsyncLocker(url, **{**opts, "retry_attempts": 200})
            lock = retry_more.lock("k")
            assert await lock.acquire()
            await lock.release()
            await retry_more.aclose()

    run(main)


def test_memory_async_waiters_are_served_in_order() -> None:
    """Async waiters for one key on the memory store get it in arrival order."""

    async def main() -> None:
        locker = AsyncLocker(f"memory://{uuid.uuid4().hex}")
        order: list[int] = []
        first = locker.lock("k")
        await first.acquire()

        async def waiter(n: int) -> None:
            async with locker.lock("k", timeout=WAIT):
                order.append(n)

        tasks = []
        for n in range(5):
            tasks.append(asyncio.ensure_future(waiter(n)))
            await asyncio.sleep(0.01)
        await first.release()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert order == [0, 1, 2, 3, 4]

    run(main)


def test_cancelled_waiter_on_memory_leaves_nothing() -> None:
    """A task cancelled while waiting holds nothing and does not block the next waiter."""

    async def main() -> None:
        locker = AsyncLocker(f"memory://{uuid.uuid4().hex}")
        holder = locker.lock("k")
        await holder.acquire()
        doomed = asyncio.ensure_future(locker.lock("k").acquire())
        await asyncio.sleep(0.05)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await holder.release()
        assert not await locker.held("k")
        assert await locker.lock("k").acquire(blocking=False)

    run(main)


def test_test_mode_replaces_the_async_store(pg_url: str) -> None:
    """In test mode an AsyncLocker uses test mode's in-memory table, never its server."""
    from kannuki import _override, testing

    testing.enable()
    try:
        table = _override.TABLE

        async def main() -> None:
            locker = AsyncLocker("postgresql://nobody@127.0.0.1:1/none", key_prefix="tm")
            async with locker.lock("k"):
                assert table.held("tm:k")
                assert await locker.held("k")
            assert not table.held("tm:k")

        run(main)
    finally:
        testing.disable()


def test_async_lock_many_takes_all_or_none() -> None:
    """AsyncLocker.lock_many holds every key or none, and a held key makes the whole try fail."""

    async def main() -> None:
        async with AsyncLocker(f"memory://{uuid.uuid4().hex}") as locker:
            multi = locker.lock_many(["a", "b", "c"], timeout=0)
            assert [lk.lock_id for lk in multi.locks] == sorted(kannuki.lock_id(k) for k in "abc")
            async with multi:
                assert all([await locker.held(k) for k in "abc"])
                assert multi.tokens is not None and len(multi.tokens) == 3
            assert not any([await locker.held(k) for k in "abc"])
            async with locker.lock("b"):
                assert await locker.lock_many(["a", "b", "c"], timeout=0).acquire() is False
                assert not await locker.held("a") and not await locker.held("c")

    run(main)
