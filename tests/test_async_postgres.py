"""AsyncLocker on the real PostgreSQL: cancellation safety (SPEC §4 trap), lost connections, wrapped connections,
and the sync tests' scenarios (fencing, poolers, fork, in-process queueing, pool reset hook) over AsyncLocker."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import pytest

import kannuki
from kannuki.aio import AsyncLocker
from kannuki.backends import _pg_sql as sql

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
            assert (
                asyncio.get_running_loop().time() - started < 30
            )  # the acquire's 100 ms, not the session's 45 s
            assert await idle_lock_timeout(long_default) == "45s"

            async def unlock_once_waited_on() -> str:
                for _ in range(200):  # until the server shows the wait
                    waiting = [pid for pid, granted in advisory_rows(pg_conn, lock_id) if not granted]
                    if waiting:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # past the session's 100 ms
                (query,) = pg_conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE pid = %s", waiting
                ).fetchone()
                pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
                return str(query)

            unlocker = asyncio.ensure_future(unlock_once_waited_on())
            lock = short_default.lock("k", shared=shared)
            assert await lock.acquire(
                timeout=None
            )  # lock_timeout 0 in the statement outlasts the session's 100 ms
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


# -- parity with the sync backend (one source: the same behaviour through AsyncLocker) ------------


def prefix_() -> str:
    return f"t-apg-{uuid.uuid4().hex[:8]}"


async def wait_for_rows(conn: Any, lock_id: int, predicate: Any, seconds: float = WAIT) -> bool:
    """Poll pg_locks for lock_id every 20 ms (at most ``seconds``) until ``predicate(rows)``."""
    for _ in range(int(seconds / 0.02)):
        if predicate(advisory_rows(conn, lock_id)):
            return True
        await asyncio.sleep(0.02)
    return bool(predicate(advisory_rows(conn, lock_id)))


def test_fencing_tokens_increase_across_async_lockers(pg_url: str, pg_conn: Any) -> None:
    """fencing=True on AsyncLocker: server-sequence tokens increase strictly across two lockers, try and wait paths."""

    async def main() -> None:
        prefix = prefix_()
        a = AsyncLocker(pg_url, key_prefix=prefix, fencing=True)
        b = AsyncLocker(pg_url, key_prefix=prefix, fencing=True)
        lock_id = a.lock_id("fenced")
        tokens = []
        try:
            for locker in (a, b, a, b):
                async with locker.lock("fenced") as lock:
                    tokens.append(lock.token)
            pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))

            async def unlock_once_waited_on() -> None:
                assert await wait_for_rows(pg_conn, lock_id, lambda rows: any(not g for _p, g in rows))
                pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))

            unlocker = asyncio.ensure_future(unlock_once_waited_on())
            async with b.lock("fenced", timeout=WAIT) as lock:  # the wait path
                tokens.append(lock.token)
            await asyncio.wait_for(unlocker, WAIT)
            assert tokens == sorted(set(tokens)) and len(tokens) == 5
        finally:
            await a.aclose()
            await b.aclose()

    run(main)


def test_async_pooler_release_unlocks_nothing_on_the_backend_it_landed_on(pg_url: str, pg_conn: Any) -> None:
    """The PID check comes BEFORE the unlock: a release landing on another backend (simulated: the PID
    recorded at acquire is another one) frees nothing there and is LockLostError."""

    async def main() -> None:
        aconn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        locker = AsyncLocker(aconn, key_prefix=prefix_())
        try:
            lock = locker.lock("landed")
            assert await lock.acquire(blocking=False)
            lock.grant.pid = pg_conn.info.backend_pid  # "taken on" another backend than this connection's
            with pytest.raises(kannuki.LockLostError, match="PID"):
                await lock.release()
            assert advisory_rows(pg_conn, lock.lock_id) == [
                (aconn.info.backend_pid, True)
            ]  # still held there
        finally:
            await locker.aclose()
            await aconn.close()

    run(main)


def test_item_11_async_pooler_moving_the_session_is_lock_lost_and_freed_where_taken(
    pg_url: str, pg_conn: Any
) -> None:
    """Release on another server backend (the pinned connection swapped, as a transaction-mode pooler
    would route it): LockLostError naming the PIDs, and the server session that held it is ended."""

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=prefix_())
        lock = locker.lock("moved")
        assert await lock.acquire(blocking=False)
        session = lock.grant.conn
        original = session.conn
        session.conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        session._cursor = session.conn.cursor()
        try:
            with pytest.raises(kannuki.LockLostError, match="PID") as info:
                await lock.release()
            assert f"ended server session {original.info.backend_pid}" in str(info.value)
            assert advisory_rows(pg_conn, lock.lock_id) == []  # freed where it was taken
        finally:
            await original.close()
        await locker.aclose()

    run(main)


def test_async_ensure_held_and_force_release(pg_url: str, pg_conn: Any) -> None:
    """check() through ensure_held; force_release refuses naming the holder, then terminates its session."""

    async def main() -> None:
        prefix = prefix_()
        holder_locker = AsyncLocker(pg_url, key_prefix=prefix, application_name="async-stranded")
        locker = AsyncLocker(pg_url, key_prefix=prefix)
        try:
            lock = holder_locker.lock("stuck")
            assert await lock.acquire(blocking=False)
            await lock.ensure_held()
            pid = lock.grant.pid
            with pytest.raises(
                kannuki.NotSupportedError, match=rf"pid {pid} \(async-stranded\).*terminate=True"
            ):
                await locker.force_release("stuck")
            assert await locker.held("stuck")
            assert await locker.force_release("stuck", terminate=True) == 1
            assert not await locker.held("stuck")
            with pytest.raises(kannuki.LockLostError):
                await lock.ensure_held()
            with pytest.raises(kannuki.LockLostError):
                await lock.release()
            assert await holder_locker.lock("stuck").acquire(blocking=False)  # on a fresh connection
        finally:
            await holder_locker.aclose()
            await locker.aclose()

    run(main)


def test_twenty_waiting_tasks_use_one_connection(pg_url: str, pg_conn: Any) -> None:
    """20 tasks waiting for one key queue in-process: one server connection waits, and it serves them all in turn."""
    app = f"kannuki-{uuid.uuid4().hex[:8]}"

    def sessions() -> int:
        return int(
            pg_conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchone()[0]
        )

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=prefix_(), application_name=app)
        lock_id = locker.lock_id("hot")
        counter = {"n": 0, "inside": 0, "overlap": 0}

        async def work() -> None:
            async with locker.lock("hot", timeout=WAIT):
                counter["inside"] += 1
                counter["overlap"] = max(counter["overlap"], counter["inside"])
                await asyncio.sleep(0.001)
                counter["n"] += 1
                counter["inside"] -= 1

        pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            tasks = [asyncio.ensure_future(work()) for _ in range(20)]
            assert await wait_for_rows(pg_conn, lock_id, lambda rows: any(not g for _p, g in rows))
            await asyncio.sleep(0.2)  # every task has had its chance to reach the server
            assert [g for _p, g in advisory_rows(pg_conn, lock_id)].count(False) == 1
            assert sessions() == 1
        finally:
            pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT * 2)
        assert counter["n"] == 20 and counter["overlap"] == 1
        assert locker.backend.open_connections() == 1
        await locker.aclose()

    run(main)


def test_async_pool_reset_hook_clears_a_stranded_lock(pg_url: str, pg_conn: Any) -> None:
    """arelease_postgres_locks as AsyncConnectionPool's reset: a lock stranded by a borrower is freed at check-in."""
    from psycopg_pool import AsyncConnectionPool

    from kannuki.backends.pool_hooks import arelease_postgres_locks

    async def main() -> None:
        name = f"{prefix_()}:stranded"
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=1, reset=arelease_postgres_locks, open=False)
        await pool.open(wait=True, timeout=WAIT)
        try:
            async with pool.connection() as conn:  # not autocommit: the hook must leave it idle too
                await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (name,))
                await conn.commit()
                pid = conn.info.backend_pid
            async with pool.connection() as conn:  # the same connection, after its reset
                assert conn.info.backend_pid == pid and conn.info.transaction_status == 0
                (free,) = pg_conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,)
                ).fetchone()
                assert free
                pg_conn.execute("SELECT pg_advisory_unlock_all()")
        finally:
            await pool.close()

    run(main)


