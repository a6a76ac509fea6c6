"""``postgresql://``: PostgreSQL advisory locks through psycopg 3 (async source; ``postgres.py`` is generated).

Session locks (``pg_advisory_lock`` and friends) on the 64-bit lock ID, so any
SQL client running ``pg_advisory_lock(hashtextextended('<full name>', 0))``
contends with kannuki. Transaction-level locks (``pg_advisory_xact_lock``) on
the caller's connection inside its transaction (``transaction=``).

Connections. Every held session lock pins one connection until it is
released (``lock_many`` pins one connection for all its keys). A pinned
connection never goes back to a pool; once released it is reused. So a
process opens about as many connections as it holds locks at once, plus at
most one per key it is waiting for: within one process, waiters for the same
key (threads, or tasks of an event loop) queue on an in-process lock table
first, and only the head of that queue waits on the server. The server PID is
recorded at acquire and checked by the release statement itself before it
unlocks: behind a pooler in transaction mode (PgBouncer) a release that lands
on another server backend unlocks nothing there and is LockLostError.

The locker may also wrap a user's psycopg_pool pool (a connection is borrowed
per acquisition and given back only once it holds nothing) or a user's single
connection, shared by every lock of the locker. That connection is one server
session: a server wait on it holds it until the wait ends, so the other locks
of the locker wait for it too; a connection outside autocommit mode is used
by one thread or task at a time, as psycopg's transactions are.

Waits happen on the server, under a ``lock_timeout`` set with
``set_config(..., true)``, so the setting never outlives the wait. On an
autocommit connection outside a transaction (kannuki's own connections) the
setting and the wait are one statement, its own implicit transaction: one round
trip, like a bare ``pg_advisory_lock``. Inside the caller's transaction they run
in a savepoint that is always rolled back: session advisory locks survive the
rollback, the setting does not. A blocking acquire tries first only when someone
listens for the ``waiting`` event (the try is what tells a wait is coming).
Only SQLSTATE 55P03 means "not acquired"; 40P01 is DeadlockError; anything
else is BackendError.

Interruptions. Ctrl-C (sync) or a cancelled task (async) during a server
wait: psycopg cancels the query on the server. The lock may have been granted
just before, so an interrupted or failed acquire closes its connection (or, on
a connection that holds other locks, gives back just that key); an interrupted
release does the same. In async code the release and that undo run to their
end even when the task is cancelled meanwhile.

The backend keeps no record of its holds: everything a release needs (the
connection, the server PID, the in-process queue token) is in the Grant. In a
forked child the parent's connections are forgotten, never closed.
"""

from __future__ import annotations

import itertools
import os
import time
import weakref
from collections.abc import Sequence
from typing import Any, Callable

from kannuki._compat import afinish, atable_acquire, atable_release
from kannuki._core import LockTable
from kannuki.backends import _pg_common as pg
from kannuki.backends import _pg_sql as sql
from kannuki.backends._tables import object_table, process_table
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, LockRequest, reject_unknown_options
from kannuki.backends.base_async import AsyncBackend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["AsyncPostgresBackend"]

# Connections a forked child inherited. Kept referenced forever: letting them be
# collected is harmless to the parent (psycopg's PGconn skips PQfinish in another
# process), but holding them avoids ResourceWarnings from their finalizers.
_ORPHANED_IN_CHILD: list[Any] = []

# Grant.data of a transaction-level lock (it ends with its transaction, not with release).
_XACT = "transaction"
# Tokens of transaction-level locks: increasing within the process.
_XACT_TOKENS = itertools.count(1)

_monotonic = time.monotonic


async def _fetch(cursor: Any, every: bool) -> Any:
    if every:
        return await cursor.fetchall()
    return await cursor.fetchone()


