"""PostgreSQL backend against the real server: interop, waits, connections, loss, pools, bad input."""

from __future__ import annotations

import _thread
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import kannuki
from kannuki.backends import _pg_sql as sql
from kannuki.backends.pool_hooks import release_postgres_locks
from kannuki.errors import (
    BackendError,
    ConfigurationError,
    DeadlockError,
    LockLostError,
    LockNotAcquiredError,
    NotSupportedError,
)
from support import wait_until

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test (or engineer) uses."""
    return f"t-pg-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def locker(pg_url: str, prefix: str) -> Iterator[kannuki.Locker]:
    """A URL locker with its own prefix, closed after the test."""
    lk = kannuki.Locker(pg_url, key_prefix=prefix)
    try:
        yield lk
    finally:
        lk.close()


def raw_try(conn: Any, name: str) -> bool:
    """A plain SQL client's try on the same name."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [name]).fetchone()[0])


def raw_unlock(conn: Any, name: str) -> bool:
    return bool(conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [name]).fetchone()[0])


def advisory_rows(conn: Any, lock_id: int, granted: bool | None = None) -> int:
    """How many pg_locks rows (holders and waiters) the key has in this database."""
    classid, objid = sql.split_lock_id(lock_id)
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
        " AND classid = %s::bigint::oid AND objid = %s::bigint::oid"
    )
    params: list[Any] = [classid, objid]
    if granted is not None:
        query += " AND granted = %s"
        params.append(granted)
    return int(conn.execute(query, params).fetchone()[0])


# -- interop with plain SQL -----------------------------------------------------


def unlock_soon(conn: Any, name: str, delay: float = 0.2) -> threading.Timer:
    """Unlock ``name`` on ``conn`` from a timer thread; join it before using ``conn`` again
    (a psycopg connection must not run two statements from two threads at once)."""
    timer = threading.Timer(delay, raw_unlock, (conn, name))
    timer.start()
    return timer