def test_cancel_on_a_pool_locker_gives_the_pool_a_clean_connection(pg_url: str, pg_conn: Any) -> None:
    """AsyncLocker(pool): a task cancelled in its server wait leaves no lock or wait, and the pool gets its
    connection back (closed and replaced, or clean): the next borrower holds nothing."""
    from psycopg_pool import AsyncConnectionPool

    async def main() -> None:
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False)
        await pool.open(wait=True, timeout=WAIT)
        locker = AsyncLocker(pool, key_prefix=prefix_())
        lock_id = locker.lock_id("k")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            task = asyncio.ensure_future(locker.lock("k").acquire())
            assert await wait_for_rows(pg_conn, lock_id, lambda rows: any(not g for _p, g in rows))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
            assert advisory_rows(pg_conn, lock_id) == [(pg_conn.info.backend_pid, True)]
            async with pool.connection(timeout=WAIT) as conn:  # max_size=1: it came back
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
                )
                assert (await cursor.fetchone())[0] == 0
        finally:
            pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        async with locker.lock("k", timeout=WAIT):  # pins the pool's one connection
            assert [granted for _pid, granted in advisory_rows(pg_conn, lock_id)] == [True]
        await locker.aclose()
        await pool.close()

    run(main)


def test_cancel_while_lock_many_waits_leaves_nothing(pg_url: str, pg_conn: Any) -> None:
    """A lock_many cancelled while it waits on the server for one key: none of its keys stays held or waited for."""

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=prefix_())
        ids = [locker.lock_id(k) for k in "abc"]
        pg_conn.execute("SELECT pg_advisory_lock(%s)", (ids[1],))
        try:
            multi = locker.lock_many(["a", "b", "c"])
            task = asyncio.ensure_future(multi.acquire(timeout=WAIT))
            assert await wait_for_rows(pg_conn, ids[1], lambda rows: any(not g for _p, g in rows))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
            # Undone by closing its connection: the server ends that session asynchronously (bounded wait).
            for lock_id in (ids[0], ids[2]):
                assert await wait_for_rows(pg_conn, lock_id, lambda rows: rows == [])
            assert advisory_rows(pg_conn, ids[1]) == [(pg_conn.info.backend_pid, True)]
        finally:
            pg_conn.execute("SELECT pg_advisory_unlock(%s)", (ids[1],))
        async with locker.lock_many(["a", "b", "c"], timeout=WAIT):
            assert all([await locker.held(k) for k in "abc"])
        assert not any([await locker.held(k) for k in "abc"])
        await locker.aclose()

    run(main)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_of_an_async_locker_holds_nothing_and_closes_nothing(pg_url: str, pg_conn: Any) -> None:
    """After fork() an AsyncLocker's child holds none of the parent's locks and, even closing its locker,
    never touches the parent's connections (pinned or idle): the parent goes on using both."""
    locker = AsyncLocker(pg_url, key_prefix=prefix_())
    lock = locker.lock("parent")

    async def before() -> None:
        assert await lock.acquire(blocking=False)
        async with locker.lock("warm-up"):  # leaves an idle connection in the locker
            pass
        assert len(locker.backend._source.idle) == 1

    async def in_child() -> int:
        if lock.locked() or lock.grant is not None:
            return 1
        if not await locker.held("parent"):  # on a connection of its own
            return 2
        if await locker.lock("parent").acquire(blocking=False):
            return 3
        await locker.aclose()  # must not close the parent's connections
        return 0

    async def after() -> None:
        assert await locker.held("parent")  # on the idle connection: the child did not close it
        await lock.release()  # nor the pinned one
        assert not await locker.held("parent")
        await locker.aclose()

    asyncio.run(asyncio.wait_for(before(), WAIT))
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery here, only an exit code
        code = 4
        try:
            code = asyncio.run(asyncio.wait_for(in_child(), WAIT))
        except BaseException:
            pass
        os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("child did not exit")
    assert os.waitstatus_to_exitcode(status) == 0
    asyncio.run(asyncio.wait_for(after(), WAIT))
    assert advisory_rows(pg_conn, lock.lock_id) == []