class _Session:
    """One connection and what this backend knows about it (``Grant.conn`` of a session lock)."""

    __slots__ = ("_cursor", "checked", "conn", "holds", "process")

    def __init__(self, conn: Any, *, private: bool) -> None:
        self.conn = conn
        self.holds = 0  # locks pinned on this connection now
        self.checked = False  # passed the standby check
        self.process = os.getpid()  # a forked child never touches the parent's connection
        # A private connection is used by one acquisition at a time: one cursor
        # is reused. A shared one (the user's own connection) gets a cursor per call.
        self._cursor = conn.cursor() if private else None

    async def run(
        self, statement: str, params: Any = None, *, every: bool = False, apart: bool = False
    ) -> Any:
        """Execute one statement (prepared on the server after a few uses) and return its row (every row if ``every``).

        ``apart``: on a cursor of its own, for a call that may overlap the
        holder's own use of the connection (``check`` from another thread).
        """
        conn = self.conn
        if not conn.autocommit and conn.info.transaction_status == pg.IDLE:
            # A non-autocommit connection of the user: don't leave it idle in transaction.
            async with conn.transaction():
                return await _fetch(await conn.execute(statement, params, prepare=True), every)
        cursor = self._cursor
        if cursor is None or apart:
            return await _fetch(await conn.execute(statement, params, prepare=True), every)
        await cursor.execute(statement, params, prepare=True)
        return await _fetch(cursor, every)

    def outside_transaction(self) -> bool:
        """Autocommit with no transaction open: one statement is its own transaction."""
        return pg.outside_transaction(self.conn)

    def alive(self) -> bool:
        """Open and not broken (its session, and the locks on it, may still exist)."""
        conn = self.conn
        return not conn.closed and not conn.broken

    def usable(self) -> bool:
        """Open, not broken, and not inside a transaction: fit to be reused."""
        return self.alive() and self.conn.info.transaction_status == pg.IDLE

    def inherited(self) -> bool:
        """Opened by another process (this is a forked child): never to be touched."""
        return self.process != os.getpid()


class _OwnConnections:
    """Connections this backend opens from a URL: up to ``pool_size`` idle ones are kept for reuse."""

    closes = True

    def __init__(self, url: str, *, pool_size: int, connect_timeout: float, application_name: str) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.idle: list[_Session] = []
        self.opened = 0  # connections opened so far (for tests and stats)
        # Every connection opened here and still alive, idle or pinned: a forked child orphans them all.
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()

    def local_table(self) -> LockTable:
        """The in-process queue of every locker of this process on this URL."""
        return process_table(("postgresql", "url", self.url))

    async def get(self) -> _Session:
        idle = self.idle
        while idle:
            try:
                session = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if session.usable():
                return session
            await self.discard(session)
        return await self._connect()

    async def _connect(self) -> _Session:
        psycopg = pg.psycopg()
        kwargs = pg.connect_kwargs(psycopg, self.url, self.connect_timeout, self.application_name)
        try:
            # psycopg honours connect_timeout itself, sync and async.
            conn = await psycopg.AsyncConnection.connect(self.url, **kwargs)
        except (psycopg.Error, OSError) as exc:
            raise BackendError(f"could not connect to PostgreSQL at {pg.safe_url(self.url)}: {exc}") from exc
        self.opened += 1
        self.live.add(conn)
        return _Session(conn, private=True)

    async def put(self, session: _Session) -> None:
        if len(self.idle) < self.pool_size and session.usable():
            self.idle.append(session)
        else:
            await self.discard(session)

    async def discard(self, session: _Session) -> None:
        try:
            await session.conn.close()
        except Exception:  # closing a broken connection: nothing left to save
            pass

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        for session in idle:
            await self.discard(session)

    def forget(self) -> None:
        _ORPHANED_IN_CHILD.extend(self.live)
        self.idle = []
        self.live = weakref.WeakSet()


class _PoolConnections:
    """A user's psycopg_pool AsyncConnectionPool: a connection is borrowed per acquisition."""

    closes = True

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
        self.inherited = False

    def local_table(self) -> LockTable:
        """The in-process queue of every locker of this process on this pool."""
        return object_table("postgresql", self.pool)

    async def get(self) -> _Session:
        if self.inherited:
            raise BackendError(
                f"this locker wraps the psycopg_pool {self.pool.name!r} of the parent process: after fork() "
                "the child must make its own pool (and a locker of it)"
            )
        try:
            conn = await self.pool.getconn()
        except Exception as exc:
            if pg.is_driver_error(exc):
                raise BackendError(
                    f"could not get a connection from psycopg_pool {self.pool.name!r}: {exc}"
                ) from exc
            raise
        session = self.sessions.get(conn)
        if session is None:
            session = self.sessions[conn] = _Session(conn, private=True)
        return session

    async def put(self, session: _Session) -> None:
        await self.pool.putconn(session.conn)

    async def discard(self, session: _Session) -> None:
        try:
            await session.conn.close()
        except Exception:
            pass
        try:
            await self.pool.putconn(session.conn)  # the pool sees it closed and replaces it
        except Exception:  # the pool was closed meanwhile: it has let go of the connection anyway
            pass

    async def aclose(self) -> None:
        """The pool is the user's: they close it."""

    def forget(self) -> None:
        # Its connections (and its worker threads) are the parent's: this child must not use it.
        self.sessions = weakref.WeakKeyDictionary()
        self.inherited = True


