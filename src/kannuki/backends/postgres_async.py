"""``postgresql://`` for ``AsyncLocker``: PostgreSQL advisory locks through psycopg's AsyncConnection.

The same statements as the sync backend (:mod:`kannuki.backends._pg_sql`) and
the same rules: a held session lock pins one connection until release and
that connection never goes back to a pool while it holds a lock; the server
PID is recorded at acquire and checked at release (a mismatch, or a broken
connection, is LockLostError); waits happen on the server under a
``lock_timeout`` that never outlives the wait: on an autocommit connection
outside a transaction (kannuki's own connections) the setting and the wait are
one statement, its own implicit transaction; otherwise they run in a
transaction that is always rolled back. A blocking acquire tries first only
when someone listens for the ``waiting`` event or where the wait is not one
round trip. 55P03 is "not acquired", 40P01 DeadlockError, anything else
BackendError.

Within one process, tasks waiting for the same key line up on an asyncio
queue (:class:`~kannuki.backends.async_base.KeyQueue`), so only one
connection per key waits on the server.

Cancellation. psycopg cancels the server query when the awaiting task is
cancelled, but the lock may have been granted just before the cancel arrived.
So a failed or cancelled acquire on a pinned connection always ends with
``pg_advisory_unlock_all()`` on it (the connection holds nothing else) before
the connection is reused; if that fails too the connection is closed, which
ends every lock of its session. Releases run to completion even if the task is
cancelled meanwhile.

One shared connection (``AsyncLocker(aconn)``): every lock lives on that one
session, and a query waiting on it would block every other lock's release, so
tasks exclude each other on an in-process table first and then take the
server lock with ``pg_try_advisory_lock`` polls (capped backoff), each poll
run to completion so its outcome is never lost to a cancellation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from typing import Any, Callable

from kannuki._core import Backoff, LockTable
from kannuki.backends import _pg_common as pg
from kannuki.backends import _pg_sql as sql
from kannuki.backends.async_base import AsyncBackend, KeyQueue, run_to_completion
from kannuki.backends.base import NO_WAIT_CALLBACK, Holder, reject_unknown_options
from kannuki.backends.memory import MemoryBackend
from kannuki.backends.memory_async import AsyncMemoryBackend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["AsyncPostgresBackend"]

# Polling schedule of the one-shared-connection mode: from 5 ms, doubling, at most 200 ms.
POLL_INTERVAL = 0.005
POLL_CAP = 0.2


async def _run(conn: Any, statement: str, params: Any = None) -> Any:
    """Execute one statement and return its row; a user's non-autocommit connection is not left in a transaction."""
    if not conn.autocommit and conn.info.transaction_status == pg.IDLE:
        async with conn.transaction():
            return await (await conn.execute(statement, params)).fetchone()
    return await (await conn.execute(statement, params)).fetchone()


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # closing a broken connection may fail; it is gone either way
        pass


class _OwnConnections:
    """Connections this backend opens from a URL; up to ``pool_size`` idle ones are kept for reuse."""

    shared = False

    def __init__(self, url: str, *, pool_size: int, connect_timeout: float, application_name: str) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self._idle: list[Any] = []

    async def get(self) -> Any:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        psycopg = pg.psycopg()
        kwargs = pg.connect_kwargs(psycopg, self.url, self.connect_timeout, self.application_name)
        try:
            return await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.url, **kwargs), self.connect_timeout + 1.0
            )
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            raise BackendError(f"could not connect to PostgreSQL at {pg.safe_url(self.url)}: {exc}") from exc

    async def put(self, conn: Any, *, broken: bool = False) -> None:
        if broken or conn.closed or conn.info.transaction_status != pg.IDLE or len(self._idle) >= self.pool_size:
            await _close_quietly(conn)
        else:
            self._idle.append(conn)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close_quietly(conn)


class _PoolConnections:
    """The user's psycopg_pool ``AsyncConnectionPool``; a connection is given back only when it holds nothing."""

    shared = False

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def get(self) -> Any:
        try:
            return await self.pool.getconn()
        except Exception as exc:
            if pg.is_driver_error(exc):
                raise BackendError(f"could not get a connection from psycopg_pool {self.pool.name!r}: {exc}") from exc
            raise

    async def put(self, conn: Any, *, broken: bool = False) -> None:
        if broken:
            await _close_quietly(conn)  # the pool discards closed connections
        await self.pool.putconn(conn)

    async def aclose(self) -> None:
        """The pool is the user's: left open."""


