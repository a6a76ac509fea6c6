"""AsyncLocker on the machine-local lease stores (sqlite:///, file:///): the sync tests' scenarios, as tasks.

Both stores make blocking calls (sqlite3, flock and file I/O); the async
backends run each one in a worker thread, so these tests also check that the
event loop keeps ticking while a task waits for a held key.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import kannuki
from kannuki import AsyncLocker, LockLostError, LockNotAcquiredError
from kannuki.backends.file import file_name

WAIT = 10.0  # seconds: the most any awaited step may take in these tests


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run one test coroutine, bounded by WAIT * 3."""
    return asyncio.run(asyncio.wait_for(main(), WAIT * 3))


@pytest.fixture(params=["sqlite", "file"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(store: str, tmp_path: Path) -> str:
    if store == "sqlite":
        return f"sqlite:///{tmp_path}/locks.db"
    return f"file://{tmp_path}/locks"


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def delete_behind_our_back(store: str, tmp_path: Path, lock: Any) -> None:
    """Remove the store's record of ``lock`` the way an operator (or a cleaner) would, not through kannuki."""
    if store == "sqlite":
        conn = sqlite3.connect(tmp_path / "locks.db")
        try:
            with conn:
                assert conn.execute("DELETE FROM kannuki_locks WHERE name = ?", (lock.name,)).rowcount == 1
        finally:
            conn.close()
    else:
        os.unlink(tmp_path / "locks" / file_name(lock.lock_id))


def test_acquire_release_and_holders(url: str) -> None:
    """async with / acquire / release on the store: held, holders (this pid, this token), free after."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            lock = locker.lock("job")
            assert await lock.acquire(timeout=0)
            assert lock.locked() and lock.token and await locker.held("job")
            (holder,) = await locker.holders("job")
            assert (holder.pid, holder.token) == (os.getpid(), lock.token)
            assert lock.grant is not None and lock.grant.ttl == 30.0  # a lease the owner renews
            await lock.ensure_held()
            await lock.release()
            assert not await locker.held("job") and await locker.list_held() == []
            async with locker.lock("job") as again:
                assert again.locked() and [h.token for h in await locker.list_held()] == [again.token]
            assert not await locker.held("job")

    run(main)


def test_try_and_timeout(url: str) -> None:
    """A held key: one try fails at once, a timed wait after its timeout, the verbs answer False / raise."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            holder = locker.lock("busy")
            assert await holder.acquire()
            other = locker.lock("busy")
            start = time.monotonic()
            assert not await other.acquire(timeout=0)
            assert time.monotonic() - start < 1.0
            start = time.monotonic()
            assert not await other.acquire(timeout=0.3)
            assert 0.25 <= time.monotonic() - start < WAIT
            assert await locker.try_lock("busy", lambda: "ran") is False
            with pytest.raises(LockNotAcquiredError):
                await locker.lock_or_raise("busy", lambda: None, timeout=0.1)
            await holder.release()
            assert await locker.try_lock("busy", lambda: "ran") == "ran"

    run(main)


def test_tokens_strictly_increase_across_lockers(url: str) -> None:
    """Tokens grow with every acquisition, also between two lockers (two backends) on one store."""

    async def main() -> None:
        key_prefix = prefix()
        async with (
            AsyncLocker(url, key_prefix=key_prefix) as one,
            AsyncLocker(url, key_prefix=key_prefix) as two,
        ):
            tokens = []
            for i in range(10):
                async with (one if i % 2 else two).lock("t", timeout=WAIT) as lock:
                    tokens.append(lock.token)
            assert tokens == sorted(set(tokens)) and len(tokens) == 10

    run(main)


def test_waiter_gets_the_lock_when_released(url: str) -> None:
    """A waiting task gets the key soon after the holder task lets go, with a higher token."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            holder = locker.lock("w")
            assert await holder.acquire()
            first = holder.token
            waiter = locker.lock("w")
            task = asyncio.ensure_future(waiter.acquire(timeout=WAIT))
            await asyncio.sleep(0.2)
            assert not task.done()
            await holder.release()
            assert await asyncio.wait_for(task, WAIT)
            assert waiter.token > first
            await waiter.release()

    run(main)


def test_lease_is_renewed_while_held_longer_than_its_ttl(url: str) -> None:
    """ttl=0.6, held for 2 s: the owner renews it every ttl/3, so nobody else gets in and release succeeds."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix(), ttl=0.6) as locker:
            lock = locker.lock("long")
            assert await lock.acquire()
            assert lock.grant is not None and lock.grant.ttl == 0.6
            (before,) = await locker.holders("long")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert not await locker.lock("long").acquire(timeout=0)
                await asyncio.sleep(0.1)
            (after,) = await locker.holders("long")
            assert after.expires_at is not None and before.expires_at is not None
            assert after.expires_at > before.expires_at + 1.0  # renewed, not just still valid
            assert not lock.lost and locker.stats().renewed >= 3
            await lock.ensure_held()
            await lock.release()

    run(main)


def test_record_deleted_behind_our_back_is_lost_at_release(store: str, url: str, tmp_path: Path) -> None:
    """Someone deletes the lease record: another holder gets in, our release raises LockLostError."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix(), auto_renew=False) as locker:
            lock = locker.lock("gone")
            assert await lock.acquire()
            delete_behind_our_back(store, tmp_path, lock)
            newcomer = locker.lock("gone")
            assert await newcomer.acquire(timeout=0)
            assert newcomer.token > lock.token
            with pytest.raises(LockLostError, match="gone"):
                await lock.release()
            assert not lock.locked() and locker.stats().lost == 1
            (holder,) = await locker.holders("gone")
            assert holder.token == newcomer.token  # the stale release freed nothing
            await newcomer.release()

    run(main)


def test_ensure_held_reports_a_deleted_record(store: str, url: str, tmp_path: Path) -> None:
    """ensure_held asks the store now: a deleted record is LockLostError there, reported once."""

    async def main() -> None:
        lost: list[str] = []
        async with AsyncLocker(url, key_prefix=prefix(), auto_renew=False) as locker:
            lock = locker.lock("check", on_lost=lambda lk, reason: lost.append(reason))
            assert await lock.acquire()
            await lock.ensure_held()
            delete_behind_our_back(store, tmp_path, lock)
            with pytest.raises(LockLostError):
                await lock.ensure_held()
            assert lock.lost and len(lost) == 1
            with pytest.raises(LockLostError):
                await lock.release()
            assert len(lost) == 1

    run(main)


def test_force_release_frees_a_key_whoever_holds_it(url: str) -> None:
    """force_release deletes the lease: one freed, the key is free, the old holder's release raises."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix(), auto_renew=False) as locker:
            lock = locker.lock("stuck")
            assert await lock.acquire()
            assert await locker.force_release("stuck") == 1
            assert not await locker.held("stuck")
            assert await locker.force_release("stuck") == 0
            async with locker.lock("stuck", timeout=0) as again:
                assert again.token > lock.token
            with pytest.raises(LockLostError):
                await lock.release()

    run(main)


def test_cancelled_waiter_leaves_nothing_held(url: str) -> None:
    """Tasks cancelled while waiting (at varied moments, including mid-try) hold nothing afterwards."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            holder = locker.lock("c")
            assert await holder.acquire()
            for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
                waiter = locker.lock("c")
                task = asyncio.ensure_future(waiter.acquire(timeout=WAIT))
                await asyncio.sleep(delay)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert not waiter.locked()
            assert [h.token for h in await locker.holders("c")] == [holder.token]
            await holder.release()
            # Now the key is free: cancel attempts racing with a successful try, many times.
            for i in range(40):
                waiter = locker.lock("c")
                task = asyncio.ensure_future(waiter.acquire(timeout=WAIT))
                await asyncio.sleep(0.0005 * (i % 5))
                task.cancel()
                try:
                    got = await task
                except asyncio.CancelledError:
                    assert not waiter.locked()
                else:
                    assert got and waiter.locked()
                    await waiter.release()
                assert not await locker.held("c"), await locker.holders("c")

    run(main)


class Ticker:
    """A task that sleeps 5 ms at a time and records how late each wake-up was: the event loop's lag."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.005)
            self.lags.append(time.monotonic() - before - 0.005)

    def __enter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> float:
        """Stop ticking; the worst lag seen (seconds)."""
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, WAIT)
        return max(self.lags)

    def check(self, worst: float) -> None:
        assert worst < MAX_LAG, f"the event loop stalled for {worst:.3f} s"
        assert len(self.lags) >= 20, "the ticker hardly ran"

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()


# The liveness bound: generous for loaded CI machines, well under the stalls it catches.
MAX_LAG = 0.25


class SlowClock:
    """A wall clock that takes 0.4 s to read: the stores read it in every step, so it plays a slow disk."""

    def __call__(self) -> float:
        time.sleep(0.4)
        return time.time()


def test_event_loop_keeps_ticking_while_a_task_waits(store: str, tmp_path: Path) -> None:
    """Every store step takes 0.4 s here: while a task acquires, waits 1.5 s for a held key and
    releases, a 5 ms ticker is never more than MAX_LAG late. A backend making its blocking calls on
    the loop thread stalls it for each of them."""
    from kannuki.backends.file_async import AsyncFileBackend
    from kannuki.backends.sqlite_async import AsyncSQLiteBackend

    async def main() -> None:
        if store == "sqlite":
            backend: Any = AsyncSQLiteBackend(str(tmp_path / "slow.db"), clock=SlowClock())
        else:
            backend = AsyncFileBackend(str(tmp_path / "slow"), clock=SlowClock())
        async with AsyncLocker(backend, key_prefix=prefix()) as locker:
            with Ticker() as ticker:
                holder = locker.lock("slow")
                assert await holder.acquire(timeout=0)
                assert not await locker.lock("slow").acquire(timeout=1.5)
                await holder.release()
                worst = await ticker.stop()
        ticker.check(worst)

    run(main)


def test_event_loop_keeps_ticking_while_sqlite_is_busy(tmp_path: Path) -> None:
    """Another connection holds SQLite's own write lock for 0.8 s: the acquire waits inside sqlite3 (busy
    timeout), in a worker thread; the loop keeps ticking and the acquire succeeds once the writer commits."""

    async def main() -> None:
        db = tmp_path / "busy.db"
        async with AsyncLocker(f"sqlite:///{db}", key_prefix=prefix()) as locker:
            assert not await locker.held("k")  # the schema exists now
            writer = sqlite3.connect(db, isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")
                with Ticker() as ticker:
                    lock = locker.lock("k")
                    task = asyncio.ensure_future(lock.acquire(timeout=WAIT))
                    await asyncio.sleep(0.8)
                    assert not task.done()
                    writer.execute("COMMIT")
                    assert await asyncio.wait_for(task, WAIT)
                    worst = await ticker.stop()
            finally:
                writer.close()
            await lock.release()
        ticker.check(worst)

    run(main)


def test_sync_and_async_lockers_exclude_each_other(url: str) -> None:
    """A Locker and an AsyncLocker on one store are two processes' worth of exclusion."""

    async def main() -> None:
        key_prefix = prefix()
        sync_locker = kannuki.Locker(url, key_prefix=key_prefix)
        try:
            async with AsyncLocker(url, key_prefix=key_prefix) as locker:
                with sync_locker.lock("both", timeout=0) as held:
                    assert not await locker.lock("both").acquire(timeout=0)
                    first = held.token
                async with locker.lock("both", timeout=0) as lock:
                    assert lock.token > first
                    assert not sync_locker.lock("both").acquire(timeout=0)
        finally:
            sync_locker.close()

    run(main)


def test_item_24_shared_locks_coexist_and_exclude_writers(url: str) -> None:
    """Readers share a key (file: LOCK_SH; sqlite: rows), a writer waits for every one, readers wait for it."""

    async def main() -> None:
        async with AsyncLocker(url, key_prefix=prefix()) as locker:
            readers = [locker.lock("doc", shared=True) for _ in range(2)]
            for reader in readers:
                assert await reader.acquire(timeout=0)
            tokens = [reader.token for reader in readers]
            assert tokens[0] < tokens[1]
            holders = await locker.holders("doc")
            assert [(h.shared, h.token) for h in holders] == [(True, t) for t in tokens]
            writer = locker.lock("doc")
            task = asyncio.ensure_future(writer.acquire(timeout=WAIT))
            await asyncio.sleep(0.2)
            assert not task.done()
            await readers[0].release()
            await asyncio.sleep(0.1)
            assert not task.done()
            await readers[1].release()
            assert await asyncio.wait_for(task, WAIT)
            assert writer.token > tokens[1]
            assert not await locker.lock("doc", shared=True).acquire(timeout=0)
            written = writer.token
            await writer.release()
            async with locker.lock("doc", shared=True, timeout=0) as again:
                assert again.token > written

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
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 4 * WAIT)
    assert errors == []


def test_item_23_waiting_writer_is_not_starved_by_overlapping_readers(url: str) -> None:
    """A waiting writer's mark stops new readers (sqlite: a row, file: the mutex file); it gets in within WAIT."""

    async def main() -> None:
        key = f"doc-{uuid.uuid4().hex[:8]}"
        async with AsyncLocker(url) as readers, AsyncLocker(url) as writers:
            await writer_gets_in_among_readers(readers, writers, key)

    # A liveness bound with room for the pure-Python core on a loaded 2-core machine.
    asyncio.run(asyncio.wait_for(main(), WAIT * 6))