# -- defects of issue 12 (one test each, named after its item) --------------------------------


def test_item_1_async_transaction_locks_on_one_connection_exclude_each_other(pg_url: str) -> None:
    """Two transaction-level AsyncLocks on one connection, or one beside a session lock there, exclude."""

    async def main() -> None:
        prefix = prefix_()
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        wrapped = AsyncLocker(conn, key_prefix=prefix)
        url_locker = AsyncLocker(pg_url, key_prefix=prefix)
        try:
            async with conn.transaction():
                first, second = wrapped.lock("x", transaction=True), url_locker.lock("x", transaction=conn)
                assert await first.acquire(blocking=False)
                assert await second.acquire(blocking=False) is False
                await first.release()
                assert await second.acquire(blocking=False)
                await second.release()
            session = wrapped.lock("y")
            assert await session.acquire(blocking=False)
            async with conn.transaction():
                assert await wrapped.lock("y", transaction=True).acquire(blocking=False) is False
            await session.release()
        finally:
            await wrapped.aclose()
            await url_locker.aclose()
            await conn.close()

    run(main)


def test_item_2_async_a_rollback_never_repeats_a_token(pg_url: str) -> None:
    """A fenced lock inside the user's transaction, then rolled back: the next holder's token is larger."""

    async def main() -> None:
        prefix = prefix_()
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        wrapped = AsyncLocker(conn, key_prefix=prefix, fencing=True)
        url_locker = AsyncLocker(pg_url, key_prefix=prefix, fencing=True)
        try:
            tokens = []
            for _ in range(2):
                async with conn.transaction():
                    async with wrapped.lock("k") as lock:
                        tokens.append(lock.token)
                    raise psycopg.Rollback
                async with url_locker.lock("k") as lock:
                    tokens.append(lock.token)
            assert tokens == sorted(set(tokens)) and len(tokens) == 4
            assert url_locker.backend.tokens_fenced
        finally:
            await wrapped.aclose()
            await url_locker.aclose()
            await conn.close()

    run(main)