class _OneConnection:
    """The user's own ``AsyncConnection``, shared by every lock of the locker; never closed here."""

    shared = True

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def get(self) -> Any:
        return self.conn

    async def put(self, conn: Any, *, broken: bool = False) -> None:
        pass

    async def aclose(self) -> None:
        pass


class _Pin:
    __slots__ = ("conn", "pid", "shared", "local_token")

    def __init__(self, conn: Any, pid: int, shared: bool, local_token: int = 0) -> None:
        self.conn = conn
        self.pid = pid
        self.shared = shared
        self.local_token = local_token


def _is_async_pool(obj: Any) -> bool:
    return pg.has_class(obj, "psycopg_pool", "AsyncConnectionPool")


def _is_async_connection(obj: Any) -> bool:
    return pg.has_class(obj, "psycopg", "AsyncConnection")


class AsyncPostgresBackend(AsyncBackend):
    """Advisory locks in PostgreSQL through psycopg 3's async API.

    Options (keywords of ``AsyncLocker``), as the sync backend: ``pool_size``
    (idle connections kept, default 4), ``connect_timeout`` (seconds, default
    5), ``application_name`` (default "kannuki"), ``allow_replica`` (default
    False). Fencing tokens from a server counter are sync-only for now.
    """

    scheme = "postgresql"
    supports_shared = True
    supports_transaction = True

    def __init__(self, source: Any, *, where: str, allow_replica: bool = False) -> None:
        self._source = source
        self._where = where
        self.allow_replica = allow_replica
        self._pins: dict[int, _Pin] = {}
        self._tokens = itertools.count(1)
        self._xact_tokens = itertools.count(1)
        self._turns = KeyQueue()
        self._checked: "weakref.WeakSet[Any]" = weakref.WeakSet()
        # One shared session cannot tell its tasks apart: they exclude each other here first.
        self._local = AsyncMemoryBackend(MemoryBackend(LockTable())) if source.shared else None

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "AsyncPostgresBackend":
        connect = pg.pop_connect_options(options)
        allow_replica = cls._common_options(options)
        url = pg.checked_url(url, connect)
        return cls(_OwnConnections(url, **connect), where=pg.safe_url(url), allow_replica=allow_replica)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        return _is_async_connection(obj) or _is_async_pool(obj)

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> "AsyncPostgresBackend":
        allow_replica = cls._common_options(options)
        if _is_async_pool(obj):
            return cls(_PoolConnections(obj), where=f"psycopg_pool {obj.name!r}", allow_replica=allow_replica)
        return cls(_OneConnection(obj), where="a psycopg async connection", allow_replica=allow_replica)

    @staticmethod
    def _common_options(options: dict[str, Any]) -> bool:
        allow_replica = options.pop("allow_replica", False)
        if options.pop("fencing", False):
            raise NotSupportedError("fencing=True (server-side fencing tokens) is not available on AsyncLocker yet")
        reject_unknown_options("postgresql", options)
        if not isinstance(allow_replica, bool):
            raise ConfigurationError(f"allow_replica must be True or False, not {allow_replica!r}")
        return allow_replica

    # -- session locks ------------------------------------------------------

    async def acquire(
        self,
        name: str,
        lock_id: int,
        *,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
        transaction: Any = None,
    ) -> int:
        if ttl is not None:
            raise NotSupportedError("the postgresql backend has no leases: a lock lives as long as its connection; drop ttl=")
        try:
            if transaction is not None and transaction is not False:
                return await self._acquire_in_transaction(name, lock_id, shared, timeout, transaction)
            if self._local is not None:
                return await self._acquire_on_shared_connection(name, lock_id, shared, timeout, on_wait)
            return await self._acquire_pinned(name, lock_id, shared, timeout, on_wait)
        except Exception as exc:
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring the lock {name!r}", key=name) from exc
            raise

    async def _acquire_pinned(
        self, name: str, lock_id: int, shared: bool, timeout: float | None, on_wait: Callable[[], None]
    ) -> int:
        source = self._source
        conn = await source.get()
        try:
            await self._check_replica(conn)
            taken, pid = False, None
            if pg.try_first(conn, timeout, on_wait):
                taken, pid = await _run(conn, sql.TRY_LOCK[shared], (lock_id,))
            if not taken and timeout != 0:
                on_wait()
                deadline = None if timeout is None else time.monotonic() + timeout
                async with self._turns.turn(name, deadline) as ours:
                    if ours:
                        taken, pid = await self._wait_on_server(conn, lock_id, shared, deadline)
        except BaseException:
            await run_to_completion(self._give_back_after_failure(conn))
            raise
        if not taken:
            await run_to_completion(source.put(conn))
            return 0
        token = next(self._tokens)
        self._pins[token] = _Pin(conn, pid, shared)
        return token

    async def _wait_on_server(self, conn: Any, lock_id: int, shared: bool, deadline: float | None) -> tuple[bool, Any]:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if pg.outside_transaction(conn):
                # One round trip: the statement's implicit transaction takes the lock_timeout with it.
                params = sql.timed_params(remaining, (lock_id,))
                _, pid = await (await conn.execute(sql.TIMED_WAIT_LOCK[shared], params)).fetchone()
            else:
                async with conn.transaction(force_rollback=True):  # the lock_timeout dies with it; the lock does not
                    await conn.execute(sql.SET_LOCK_TIMEOUT, (sql.lock_timeout_setting(remaining),))
                    _, pid = await (await conn.execute(sql.WAIT_LOCK[shared], (lock_id,))).fetchone()
        except Exception as exc:
            if sql.is_not_acquired(exc):
                return False, None
            raise
        return True, pid

    async def _give_back_after_failure(self, conn: Any) -> None:
        # The acquire failed or was cancelled, maybe after the server granted it: this connection
        # holds nothing else, so unlock everything; a connection we cannot clean is closed instead.
        try:
            if not conn.closed and conn.info.transaction_status in (pg.IDLE, pg.INTRANS):
                await _run(conn, sql.UNLOCK_ALL)
                await self._source.put(conn)
                return
        except Exception:
            pass
        await self._source.put(conn, broken=True)

    async def _acquire_on_shared_connection(
        self, name: str, lock_id: int, shared: bool, timeout: float | None, on_wait: Callable[[], None]
    ) -> int:
        assert self._local is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        told = []

        def tell_once() -> None:
            if not told:
                told.append(True)
                on_wait()

        local_token = await self._local.acquire(name, lock_id, shared=shared, timeout=timeout, on_wait=tell_once)
        if not local_token:
            return 0
        try:
            conn = self._source.conn
            await self._check_replica(conn)
            backoff = Backoff("exponential", POLL_INTERVAL, POLL_CAP, "full")
            while True:
                taken, pid = await self._try_to_completion(conn, lock_id, shared)
                remaining = None if deadline is None else deadline - time.monotonic()
                if taken or (remaining is not None and remaining <= 0):
                    break
                tell_once()
                await asyncio.sleep(backoff.next_delay(remaining))
        except BaseException:
            await run_to_completion(self._local.release(name, lock_id, local_token))
            raise
        if not taken:
            await self._local.release(name, lock_id, local_token)
            return 0
        token = next(self._tokens)
        self._pins[token] = _Pin(conn, pid, shared, local_token)
        return token

    async def _try_to_completion(self, conn: Any, lock_id: int, shared: bool) -> tuple[bool, Any]:
        """One pg_try_advisory_lock that a cancellation cannot cut short; undone if the task was cancelled."""
        attempt = asyncio.ensure_future(_run(conn, sql.TRY_LOCK[shared], (lock_id,)))
        try:
            row = await run_to_completion(attempt)
        except asyncio.CancelledError:
            if attempt.done() and not attempt.cancelled() and attempt.exception() is None and attempt.result()[0]:
                await run_to_completion(_run(conn, sql.UNLOCK[shared], (lock_id,)))
            raise
        return bool(row[0]), row[1]

    async def _check_replica(self, conn: Any) -> None:
        if conn in self._checked:
            return
        _pid, in_recovery = await _run(conn, sql.CONNECTION_INFO)
        sql.check_not_replica(in_recovery, self.allow_replica, self._where)
        self._checked.add(conn)

    async def release(self, name: str, lock_id: int, token: int) -> None:
        if token < 0:
            return  # a transaction-level lock: it ends with the caller's transaction
        pin = self._pins.pop(token, None)
        if pin is None:
            raise LockLostError(f"the lock {name!r} is not held by this backend (token {token})", key=name)
        await run_to_completion(self._release_pin(name, lock_id, pin))

    async def _release_pin(self, name: str, lock_id: int, pin: _Pin) -> None:
        conn, source = pin.conn, self._source
        try:
            try:
                released, pid = await _run(conn, sql.UNLOCK[pin.shared], (lock_id,))
            except Exception as exc:
                if not pg.is_driver_error(exc):
                    raise
                await source.put(conn, broken=True)
                if conn.closed or conn.broken:
                    raise LockLostError(
                        f"the lock {name!r} was lost: its connection broke ({exc})", key=name
                    ) from exc
                raise sql.translate_error(exc, f"releasing the lock {name!r}", key=name) from exc
            if pid != pin.pid:
                await source.put(conn, broken=True)
                raise LockLostError(
                    f"the lock {name!r} was lost: released on server PID {pid}, taken on {pin.pid} "
                    "(a pooler in transaction mode? use transaction-level locks there)",
                    key=name,
                )
            if not released:
                await source.put(conn, broken=True)
                raise LockLostError(f"the lock {name!r} was no longer held by its session at release", key=name)
            await source.put(conn)
        finally:
            if self._local is not None and pin.local_token:
                await self._local.release(name, lock_id, pin.local_token)

    # -- transaction-level locks -------------------------------------------

    async def _acquire_in_transaction(
        self, name: str, lock_id: int, shared: bool, timeout: float | None, transaction: Any
    ) -> int:
        conn = self._transaction_connection(transaction)
        if timeout == 0:
            (taken,) = await (await conn.execute(sql.TRY_XACT_LOCK[shared], (lock_id,))).fetchone()
        else:
            taken = True
            try:
                # A savepoint: on 55P03 (or a cancel) it rolls back with the setting; on success the
                # setting is put back by hand, since releasing a savepoint keeps SET LOCAL values.
                async with conn.transaction():
                    (before,) = await (await conn.execute(sql.SHOW_LOCK_TIMEOUT)).fetchone()
                    await conn.execute(sql.SET_LOCK_TIMEOUT, (sql.lock_timeout_setting(timeout),))
                    await conn.execute(sql.WAIT_XACT_LOCK[shared], (lock_id,))
                    await conn.execute(sql.SET_LOCK_TIMEOUT, (before,))
            except Exception as exc:
                if not sql.is_not_acquired(exc):
                    raise
                taken = False
        # Negative tokens mark transaction-level locks: release() has nothing to do for them.
        return -next(self._xact_tokens) if taken else 0

    def _transaction_connection(self, transaction: Any) -> Any:
        if transaction is True:
            if not isinstance(self._source, _OneConnection):
                raise ConfigurationError(
                    "transaction=True needs an AsyncLocker made from your psycopg AsyncConnection "
                    "(AsyncLocker(aconn)); otherwise pass the connection itself: transaction=aconn"
                )
            conn = self._source.conn
        elif _is_async_connection(transaction):
            conn = transaction
        else:
            raise ConfigurationError(
                "transaction must be True or a psycopg AsyncConnection inside a transaction, "
                f"not {type(transaction).__qualname__}"
            )
        pg.check_transaction_status(conn, "async with aconn.transaction():")
        return conn

    # -- inspection ---------------------------------------------------------

    async def _query(self, what: str, statement: str, params: Any = None, *, many: bool = False) -> Any:
        source = self._source
        conn = await source.get()
        broken = False
        try:
            cursor = conn.cursor()
            if not conn.autocommit and conn.info.transaction_status == pg.IDLE:
                async with conn.transaction():
                    await cursor.execute(statement, params)
                    return await (cursor.fetchall() if many else cursor.fetchone())
            await cursor.execute(statement, params)
            return await (cursor.fetchall() if many else cursor.fetchone())
        except Exception as exc:
            broken = True
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, what) from exc
            raise
        except BaseException:
            broken = True
            raise
        finally:
            await run_to_completion(source.put(conn, broken=broken))

    async def held(self, name: str, lock_id: int) -> bool:
        (found,) = await self._query(f"checking the lock {name!r}", sql.HELD, sql.split_lock_id(lock_id))
        return bool(found)

    async def holders(self, name: str, lock_id: int) -> list[Holder]:
        rows = await self._query(f"listing holders of {name!r}", sql.HOLDERS, sql.split_lock_id(lock_id), many=True)
        return [sql.holder_from_row(row, name) for row in rows]

    async def list_held(self) -> list[Holder]:
        rows = await self._query("listing held locks", sql.LIST_HELD, many=True)
        return [sql.holder_from_row(row, None) for row in rows]

    # -- life cycle ---------------------------------------------------------

    async def aclose(self) -> None:
        pins, self._pins = self._pins, {}
        for pin in pins.values():
            await self._source.put(pin.conn, broken=True)  # closing ends the session and its locks
        await self._source.aclose()

    def after_fork_in_child(self) -> None:
        self._pins.clear()
        if isinstance(self._source, _OwnConnections):
            self._source._idle = []

    def describe(self) -> str:
        return f"postgresql ({self._where})"
