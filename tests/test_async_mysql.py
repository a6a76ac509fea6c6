"""AsyncLocker on the real MariaDB/MySQL server: the same behaviour as Locker, without blocking the event loop.

mysqlclient is blocking only: the async backend runs each driver call in a worker
thread and waits for GET_LOCK's answer on the loop. These tests hold that: parity
with the sync backend (acquire, try, timeout, holders, lock_many, a KILLed session
found at release), a cancelled waiter whose server wait is killed and that leaves
nothing held, and a loop that keeps ticking while a task waits on the server.
Every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from kannuki import AsyncLocker
from kannuki.backends.mysql import mysql_lock_name
from kannuki.backends.mysql_async import AsyncMySQLBackend
from kannuki.errors import LockLostError, NotSupportedError
from support import mysql_connect, mysql_scalar

MySQLdb = pytest.importorskip("MySQLdb")

WAIT = 10.0  # upper bound of any single wait in these tests


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), WAIT * 4))


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def raw(mysql_url: str) -> Iterator[Any]:
    """A raw autocommit MySQLdb connection: an outside session that holds locks and reads the processlist."""
    conn = mysql_connect(mysql_url)
    yield conn
    conn.close()


_scalar = mysql_scalar


def server_waits(raw: Any, name: str) -> int:
    """How many sessions wait in GET_LOCK for the full lock name ``name``."""
    pattern = f"%GET_LOCK('{mysql_lock_name(name)}'%"
    return int(
        _scalar(raw, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s", pattern)
    )


def is_free(raw: Any, name: str) -> bool:
    """No session holds the full lock name ``name``."""
    return _scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(name)) is None


def hold_from_outside(raw: Any, name: str) -> None:
    assert _scalar(raw, "SELECT GET_LOCK(%s, 0)", mysql_lock_name(name)) == 1


def let_go_from_outside(raw: Any, name: str) -> None:
    assert _scalar(raw, "SELECT RELEASE_LOCK(%s)", mysql_lock_name(name)) == 1


async def until(predicate: Callable[[], Any], seconds: float = WAIT) -> bool:
    """Poll ``predicate`` (run in a thread: it may query the server) every 20 ms for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(0.02)
    return bool(await asyncio.to_thread(predicate))


def test_the_async_backend_is_chosen(mysql_url: str) -> None:
    """AsyncLocker("mysql://...") drives the async twin of the MySQL backend."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url)
        assert isinstance(locker.backend, AsyncMySQLBackend)
        await locker.aclose()

    run(main)


def test_acquire_release_and_contention(mysql_url: str, prefix: str) -> None:
    """A lock held by one AsyncLocker is refused to another until released; held() sees it from both."""

    async def main() -> None:
        first, second = AsyncLocker(mysql_url, key_prefix=prefix), AsyncLocker(mysql_url, key_prefix=prefix)
        lock = first.lock("job")
        assert await lock.acquire(timeout=0)
        assert lock.locked() and lock.token
        assert await first.held("job") and await second.held("job")
        assert await second.try_lock("job", lambda: "ran") is False
        await lock.release()
        assert await second.try_lock("job", lambda: "ran") == "ran"
        assert not await first.held("job")
        async with first.lock("job") as again:
            assert again.locked()
        assert not await second.held("job")
        await first.aclose()
        await second.aclose()

    run(main)


def test_timeout_on_the_server_is_honoured(mysql_url: str, prefix: str, raw: Any) -> None:
    """A wait for a lock held by another session returns False after about the timeout, not before."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        lock = locker.lock("slow")
        hold_from_outside(raw, lock.name)
        start = time.monotonic()
        assert await lock.acquire(timeout=0.3) is False
        elapsed = time.monotonic() - start
        assert 0.25 <= elapsed < 5.0
        assert not lock.locked()
        let_go_from_outside(raw, lock.name)
        assert await lock.acquire(timeout=0)
        await lock.release()
        await locker.aclose()

    run(main)


