"""Lockers made of SQLAlchemy engines, connections and sessions, against the real PostgreSQL and MariaDB.

An Engine is a pool: a connection is checked out per hold and goes back only
holding nothing (checked with pg_locks / IS_USED_LOCK on every pooled
connection). A Connection is the user's: locks live on it, it is never
closed. A Session's transaction-level lock ends with its commit or rollback.
Sync and async (psycopg's async dialect) alike.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import kannuki
from kannuki import AsyncLocker, Locker
from kannuki.backends._mysql_names import mysql_lock_name
from kannuki.errors import BackendError, ConfigurationError, LockNotAcquiredError, NotSupportedError
from support import mysql_connect, mysql_scalar

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")
orm = pytest.importorskip("sqlalchemy.orm")

WAIT = 10.0


def _sa_url(url: str, dialect: str) -> str:
    return dialect + url[len(urlsplit(url).scheme) :]


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t-sa-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Any]:
    """A SQLAlchemy Engine on psycopg 3, disposed of after the test."""
    engine = sa.create_engine(_sa_url(pg_url, "postgresql+psycopg"))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def mysql_engine(mysql_url: str) -> Iterator[Any]:
    """A SQLAlchemy Engine on mysqlclient, disposed of after the test."""
    pytest.importorskip("MySQLdb")
    engine = sa.create_engine(_sa_url(mysql_url, "mysql+mysqldb"))
    try:
        yield engine
    finally:
        engine.dispose()


def pg_holders(conn: Any, lock_id: int) -> list[int]:
    """The server PIDs holding (granted) the advisory lock ``lock_id``."""
    unsigned = lock_id & 0xFFFFFFFFFFFFFFFF
    rows = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchall()
    return [pid for (pid,) in rows]


def pooled_pg_locks(engine: Any) -> list[int]:
    """Check out every idle connection of the engine's pool at once: how many advisory locks each holds.

    Each must also be as SQLAlchemy lent it (not in autocommit, idle).
    """
    held = []
    handles = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        for handle in handles:
            driver = handle.connection.driver_connection
            assert driver.autocommit is False and driver.info.transaction_status == 0
            held.append(
                handle.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
                ).scalar()
            )
    finally:
        for handle in handles:
            handle.close()
    return held


def pooled_mysql_locks(engine: Any, names: list[str]) -> list[tuple[int, bool]]:
    """Per idle pooled connection: how many of ``names`` it holds, and its autocommit setting."""
    out = []
    handles = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        for handle in handles:
            db = handle.connection.driver_connection
            mine = sum(
                handle.exec_driver_sql(
                    "SELECT COALESCE(IS_USED_LOCK(%s) = CONNECTION_ID(), 0)", (mysql_lock_name(name),)
                ).scalar()
                for name in names
            )
            out.append((mine, bool(db.get_autocommit())))
    finally:
        for handle in handles:
            handle.close()
    return out


# -- PostgreSQL, sync --------------------------------------------------------


def test_engine_lock_checks_a_connection_out_and_back_clean(
    pg_engine: Any, pg_conn: Any, prefix: str
) -> None:
    """Locker(Engine): a hold pins one checked-out connection; released, it goes back holding nothing."""
    locker = Locker(pg_engine, key_prefix=prefix)
    lock = locker.lock("k")
    with lock:
        assert pg_engine.pool.checkedout() == 1
        assert len(pg_holders(pg_conn, lock.lock_id)) == 1
        assert locker.held("k")
        assert lock.token
    assert pg_holders(pg_conn, lock.lock_id) == []
    assert pg_engine.pool.checkedout() == 0
    assert pooled_pg_locks(pg_engine) == [0] * pg_engine.pool.checkedin()
    assert pg_engine.pool.checkedin() >= 1
    locker.close()


def test_engine_timed_out_acquire_returns_a_clean_connection(
    pg_engine: Any, pg_conn: Any, pg_url: str, prefix: str
) -> None:
    """A wait that times out (on the server, with lock_timeout) gives the pool a connection holding nothing."""
    other = Locker(pg_url, key_prefix=prefix)
    locker = Locker(pg_engine, key_prefix=prefix)
    with other.lock("k"):
        assert not locker.lock("k").acquire(timeout=0.2)
        assert not locker.lock("k").acquire(blocking=False)
        assert pg_engine.pool.checkedout() == 0
        assert pooled_pg_locks(pg_engine) == [0] * pg_engine.pool.checkedin()
        # The caller's transaction settings never leak: lock_timeout is back to the server default.
        with pg_engine.connect() as handle:
            assert handle.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
    assert locker.lock("k").acquire(timeout=WAIT)
    locker.close()  # releases what it holds
    assert pooled_pg_locks(pg_engine) == [0] * pg_engine.pool.checkedin()
    other.close()


def test_ctrl_c_while_waiting_gives_the_engine_a_clean_connection(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """Ctrl-C during the server wait of an engine locker: the pool gets back nothing holding or waiting."""
    engine = sa.create_engine(_sa_url(pg_url, "postgresql+psycopg"), pool_size=1, max_overflow=0)
    other = Locker(pg_url, key_prefix=prefix)
    locker = Locker(engine, key_prefix=prefix)
    try:
        with other.lock("stuck"):
            lock = locker.lock("stuck")
            timer = threading.Timer(0.3, _thread.interrupt_main)
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    lock.acquire(timeout=None)
            finally:
                timer.join(WAIT)
            assert engine.pool.checkedout() == 0
            assert pooled_pg_locks(engine) == [0] * engine.pool.checkedin()
            assert len(pg_holders(pg_conn, lock.lock_id)) == 1  # the other holder only
        assert lock.acquire(blocking=False)
        lock.release()
    finally:
        locker.close()
        other.close()
        engine.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_holds_nothing_and_never_borrows_the_parents_connections(
    pg_engine: Any, prefix: str
) -> None:
    """After fork() the child's copy of an engine locker holds nothing and refuses to check out (BackendError)."""
    locker = Locker(pg_engine, key_prefix=prefix)
    lock = locker.lock("forked")
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # child: must not touch the parent's connections; exits at once either way
        code = 1
        try:
            if not lock.locked():
                try:
                    locker.lock("other").acquire(blocking=False)
                except BackendError as exc:
                    code = 0 if "engine.dispose(close=False)" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert locker.held("forked")
    lock.release()  # the parent's connection still works
    assert not locker.held("forked")
    locker.close()


