"""AsyncLocker on the real PostgreSQL: cancellation safety (SPEC §4 trap), lost connections, wrapped connections."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import kannuki
from kannuki.aio import AsyncLocker

psycopg = pytest.importorskip("psycopg")

WAIT = 10.0


def run(coro_fn: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), WAIT * 3))


def advisory_rows(conn: Any, lock_id: int) -> list[tuple[int, bool]]:
    """(pid, granted) of every pg_locks row for lock_id, waiting or held."""
    unsigned = lock_id & 0xFFFFFFFFFFFFFFFF
    return conn.execute(
        "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
        " AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchall()


def test_cancel_while_waiting_on_the_server_leaves_nothing(pg_url: str, pg_conn: Any) -> None:
    """Cancelling a task waiting in pg_advisory_lock cancels the server wait: no row held or waiting after."""

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
        lock_id = locker.lock_id("k")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            task = asyncio.ensure_future(locker.lock("k").acquire())
            for _ in range(200):  # until the server shows our wait
                if any(not granted for _pid, granted in advisory_rows(pg_conn, lock_id)):
                    break
                await asyncio.sleep(0.02)
            assert any(not granted for _pid, granted in advisory_rows(pg_conn, lock_id))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
            assert advisory_rows(pg_conn, lock_id) == [(pg_conn.info.backend_pid, True)]
        finally:
            pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        assert advisory_rows(pg_conn, lock_id) == []
        assert await locker.lock("k").acquire(blocking=False)  # the connection is clean and reusable
        await locker.aclose()

    run(main)


def test_cancel_at_every_moment_of_a_contended_acquire_leaves_nothing(pg_url: str, pg_conn: Any) -> None:
    """Cancelling at many points around the grant (as the holder lets go) never leaves the lock held."""

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
        holder_locker = AsyncLocker(pg_url, key_prefix=locker.options.key_prefix)
        lock_id = locker.lock_id("k")
        for attempt in range(12):
            holder = holder_locker.lock("k")
            await holder.acquire()
            lock = locker.lock("k")
            task = asyncio.ensure_future(lock.acquire(timeout=WAIT))
            await asyncio.sleep(0.02)
            await holder.release()
            await asyncio.sleep(0.0005 * attempt)  # cancel sooner or later around the grant
            task.cancel()
            try:
                got = await asyncio.wait_for(task, WAIT)
            except asyncio.CancelledError:
                got = False
            if got:  # the grant won the race: the lock object holds it and can give it back
                assert lock.locked()
                await lock.release()
            assert advisory_rows(pg_conn, lock_id) == []
        await locker.aclose()
        await holder_locker.aclose()

    run(main)


def test_cancel_during_release_still_releases(pg_url: str, pg_conn: Any) -> None:
    """A release whose task is cancelled midway finishes anyway."""

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
        lock = locker.lock("k")
        await lock.acquire()
        task = asyncio.ensure_future(lock.release())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert advisory_rows(pg_conn, lock.lock_id) == []
        assert not lock.locked()
        await locker.aclose()

    run(main)


def test_terminated_holder_connection_is_lock_lost(pg_url: str, pg_conn: Any) -> None:
    """pg_terminate_backend of the holder's connection: release raises LockLostError, a lost event, the key free."""
    events: list[kannuki.LockEvent] = []
    unsubscribe = kannuki.subscribe(events.append, events={"lost"})

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
        lock = locker.lock("k")
        await lock.acquire()
        (pid,) = [pid for pid, _granted in advisory_rows(pg_conn, lock.lock_id)]
        pg_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(kannuki.LockLostError):
            await lock.release()
        assert locker.stats().lost == 1
        assert await locker.lock("k").acquire(timeout=WAIT)
        await locker.aclose()

    try:
        run(main)
    finally:
        unsubscribe()
    assert [e.name for e in events] == ["lost"]


def test_sql_client_contends_with_async_locker(pg_url: str, pg_conn: Any) -> None:
    """pg_advisory_lock(hashtextextended(name, 0)) in plain SQL excludes the AsyncLocker."""

    async def main() -> None:
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        locker = AsyncLocker(pg_url, key_prefix=prefix)
        pg_conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"{prefix}:it's",))
        try:
            assert await locker.lock("it's").acquire(timeout=0.1) is False
            holders = await locker.holders("it's")
            assert [h.pid for h in holders] == [pg_conn.info.backend_pid]
        finally:
            pg_conn.execute("SELECT pg_advisory_unlock_all()")
        await locker.aclose()

    run(main)


