"""The watcher of held database locks: a dead session is noticed without a call and without a query."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

import kannuki
from kannuki.backends._watch import mysql_farewell, peek, postgres_farewell


def test_peek_sees_nothing_on_a_quiet_socket_and_takes_nothing() -> None:
    """Nothing waiting: None. Data waiting: its first bytes, left for the driver to read."""
    ours, theirs = socket.socketpair()
    try:
        assert peek(ours.fileno()) is None
        theirs.sendall(b"E\x00\x00\x00\x10FATAL")
        assert peek(ours.fileno()) == b"E\x00\x00\x00\x10FATAL"
        assert peek(ours.fileno()) == b"E\x00\x00\x00\x10FATAL"  # still there: peeking consumed nothing
        assert ours.recv(64) == b"E\x00\x00\x00\x10FATAL"
        assert peek(ours.fileno()) is None
    finally:
        ours.close()
        theirs.close()


def test_peek_sees_a_closed_connection() -> None:
    """The server closed its end: b""; a descriptor that is gone: b"" too."""
    ours, theirs = socket.socketpair()
    theirs.close()
    try:
        assert peek(ours.fileno()) == b""
    finally:
        fd = ours.fileno()
        ours.close()
    assert peek(fd) == b""


def test_farewells_are_told_from_answers_by_their_bytes() -> None:
    """Bytes seen on real servers: a FATAL ErrorResponse ends a PostgreSQL session, an ERROR answer does not;
    MariaDB's connection-killed error packet ends a session, a syntax-error answer does not."""
    terminated = (
        b"E\x00\x00\x00tSFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command"
    )
    answer = b"E\x00\x00\x00ASERROR\x00VERROR\x00C22012\x00Mdivision by zero\x00"
    assert postgres_farewell(terminated)
    assert not postgres_farewell(answer)
    assert not postgres_farewell(b"T\x00\x00\x00\x21\x00\x01?column?\x00")  # a row description
    killed = b"\x1d\x00\x00\x00\xff\x87\x07#70100Connection was killed"
    syntax = b"\xa1\x00\x00\x01\xff(\x04#42000You have an error in your SQL syntax"
    assert mysql_farewell(killed)
    assert not mysql_farewell(syntax)
    assert not mysql_farewell(b"\x01\x00\x00\x01\x01")  # a result set's column count


# -- the watcher on real servers ------------------------------------------------------------

# SPEC §5: a dead session is noticed within 2 s by default (watch_interval=1.0, so 2 x 1 s);
# the tests allow a little more for a loaded machine: a liveness bound, not a benchmark.
NOTICED_WITHIN = 3.0


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def run_both(api: str, body: Callable[[type], Any]) -> None:
    cls = kannuki.Locker if api == "sync" else kannuki.AsyncLocker
    asyncio.run(body(cls))


async def held_then_killed(cls: type, url: str, kill: Callable[[int], None]) -> None:
    """Hold a lock, end its session from outside, and see the loss arrive with no call by the holder."""
    reasons: list[str] = []
    own: list[str] = []
    locker = cls(
        url, key_prefix=f"watch-{uuid.uuid4().hex[:8]}", on_lost=lambda lock, why: reasons.append(why)
    )
    try:
        lock = locker.lock("k", on_lost=lambda lock, why: own.append(why))
        assert await maybe(lock.acquire(timeout=5))
        assert lock.grant is not None and lock.grant.pid
        kill(lock.grant.pid)
        started = time.monotonic()
        while not lock.lost and time.monotonic() - started < 10:
            await asyncio.sleep(0.02)  # the holder does nothing but wait
        noticed = time.monotonic() - started
        assert lock.lost and not lock.locked(), "the loss was never noticed"
        assert noticed < NOTICED_WITHIN, f"noticed after {noticed:.2f}s"
        assert len(reasons) == 1 and len(own) == 1 and locker.stats().lost == 1
        with pytest.raises(kannuki.LockLostError):
            await maybe(lock.release())
        assert len(reasons) == 1 and locker.stats().lost == 1
    finally:
        await maybe(locker.aclose() if cls is kannuki.AsyncLocker else locker.close())


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_killed_mysql_session_is_noticed_without_a_call(api: str, mysql_url: str) -> None:
    """KILL of the holding connection: on_lost (locker and lock) once, lost, within 2 s by default."""
    from support import mysql_connect

    def kill(conn_id: int) -> None:
        raw = mysql_connect(mysql_url)
        try:
            raw.query(f"KILL {int(conn_id)}")
        finally:
            raw.close()

    run_both(api, lambda cls: held_then_killed(cls, mysql_url, kill))