def test_two_engine_lockers_contend(pg_url: str, prefix: str) -> None:
    """Lockers of two engines exclude each other; threads of one engine locker queue in-process."""
    first = sa.create_engine(_sa_url(pg_url, "postgresql+psycopg"))
    second = sa.create_engine(_sa_url(pg_url, "postgresql+psycopg"))
    a, b = Locker(first, key_prefix=prefix), Locker(second, key_prefix=prefix)
    try:
        with a.lock("k"):
            assert not b.lock("k").acquire(blocking=False)
            assert not b.try_lock("k", lambda: True)
        assert b.try_lock("k", lambda: True)
        # Threads of one locker: one at a time, none lost.
        counter = {"n": 0, "inside": 0, "max": 0}

        def work() -> None:
            for _ in range(20):
                with a.lock("k", timeout=WAIT):
                    counter["inside"] += 1
                    counter["max"] = max(counter["max"], counter["inside"])
                    counter["n"] += 1
                    counter["inside"] -= 1

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
        assert counter["n"] == 80 and counter["max"] == 1
        assert pooled_pg_locks(first) == [0] * first.pool.checkedin()
    finally:
        a.close()
        b.close()
        first.dispose()
        second.dispose()


def test_connection_locks_live_on_it_and_it_stays_open(pg_engine: Any, pg_conn: Any, prefix: str) -> None:
    """Locker(Connection): the lock is held by that connection's server session; kannuki never closes it."""
    with pg_engine.connect() as handle:
        pid = handle.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        handle.commit()
        locker = Locker(handle, key_prefix=prefix)
        lock = locker.lock("k")
        with lock:
            assert pg_holders(pg_conn, lock.lock_id) == [pid]
            with pytest.raises(LockNotAcquiredError):
                with Locker(pg_engine, key_prefix=prefix).lock("k", timeout=0):
                    pass
        assert pg_holders(pg_conn, lock.lock_id) == []
        locker.close()
        assert not handle.closed
        assert handle.exec_driver_sql("SELECT 1").scalar() == 1