class _OneConnection:
    """A user's own psycopg AsyncConnection: every lock of the locker lives on it."""

    closes = False

    def __init__(self, conn: Any) -> None:
        self.session = _Session(conn, private=False)
        self.inherited = False

    def local_table(self) -> LockTable:
        """The in-process queue of every locker on this connection (one server session: it cannot tell them apart)."""
        return object_table("postgresql", self.session.conn)

    async def get(self) -> _Session:
        if self.inherited:
            raise BackendError(
                "this locker wraps a psycopg connection of the parent process: after fork() "
                "the child must open its own connection (and make a locker of it)"
            )
        return self.session

    async def put(self, session: _Session) -> None:
        pass

    async def discard(self, session: _Session) -> None:
        pass  # the user's connection: never closed by kannuki

    async def aclose(self) -> None:
        pass

    def forget(self) -> None:
        self.inherited = True


class AsyncPostgresBackend(AsyncBackend):
    """Advisory locks in PostgreSQL through psycopg 3.

    Options (keywords of the locker): ``pool_size`` (idle connections kept for
    reuse, default 4), ``connect_timeout`` (seconds, default 5),
    ``application_name`` (default "kannuki"), ``allow_replica`` (default False:
    a standby is refused), ``fencing`` (default False; True: fencing tokens of
    session locks come from a server-side counter table, strictly increasing
    per key across processes and hosts, instead of the in-process sequence).
    """

    scheme = "postgresql"
    supports_shared = True
    supports_transaction = True

    def __init__(
        self, source: Any, *, where: str, allow_replica: bool = False, fencing: bool = False
    ) -> None:
        self._source = source
        self._where = where
        self.allow_replica = allow_replica
        self.fencing = fencing
        # Waiters of this process queue here first, so one connection per key waits on the server.
        self._local = source.local_table()
        self._fencing_ready = False

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncPostgresBackend:
        connect = pg.pop_connect_options(options)
        common = cls._common_options(options)
        url = pg.checked_url(url, connect)
        return cls(_OwnConnections(url, **connect), where=pg.safe_url(url), **common)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        return pg.has_class(obj, "psycopg", "AsyncConnection") or pg.has_class(
            obj, "psycopg_pool", "AsyncConnectionPool"
        )

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> AsyncPostgresBackend:
        common = cls._common_options(options)
        if pg.has_class(obj, "psycopg_pool", "AsyncConnectionPool"):
            return cls(_PoolConnections(obj), where=f"psycopg_pool {obj.name!r}", **common)
        if pg.has_class(obj, "psycopg", "AsyncConnection"):
            return cls(_OneConnection(obj), where="a psycopg connection", **common)
        raise ConfigurationError(
            "the postgresql backend wraps a psycopg AsyncConnection or a psycopg_pool AsyncConnectionPool, "
            f"not {type(obj).__qualname__}"
        )

    @staticmethod
    def _common_options(options: dict[str, Any]) -> dict[str, Any]:
        allow_replica = options.pop("allow_replica", False)
        fencing = options.pop("fencing", False)
        reject_unknown_options("postgresql", options)
        for name, value in (("allow_replica", allow_replica), ("fencing", fencing)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, not {value!r}")
        return {"allow_replica": allow_replica, "fencing": fencing}

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
    ) -> Grant | None:
        if ttl is not None:
            raise NotSupportedError(
                "the postgresql backend has no leases: a lock lives as long as its connection; drop ttl="
            )
        if transaction is not None and transaction is not False:
            return await self._acquire_in_transaction(name, lock_id, shared, timeout, on_wait, transaction)
        local = self._local
        local_token: int = local.acquire(lock_id, shared, 0.0, None)
        if not local_token:
            # Another thread or task of this process holds or waits for the key: queue behind it here.
            if timeout == 0:
                return None
            on_wait()
            on_wait = NO_WAIT_CALLBACK
            started = _monotonic()
            local_token = await atable_acquire(local, lock_id, shared, timeout, None)
            if not local_token:
                return None
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        try:
            grant = await self._acquire_on_server(name, lock_id, shared, timeout, on_wait, local_token)
        except BaseException:
            await atable_release(local, lock_id, local_token)
            raise
        if grant is None:
            await atable_release(local, lock_id, local_token)
        return grant

    async def _acquire_on_server(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        timeout: float | None,
        on_wait: Callable[[], None],
        local_token: int,
    ) -> Grant | None:
        source = self._source
        session = await source.get()
        asked = False  # has a statement that may take the lock been sent?
        try:
            if not session.checked:
                await self._check_connection(session)
            token, taken, pid = local_token, False, None
            asked = True
            if self.fencing:
                taken, fenced, pid = await self._try_fenced(session, lock_id, shared)
                if taken:
                    token = fenced
            elif pg.try_first(session.conn, timeout, on_wait):
                taken, pid = await session.run(sql.TRY_LOCK[shared], (lock_id,))
            if not taken and timeout != 0:
                on_wait()
                waits = sql.WAIT_LOCK[shared], sql.TIMED_WAIT_LOCK[shared]
                row = await self._wait(session, *waits, (lock_id,), timeout)
                if row is not None:
                    taken, pid = True, row[1]
                    if self.fencing:
                        (token,) = await session.run(sql.FENCING_NEXT, (lock_id,))
        except BaseException as exc:
            # Failed or interrupted, maybe just after the server granted it: leave nothing held.
            if asked or source.closes:
                await afinish(self._give_back(session, lock_id, shared, None))
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring the lock {name!r}", key=name) from exc
            raise
        if not taken:
            if session.holds == 0:
                await afinish(source.put(session))
            return None
        session.holds += 1
        return Grant(name, lock_id, shared, int(token), conn=session, pid=pid, data=local_token)

    async def _wait(
        self, session: _Session, statement: str, timed: str, params: Any, timeout: float | None
    ) -> Any:
        """Wait on the server up to ``timeout``; the wait's row, or None when 55P03 ended the wait.

        ``timed`` is ``statement`` with its lock_timeout in the same statement
        (sql.TIMED_WAIT_*), used when the connection is outside any transaction.
        """
        conn = session.conn
        try:
            if session.outside_transaction():
                # One round trip: the statement's implicit transaction takes the setting with it.
                return await session.run(timed, sql.timed_params(timeout, params))
            # Rolled back whatever happens: the lock_timeout goes with it, the session lock stays.
            async with conn.transaction(force_rollback=True):
                await conn.execute(sql.SET_LOCK_TIMEOUT, (sql.lock_timeout_setting(timeout),), prepare=True)
                return await _fetch(await conn.execute(statement, params, prepare=True), False)
        except Exception as exc:
            if sql.is_not_acquired(exc):
                return None
            raise

    async def _try_fenced(self, session: _Session, lock_id: int, shared: bool) -> tuple[bool, int, int]:
        """One fenced try: (taken, its token or 0, server PID)."""
        if not session.conn.autocommit:
            raise ConfigurationError(
                "fencing=True needs connections in autocommit mode (the counter must commit on its own)"
            )
        if not self._fencing_ready:
            await self._create_fencing_table(session)
        taken, token, pid = await session.run(sql.TRY_LOCK_FENCED[shared], {"id": lock_id})
        return bool(taken), int(token or 0), pid

    async def _create_fencing_table(self, session: _Session) -> None:
        try:
            await session.conn.execute(sql.FENCING_DDL)
        except Exception as exc:
            # Two sessions racing CREATE TABLE IF NOT EXISTS: the loser sees a unique violation.
            if sql.sqlstate(exc) != sql.UNIQUE_VIOLATION:
                raise
        self._fencing_ready = True

    async def _check_connection(self, session: _Session) -> None:
        """Once per connection: refuse a standby unless allowed."""
        standby = session.conn.info.parameter_status(
            "in_hot_standby"
        )  # reported by PostgreSQL >= 14, no round trip
        if standby is None:
            in_recovery = bool((await session.run(sql.CONNECTION_INFO))[1])
        else:
            in_recovery = standby == "on"
        sql.check_not_replica(in_recovery, self.allow_replica, self._where)
        session.checked = True

    async def _give_back(self, session: _Session, lock_id: int, shared: bool, pid: int | None) -> bool:
        """Make sure ``session`` no longer holds ``lock_id`` for one acquisition (failed, interrupted, aborted).

        The surest means first: a connection that holds nothing else is closed
        (that frees whatever it held). Otherwise (other locks on it, or the
        user's own connection) just this key is given back: checked against the
        server PID it was taken on when known (never another client's lock
        behind a pooler), else only if this session holds it. True when the
        connection was closed. Never raises.
        """
        source = self._source
        if not (session.holds == 0 and source.closes):
            try:
                if session.alive() and session.conn.info.transaction_status != pg.INERROR:
                    if pid is None:
                        await session.run(sql.UNDO_MANY, sql.many_params([lock_id], [shared]))
                    else:
                        await session.run(sql.UNLOCK_CHECKED[shared], (pid, lock_id))
                    return False
            except Exception:  # best effort; the original error is what the caller needs
                pass
            if not source.closes:
                return False  # the user's connection: never closed by kannuki
        # Nothing else on it, or just this key could not be given back: end the session.
        await source.discard(session)
        return True

    async def release(self, grant: Grant) -> None:
        if grant.data is _XACT:  # a transaction-level lock: it ends with its transaction
            return
        session: _Session | None = grant.conn
        if session is None or session.inherited():
            raise LockLostError(
                f"the lock {grant.name!r} is not held here (already released, or this is a forked child)",
                key=grant.name,
            )
        grant.conn = None  # from here on the unlock below, or its undo, frees it: abort has nothing left
        await afinish(self._unlock(grant, session))  # sync: self._unlock(grant, session)

    async def _unlock(self, grant: Grant, session: _Session) -> None:
        name, source = grant.name, self._source
        session.holds -= 1
        try:
            try:
                # Checked against the PID at acquire BEFORE unlocking: on another server backend nothing is unlocked.
                released, pid = await session.run(
                    sql.UNLOCK_CHECKED[grant.shared], (grant.pid, grant.lock_id)
                )
            except BaseException as exc:
                # Failed or interrupted: the lock may still be held on this session; end that.
                await self._give_back(session, grant.lock_id, grant.shared, grant.pid)
                if not (isinstance(exc, Exception) and pg.is_driver_error(exc)):
                    raise
                if source.closes or not session.alive():
                    raise LockLostError(
                        f"the lock {name!r} was lost: its connection failed ({exc}); the server has freed it",
                        key=name,
                    ) from exc
                raise sql.translate_error(exc, f"releasing the lock {name!r}", key=name) from exc
            if released is None:  # the statement ran on another server backend than the lock
                await source.discard(session)
                raise LockLostError(
                    f"the lock {name!r} was taken on server PID {grant.pid} but released on PID {pid}: "
                    "a pooler in transaction mode (PgBouncer) moved the session; use transaction-level "
                    "locks behind such a pooler, or connect directly",
                    key=name,
                )
            if not released:
                await source.discard(session)
                raise LockLostError(
                    f"the lock {name!r} was no longer held by its connection at release", key=name
                )
            if session.holds == 0:
                await source.put(session)
        finally:
            await atable_release(self._local, grant.lock_id, grant.data)

    async def abort(self, grant: Grant) -> None:
        session: _Session | None = grant.conn
        if grant.data is _XACT or session is None or session.inherited():
            return  # nothing pinned (released, or ends with its transaction), or the parent's
        grant.conn = None
        session.holds -= 1
        try:
            await afinish(self._give_back(session, grant.lock_id, grant.shared, grant.pid))
        except Exception:  # never raises: the hold is gone either way
            pass
        finally:
            await atable_release(self._local, grant.lock_id, grant.data)

    async def check(self, grant: Grant) -> bool:
        """One round trip at most: does the session the lock was taken on (same server PID) still hold it?

        Without a round trip: True while a shared connection is busy (another
        lock's wait runs on it) or in a failed transaction of its user; the
        connection is alive and nothing says the lock is gone.
        """
        if grant.data is _XACT:
            conn = grant.conn
            return not conn.closed and not conn.broken  # it lives as long as its transaction
        session: _Session | None = grant.conn
        if session is None or session.inherited() or not session.alive():
            return False
        if session.conn.info.transaction_status in (pg.ACTIVE, pg.INERROR):
            return True
        try:
            pid, held = await session.run(
                sql.CHECK_HELD, sql.check_params(grant.lock_id, grant.shared), apart=True
            )
        except Exception as exc:
            if not session.alive():
                return False
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"checking the lock {grant.name!r}", key=grant.name) from exc
            raise
        return bool(held) and pid == grant.pid

    # -- transaction-level locks -------------------------------------------

    async def _acquire_in_transaction(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        timeout: float | None,
        on_wait: Callable[[], None],
        transaction: Any,
    ) -> Grant | None:
        # Interrupted at the try, a lock already granted stays until the caller's transaction ends,
        # which the interruption (an exception through its transaction block) rolls back.
        conn = self._transaction_connection(transaction)
        try:
            (taken,) = await _fetch(
                await conn.execute(sql.TRY_XACT_LOCK[shared], (lock_id,), prepare=True), False
            )
            if not taken and timeout != 0:
                on_wait()
                # Inside a savepoint: on 55P03 (or an interrupt) it rolls back, taking the setting and any
                # lock with it; on success the caller's own lock_timeout is put back before it is released.
                (before,) = await _fetch(await conn.execute(sql.SHOW_LOCK_TIMEOUT), False)
                try:
                    async with conn.transaction():
                        await conn.execute(sql.SET_LOCK_TIMEOUT, (sql.lock_timeout_setting(timeout),))
                        await conn.execute(sql.WAIT_XACT_LOCK[shared], (lock_id,))
                        await conn.execute(sql.SET_LOCK_TIMEOUT, (before,))
                    taken = True
                except Exception as exc:
                    if not sql.is_not_acquired(exc):
                        raise
        except Exception as exc:
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring the transaction lock {name!r}", key=name) from exc
            raise
        if not taken:
            return None
        return Grant(name, lock_id, shared, next(_XACT_TOKENS), conn=conn, data=_XACT)

    def _transaction_connection(self, transaction: Any) -> Any:
        if transaction is True:
            if not isinstance(self._source, _OneConnection):
                raise ConfigurationError(
                    "transaction=True needs a locker made from your psycopg connection "
                    "(AsyncLocker(conn)); otherwise pass the connection itself: transaction=conn"
                )
            conn = self._source.session.conn
        elif pg.has_class(transaction, "psycopg", "AsyncConnection"):
            conn = transaction
        else:
            raise ConfigurationError(
                "transaction must be True or a psycopg AsyncConnection inside a transaction, "
                f"not {type(transaction).__qualname__}"
            )
        pg.check_transaction_status(conn, "async with conn.transaction():")
        if conn.info.transaction_status == pg.ACTIVE:
            raise ConfigurationError("the connection given as transaction= is busy running another query")
        return conn

    # -- several keys -------------------------------------------------------

    async def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[Grant] | None:
        """All or none: the local queue key by key, then one statement on one connection."""
        if ttl is not None:
            raise NotSupportedError(
                "the postgresql backend has no leases: a lock lives as long as its connection; drop ttl="
            )
        if not requests:
            return []
        if self.fencing or not self._source.closes:
            # One shared connection (or per-key counters): the generic path, key by key.
            return await super().acquire_many(requests, timeout=timeout, on_wait=on_wait)
        deadline = None if timeout is None else _monotonic() + timeout
        local = self._local
        local_tokens: list[int] = []
        grants: list[Grant] | None = None
        try:
            for request in requests:
                local_token: int = local.acquire(request.lock_id, request.shared, 0.0, None)
                if not local_token:
                    if timeout == 0:
                        return None
                    on_wait()
                    on_wait = NO_WAIT_CALLBACK
                    remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                    local_token = await atable_acquire(
                        local, request.lock_id, request.shared, remaining, None
                    )
                    if not local_token:
                        return None
                local_tokens.append(local_token)
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            grants = await self._acquire_many_on_server(requests, local_tokens, remaining, on_wait)
            return grants
        finally:
            if grants is None:  # not taken: hand the local queue on
                for request, local_token in zip(requests, local_tokens):
                    await atable_release(local, request.lock_id, local_token)

    async def _acquire_many_on_server(
        self,
        requests: Sequence[LockRequest],
        local_tokens: list[int],
        timeout: float | None,
        on_wait: Callable[[], None],
    ) -> list[Grant] | None:
        params = sql.many_params([r.lock_id for r in requests], [r.shared for r in requests])
        source = self._source
        session = await source.get()
        try:
            if not session.checked:
                await self._check_connection(session)
            # The session holds nothing yet, so TRY_MANY may give back everything on failure.
            taken, pid = False, None
            if pg.try_first(session.conn, timeout, on_wait):
                taken, _, pid = await session.run(sql.TRY_MANY, params)
            if not taken and timeout != 0:
                on_wait()
                row = await self._wait(session, sql.WAIT_MANY, sql.TIMED_WAIT_MANY, params, timeout)
                if row is None:
                    await session.run(sql.UNDO_MANY, params)
                else:
                    taken, pid = True, row[1]
        except BaseException as exc:
            await afinish(source.discard(session))  # closing it frees whatever it took
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring {len(requests)} locks") from exc
            raise
        if not taken:
            await afinish(source.put(session))
            return None
        session.holds += len(requests)
        return [
            Grant(
                request.name,
                request.lock_id,
                request.shared,
                local_token,
                conn=session,
                pid=pid,
                data=local_token,
            )
            for request, local_token in zip(requests, local_tokens)
        ]

    # -- inspection ---------------------------------------------------------

    async def _query(
        self, statement: str, params: Any = None, *, what: str = "reading pg_locks"
    ) -> list[Any]:
        source = self._source
        session = await source.get()
        try:
            rows: list[Any] = await session.run(statement, params, every=True)
        except BaseException as exc:
            await afinish(source.discard(session))
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, what) from exc
            raise
        if session.holds == 0:
            await afinish(source.put(session))
        return rows

    async def held(self, name: str, lock_id: int) -> bool:
        return bool((await self._query(sql.HELD, sql.split_lock_id(lock_id)))[0][0])

    async def holders(self, name: str, lock_id: int) -> list[Holder]:
        return [
            sql.holder_from_row(row, name)
            for row in await self._query(sql.HOLDERS, sql.split_lock_id(lock_id))
        ]

    async def list_held(self) -> list[Holder]:
        # The server knows IDs only: a lock is named by its ID (#<id>).
        return [sql.holder_from_row(row, None) for row in await self._query(sql.LIST_HELD)]

    async def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        """Free ``name`` whoever holds it: only by ending the holders' sessions (``terminate=True``).

        PostgreSQL unlocks a session lock only in the session that holds it, so
        without ``terminate`` this refuses (NotSupportedError naming each
        holder's PID and application) when someone holds it, and returns 0 when
        nobody does. With it, ``pg_terminate_backend`` ends every session
        holding the key (never the one asking) and waits for each to be gone;
        returns how many ended.
        """
        if not terminate:
            holders = await self.holders(name, lock_id)
            if not holders:
                return 0
            raise NotSupportedError(
                f"the lock {name!r} is held by {'; '.join(h.describe() for h in holders)}: PostgreSQL frees a "
                "session lock only in the session holding it. Pass terminate=True to end that session "
                "(pg_terminate_backend), which also rolls back its work and frees all its locks.",
                key=name,
                holder=holders[0],
            )
        source = self._source
        session = await source.get()
        try:
            if session.conn.info.server_version >= 140000:
                params: tuple[Any, ...] = (sql.TERMINATE_WAIT_MS, *sql.split_lock_id(lock_id))
                (ended,) = await session.run(sql.TERMINATE_HOLDERS, params, apart=True)
            else:
                (ended,) = await session.run(
                    sql.TERMINATE_HOLDERS_PRE14, sql.split_lock_id(lock_id), apart=True
                )
        except BaseException as exc:
            await afinish(source.discard(session))
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"ending the sessions holding {name!r}", key=name) from exc
            raise
        if session.holds == 0:
            await afinish(source.put(session))
        return int(ended)

    # -- life cycle ---------------------------------------------------------

    def open_connections(self) -> int:
        """How many connections this backend has opened so far (URL lockers; 0 otherwise)."""
        opened: int = getattr(self._source, "opened", 0)
        return opened

    async def aclose(self) -> None:
        # The hold owner has released every hold: what is left is idle.
        await self._source.aclose()

    def after_fork_in_child(self) -> None:
        # The parent's connections are the parent's: drop them without a word on their sockets.
        # (The local table is emptied by kannuki.backends._tables.)
        self._source.forget()

    def describe(self) -> str:
        return self._where