def test_item_6_async_a_broken_lock_many_connection_goes_back_to_the_pool_once(
    pg_url: str, pg_conn: Any
) -> None:
    """AsyncLocker(AsyncConnectionPool) + lock_many on a connection that breaks: returned once, max_size kept."""
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    async def main() -> None:
        pool = AsyncConnectionPool(pg_url, min_size=2, max_size=2, kwargs={"autocommit": True}, open=False)
        await pool.open(wait=True, timeout=WAIT)
        locker = AsyncLocker(pool, key_prefix=prefix_())
        try:
            multi = locker.lock_many(["a", "b", "c"])
            assert await multi.acquire(timeout=WAIT)
            pg_conn.execute("SELECT pg_terminate_backend(%s, 5000)", (multi._holds[0].grant.pid,))
            with pytest.raises(kannuki.LockLostError):
                await multi.release()
            borrowed = [await pool.getconn(timeout=WAIT) for _ in range(2)]
            try:
                with pytest.raises(PoolTimeout):
                    await pool.getconn(timeout=0.5)
            finally:
                for conn in borrowed:
                    await pool.putconn(conn)
        finally:
            await locker.aclose()
            await pool.close()

    run(main)


def test_item_8_async_timeouts_beyond_lock_timeouts_range(pg_url: str) -> None:
    """~25 days and more, up to the largest float: a free key is taken (session and transaction-level)."""

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=prefix_())
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        try:
            for timeout in (25 * 86400.0, 30 * 86400.0, 2e305, 1.7e308):
                lock = locker.lock("long", timeout=timeout)
                assert await lock.acquire()
                await lock.release()
                async with conn.transaction():
                    async with locker.lock("long", transaction=conn, timeout=timeout):
                        pass
        finally:
            await locker.aclose()
            await conn.close()

    run(main)