def test_a_healthy_mysql_lock_held_ten_seconds_gets_no_alarm(mysql_url: str) -> None:
    """No false alarm: a lock held 10 s on a healthy session is never reported lost."""

    async def body(cls: type) -> None:
        locker = cls(mysql_url, key_prefix=f"watch-{uuid.uuid4().hex[:8]}")
        lock = locker.lock("k")
        assert await lock.acquire(timeout=5)
        await asyncio.sleep(10)
        assert lock.locked() and locker.stats().lost == 0
        await lock.ensure_held()
        await lock.release()
        await locker.aclose()

    run_both("async", body)


def test_watch_interval_none_turns_the_watcher_off(mysql_url: str) -> None:
    """watch_interval=None: no watcher; the loss is found only when the holder asks (ensure_held)."""
    from support import mysql_connect

    locker = kannuki.Locker(mysql_url, key_prefix=f"watch-{uuid.uuid4().hex[:8]}", watch_interval=None)
    try:
        lock = locker.lock("k")
        assert lock.acquire(timeout=5)
        raw = mysql_connect(mysql_url)
        raw.query(f"KILL {int(lock.grant.pid)}")
        raw.close()
        time.sleep(2.5)
        assert not lock.lost and not locker._keeper.renewing
        with pytest.raises(kannuki.LockLostError):
            lock.ensure_held()
        assert lock.lost and locker.stats().lost == 1
    finally:
        locker.close()


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_terminated_postgres_session_is_noticed_without_a_call(api: str, pg_url: str, pg_conn: Any) -> None:
    """pg_terminate_backend of the holding session: on_lost (locker and lock) once, lost, within 2 s."""

    def kill(pid: int) -> None:
        pg_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    run_both(api, lambda cls: held_then_killed(cls, pg_url, kill))


def test_a_healthy_postgres_lock_held_ten_seconds_gets_no_alarm(pg_url: str) -> None:
    """No false alarm: a lock held 10 s on a healthy session is never reported lost."""
    locker = kannuki.Locker(pg_url, key_prefix=f"watch-{uuid.uuid4().hex[:8]}")
    try:
        lock = locker.lock("k")
        assert lock.acquire(timeout=5)
        time.sleep(10)
        assert lock.locked() and locker.stats().lost == 0
        lock.ensure_held()
        lock.release()
    finally:
        locker.close()


# -- the answer to a statement in flight is no farewell ---------------------------------------


def _mysql_raw(url: str) -> Any:
    MySQLdb = pytest.importorskip("MySQLdb")
    parts = urlsplit(url)
    return MySQLdb.connect(
        host=parts.hostname, port=parts.port or 3306, user=parts.username or "root", db=parts.path.lstrip("/")
    )