def test_wrapped_async_connection_and_pool(pg_url: str, pg_conn: Any) -> None:
    """AsyncLocker(aconn) and AsyncLocker(apool) lock on the user's connections and exclude each other."""
    from psycopg_pool import AsyncConnectionPool

    async def main() -> None:
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        aconn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=4, open=False)
        await pool.open()
        try:
            one, pooled = AsyncLocker(aconn, key_prefix=prefix), AsyncLocker(pool, key_prefix=prefix)
            a, b = one.lock("k"), one.lock("k")
            assert await a.acquire()
            assert await b.acquire(timeout=0.05) is False  # same session, still excluded
            assert await pooled.lock("k").acquire(timeout=0.05) is False
            waiter = asyncio.ensure_future(b.acquire(timeout=WAIT))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await a.release()
            assert advisory_rows(pg_conn, a.lock_id) == []
            async with pooled.lock("k"):
                assert await one.held("k")
            # transaction-level lock on the user's connection
            with pytest.raises(kannuki.ConfigurationError, match="transaction"):
                await one.lock("x", transaction=True).acquire()
            async with aconn.transaction():
                xact = one.lock("x", transaction=True)
                assert await xact.acquire(timeout=1)
                assert await pooled.held("x")
                await xact.release()
                assert await pooled.held("x")  # ends with the transaction, not with release()
            assert not await pooled.held("x")
            (timeout_after,) = await (await aconn.execute("SHOW lock_timeout")).fetchone()
            assert timeout_after == "0"
        finally:
            await pool.close()
            await aconn.close()

    run(main)


def test_unreachable_server_is_backend_error() -> None:
    """A server nobody listens on: BackendError within the connect timeout, nothing held."""

    async def main() -> None:
        locker = AsyncLocker("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
        with pytest.raises(kannuki.BackendError, match="could not connect"):
            await locker.lock("k").acquire()

    run(main)


def url_with_settings(pg_url: str, **settings: str) -> str:
    """``pg_url`` whose connections start with these session settings (libpq ``options``)."""
    options = "%20".join(f"-c%20{name}%3D{value}" for name, value in settings.items())
    return f"{pg_url}{'&' if '?' in pg_url else '?'}options={options}"


async def idle_lock_timeout(locker: AsyncLocker) -> str:
    """SHOW lock_timeout on the locker's one idle connection (after a wait on it)."""
    (session,) = locker.backend._source.idle  # the locker's own connection, back from the wait
    conn = session.conn
    (setting,) = await (await conn.execute("SHOW lock_timeout")).fetchone()
    return str(setting)


@pytest.mark.parametrize("shared", [False, True])
def test_own_connection_waits_under_its_own_timeout_not_the_sessions(
    pg_url: str, pg_conn: Any, shared: bool
) -> None:
    """Own connections with a lock_timeout default: the timed wait honours its own timeout and leaves the session's."""

    async def main() -> None:
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        long_default = AsyncLocker(url_with_settings(pg_url, lock_timeout="45s"), key_prefix=prefix)
        short_default = AsyncLocker(url_with_settings(pg_url, lock_timeout="100ms"), key_prefix=prefix)
        lock_id = long_default.lock_id("k")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            started = asyncio.get_running_loop().time()
            assert await long_default.lock("k", shared=shared).acquire(timeout=0.1) is False
            assert asyncio.get_running_loop().time() - started < 30  # the acquire's 100 ms, not the session's 45 s
            assert await idle_lock_timeout(long_default) == "45s"

            async def unlock_once_waited_on() -> str:
                for _ in range(200):  # until the server shows the wait
                    waiting = [pid for pid, granted in advisory_rows(pg_conn, lock_id) if not granted]
                    if waiting:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # past the session's 100 ms
                (query,) = pg_conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", waiting).fetchone()
                pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
                return str(query)

            unlocker = asyncio.ensure_future(unlock_once_waited_on())
            lock = short_default.lock("k", shared=shared)
            assert await lock.acquire(timeout=None)  # lock_timeout 0 in the statement outlasts the session's 100 ms
            waiting_query = await asyncio.wait_for(unlocker, WAIT)
            assert "set_config('lock_timeout'" in waiting_query  # setting and wait: one statement
            await lock.release()
            assert await idle_lock_timeout(short_default) == "100ms"
        finally:
            pg_conn.execute("SELECT pg_advisory_unlock_all()")
            await long_default.aclose()
            await short_default.aclose()
        assert advisory_rows(pg_conn, lock_id) == []

    run(main)