def test_waiter_gets_the_lock_when_the_holder_lets_go(mysql_url: str, prefix: str, raw: Any) -> None:
    """A task waiting on the server is handed the lock as soon as the other session releases it."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        lock = locker.lock("handoff")
        hold_from_outside(raw, lock.name)
        waiter = asyncio.ensure_future(lock.acquire(timeout=WAIT))
        assert await until(lambda: server_waits(raw, lock.name) == 1)
        let_go_from_outside(raw, lock.name)
        assert await asyncio.wait_for(waiter, WAIT)
        await lock.release()
        await locker.aclose()

    run(main)


def test_holders_name_the_connection(mysql_url: str, prefix: str, raw: Any) -> None:
    """holders() reports the server connection ID of the holding session, with user and host."""

    async def main() -> None:
        first, second = AsyncLocker(mysql_url, key_prefix=prefix), AsyncLocker(mysql_url, key_prefix=prefix)
        lock = first.lock("who")
        assert await lock.acquire(timeout=0)
        (holder,) = await second.holders("who")
        assert lock.grant is not None and holder.pid == lock.grant.pid
        assert holder.pid == _scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name))
        assert holder.user and holder.host
        await lock.release()
        assert await second.holders("who") == []
        await first.aclose()
        await second.aclose()

    run(main)


def test_lock_many_all_or_none_on_one_connection(mysql_url: str, prefix: str, raw: Any) -> None:
    """lock_many takes every key on one connection, or none: what it took is given back."""

    async def main() -> None:
        first, second = AsyncLocker(mysql_url, key_prefix=prefix), AsyncLocker(mysql_url, key_prefix=prefix)
        many = first.lock_many(["a", "b", "c"])
        assert await many.acquire(timeout=0)
        pids = {(await second.holders(key))[0].pid for key in "abc"}
        assert len(pids) == 1
        # "x" is held by a session outside this process, so the wait for it is on the server
        blocked = first.lock("x")
        hold_from_outside(raw, blocked.name)
        partial = second.lock_many(["d", "x"])
        assert await partial.acquire(timeout=0.2) is False
        assert not await second.held("d")  # d was given back
        let_go_from_outside(raw, blocked.name)
        await many.release()
        assert await partial.acquire(timeout=0)
        await partial.release()
        assert not any([await second.held(key) for key in "abcdx"])
        await first.aclose()
        await second.aclose()

    run(main)


def test_killed_session_is_lock_lost_at_release(mysql_url: str, prefix: str, raw: Any) -> None:
    """KILL of the holding session: ensure_held() and release() raise LockLostError, reported once."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        lock = locker.lock("victim")
        assert await lock.acquire(timeout=0)
        await lock.ensure_held()
        assert lock.grant is not None
        raw.cursor().execute(f"KILL {int(lock.grant.pid)}")
        assert await until(lambda: is_free(raw, lock.name))
        with pytest.raises(LockLostError):
            await lock.release()
        assert locker.stats().lost == 1
        assert await lock.acquire(timeout=0)  # a fresh connection: the lock works again
        await lock.release()
        await locker.aclose()

    run(main)


def test_cancelled_waiter_leaves_nothing_and_its_server_wait_is_killed(
    mysql_url: str, prefix: str, raw: Any
) -> None:
    """Cancelling a task waiting in GET_LOCK ends the wait on the server at once and holds nothing after."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        lock = locker.lock("cancelled")
        hold_from_outside(raw, lock.name)
        task = asyncio.ensure_future(lock.acquire())  # waits forever
        assert await until(lambda: server_waits(raw, lock.name) == 1)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        assert time.monotonic() - started < WAIT
        assert await until(lambda: server_waits(raw, lock.name) == 0)
        assert not lock.locked()
        let_go_from_outside(raw, lock.name)
        assert await until(lambda: is_free(raw, lock.name))
        # the in-process queue was given back too: the next acquire goes straight through
        assert await lock.acquire(timeout=0)
        await lock.release()
        await locker.aclose()

    run(main)


def test_cancel_around_the_grant_never_leaves_the_lock_held(mysql_url: str, prefix: str, raw: Any) -> None:
    """Cancelling at many moments around the grant (as the other session lets go) never leaves it held."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        lock = locker.lock("race")
        for attempt in range(10):
            hold_from_outside(raw, lock.name)
            task = asyncio.ensure_future(lock.acquire(timeout=WAIT))
            assert await until(lambda: server_waits(raw, lock.name) == 1)
            let_go_from_outside(raw, lock.name)
            await asyncio.sleep(0.0005 * attempt)
            task.cancel()
            try:
                got = await asyncio.wait_for(task, WAIT)
            except asyncio.CancelledError:
                got = False
            if got:  # the grant won the race: the lock object holds it and gives it back
                await lock.release()
            assert await until(lambda: is_free(raw, lock.name)), attempt
            assert not lock.locked()
        await locker.aclose()

    run(main)