def test_session_transaction_lock_ends_with_commit(pg_engine: Any, pg_conn: Any, prefix: str) -> None:
    """transaction=True through Locker(Session) is taken in the session's transaction; its commit frees it."""
    with orm.Session(pg_engine) as session:
        locker = Locker(session, key_prefix=prefix)
        lock = locker.lock("k", transaction=True)
        lock.acquire(timeout=WAIT)
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert pg_holders(pg_conn, lock.lock_id) == [pid]
        lock.release()  # a transaction-level lock ends with its transaction, not before
        assert pg_holders(pg_conn, lock.lock_id) == [pid]
        session.commit()
        assert pg_holders(pg_conn, lock.lock_id) == []
        locker.close()


def test_session_transaction_lock_ends_with_rollback(pg_engine: Any, pg_conn: Any, prefix: str) -> None:
    """transaction=session on an engine locker joins that session's transaction; its rollback frees it."""
    locker = Locker(pg_engine, key_prefix=prefix)
    with orm.Session(pg_engine) as session:
        with locker.lock("k", transaction=session) as lock:
            assert len(pg_holders(pg_conn, lock.lock_id)) == 1
            assert not Locker(pg_engine, key_prefix=prefix).lock("k").acquire(blocking=False)
        session.rollback()
        assert pg_holders(pg_conn, lock.lock_id) == []
    with pytest.raises(ConfigurationError, match="transaction=True"):
        locker.lock("k", transaction=True).acquire()
    locker.close()


def test_session_lock_through_a_session_outlives_its_commit(
    pg_engine: Any, pg_conn: Any, prefix: str
) -> None:
    """A session lock via Locker(Session) is on a connection of the bind, not on the session's own
    (which goes back to the pool at commit): it stays held across commit and goes back clean."""
    with orm.Session(pg_engine) as session:
        locker = Locker(session, key_prefix=prefix)
        with locker.lock("k") as lock:
            session.connection().exec_driver_sql("SELECT 1")
            session.commit()
            assert len(pg_holders(pg_conn, lock.lock_id)) == 1
        assert pg_holders(pg_conn, lock.lock_id) == []
        locker.close()
    assert pooled_pg_locks(pg_engine) == [0] * pg_engine.pool.checkedin()


def test_pool_reset_hooks_free_what_a_user_left_on_a_connection(
    pg_url: str, pg_conn: Any, mysql_url: str, prefix: str
) -> None:
    """kannuki's reset hooks on an engine's "reset" event: a lock a Connection was closed holding is freed."""
    from sqlalchemy import event

    from kannuki.backends.pool_hooks import release_mysql_locks, release_postgres_locks

    engine = sa.create_engine(_sa_url(pg_url, "postgresql+psycopg"), pool_size=1, max_overflow=0)
    event.listen(
        engine, "reset", lambda dbapi_connection, record, state: release_postgres_locks(dbapi_connection)
    )
    lock_id = Locker(pg_url, key_prefix=prefix).lock_id("left")
    try:
        with engine.connect() as handle:
            handle.exec_driver_sql(f"SELECT pg_advisory_lock({lock_id})")
            assert len(pg_holders(pg_conn, lock_id)) == 1
        assert pg_holders(pg_conn, lock_id) == []
        assert pooled_pg_locks(engine) == [0]
    finally:
        engine.dispose()
    pytest.importorskip("MySQLdb")
    raw = mysql_connect(mysql_url)
    engine = sa.create_engine(_sa_url(mysql_url, "mysql+mysqldb"), pool_size=1, max_overflow=0)
    event.listen(
        engine, "reset", lambda dbapi_connection, record, state: release_mysql_locks(dbapi_connection)
    )
    try:
        with engine.connect() as handle:
            handle.exec_driver_sql(f"SELECT GET_LOCK('{prefix}:left', 0)")
            assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", f"{prefix}:left") is not None
        assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", f"{prefix}:left") is None
    finally:
        engine.dispose()
        raw.close()