def test_plain_sql_holder_blocks_kannuki(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """pg_advisory_lock(hashtextextended('<full name>', 0)) from plain SQL excludes kannuki."""
    assert raw_try(pg_conn, f"{prefix}:job")
    assert locker.try_lock("job", lambda: "ran") is False
    assert locker.held("job")
    assert raw_unlock(pg_conn, f"{prefix}:job")
    assert locker.try_lock("job", lambda: "ran") == "ran"


def test_kannuki_holder_blocks_plain_sql(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """A kannuki lock excludes a plain SQL client on the same full name."""
    with locker.lock("job"):
        assert not raw_try(pg_conn, f"{prefix}:job")
    assert raw_try(pg_conn, f"{prefix}:job")
    raw_unlock(pg_conn, f"{prefix}:job")


def test_shared_and_exclusive(locker: kannuki.Locker, pg_url: str, prefix: str) -> None:
    """Shared holders coexist (across lockers); an exclusive one waits for all of them."""
    other = kannuki.Locker(pg_url, key_prefix=prefix)
    try:
        reader1 = locker.lock("doc", shared=True)
        reader2 = other.lock("doc", shared=True)
        assert reader1.acquire(blocking=False) and reader2.acquire(blocking=False)
        assert [h.shared for h in locker.lock("doc").holders()] == [True, True]
        assert not other.lock("doc").acquire(blocking=False)
        reader1.release()
        reader2.release()
        writer = other.lock("doc")
        assert writer.acquire(blocking=False)
        assert not locker.lock("doc", shared=True).acquire(blocking=False)
        writer.release()
    finally:
        other.close()


# -- waiting on the server --------------------------------------------------------


def test_timeout_is_honoured(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """A blocking acquire under contention returns False after its timeout, leaving nothing held or waiting."""
    assert raw_try(pg_conn, f"{prefix}:busy")
    lock = locker.lock("busy")
    assert lock.acquire(timeout=0.3) is False
    with pytest.raises(LockNotAcquiredError):
        with locker.lock("busy", timeout=0.2):
            pass
    assert advisory_rows(pg_conn, lock.lock_id) == 1  # only the raw holder
    raw_unlock(pg_conn, f"{prefix}:busy")


def test_wait_is_granted_when_holder_releases(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """A waiter blocked on the server gets the lock once the holder releases it."""
    assert raw_try(pg_conn, f"{prefix}:handoff")
    timer = threading.Timer(0.2, raw_unlock, (pg_conn, f"{prefix}:handoff"))
    timer.start()
    try:
        lock = locker.lock("handoff")
        assert lock.acquire(timeout=30)
        lock.release()
    finally:
        timer.join(10)


def test_ctrl_c_cancels_the_server_wait(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """KeyboardInterrupt during a server wait cancels it: no waiter, no holder left on the server."""
    assert raw_try(pg_conn, f"{prefix}:stuck")
    lock = locker.lock("stuck")
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            lock.acquire(timeout=None)
    finally:
        timer.join(10)
    assert advisory_rows(pg_conn, lock.lock_id, granted=False) == 0
    assert advisory_rows(pg_conn, lock.lock_id) == 1  # the raw holder only
    raw_unlock(pg_conn, f"{prefix}:stuck")
    assert locker.lock("stuck").acquire(blocking=False)  # the locker still works


def test_ctrl_c_on_a_pool_locker_gives_the_pool_a_clean_connection(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """Locker(pool): Ctrl-C during the server wait; the pool gets a connection back that holds and waits for nothing."""
    psycopg_pool = pytest.importorskip("psycopg_pool")
    with psycopg_pool.ConnectionPool(pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        pool.wait(timeout=10)
        locker = kannuki.Locker(pool, key_prefix=prefix)
        try:
            assert raw_try(pg_conn, f"{prefix}:stuck")
            lock = locker.lock("stuck")
            timer = threading.Timer(0.3, _thread.interrupt_main)
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    lock.acquire(timeout=None)
            finally:
                timer.join(10)
            with pool.connection(timeout=10) as conn:
                assert (
                    conn.execute(
                        "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
                    ).fetchone()[0]
                    == 0
                )
            assert advisory_rows(pg_conn, lock.lock_id) == 1  # the raw holder only
            raw_unlock(pg_conn, f"{prefix}:stuck")
            assert lock.acquire(blocking=False)
            lock.release()
        finally:
            locker.close()


@pytest.mark.parametrize("autocommit", [True, False])
def test_lock_timeout_never_leaks_into_a_user_connection(
    pg_url: str, pg_conn: Any, prefix: str, autocommit: bool
) -> None:
    """Locker(conn): a timed wait leaves the user's lock_timeout (session and transaction) unchanged."""
    conn = psycopg.connect(pg_url, autocommit=autocommit)
    locker = kannuki.Locker(conn, key_prefix=prefix)
    try:
        conn.execute("SET lock_timeout = '7s'")
        if not autocommit:
            conn.commit()
        assert raw_try(pg_conn, f"{prefix}:k")
        assert locker.lock("k").acquire(timeout=0.2) is False
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "7s"
        unlocker = unlock_soon(pg_conn, f"{prefix}:k")
        lock = locker.lock("k")
        assert lock.acquire(timeout=30)
        unlocker.join(10)
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "7s"
        lock.release()
        if not autocommit:
            conn.rollback()
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "7s"
    finally:
        locker.close()
        conn.close()


def test_session_lock_survives_the_users_rollback(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """A session lock taken (after a wait) inside the user's transaction outlives its rollback."""
    conn = psycopg.connect(pg_url)  # not autocommit
    locker = kannuki.Locker(conn, key_prefix=prefix)
    try:
        conn.execute("SELECT 1")  # the user's transaction is open
        assert raw_try(pg_conn, f"{prefix}:k")
        unlocker = unlock_soon(pg_conn, f"{prefix}:k")
        lock = locker.lock("k")
        assert lock.acquire(timeout=30)
        unlocker.join(10)
        conn.rollback()
        assert not raw_try(pg_conn, f"{prefix}:k")
        lock.release()
        assert raw_try(pg_conn, f"{prefix}:k")
        raw_unlock(pg_conn, f"{prefix}:k")
    finally:
        locker.close()
        conn.close()


def test_deadlock_is_its_own_error(pg_url: str, prefix: str) -> None:
    """Two connection lockers waiting for each other's keys: the server's victim gets DeadlockError.

    (The server sees a cycle only between sessions that wait on the server: a
    URL locker pins one connection per lock, so there lock_many's fixed order
    is the remedy; a wrapped connection's session locks poll, so that other
    threads can use it meanwhile. Transaction-level locks wait on the server.)
    """
    conns = [psycopg.connect(pg_url, autocommit=True) for _ in range(2)]
    a, b = (kannuki.Locker(conn, key_prefix=prefix) for conn in conns)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=10)

    def cross(locker: kannuki.Locker, conn: Any, first: str, second: str) -> None:
        try:
            with conn.transaction():
                with locker.lock(first, transaction=True):
                    barrier.wait()
                    with locker.lock(second, transaction=True, timeout=20):
                        pass
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=cross, args=(a, conns[0], "x", "y")),
        threading.Thread(target=cross, args=(b, conns[1], "y", "x")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert [type(e) for e in errors] == [DeadlockError]
        assert not a.held("x") and not a.held("y")
    finally:
        a.close()
        b.close()
        for conn in conns:
            conn.close()


# -- the one-round-trip wait (autocommit, outside a transaction) ---------------------


def url_with_settings(pg_url: str, **settings: str) -> str:
    """``pg_url`` whose connections start with these session settings (libpq ``options``)."""
    options = "%20".join(f"-c%20{name}%3D{value}" for name, value in settings.items())
    return f"{pg_url}{'&' if '?' in pg_url else '?'}options={options}"


@pytest.mark.parametrize("shared", [False, True])
def test_timed_wait_statement_sets_lock_timeout_for_itself_only(
    pg_url: str, pg_conn: Any, prefix: str, shared: bool
) -> None:
    """TIMED_WAIT_LOCK: its lock_timeout ends the wait with 55P03, then the session's own setting is back."""
    lock_id = kannuki.lock_id("k", prefix=prefix)
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        conn.execute("SET lock_timeout = '45s'")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", [lock_id])
        for _ in range(7):  # past psycopg's prepare and the server's switch to a generic plan
            started = time.monotonic()
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql.TIMED_WAIT_LOCK[shared], sql.timed_params(0.1, [lock_id]), prepare=True)
            assert sql.is_not_acquired(caught.value)
            assert time.monotonic() - started < 30  # the statement's 100 ms, not the session's 45 s
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SHOW lock_timeout").fetchone()[0] == "45s"
        pg_conn.execute("SELECT pg_advisory_unlock(%s)", [lock_id])
        row = conn.execute(sql.TIMED_WAIT_LOCK[shared], sql.timed_params(0.1, [lock_id]), prepare=True)
        _, pid = row.fetchone()
        assert pid == conn.info.backend_pid
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "45s"
        assert advisory_rows(pg_conn, lock_id, granted=True) == 1  # the session lock outlived its statement
    finally:
        conn.close()


def test_timed_wait_many_statement_sets_lock_timeout_for_itself_only(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """TIMED_WAIT_MANY: 55P03 on a held key under its own timeout, all keys once free; setting unchanged."""
    ids = [kannuki.lock_id(k, prefix=prefix) for k in "ab"]
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        conn.execute("SET lock_timeout = '45s'")
        pg_conn.execute("SELECT pg_advisory_lock(%s)", [ids[1]])
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql.TIMED_WAIT_MANY, sql.timed_params(0.1, sql.many_params(ids, [False, False])))
        assert sql.is_not_acquired(caught.value)
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "45s"
        assert conn.execute(sql.UNDO_MANY, sql.many_params(ids, [False, False])).fetchone()[0] == 1  # key a
        assert advisory_rows(pg_conn, ids[0]) == 0
        pg_conn.execute("SELECT pg_advisory_unlock(%s)", [ids[1]])
        params = sql.timed_params(0.1, sql.many_params(ids, [False, True]))
        taken, _ = conn.execute(sql.TIMED_WAIT_MANY, params).fetchone()
        assert taken == 2 and conn.execute("SHOW lock_timeout").fetchone()[0] == "45s"
        conn.execute("SELECT pg_advisory_unlock_all()")
    finally:
        conn.close()


def test_url_locker_waits_under_its_own_timeout_not_the_sessions(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """Own connections with a lock_timeout default: timeout=0.1 and timeout=None both mean what they say."""
    long_default = kannuki.Locker(url_with_settings(pg_url, lock_timeout="45s"), key_prefix=prefix)
    short_default = kannuki.Locker(url_with_settings(pg_url, lock_timeout="100ms"), key_prefix=prefix)
    try:
        assert raw_try(pg_conn, f"{prefix}:k")
        started = time.monotonic()
        assert long_default.lock("k").acquire(timeout=0.1) is False
        assert time.monotonic() - started < 30  # ended by the acquire's 100 ms, not the session's 45 s
        timer = threading.Timer(0.5, raw_unlock, (pg_conn, f"{prefix}:k"))
        timer.start()
        try:
            lock = short_default.lock("k")
            assert lock.acquire(timeout=None)  # lock_timeout 0 in the statement outlasts the session's 100 ms
            lock.release()
        finally:
            timer.join(10)
        assert advisory_rows(pg_conn, lock.lock_id) == 0
    finally:
        long_default.close()
        short_default.close()


def test_waiting_event_fires_only_when_the_key_is_held(
    locker: kannuki.Locker, pg_conn: Any, prefix: str
) -> None:
    """With a listener the acquire tries first: `waiting` for a held key, none for a free one."""
    events: list[str] = []
    unsubscribe = kannuki.subscribe(lambda event: events.append(event.name), events={"waiting", "acquired"})
    try:
        with locker.lock("free", timeout=5):
            pass
        assert events == ["acquired"]
        events.clear()
        assert raw_try(pg_conn, f"{prefix}:busy")
        assert locker.lock("busy").acquire(timeout=0.1) is False
        assert events == ["waiting"]
    finally:
        unsubscribe()
        raw_unlock(pg_conn, f"{prefix}:busy")


def test_other_errors_during_the_wait_are_backend_errors(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """statement_timeout (57014) ending a forever wait is BackendError, not "not acquired"; nothing left."""
    locker = kannuki.Locker(url_with_settings(pg_url, statement_timeout="200ms"), key_prefix=prefix)
    try:
        assert raw_try(pg_conn, f"{prefix}:k")
        lock = locker.lock("k")
        with pytest.raises(BackendError, match="57014"):
            lock.acquire(timeout=None)
        assert advisory_rows(pg_conn, lock.lock_id) == 1  # the raw holder only, no waiter
        raw_unlock(pg_conn, f"{prefix}:k")
        assert lock.acquire(timeout=5)  # the locker recovers on a fresh connection
        lock.release()
    finally:
        locker.close()


# -- connections ------------------------------------------------------------------


def test_sixteen_threads_on_one_key_use_few_connections(pg_url: str, prefix: str) -> None:
    """16 threads contending for one key queue locally: at most 2 connections are opened."""
    locker = kannuki.Locker(pg_url, key_prefix=prefix)
    counter = {"n": 0, "inside": 0, "overlap": 0}

    def work() -> None:
        for _ in range(5):
            with locker.lock("hot", timeout=60):
                counter["inside"] += 1
                counter["overlap"] = max(counter["overlap"], counter["inside"])
                counter["n"] += 1
                time.sleep(0.001)
                counter["inside"] -= 1

    threads = [threading.Thread(target=work) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert counter["n"] == 80 and counter["overlap"] == 1
        assert locker.backend.open_connections() <= 2
    finally:
        locker.close()


def test_holders_describe_the_pinned_connection(locker: kannuki.Locker, pg_conn: Any) -> None:
    """holders() names the server PID, application_name, user, client address and a start time."""
    with locker.lock("who") as lock:
        (holder,) = lock.holders()
        grant = lock.grant
        assert holder.pid == grant.pid == grant.conn.conn.info.backend_pid
        assert holder.application == "kannuki" and holder.user == "postgres"
        assert holder.host == "127.0.0.1" and holder.since is not None and not holder.shared
        listed = [h for h in locker.list_held() if h.lock_id == lock.lock_id]
        # The server knows IDs only; the locker names the locks it holds itself.
        assert [(h.name, h.pid) for h in listed] == [(lock.name, grant.pid)]
    assert lock.holders() == []


def test_terminated_backend_is_lock_lost(locker: kannuki.Locker, pg_conn: Any) -> None:
    """pg_terminate_backend of the holder: release raises LockLostError and the lock is free."""
    lock = locker.lock("victim")
    assert lock.acquire(blocking=False)
    pid = lock.holders()[0].pid
    assert pg_conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
    with pytest.raises(LockLostError):
        lock.release()
    assert not locker.held("victim")
    assert locker.lock("victim").acquire(blocking=False)  # a fresh connection is used
    assert locker.stats().lost == 1


def test_item_11_pooler_moving_the_session_is_lock_lost_and_freed_where_taken(
    locker: kannuki.Locker, pg_url: str
) -> None:
    """Release landing on another server backend (as behind PgBouncer in transaction mode) is LockLostError,
    and the lock does not stay on the backend it was taken on: that server session is ended.

    Simulated at the driver level: the pinned connection is swapped for another
    one, as a transaction-mode pooler would route the next statement; the
    original stays open (as a pooler's server connection would).
    """
    lock = locker.lock("moved")
    assert lock.acquire(blocking=False)
    session = lock.grant.conn  # the pinned connection
    original = session.conn
    session.conn = psycopg.connect(pg_url, autocommit=True)
    session._cursor = session.conn.cursor()
    try:
        with pytest.raises(LockLostError, match="PID") as info:
            lock.release()
        assert f"ended server session {original.info.backend_pid}" in str(info.value)
        assert not locker.held("moved")  # freed where it was taken (PostgreSQL >= 14 waits for the end)
    finally:
        original.close()


def test_pooler_release_unlocks_nothing_on_the_backend_it_landed_on(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """The release checks the server PID BEFORE it unlocks: landing on another backend, it frees nothing there.

    Simulated: the PID recorded at acquire is not the backend the release runs
    on, which (as another client's backend behind PgBouncer would) holds the key.
    Locker(conn) never closes the user's connection, so what the release did is seen.
    """
    conn = psycopg.connect(pg_url, autocommit=True)
    locker = kannuki.Locker(conn, key_prefix=prefix)
    try:
        lock = locker.lock("landed")
        assert lock.acquire(blocking=False)
        lock.grant.pid = pg_conn.info.backend_pid  # "taken on" another backend than this connection's
        with pytest.raises(LockLostError, match="PID"):
            lock.release()
        assert advisory_rows(pg_conn, lock.lock_id, granted=True) == 1  # still held where it landed
    finally:
        locker.close()
        conn.close()


def test_ensure_held_asks_the_pinned_session(locker: kannuki.Locker, pg_conn: Any) -> None:
    """ensure_held() (the backend's check): passes while held; LockLostError once the session is gone."""
    lock = locker.lock("watched")
    assert lock.acquire(blocking=False)
    lock.ensure_held()
    assert pg_conn.execute("SELECT pg_terminate_backend(%s, 5000)", [lock.grant.pid]).fetchone()[0]
    with pytest.raises(LockLostError):
        lock.ensure_held()
    assert lock.lost
    with pytest.raises(LockLostError):
        lock.release()
    assert locker.lock("watched").acquire(blocking=False)  # a fresh connection


def test_check_with_another_pid_is_lost_and_the_connection_is_closed(locker: kannuki.Locker) -> None:
    """A session whose server PID is not the one at acquire does not hold the lock; the lost hold's
    connection is closed (that frees the lock wherever it really is), never reused."""
    lock = locker.lock("moved-check")
    assert lock.acquire(blocking=False)
    session = lock.grant.conn
    lock.grant.pid = -1
    with pytest.raises(LockLostError):
        lock.ensure_held()
    with pytest.raises(LockLostError):
        lock.release()
    assert session.conn.closed and session not in locker.backend._source.idle
    assert wait_until(lambda: not locker.held("moved-check"))


def test_interrupted_release_closes_the_connection(
    locker: kannuki.Locker, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as the release starts: the pinned connection is closed (freeing the lock), not forgotten holding it."""
    lock = locker.lock("cut")
    assert lock.acquire(blocking=False)
    session = lock.grant.conn
    real_run = type(session).run

    def interrupted(self: Any, statement: str, *args: Any, **kwargs: Any) -> Any:
        if statement in sql.UNLOCK_CHECKED:
            raise KeyboardInterrupt
        return real_run(self, statement, *args, **kwargs)

    monkeypatch.setattr(type(session), "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock.release()
    monkeypatch.undo()
    assert session.conn.closed and session not in locker.backend._source.idle
    assert wait_until(lambda: advisory_rows(pg_conn, lock.lock_id) == 0)
    assert not lock.locked()
    assert locker.lock("cut").acquire(blocking=False)


def test_acquire_interrupted_after_the_grant_frees_the_key_before_it_raises(
    locker: kannuki.Locker, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C just after the server granted: when acquire() raises, the key is already free (not once the server
    has noticed a closed connection), for another client at once."""
    from kannuki.backends.postgres import _Session as session_type

    real_learn = session_type.learn
    freed_at_raise: list[int] = []

    def interrupted(self: Any, pid: Any) -> None:
        real_learn(self, pid)
        raise KeyboardInterrupt

    for attempt in range(30):  # each on a fresh connection (the interrupted one is closed)
        lock = locker.lock(f"granted-then-cut-{attempt}")
        monkeypatch.setattr(session_type, "learn", interrupted)
        with pytest.raises(KeyboardInterrupt):
            lock.acquire(blocking=False)
        monkeypatch.undo()
        freed_at_raise.append(advisory_rows(pg_conn, lock.lock_id))
        assert not lock.locked()
    assert freed_at_raise == [0] * 30


def test_force_release_refuses_naming_the_holder_then_terminates(
    locker: kannuki.Locker, pg_url: str, prefix: str
) -> None:
    """force_release: without terminate a clear refusal naming pid and application; with it the holder's
    session ends (pg_terminate_backend) and the lock is free; the holder then sees a loss."""
    holder_locker = kannuki.Locker(pg_url, key_prefix=prefix, application_name="stranded-app")
    try:
        lock = holder_locker.lock("stuck")
        assert lock.acquire(blocking=False)
        pid = lock.grant.pid
        with pytest.raises(NotSupportedError, match=rf"pid {pid} \(stranded-app\).*terminate=True") as info:
            locker.force_release("stuck")
        assert info.value.key == lock.name and info.value.holder.pid == pid
        assert locker.held("stuck")
        assert locker.force_release("stuck", terminate=True) == 1
        assert not locker.held("stuck")
        assert locker.force_release("stuck") == 0 and locker.force_release("stuck", terminate=True) == 0
        with pytest.raises(LockLostError):
            lock.release()
    finally:
        holder_locker.close()


def test_unreachable_server_is_backend_error_quickly(prefix: str) -> None:
    """Nothing listening on the port: BackendError (within the connect timeout), not a hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    locker = kannuki.Locker(
        f"postgresql://postgres@127.0.0.1:{port}/test", key_prefix=prefix, connect_timeout=2
    )
    with pytest.raises(BackendError) as info:
        locker.lock("k").acquire(blocking=False)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert "postgresql://postgres@127.0.0.1" in str(info.value)
    locker.close()


def test_replica_is_refused_unless_allowed(locker: kannuki.Locker) -> None:
    """A standby is refused with a clear error unless allow_replica=True (the check; no standby to test on)."""
    with pytest.raises(ConfigurationError, match="allow_replica=True"):
        sql.check_not_replica(True, False, "postgresql://db")
    sql.check_not_replica(True, True, "postgresql://db")
    sql.check_not_replica(False, False, "postgresql://db")
    with locker.lock("primary"):  # the real server is a primary: the live check passes
        pass


# -- pools ------------------------------------------------------------------------


def test_pool_connection_comes_back_without_the_lock(pg_url: str, prefix: str) -> None:
    """Locker(pool): the connection is pinned while held and goes back to the pool without the lock."""
    psycopg_pool = pytest.importorskip("psycopg_pool")
    with psycopg_pool.ConnectionPool(pg_url, min_size=2, max_size=2, kwargs={"autocommit": True}) as pool:
        pool.wait(timeout=10)
        locker = kannuki.Locker(pool, key_prefix=prefix)
        with locker.lock("pooled") as lock:
            assert pool.get_stats()["pool_available"] == 1  # one pinned, not back in the pool
            assert locker.held("pooled") is True
        with pool.connection() as conn:
            assert advisory_rows(conn, lock.lock_id) == 0
        locker.close()


def test_reset_hook_clears_a_stranded_lock(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """A user strands a session lock on a pooled connection; the reset hook frees it at check-in."""
    psycopg_pool = pytest.importorskip("psycopg_pool")
    name = f"{prefix}:stranded"
    with psycopg_pool.ConnectionPool(pg_url, min_size=1, max_size=1, reset=release_postgres_locks) as pool:
        with pool.connection() as conn:  # not autocommit: the hook must leave it idle too
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [name])
            conn.commit()
        with pool.connection() as conn:  # the same connection, after its reset
            assert conn.info.transaction_status == 0
            assert raw_try(pg_conn, name)
            raw_unlock(pg_conn, name)


# -- transaction-level locks --------------------------------------------------------


def test_transaction_lock_lives_until_commit(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """transaction=conn takes pg_advisory_xact_lock; release() is a no-op; commit frees it."""
    conn = psycopg.connect(pg_url, autocommit=True)
    locker = kannuki.Locker(pg_url, key_prefix=prefix)
    try:
        with conn.transaction():
            with locker.lock("xact", transaction=conn):
                assert not raw_try(pg_conn, f"{prefix}:xact")
            assert not raw_try(pg_conn, f"{prefix}:xact")  # still held: it ends with the transaction
            assert raw_try(pg_conn, f"{prefix}:busy")
            assert locker.lock("busy", transaction=conn).acquire(timeout=0.2) is False
            assert conn.execute("SHOW lock_timeout").fetchone()[0] == "0"
        assert raw_try(pg_conn, f"{prefix}:xact")
        raw_unlock(pg_conn, f"{prefix}:xact")
        raw_unlock(pg_conn, f"{prefix}:busy")
    finally:
        locker.close()
        conn.close()


def test_transaction_lock_outside_a_transaction_is_refused(pg_url: str, prefix: str) -> None:
    """An autocommit connection with no open transaction, or transaction=True on a URL locker: a clear error."""
    conn = psycopg.connect(pg_url, autocommit=True)
    url_locker = kannuki.Locker(pg_url, key_prefix=prefix)
    conn_locker = kannuki.Locker(conn, key_prefix=prefix)
    try:
        with pytest.raises(ConfigurationError, match="conn.transaction"):
            url_locker.lock("k", transaction=conn).acquire()
        with pytest.raises(ConfigurationError, match="transaction=conn"):
            url_locker.lock("k", transaction=True).acquire()
        with pytest.raises(ConfigurationError, match="transaction must be"):
            url_locker.lock("k", transaction="yes").acquire()
        with conn.transaction():
            with conn_locker.lock("k", transaction=True):
                assert url_locker.held("k")
        assert not url_locker.held("k")
    finally:
        url_locker.close()
        conn_locker.close()
        conn.close()


# -- several keys -----------------------------------------------------------------


def test_lock_many_is_all_or_none(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """lock_many takes every key or none: one held elsewhere leaves the others free, try and timed."""
    assert raw_try(pg_conn, f"{prefix}:b")
    multi = locker.lock_many(["a", "b", "c"])
    assert multi.acquire(blocking=False) is False
    assert multi.acquire(timeout=0.3) is False
    assert not locker.held("a") and not locker.held("c")
    raw_unlock(pg_conn, f"{prefix}:b")
    with multi:
        assert all(locker.held(k) for k in "abc")
        assert not raw_try(pg_conn, f"{prefix}:c")
    assert not any(locker.held(k) for k in "abc")


def test_lock_many_waits_on_the_server(locker: kannuki.Locker, pg_conn: Any, prefix: str) -> None:
    """A blocking lock_many waits for a held key and then holds all of them."""
    assert raw_try(pg_conn, f"{prefix}:b")
    unlocker = unlock_soon(pg_conn, f"{prefix}:b")
    multi = locker.lock_many(["a", "b", "c"], timeout=30)
    with multi:
        unlocker.join(10)
        assert all(locker.held(k) for k in "abc")
    assert not any(locker.held(k) for k in "abc")


# -- fencing ----------------------------------------------------------------------


def test_fencing_tokens_increase_across_lockers(pg_url: str, pg_conn: Any, prefix: str) -> None:
    """fencing=True: tokens from the server sequence increase strictly across two lockers, try and wait paths."""
    a = kannuki.Locker(pg_url, key_prefix=prefix, fencing=True)
    b = kannuki.Locker(pg_url, key_prefix=prefix, fencing=True)
    tokens = []
    try:
        for locker in (a, b, a, b):
            with locker.lock("fenced") as lock:
                tokens.append(lock.token)
        assert raw_try(pg_conn, f"{prefix}:fenced")
        unlocker = unlock_soon(pg_conn, f"{prefix}:fenced")
        with b.lock("fenced", timeout=30) as lock:  # the wait path
            tokens.append(lock.token)
        unlocker.join(10)
        assert tokens == sorted(set(tokens)) and len(tokens) == 5
    finally:
        a.close()
        b.close()


# -- fork, bad input, options ---------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_does_not_hold_or_touch_parent_locks(locker: kannuki.Locker) -> None:
    """A forked child holds none of its parent's locks and, even closing its locker, never touches the
    parent's connections (pinned or idle): the parent goes on using both."""
    lock = locker.lock("parent")
    assert lock.acquire(blocking=False)
    with locker.lock("warm-up"):  # leaves an idle connection in the locker
        pass
    assert len(locker.backend._source.idle) == 1
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery here, only an exit code
        code = 0
        try:
            code = 1 if lock.locked() or lock.grant is not None else 0
            code = code or (0 if locker.held("parent") else 2)  # on a connection of its own
            code = code or (0 if not locker.lock("parent").acquire(blocking=False) else 3)
            locker.close()  # must not close the parent's connections
        except BaseException:
            code = 4
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
    assert locker.held("parent")  # on the idle connection: the child did not close it
    lock.release()  # nor the pinned one
    assert not locker.held("parent")


@pytest.mark.parametrize(
    "key", ["'; DROP TABLE x; --", "quote ' and \" and \\ backslash", "nul\x00byte", "日本語🔒"]
)
def test_hostile_keys_are_harmless(locker: kannuki.Locker, pg_conn: Any, prefix: str, key: str) -> None:
    """Keys with SQL, quotes, backslashes, NUL or non-ASCII only reach SQL as their 64-bit ID."""
    with locker.lock(key) as lock:
        assert lock.lock_id == kannuki.lock_id(key, prefix=prefix)
        assert locker.held(key)
    assert not locker.held(key)
    if "\x00" not in key:  # PostgreSQL text cannot hold NUL: only the ID form interoperates
        assert raw_try(pg_conn, f"{prefix}:{key}")
        assert locker.try_lock(key, lambda: 1) is False
        raw_unlock(pg_conn, f"{prefix}:{key}")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pool_size": -1}, "pool_size"),
        ({"pool_size": 1.5}, "pool_size"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"connect_timeout": float("nan")}, "connect_timeout"),
        ({"application_name": 3}, "application_name"),
        ({"fencing": "yes"}, "fencing"),
        ({"allow_replica": 1}, "allow_replica"),
        ({"pool_sise": 3}, "pool_sise"),
    ],
)
def test_bad_options_are_refused(pg_url: str, options: dict[str, Any], match: str) -> None:
    """Bad backend options raise ConfigurationError naming the option."""
    with pytest.raises(ConfigurationError, match=match):
        kannuki.Locker(pg_url, **options)


def test_ttl_is_not_supported(locker: kannuki.Locker) -> None:
    """PostgreSQL locks live with their connection: a ttl is refused, nothing held."""
    with pytest.raises(NotSupportedError):
        locker.lock("k", ttl=5).acquire()
    assert not locker.held("k")


def test_no_connection_until_first_use(prefix: str) -> None:
    """A URL locker opens no connection when created (test mode may replace it)."""
    locker = kannuki.Locker("postgres://nobody@127.0.0.1:1/none", key_prefix=prefix)
    assert locker.backend.open_connections() == 0
    assert "password" not in repr(locker)
    locker.close()


def test_two_lockers_on_one_connection_exclude_each_other(pg_url: str, prefix: str) -> None:
    """PostgreSQL session locks are re-entrant per session: two lockers wrapping one connection still exclude."""
    conn = psycopg.connect(pg_url, autocommit=True)
    first, second = kannuki.Locker(conn, key_prefix=prefix), kannuki.Locker(conn, key_prefix=prefix)
    outcomes: list[bool] = []

    def other_thread() -> None:  # (this thread waiting for its own key would be a DeadlockError)
        outcomes.append(second.lock("shared-conn").acquire(blocking=False))
        outcomes.append(second.lock("shared-conn").acquire(timeout=0.1))

    try:
        with first.lock("shared-conn"):
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join(30)
            assert outcomes == [False, False]
        assert second.lock("shared-conn").acquire(blocking=False)
    finally:
        conn.close()


def test_url_lockers_of_one_process_queue_on_one_table(pg_url: str, prefix: str) -> None:
    """Two URL lockers for one server share the in-process queue: tokens rise across both."""
    a, b = kannuki.Locker(pg_url, key_prefix=prefix), kannuki.Locker(pg_url, key_prefix=prefix)
    try:
        tokens = []
        for locker in (a, b, a, b):
            with locker.lock("k") as lock:
                tokens.append(lock.token)
                assert not (b if locker is a else a).lock("k").acquire(blocking=False)
        assert tokens == sorted(set(tokens))
    finally:
        a.close()
        b.close()


# -- defects of issue 12 (one test each, named after its item) --------------------------------


def test_item_1_transaction_locks_on_one_connection_exclude_each_other(pg_url: str, prefix: str) -> None:
    """Advisory locks are re-entrant within one server session: two transaction-level Locks on one connection
    (and a transaction-level Lock beside a session Lock of a locker wrapping it) must still exclude."""
    conn = psycopg.connect(pg_url, autocommit=True)
    wrapped = kannuki.Locker(conn, key_prefix=prefix)
    url_locker = kannuki.Locker(pg_url, key_prefix=prefix)
    try:
        with conn.transaction():
            first, second = wrapped.lock("x", transaction=True), url_locker.lock("x", transaction=conn)
            assert first.acquire(blocking=False)
            assert second.acquire(blocking=False) is False
            first.release()  # a no-op on the server (it ends with the transaction), but frees it here
            assert second.acquire(blocking=False)
            second.release()
        session = wrapped.lock("y")
        assert session.acquire(blocking=False)
        with conn.transaction():
            assert wrapped.lock("y", transaction=True).acquire(blocking=False) is False
            assert url_locker.lock("y", transaction=conn).acquire(blocking=False) is False
        session.release()
        with conn.transaction():
            in_transaction = wrapped.lock("z", transaction=True)
            assert in_transaction.acquire(blocking=False)
            assert wrapped.lock("z").acquire(blocking=False) is False  # the other way round too
            in_transaction.release()
    finally:
        wrapped.close()
        url_locker.close()
        conn.close()


def test_item_2_a_rollback_never_repeats_a_token(pg_url: str, prefix: str) -> None:
    """A fenced lock taken inside the user's transaction, which is then rolled back: the next holder (in
    another locker) still gets a larger token (a sequence is never rolled back)."""
    conn = psycopg.connect(pg_url, autocommit=True)
    wrapped = kannuki.Locker(conn, key_prefix=prefix, fencing=True)
    url_locker = kannuki.Locker(pg_url, key_prefix=prefix, fencing=True)
    try:
        tokens = []
        for _ in range(2):
            with conn.transaction():
                with wrapped.lock("k") as lock:  # a session lock, its token drawn in the transaction
                    tokens.append(lock.token)
                with wrapped.lock("t", transaction=True) as lock:
                    tokens.append(lock.token)
                raise psycopg.Rollback  # the transaction block rolls back and swallows it
            with url_locker.lock("k") as lock:
                tokens.append(lock.token)
            with conn.transaction(), url_locker.lock("t", transaction=conn) as lock:
                tokens.append(lock.token)
        assert tokens == sorted(set(tokens)) and len(tokens) == 8
    finally:
        wrapped.close()
        url_locker.close()
        conn.close()


def test_item_4_tokens_come_from_the_server_sequence_by_default(pg_url: str, prefix: str) -> None:
    """By default every acquisition's token comes from kannuki_fencing_seq in the lock statement itself:
    strictly increasing across lockers with their own in-process tables (URL, pool, connection), the
    try and wait paths, lock_many and transaction-level locks; fencing=False keeps them local."""
    psycopg_pool = pytest.importorskip("psycopg_pool")
    conn = psycopg.connect(pg_url, autocommit=True)
    holder = psycopg.connect(pg_url, autocommit=True)
    with psycopg_pool.ConnectionPool(pg_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        lockers = [kannuki.Locker(target, key_prefix=prefix) for target in (pg_url, pool, conn)]
        try:
            tokens = []
            for locker in lockers * 2:
                with locker.lock("k") as lock:
                    tokens.append(lock.token)
                with locker.lock_many(["k", "other"]) as multi:
                    tokens.append(multi.tokens[0])
            assert raw_try(holder, f"{prefix}:k")
            unlocker = unlock_soon(holder, f"{prefix}:k")
            with lockers[0].lock("k", timeout=30) as lock:  # the wait path
                tokens.append(lock.token)
            unlocker.join(10)
            with conn.transaction(), lockers[0].lock("k", transaction=conn) as lock:
                tokens.append(lock.token)
            assert tokens == sorted(set(tokens)) and len(tokens) == 14
            assert all(locker.backend.tokens_fenced for locker in lockers)
            (last,) = conn.execute(f"SELECT last_value FROM {sql.FENCING_SEQUENCE}").fetchone()
            assert last >= tokens[-1]
            local = kannuki.Locker(pg_url, key_prefix=prefix, fencing=False)
            assert local.backend.tokens_fenced is False
            local.close()
        finally:
            for locker in lockers:
                locker.close()
            conn.close()
            holder.close()


@pytest.fixture
def unprivileged_url(pg_url: str, pg_conn: Any) -> Iterator[str]:
    """A role of this test's own, allowed to log in and nothing more (no CREATE on public, no sequence USAGE)."""
    role = f"kannuki_t_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE ROLE {role} LOGIN")
    parts = pg_url.split("://", 1)[1].split("@", 1)
    try:
        yield f"postgresql://{role}@{parts[-1]}"
    finally:
        pg_conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        pg_conn.execute(f"DROP ROLE {role}")


def test_item_4_a_role_without_the_sequence_gets_one_warning(
    pg_url: str, unprivileged_url: str, prefix: str
) -> None:
    """A role that may neither create nor use the sequence: locks still work, lock.token is None (no
    fencing token is better than one another process may repeat: tokens_fenced False), and exactly
    one warning says why."""
    with kannuki.Locker(pg_url, key_prefix=prefix) as owner, owner.lock("k"):
        pass  # the sequence exists now (created by a role that may), without USAGE for the new role
    locker = kannuki.Locker(unprivileged_url, key_prefix=prefix)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokens = []
            for _ in range(3):
                with locker.lock("k") as lock:
                    tokens.append(lock.token)
            with locker.lock_many(["a", "b"]) as multi:
                tokens.extend(multi.tokens)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and sql.FENCING_SEQUENCE in messages[0] and "GRANT USAGE" in messages[0]
        assert caught[0].category is RuntimeWarning
        assert locker.backend.tokens_fenced is False
        assert tokens == [None] * 5
    finally:
        locker.close()


def test_item_4_a_read_only_transaction_takes_the_lock_without_a_token(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """In a read-only transaction nextval() would fail with the lock already taken: the statement draws no
    token instead, the lock works and is released, and one warning says the tokens are now local."""
    conn = psycopg.connect(pg_url, autocommit=True)
    locker = kannuki.Locker(conn, key_prefix=prefix)
    try:
        with locker.lock("k") as lock:  # read-write: the sequence's token
            assert locker.backend.tokens_fenced and lock.token
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                for key in ("k", "t"):
                    lock = locker.lock(key, transaction=True) if key == "t" else locker.lock(key)
                    assert lock.acquire(timeout=5)
                    assert lock.token is None  # drawn from no sequence: no fencing token
                    lock.release()
        assert [str(w.message) for w in caught if "read-only" in str(w.message)] == [str(caught[0].message)]
        assert len(caught) == 1 and locker.backend.tokens_fenced is False
        assert raw_try(pg_conn, f"{prefix}:k") and raw_try(pg_conn, f"{prefix}:t")  # nothing left held
        raw_unlock(pg_conn, f"{prefix}:k")
        raw_unlock(pg_conn, f"{prefix}:t")
    finally:
        locker.close()
        conn.close()


def test_item_6_a_broken_lock_many_connection_goes_back_to_the_pool_once(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """Locker(ConnectionPool) + lock_many on a connection that breaks: the connection goes back once, not once
    per key, so a max_size=2 pool never hands out more than 2."""
    psycopg_pool = pytest.importorskip("psycopg_pool")
    with psycopg_pool.ConnectionPool(pg_url, min_size=2, max_size=2, kwargs={"autocommit": True}) as pool:
        pool.wait(timeout=10)
        locker = kannuki.Locker(pool, key_prefix=prefix)
        try:
            multi = locker.lock_many(["a", "b", "c"])
            assert multi.acquire(timeout=10)
            pg_conn.execute("SELECT pg_terminate_backend(%s, 5000)", [multi._holds[0].grant.pid])
            with pytest.raises(LockLostError):
                multi.release()
            borrowed = [pool.getconn(timeout=10) for _ in range(2)]
            try:
                with pytest.raises(psycopg_pool.PoolTimeout):
                    pool.getconn(timeout=0.5)
            finally:
                for conn in borrowed:
                    pool.putconn(conn)
            assert pool.get_stats()["pool_size"] <= 2
        finally:
            locker.close()


def test_item_8_timeouts_beyond_lock_timeouts_range(
    locker: kannuki.Locker, pg_conn: Any, prefix: str
) -> None:
    """Timeouts of ~25 days and more (lock_timeout's int milliseconds overflow) and up to the largest float:
    a free key is taken, in session and transaction-level locks."""
    for timeout in (25 * 86400.0, 30 * 86400.0, 2e305, 1.7e308):
        lock = locker.lock("long", timeout=timeout)
        assert lock.acquire()
        lock.release()
        with pg_conn.transaction():
            with locker.lock("long", transaction=pg_conn, timeout=timeout):
                pass
    assert sql.lock_timeout_setting(1.7e308) == f"{sql.MAX_LOCK_TIMEOUT_MS}ms"


@pytest.mark.parametrize("transaction", [False, True])
def test_item_8_a_long_wait_goes_in_slices(
    pg_url: str, pg_conn: Any, prefix: str, monkeypatch: pytest.MonkeyPatch, transaction: bool
) -> None:
    """A wait longer than lock_timeout's maximum goes on in slices: with the maximum made 50 ms, a key freed
    after two slices ran out is still taken, and the waiting setting never outlives the wait."""
    monkeypatch.setattr(sql, "MAX_LOCK_TIMEOUT_MS", 50)
    settings: list[str] = []
    original = sql.lock_timeout_setting

    def recorded(timeout: float | None) -> str:
        settings.append(original(timeout))
        return settings[-1]

    monkeypatch.setattr(sql, "lock_timeout_setting", recorded)
    locker = kannuki.Locker(pg_url, key_prefix=prefix)
    user = psycopg.connect(pg_url, autocommit=True)
    try:
        assert raw_try(pg_conn, f"{prefix}:sliced")
        result: list[bool] = []

        def wait() -> None:
            if transaction:
                with user.transaction():
                    result.append(locker.lock("sliced", transaction=user).acquire(timeout=60))
            else:
                result.append(locker.lock("sliced").acquire(timeout=60))

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert wait_until(lambda: len(settings) >= 3, 30)  # two slices ran out, a third waits
        raw_unlock(pg_conn, f"{prefix}:sliced")
        waiter.join(30)
        assert result == [True] and settings[0] == "50ms"
        assert user.execute("SHOW lock_timeout").fetchone()[0] == "0"
    finally:
        locker.close()
        user.close()


def test_item_13_held_and_holders_leave_a_pooled_connection_idle(
    pg_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """psycopg_pool with non-autocommit connections: held()/holders()/list_held() give the connection back
    idle, so the pool never warns "rolling back returned connection"."""
    psycopg_pool = pytest.importorskip("psycopg_pool")
    with psycopg_pool.ConnectionPool(pg_url, min_size=1, max_size=1) as pool:
        pool.wait(timeout=10)
        locker = kannuki.Locker(pool, key_prefix=prefix)
        try:
            with caplog.at_level("WARNING", logger="psycopg.pool"):
                for _ in range(3):
                    assert locker.held("k") is False
                    assert locker.lock("k").holders() == []
                    locker.list_held()
                with pool.connection() as conn:
                    assert conn.info.transaction_status == 0  # idle
            assert [r.getMessage() for r in caplog.records if "rolling back" in r.getMessage()] == []
        finally:
            locker.close()


def test_item_14_a_shared_connection_serves_other_threads_while_one_waits(
    pg_url: str, pg_conn: Any, prefix: str
) -> None:
    """Locker(psycopg.Connection) used by several threads: while one waits for a key held elsewhere, the
    others' release and try go through at once instead of queueing behind the whole wait."""
    conn = psycopg.connect(pg_url, autocommit=True)
    locker = kannuki.Locker(conn, key_prefix=prefix)
    waiting = threading.Event()
    unsubscribe = kannuki.subscribe(lambda event: event.key == "held" and waiting.set(), events=["waiting"])
    try:
        assert raw_try(pg_conn, f"{prefix}:held")
        mine = locker.lock("mine")
        assert mine.acquire(blocking=False)
        result: list[bool] = []
        waiter = threading.Thread(target=lambda: result.append(locker.lock("held").acquire(timeout=60)))
        waiter.start()
        assert waiting.wait(30)
        served: list[bool] = []

        def others() -> None:
            mine.release()
            other = locker.lock("other")
            served.append(other.acquire(blocking=False))
            other.release()

        other = threading.Thread(target=others)
        other.start()
        other.join(20)
        assert served == [True] and waiter.is_alive()  # done while the first thread still waits
        raw_unlock(pg_conn, f"{prefix}:held")
        waiter.join(30)
        assert result == [True]
    finally:
        unsubscribe()
        locker.close()
        conn.close()


def test_own_connection_prepares_again_after_discard_all(locker: kannuki.Locker) -> None:
    """A hot statement the session no longer has prepared (DISCARD ALL behind kannuki's back) is prepared
    again: the try and the release still work."""
    lock = locker.lock("prepared")
    for _ in range(2):
        assert lock.acquire(blocking=False)
        lock.release()
    (session,) = locker.backend._source.idle  # the locker's own connection, with its prepared statements
    assert session.prepared
    session.conn.execute("DISCARD ALL")
    assert lock.acquire(blocking=False)
    assert lock.token > 0
    lock.release()
    assert not locker.held("prepared")