def test_cancelled_release_leaves_nothing_held(mysql_url: str, prefix: str, raw: Any) -> None:
    """A release whose task is cancelled still frees the lock, and no pooled connection keeps it."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        name = locker.lock("released").name
        for delay in (0.0, 0.0005, 0.002):
            lock = locker.lock("released")
            assert await lock.acquire(timeout=0)
            task = asyncio.ensure_future(lock.release())
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await asyncio.wait_for(task, WAIT)
            except asyncio.CancelledError:
                pass
            assert await until(lambda: is_free(raw, name))
            other = locker.lock("other")
            assert await other.acquire(timeout=0)  # from the pool: it must not hold "released"
            assert is_free(raw, name)
            await other.release()
        await locker.aclose()

    run(main)


def test_the_event_loop_keeps_running_while_a_task_waits(mysql_url: str, prefix: str, raw: Any) -> None:
    """While one task waits on the server (and others connect and query), a ticker keeps ticking.

    A liveness bound, not a benchmark: with any driver call on the loop thread the
    ticker would stall for the whole wait (about 1.5 s).
    """

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        lock = locker.lock("busy")
        hold_from_outside(raw, lock.name)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        started = time.monotonic()
        waited, asked = await asyncio.gather(lock.acquire(timeout=1.5), locker.held("busy"))
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.wait_for(ticking, WAIT)
        assert waited is False and asked is True
        assert elapsed >= 1.4
        assert len(gaps) >= 20  # ~150 expected; a blocked loop would manage a handful
        assert max(gaps) < 0.5
        let_go_from_outside(raw, lock.name)
        await locker.aclose()

    run(main)


def test_tasks_of_one_process_queue_locally(mysql_url: str, prefix: str, raw: Any) -> None:
    """Tasks waiting for a key held in this process wait in the in-process queue, not on the server."""

    async def main() -> None:
        locker = AsyncLocker(mysql_url, key_prefix=prefix)
        holder = locker.lock("queue")
        assert await holder.acquire(timeout=0)
        order: list[int] = []

        async def wait(i: int) -> None:
            lock = locker.lock("queue")
            assert await lock.acquire(timeout=WAIT)
            order.append(i)
            await lock.release()

        waiters = [asyncio.ensure_future(wait(i)) for i in range(3)]
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(server_waits, raw, holder.name) == 0
        await holder.release()
        await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
        assert sorted(order) == [0, 1, 2]
        await locker.aclose()

    run(main)


def test_force_release_refuses_then_kills(mysql_url: str, prefix: str) -> None:
    """force_release refuses naming the holder; with terminate=True it KILLs the session and frees the lock."""

    async def main() -> None:
        owner, operator = AsyncLocker(mysql_url, key_prefix=prefix), AsyncLocker(mysql_url, key_prefix=prefix)
        lock = owner.lock("stranded")
        assert await lock.acquire(timeout=0)
        assert lock.grant is not None
        with pytest.raises(NotSupportedError, match=rf"connection {lock.grant.pid}\b"):
            await operator.force_release("stranded")
        assert await operator.force_release("stranded", terminate=True) == 1
        with pytest.raises(LockLostError):
            await lock.release()
        assert await operator.try_lock("stranded", lambda: "free") == "free"
        await owner.aclose()
        await operator.aclose()

    run(main)


def test_wrapped_connection(mysql_url: str, prefix: str) -> None:
    """AsyncLocker(MySQLdb connection) locks on the caller's connection from worker threads and leaves it open."""

    async def main() -> None:
        conn = mysql_connect(mysql_url)
        try:
            locker = AsyncLocker(conn, key_prefix=prefix)
            other = AsyncLocker(mysql_url, key_prefix=prefix)
            assert isinstance(locker.backend, AsyncMySQLBackend)
            async with locker.lock("mine"):
                async with locker.lock("also"):
                    assert await other.held("mine") and await other.held("also")
                assert not await other.lock("mine").acquire(timeout=0.1)
            assert not await other.held("mine")
            await locker.aclose()
            await other.aclose()
            assert _scalar(conn, "SELECT 1") == 1
        finally:
            conn.close()

    run(main)