def test_unsupported_dialects_and_sides_are_clear_errors(pg_url: str, mysql_url: str) -> None:
    """psycopg2, pymysql and sqlite engines, and an engine of the wrong side: ConfigurationError naming what works."""
    for url in (
        _sa_url(pg_url, "postgresql+psycopg2"),
        _sa_url(mysql_url, "mysql+pymysql"),
        "sqlite://",
    ):
        engine = sa.create_engine(url)
        with pytest.raises(ConfigurationError, match=r"postgresql\+psycopg .*mysql\+mysqldb"):
            Locker(engine)
        engine.dispose()
    engine = sa.create_engine(_sa_url(pg_url, "postgresql+psycopg"))
    with pytest.raises(ConfigurationError, match="make a Locker of it"):
        AsyncLocker(engine)
    engine.dispose()
    from sqlalchemy.ext.asyncio import create_async_engine

    async_engine = create_async_engine(_sa_url(pg_url, "postgresql+psycopg"))
    with pytest.raises(ConfigurationError, match="make an AsyncLocker of it"):
        Locker(async_engine)
    asyncio.run(async_engine.dispose())


# -- PostgreSQL, async -------------------------------------------------------


def run(coro_fn: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), WAIT * 3))


def test_async_engine_lock_contend_and_cancel(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """AsyncLocker(AsyncEngine): lock, contention with another locker, a cancelled wait; the pool stays clean."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def clean(engine: Any) -> list[int]:
        handles = [await engine.connect() for _ in range(engine.sync_engine.pool.checkedin())]
        try:
            for handle in handles:  # as SQLAlchemy lent it: not in autocommit
                assert (await handle.get_raw_connection()).driver_connection.autocommit is False
            return [
                (
                    await handle.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
                    )
                ).scalar()
                for handle in handles
            ]
        finally:
            for handle in handles:
                await handle.close()

    async def main() -> None:
        engine = create_async_engine(_sa_url(pg_url, "postgresql+psycopg"))
        locker = AsyncLocker(engine, key_prefix=prefix)
        other = AsyncLocker(pg_url, key_prefix=prefix)
        try:
            lock = locker.lock("k")
            async with lock:
                assert len(pg_holders(pg_conn, lock.lock_id)) == 1
                assert not await other.lock("k").acquire(blocking=False)
            assert pg_holders(pg_conn, lock.lock_id) == []
            assert await clean(engine) == [0] * engine.sync_engine.pool.checkedin()
            async with other.lock("k"):
                waiter = asyncio.ensure_future(locker.lock("k").acquire(timeout=WAIT * 2))
                for _ in range(200):  # until the wait reaches the server
                    if engine.sync_engine.pool.checkedout():
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.05)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            assert engine.sync_engine.pool.checkedout() == 0
            assert await clean(engine) == [0] * engine.sync_engine.pool.checkedin()
            assert pg_holders(pg_conn, lock.lock_id) == []
        finally:
            await locker.aclose()
            await other.aclose()
            await engine.dispose()

    run(main)


def test_async_connection_and_session(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """AsyncLocker(AsyncConnection) locks on it and leaves it open; AsyncSession's transaction lock ends at commit."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def main() -> None:
        engine = create_async_engine(_sa_url(pg_url, "postgresql+psycopg"))
        try:
            async with engine.connect() as handle:
                pid = (await handle.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
                await handle.commit()
                locker = AsyncLocker(handle, key_prefix=prefix)
                async with locker.lock("k") as lock:
                    assert pg_holders(pg_conn, lock.lock_id) == [pid]
                assert pg_holders(pg_conn, lock.lock_id) == []
                await locker.aclose()
                assert (await handle.exec_driver_sql("SELECT 1")).scalar() == 1
            async with AsyncSession(engine) as session:
                locker = AsyncLocker(session, key_prefix=prefix)
                async with locker.lock("x", transaction=True) as lock:
                    pid = (
                        await (await session.connection()).exec_driver_sql("SELECT pg_backend_pid()")
                    ).scalar()
                    assert pg_holders(pg_conn, lock.lock_id) == [pid]
                assert pg_holders(pg_conn, lock.lock_id) == [pid]  # until the transaction ends
                await session.commit()
                assert pg_holders(pg_conn, lock.lock_id) == []
                async with locker.lock("y", transaction=True) as lock:
                    assert len(pg_holders(pg_conn, lock.lock_id)) == 1
                await session.rollback()
                assert pg_holders(pg_conn, lock.lock_id) == []
                await locker.aclose()
        finally:
            await engine.dispose()

    run(main)


# -- MySQL / MariaDB ---------------------------------------------------------


def test_mysql_engine_gives_connections_back_clean(mysql_engine: Any, mysql_url: str, prefix: str) -> None:
    """Locker(Engine) on mysqlclient: a connection per hold, back in the pool holding nothing, autocommit restored."""
    raw = mysql_connect(mysql_url)
    locker = Locker(mysql_engine, key_prefix=prefix)
    other = Locker(mysql_url, key_prefix=prefix)
    try:
        lock = locker.lock("k")
        with lock:
            assert mysql_engine.pool.checkedout() == 1
            assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is not None
            assert not other.lock("k").acquire(blocking=False)
        assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is None
        assert mysql_engine.pool.checkedout() == 0
        with other.lock("k"):
            assert not locker.lock("k").acquire(timeout=0.2)
        with locker.lock_many(["a", "b"]):
            assert mysql_engine.pool.checkedout() == 1
        names = [lock.name, locker.lock("a").name, locker.lock("b").name]
        assert pooled_mysql_locks(mysql_engine, names) == [(0, False)] * mysql_engine.pool.checkedin()
    finally:
        locker.close()
        other.close()
        raw.close()


def test_mysql_ctrl_c_while_waiting_gives_the_engine_a_clean_connection(mysql_url: str, prefix: str) -> None:
    """Ctrl-C during GET_LOCK's wait on an engine's connection: the wait is killed on the server (from a side
    connection made with the engine's own connect arguments) and the pool gets nothing holding a lock."""
    mysqldb = pytest.importorskip("MySQLdb")
    engine = sa.create_engine(_sa_url(mysql_url, "mysql+mysqldb"), pool_size=1, max_overflow=0)
    other = Locker(mysql_url, key_prefix=prefix)
    locker = Locker(engine, key_prefix=prefix)
    raw = mysql_connect(mysql_url)
    try:
        # The side connection that KILLs a wait is opened with the engine's connect arguments.
        mysqldb.connect(**locker.backend._params).close()
        with other.lock("stuck"):
            lock = locker.lock("stuck")
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    lock.acquire(timeout=WAIT * 2)
            finally:
                timer.join(WAIT)
            assert engine.pool.checkedout() == 0
            assert pooled_mysql_locks(engine, [lock.name]) == [(0, False)] * engine.pool.checkedin()
            # Nobody waits for it on the server any more: only the other holder's session is there.
            waiting = mysql_scalar(
                raw,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()",
                "%GET_LOCK%" + mysql_lock_name(lock.name) + "%",
            )
            assert waiting == 0
        assert lock.acquire(blocking=False)
        lock.release()
    finally:
        locker.close()
        other.close()
        engine.dispose()
        raw.close()


def test_mysql_async_cancel_during_checkout_gives_the_connection_back(mysql_url: str, prefix: str) -> None:
    """AsyncLocker(Engine) on mysqlclient: a task cancelled while its worker thread checks a connection out
    gets its CancelledError once the checkout is done, and the connection goes back to the engine."""
    pytest.importorskip("MySQLdb")
    from sqlalchemy import event

    engine = sa.create_engine(_sa_url(mysql_url, "mysql+mysqldb"), pool_size=1, max_overflow=0)
    entered = threading.Event()

    def slow_checkout(*args: Any) -> None:
        entered.set()
        time.sleep(0.3)  # the task is cancelled meanwhile

    event.listen(engine, "checkout", slow_checkout)

    async def main() -> None:
        locker = AsyncLocker(engine, key_prefix=prefix)
        task = asyncio.ensure_future(locker.lock("k").acquire())
        for _ in range(500):
            if entered.is_set():
                break
            await asyncio.sleep(0.01)
        assert entered.is_set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.pool.checkedout() == 0
        event.remove(engine, "checkout", slow_checkout)
        assert await locker.lock("k").acquire(blocking=False)  # the one pooled connection is usable
        await locker.aclose()
        assert engine.pool.checkedout() == 0

    try:
        run(main)
    finally:
        engine.dispose()


def test_mysql_connection_and_session(mysql_engine: Any, mysql_url: str, prefix: str) -> None:
    """Locker(Connection) locks on that very session and leaves it open; Locker(Session) locks on its bind."""
    raw = mysql_connect(mysql_url)
    try:
        with mysql_engine.connect() as handle:
            conn_id = handle.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            locker = Locker(handle, key_prefix=prefix)
            with locker.lock("k") as lock:
                assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) == conn_id
            assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is None
            locker.close()
            assert handle.exec_driver_sql("SELECT 1").scalar() == 1
        with orm.Session(mysql_engine) as session:
            locker = Locker(session, key_prefix=prefix)
            with locker.lock("s") as lock:
                session.connection().exec_driver_sql("SELECT 1")
                session.commit()  # the session's connection goes back: the lock is not on it
                assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is not None
            assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is None
            with pytest.raises(NotSupportedError, match="transaction-level"):
                locker.lock("t", transaction=True).acquire()
            locker.close()
        assert pooled_mysql_locks(mysql_engine, [lock.name]) == [(0, False)] * mysql_engine.pool.checkedin()
    finally:
        raw.close()


def test_mysql_async_locker_on_a_sqlalchemy_connection(
    mysql_engine: Any, mysql_url: str, prefix: str
) -> None:
    """AsyncLocker of a sync SQLAlchemy Connection on mysqlclient drives it from worker threads, as a MySQLdb one."""
    raw = mysql_connect(mysql_url)

    async def main() -> None:
        with mysql_engine.connect() as handle:
            conn_id = handle.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            locker = AsyncLocker(handle, key_prefix=prefix)
            async with locker.lock("k") as lock:
                assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) == conn_id
            assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is None
            await locker.aclose()

    try:
        run(main)
    finally:
        raw.close()


def test_the_default_locker_accepts_an_engine(pg_engine: Any, prefix: str) -> None:
    """kannuki.configure(engine): the module-level verbs lock through it."""
    previous = kannuki._default._default
    kannuki._default._default = None
    try:
        locker = kannuki.configure(pg_engine, key_prefix=prefix)
        assert kannuki.with_lock("k", lambda: "ran") == "ran"
        locker.close()
    finally:
        kannuki._default._default = previous