async def _answer_waiting_is_no_loss(
    cls: type, conn: Any, send: Callable[[], None], take: Callable[[], None]
) -> None:
    """Hold a lock on the user's own connection, have the user send a statement on it, and leave its
    answer unread while the watcher looks (every 50 ms) twenty times: no loss."""
    reasons: list[str] = []
    locker = cls(
        conn,
        key_prefix=f"watch-{uuid.uuid4().hex[:8]}",
        watch_interval=0.05,
        on_lost=lambda lock, why: reasons.append(why),
    )
    try:
        lock = locker.lock("k")
        assert await maybe(lock.acquire(timeout=5))
        send()
        await asyncio.sleep(1.0)
        take()
        assert reasons == [] and not lock.lost and lock.locked()
        await maybe(lock.release())
    finally:
        await maybe(locker.aclose() if cls is kannuki.AsyncLocker else locker.close())


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_users_statement_answered_on_a_wrapped_mysql_connection_is_no_loss(
    api: str, mysql_url: str
) -> None:
    """The user's own query on the connection a lock lives on: its answer is not the server ending the
    session (before: any readable byte on that socket was taken for a KILL)."""
    raw = _mysql_raw(mysql_url)
    try:
        run_both(
            api,
            lambda cls: _answer_waiting_is_no_loss(
                cls, raw, lambda: raw.send_query(b"SELECT 1"), lambda: _take_mysql(raw)
            ),
        )
    finally:
        raw.close()


def _take_mysql(raw: Any) -> None:
    raw.read_query_result()
    raw.store_result()


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_users_statement_answered_on_a_wrapped_postgres_connection_is_no_loss(
    api: str, pg_url: str
) -> None:
    """The same on PostgreSQL: an answer waiting (even an ERROR) is not a FATAL farewell."""
    psycopg = pytest.importorskip("psycopg")

    async def body(cls: type) -> None:
        if cls is kannuki.AsyncLocker:
            conn: Any = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        else:
            conn = psycopg.connect(pg_url, autocommit=True)
        pgconn = conn.pgconn

        def take() -> None:
            while pgconn.get_result() is not None:
                pass

        try:
            await _answer_waiting_is_no_loss(cls, conn, lambda: pgconn.send_query(b"SELECT 1/0"), take)
        finally:
            await maybe(conn.close())

    run_both(api, body)


@pytest.mark.parametrize("store", ["postgres", "mysql"])
def test_acquisitions_after_a_quiet_spell_do_not_wake_the_watcher(
    store: str, request: pytest.FixtureRequest
) -> None:
    """The cost of the watcher: once it went idle, taking locks does not wake it (no thread switch per acquire)."""
    url = request.getfixturevalue("pg_url" if store == "postgres" else "mysql_url")
    locker = kannuki.Locker(url, key_prefix=f"watch-{uuid.uuid4().hex[:8]}")
    try:
        lock = locker.lock("k")
        assert lock.acquire(timeout=5)
        lock.release()
        time.sleep(1.5)  # the worker has looked and found nothing watched: it sleeps, idle
        worker = locker._keeper._worker
        wakes: list[float] = []
        real_wake = worker.wake
        worker.wake = lambda: (wakes.append(time.monotonic()), real_wake())[-1]
        try:
            for _ in range(20):
                assert lock.acquire(timeout=5)
                lock.release()
        finally:
            del worker.wake
        assert wakes == [], f"{len(wakes)} wakes for 20 acquisitions"
    finally:
        locker.close()


def test_the_watcher_looks_with_the_connection_guard_held(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lock_many pins one connection for several holds: while the watcher peeks at it for one hold,
    no statement of another may start on it, else its answer would read as the end of the session."""
    from kannuki.backends import mysql

    locker = kannuki.Locker(mysql_url, key_prefix=f"watch-{uuid.uuid4().hex[:8]}", watch_interval=None)
    try:
        many = locker.lock_many(["a", "b"])
        assert many.acquire(timeout=5)
        watched, sibling = (hold.grant for hold in many._holds)
        assert watched.conn is sibling.conn
        guard_held_while_peeking: list[bool] = []
        real_peek = mysql.peek

        def peek(fd: int) -> bytes | None:
            guard_held_while_peeking.append(watched.conn.guard.locked())
            return real_peek(fd)

        monkeypatch.setattr(mysql, "peek", peek)
        assert locker.backend.gone(watched) is None
        assert guard_held_while_peeking == [True]
        assert not watched.conn.guard.locked()  # given back after the look
        assert locker.backend.check(sibling)  # the connection serves statements again
        many.release()
    finally:
        locker.close()