def test_cancelled_waiter_on_a_wrapped_connection_keeps_it_usable(
    mysql_url: str, prefix: str, raw: Any
) -> None:
    """On the caller's connection (no side KILL possible) a cancelled wait ends within its slice, holds nothing
    and leaves the connection in step for the caller's next statement."""

    async def main() -> None:
        conn = mysql_connect(mysql_url)
        try:
            locker = AsyncLocker(conn, key_prefix=prefix)
            lock = locker.lock("wrapped-wait")
            hold_from_outside(raw, lock.name)
            task = asyncio.ensure_future(lock.acquire())
            assert await until(lambda: server_waits(raw, lock.name) == 1)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
            assert time.monotonic() - started < 5.0  # one slice (1 s) and the undo
            assert server_waits(raw, lock.name) == 0
            assert _scalar(conn, "SELECT 1") == 1  # in step: no unread answer left behind
            let_go_from_outside(raw, lock.name)
            assert is_free(raw, lock.name)
            assert await lock.acquire(timeout=0)
            await lock.release()
            await locker.aclose()
        finally:
            conn.close()

    run(main)


# -- item 4: fencing tokens strictly increasing across processes by default ------------

ASYNC_TOKEN_PRINTER = """
import asyncio, sys, kannuki

async def main():
    async with kannuki.AsyncLocker(sys.argv[1], key_prefix=sys.argv[2]) as locker:
        async with locker.lock("fenced", timeout=30) as lock:
            print(lock.token, locker.backend.tokens_fenced, flush=True)

asyncio.run(main())
"""


def test_item_4_tokens_strictly_increase_across_processes_by_default(mysql_url: str, prefix: str) -> None:
    """Three processes with AsyncLocker, one after another, default options: strictly increasing tokens."""
    import subprocess
    import sys

    from support import subprocess_env

    tokens = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", ASYNC_TOKEN_PRINTER, mysql_url, prefix],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        token, fenced = done.stdout.split()
        assert fenced == "True"
        tokens.append(int(token))
    assert tokens == sorted(set(tokens)) and len(tokens) == 3


# -- item 14: a wrapped connection shared by tasks --------------------------------------


def test_item_14_a_wait_on_a_wrapped_connection_does_not_stall_its_other_tasks(
    mysql_url: str, prefix: str, raw: Any
) -> None:
    """One task waits 30 s on the wrapped connection; another task's 20 try+release rounds get through meanwhile."""

    async def main() -> None:
        conn = mysql_connect(mysql_url)
        try:
            async with AsyncLocker(conn, key_prefix=prefix) as locker:
                name = f"{prefix}:busy"
                hold_from_outside(raw, name)
                try:
                    busy = locker.lock("busy")
                    waiter = asyncio.ensure_future(busy.acquire(timeout=30))
                    assert await until(lambda: server_waits(raw, name) or waiter.done())

                    async def others() -> int:
                        for i in range(20):
                            lock = locker.lock(f"free-{i}")
                            assert await lock.acquire(timeout=0)
                            await lock.release()
                        return 20

                    assert await asyncio.wait_for(others(), WAIT) == 20  # liveness bound
                    assert not waiter.done()
                finally:
                    let_go_from_outside(raw, name)
                assert await asyncio.wait_for(waiter, WAIT)
                assert busy.locked()
                await busy.release()
        finally:
            conn.close()

    run(main)