def test_item_8_async_a_long_wait_goes_in_slices(
    pg_url: str, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With lock_timeout's maximum made 50 ms, an async wait goes on past two slices and takes the key."""
    monkeypatch.setattr(sql, "MAX_LOCK_TIMEOUT_MS", 50)
    settings: list[str] = []
    original = sql.lock_timeout_setting

    def recorded(timeout: float | None) -> str:
        settings.append(original(timeout))
        return settings[-1]

    monkeypatch.setattr(sql, "lock_timeout_setting", recorded)

    async def main() -> None:
        locker = AsyncLocker(pg_url, key_prefix=prefix_())
        lock_id = locker.lock_id("sliced")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            waiter = asyncio.ensure_future(locker.lock("sliced").acquire(timeout=60))
            for _ in range(int(WAIT / 0.02)):
                if len(settings) >= 3:
                    break
                await asyncio.sleep(0.02)
            assert len(settings) >= 3 and not waiter.done()
            pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
            assert await asyncio.wait_for(waiter, WAIT)
        finally:
            await locker.aclose()

    run(main)


def test_item_13_async_held_and_holders_leave_a_pooled_connection_idle(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """AsyncConnectionPool, non-autocommit: held()/holders() give the connection back idle (no rollback warning)."""
    from psycopg_pool import AsyncConnectionPool

    async def main() -> None:
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=1, open=False)
        await pool.open(wait=True, timeout=WAIT)
        locker = AsyncLocker(pool, key_prefix=prefix_())
        try:
            for _ in range(3):
                assert await locker.held("k") is False
                assert await locker.lock("k").holders() == []
            async with pool.connection() as conn:
                assert conn.info.transaction_status == 0
        finally:
            await locker.aclose()
            await pool.close()

    with caplog.at_level("WARNING", logger="psycopg.pool"):
        run(main)
    assert [r.getMessage() for r in caplog.records if "rolling back" in r.getMessage()] == []


def test_item_14_async_a_shared_connection_serves_other_tasks_while_one_waits(
    pg_url: str, pg_conn: Any
) -> None:
    """AsyncLocker(AsyncConnection): while one task waits for a key held elsewhere, another task's release
    and try on the same connection go through at once."""

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        locker = AsyncLocker(conn, key_prefix=prefix_())
        lock_id = locker.lock_id("held")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        try:
            mine = locker.lock("mine")
            assert await mine.acquire(blocking=False)
            waiting: list[str] = []
            unsubscribe = kannuki.subscribe(lambda event: waiting.append(event.key), events=["waiting"])
            try:
                waiter = asyncio.ensure_future(locker.lock("held").acquire(timeout=60))
                for _ in range(int(WAIT / 0.02)):
                    if "held" in waiting:
                        break
                    await asyncio.sleep(0.02)
            finally:
                unsubscribe()
            assert "held" in waiting and not waiter.done()

            async def others() -> bool:
                await mine.release()
                other = locker.lock("other")
                took = await other.acquire(blocking=False)
                await other.release()
                return took

            assert await asyncio.wait_for(others(), WAIT)
            assert not waiter.done()  # served while the first task still waits
            pg_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
            assert await asyncio.wait_for(waiter, WAIT)
        finally:
            await locker.aclose()
            await conn.close()

    run(main)
