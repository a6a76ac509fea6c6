"""``postgresql://``: PostgreSQL advisory locks through psycopg 3.

Session locks (``pg_advisory_lock`` and friends) on the 64-bit lock ID, so any
SQL client running ``pg_advisory_lock(hashtextextended('<full name>', 0))``
contends with kannuki. Transaction-level locks (``pg_advisory_xact_lock``) on
the caller's connection inside its transaction.

Connections. Every held session lock pins one connection until it is
released (``lock_many`` pins one connection for all its keys). A pinned
connection never goes back to a pool; once released it is reused. So a
process opens about as many connections as it holds locks at once, plus at
most one per key it is waiting for: within one process, waiters for the same
key queue on an in-process lock table first, and only the head of that queue
waits on the server.

Waits happen on the server, under a ``lock_timeout`` set with
``set_config(..., true)``, so the setting never outlives the wait. On an
autocommit connection outside a transaction (kannuki's own connections) the
setting and the wait are one statement, its own implicit transaction: one round
trip, like a bare ``pg_advisory_lock``. Inside the caller's transaction they run
in a savepoint that is always rolled back: session advisory locks survive the
rollback, the setting does not. A blocking acquire tries first only when someone
listens for the ``waiting`` event (the try is what tells a wait is coming).
Only SQLSTATE 55P03 means "not acquired"; 40P01 is DeadlockError; anything
else is BackendError. Ctrl-C during a wait: psycopg cancels the query on the
server, and the connection is discarded.
"""

from __future__ import annotations

import itertools
import time
import weakref
from typing import Any, Callable, Sequence

from kannuki._core import LockTable
from kannuki.backends import _pg_common as pg
from kannuki.backends import _pg_sql as sql
from kannuki.backends._tables import object_table, process_table
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, LockRequest, reject_unknown_options
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["PostgresBackend"]

# Connections a forked child inherited. Kept referenced forever: letting them be
# collected is harmless to the parent (psycopg's PGconn skips PQfinish in another
# process), but holding them avoids ResourceWarnings from their finalizers.
_ORPHANED_IN_CHILD: list[Any] = []


class _Session:
    """One connection and what this backend knows about it."""

    __slots__ = ("conn", "holds", "_cursor", "_private")

    def __init__(self, conn: Any, *, private: bool) -> None:
        self.conn = conn
        self.holds = 0  # locks pinned on this connection now
        # A private connection is used by one acquisition at a time: one cursor
        # is reused. A shared one (the user's own connection) gets a cursor per call.
        self._private = private
        self._cursor = conn.cursor() if private else None

    def run(self, statement: str, params: Any = None) -> Any:
        """Execute one statement (prepared on the server after a few uses) and return its row."""
        conn = self.conn
        if not conn.autocommit and conn.info.transaction_status == pg.IDLE:
            # A non-autocommit connection of the user: don't leave it idle in transaction.
            with conn.transaction():
                return conn.execute(statement, params, prepare=True).fetchone()
        cursor = self._cursor
        if cursor is None:
            return conn.execute(statement, params, prepare=True).fetchone()
        cursor.execute(statement, params, prepare=True)
        return cursor.fetchone()

    def outside_transaction(self) -> bool:
        """Autocommit with no transaction open: one statement is its own transaction."""
        return pg.outside_transaction(self.conn)

    def usable(self) -> bool:
        """Open, not broken, and not inside a transaction: fit to be reused."""
        conn = self.conn
        return not conn.closed and not conn.broken and conn.info.transaction_status == pg.IDLE


class _OwnConnections:
    """Connections this backend opens from a URL: a small list of idle ones, reused."""

    closes = True

    def __init__(self, url: str, *, pool_size: int, connect_timeout: float, application_name: str) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.idle: list[_Session] = []
        self.opened = 0  # connections opened so far (for tests and stats)

    def local_table(self) -> LockTable:
        """The in-process queue of every locker of this process on this URL."""
        return process_table(("postgresql", "url", self.url))

    def get(self) -> _Session:
        idle = self.idle
        while idle:
            try:
                session = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if session.usable():
                return session
            self.discard(session)
        return self._connect()

    def _connect(self) -> _Session:
        psycopg = pg.psycopg()
        kwargs = pg.connect_kwargs(psycopg, self.url, self.connect_timeout, self.application_name)
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise BackendError(f"could not connect to PostgreSQL at {pg.safe_url(self.url)}: {exc}") from exc
        self.opened += 1
        return _Session(conn, private=True)

    def put(self, session: _Session) -> None:
        if len(self.idle) < self.pool_size and session.usable():
            self.idle.append(session)
        else:
            self.discard(session)

    def discard(self, session: _Session) -> None:
        try:
            session.conn.close()
        except Exception:  # closing a broken connection: nothing left to save
            pass

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for session in idle:
            self.discard(session)

    def forget(self) -> None:
        _ORPHANED_IN_CHILD.extend(session.conn for session in self.idle)
        self.idle = []


class _PoolConnections:
    """A user's psycopg_pool ConnectionPool: a connection is borrowed per acquisition."""

    closes = True

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.sessions: "weakref.WeakKeyDictionary[Any, _Session]" = weakref.WeakKeyDictionary()

    def local_table(self) -> LockTable:
        """The in-process queue of every locker of this process on this pool."""
        return object_table("postgresql", self.pool)

    def get(self) -> _Session:
        try:
            conn = self.pool.getconn()
        except Exception as exc:
            raise BackendError(f"could not get a connection from the pool {self.pool.name!r}: {exc}") from exc
        session = self.sessions.get(conn)
        if session is None:
            session = self.sessions[conn] = _Session(conn, private=True)
        return session

    def put(self, session: _Session) -> None:
        self.pool.putconn(session.conn)

    def discard(self, session: _Session) -> None:
        try:
            session.conn.close()
        except Exception:
            pass
        self.pool.putconn(session.conn)  # the pool sees it closed and replaces it

    def close(self) -> None:
        """The pool is the user's: they close it."""

    def forget(self) -> None:
        self.sessions = weakref.WeakKeyDictionary()


class _OneConnection:
    """A user's own psycopg Connection: every lock of the locker lives on it."""

    closes = False

    def __init__(self, conn: Any) -> None:
        self.session = _Session(conn, private=False)

    def local_table(self) -> LockTable:
        """The in-process queue of every locker on this connection (one server session: it cannot tell them apart)."""
        return object_table("postgresql", self.session.conn)

    def get(self) -> _Session:
        return self.session

    def put(self, session: _Session) -> None:
        pass

    def discard(self, session: _Session) -> None:
        pass  # the user's connection: never closed by kannuki

    def close(self) -> None:
        pass

    def forget(self) -> None:
        pass


class _Pin:
    """What one held session lock pinned: its connection, the server PID, the local-queue token."""

    __slots__ = ("name", "session", "pid", "local_token", "shared")

    def __init__(self, name: str, session: _Session, pid: int, local_token: int, shared: bool) -> None:
        self.name = name
        self.session = session
        self.pid = pid
        self.local_token = local_token
        self.shared = shared


class PostgresBackend(Backend):
    """Advisory locks in PostgreSQL through psycopg 3.

    Options (keywords of ``Locker``): ``pool_size`` (idle connections kept for
    reuse, default 4), ``connect_timeout`` (seconds, default 5),
    ``application_name`` (default "kannuki"), ``allow_replica`` (default False:
    a standby is refused), ``fencing`` (default False: fencing tokens from a
    server-side counter table instead of the in-process one).
    """

    scheme = "postgresql"
    supports_shared = True
    supports_transaction = True

    def __init__(
        self,
        source: Any,
        *,
        where: str,
        allow_replica: bool = False,
        fencing: bool = False,
    ) -> None:
        self._source = source
        self._where = where
        self.allow_replica = allow_replica
        self.fencing = fencing
        # Waiters of this process queue here first, so one connection per key waits on the server.
        self._local = source.local_table()
        self._pins: dict[tuple[int, int], _Pin] = {}
        self._xact_tokens = itertools.count(1)
        self._checked: "weakref.WeakSet[Any]" = weakref.WeakSet()  # connections that passed the replica check
        self._fencing_ready = False

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "PostgresBackend":
        connect = pg.pop_connect_options(options)
        common = cls._common_options(options)
        url = pg.checked_url(url, connect)
        return cls(_OwnConnections(url, **connect), where=pg.safe_url(url), **common)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        return pg.has_class(obj, "psycopg", "Connection") or pg.has_class(obj, "psycopg_pool", "ConnectionPool")

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> "PostgresBackend":
        common = cls._common_options(options)
        if pg.has_class(obj, "psycopg_pool", "ConnectionPool"):
            return cls(_PoolConnections(obj), where=f"psycopg_pool {obj.name!r}", **common)
        return cls(_OneConnection(obj), where="a psycopg connection", **common)

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

    def acquire(
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
        if transaction is not None and transaction is not False:
            return self._acquire_in_transaction(name, lock_id, shared, timeout, on_wait, transaction)
        local = self._local
        local_token: int = local.acquire(lock_id, shared, 0.0, None)
        if not local_token:
            # Another thread of this process holds or waits for the key: queue behind it here.
            if timeout == 0:
                return 0
            on_wait()
            on_wait = NO_WAIT_CALLBACK
            if timeout is None:
                local_token = local.acquire(lock_id, shared, None, None)
            else:
                started = _monotonic()
                local_token = local.acquire(lock_id, shared, timeout, None)
                timeout = max(0.0, timeout - (_monotonic() - started))
            if not local_token:
                return 0
        try:
            token = self._acquire_on_server(name, lock_id, shared, timeout, on_wait, local_token)
        except BaseException:
            local.release(lock_id, local_token)
            raise
        if not token:
            local.release(lock_id, local_token)
        return token

    def _acquire_on_server(
        self, name: str, lock_id: int, shared: bool, timeout: float | None, on_wait: Callable[[], None], local_token: int
    ) -> int:
        source = self._source
        session = source.get()
        try:
            if session.conn not in self._checked:
                self._check_connection(session)
            token = local_token
            if self.fencing:
                taken, token, pid = self._try_fenced(session, lock_id, shared)
            elif pg.try_first(session.conn, timeout, on_wait):
                taken, pid = session.run(sql.TRY_LOCK[shared], (lock_id,))
            else:
                taken = False
            if not taken and timeout != 0:
                on_wait()
                waits = sql.WAIT_LOCK[shared], sql.TIMED_WAIT_LOCK[shared]
                row = self._wait(session, *waits, (lock_id,), timeout)
                if row is not None:
                    taken, pid = True, row[1]
                    if self.fencing:
                        token = session.run(sql.FENCING_NEXT, (lock_id,))[0]
        except BaseException as exc:
            self._abandon(session, lock_id, shared)
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring the lock {name!r}", key=name) from exc
            raise
        if not taken:
            if session.holds == 0:
                source.put(session)
            return 0
        session.holds += 1
        self._pins[lock_id, token] = _Pin(name, session, pid, local_token, shared)
        return int(token)

    def _wait(self, session: _Session, statement: str, timed: str, params: Any, timeout: float | None) -> Any:
        """Wait on the server up to ``timeout``; the wait's row, or None when 55P03 ended the wait.

        ``timed`` is ``statement`` with its lock_timeout in the same statement
        (sql.TIMED_WAIT_*), used when the connection is outside any transaction.
        """
        conn = session.conn
        try:
            if session.outside_transaction():
                # One round trip: the statement's implicit transaction takes the setting with it.
                return session.run(timed, sql.timed_params(timeout, params))
            # Rolled back whatever happens: the lock_timeout goes with it, the session lock stays.
            with conn.transaction(force_rollback=True):
                conn.execute(sql.SET_LOCK_TIMEOUT, (sql.lock_timeout_setting(timeout),), prepare=True)
                return conn.execute(statement, params, prepare=True).fetchone()
        except Exception as exc:
            if sql.is_not_acquired(exc):
                return None
            raise

    def _try_fenced(self, session: _Session, lock_id: int, shared: bool) -> tuple[bool, int | None, int]:
        conn = session.conn
        if not conn.autocommit:
            raise ConfigurationError(
                "fencing=True needs connections in autocommit mode (the counter must commit on its own)"
            )
        if not self._fencing_ready:
            self._create_fencing_table(session)
        taken, token, pid = session.run(sql.TRY_LOCK_FENCED[shared], {"id": lock_id})
        return bool(taken), token, pid

    def _create_fencing_table(self, session: _Session) -> None:
        try:
            session.conn.execute(sql.FENCING_DDL)
        except Exception as exc:
            # Two sessions racing CREATE TABLE IF NOT EXISTS: the loser sees a unique violation.
            if sql.sqlstate(exc) != sql.UNIQUE_VIOLATION:
                raise
        self._fencing_ready = True

    def _check_connection(self, session: _Session) -> None:
        """Once per connection: refuse a standby unless allowed."""
        conn = session.conn
        standby = conn.info.parameter_status("in_hot_standby")  # reported by PostgreSQL >= 14, no round trip
        if standby is None:
            in_recovery = bool(session.run(sql.CONNECTION_INFO)[1])
        else:
            in_recovery = standby == "on"
        sql.check_not_replica(in_recovery, self.allow_replica, self._where)
        self._checked.add(conn)

    def _abandon(self, session: _Session, lock_id: int, shared: bool) -> None:
        """After a failure or an interrupt mid-acquire: make sure the key is not left held."""
        if session.holds == 0 and self._source.closes:
            self._source.discard(session)  # closing the connection frees whatever it held
            return
        # A connection with other locks on it (or the user's own): give back just this key, if taken.
        try:
            if session.usable():
                session.run(sql.UNDO_MANY, sql.many_params([lock_id], [shared]))
        except Exception:  # best effort; the original error is what the caller needs
            pass

    def release(self, name: str, lock_id: int, token: int) -> None:
        pin = self._pins.pop((lock_id, token), None)
        if pin is None:
            if token < 0:  # a transaction-level lock: it ends with its transaction
                return
            raise LockLostError(
                f"the lock {name!r} is not held by this locker (it was closed, or this is a forked child)", key=name
            )
        session = pin.session
        source = self._source
        try:
            try:
                released, pid = session.run(sql.UNLOCK_CHECKED[pin.shared], (pin.pid, lock_id))
            except Exception as exc:
                if not pg.is_driver_error(exc):
                    raise
                session.holds -= 1
                source.discard(session)
                raise LockLostError(
                    f"the lock {name!r} was lost: its connection failed ({exc}); the server has freed it", key=name
                ) from exc
            session.holds -= 1
            if released is None:  # the statement ran on another server backend than the lock
                source.discard(session)
                raise LockLostError(
                    f"the lock {name!r} was taken on server PID {pin.pid} but released on PID {pid}: "
                    "a pooler in transaction mode (PgBouncer) moved the session; use transaction-level "
                    "locks behind such a pooler, or connect directly",
                    key=name,
                )
            if not released:
                source.discard(session)
                raise LockLostError(f"the lock {name!r} was no longer held by its connection at release", key=name)
            if session.holds == 0:
                source.put(session)
        finally:
            self._local.release(lock_id, pin.local_token)

    # -- transaction-level locks -------------------------------------------

    def _acquire_in_transaction(
        self, name: str, lock_id: int, shared: bool, timeout: float | None, on_wait: Callable[[], None], transaction: Any
    ) -> int:
        conn = self._transaction_connection(transaction)
        try:
            taken = conn.execute(sql.TRY_XACT_LOCK[shared], (lock_id,), prepare=True).fetchone()[0]
            if not taken and timeout != 0:
                on_wait()
                # Inside a savepoint: on 55P03 it rolls back (taking the setting with it);
                # on success the caller's own lock_timeout is put back before it is released.
                before = conn.execute(sql.SHOW_LOCK_TIMEOUT).fetchone()[0]
                try:
                    with conn.transaction():
                        conn.execute(sql.SET_LOCK_TIMEOUT, (sql.lock_timeout_setting(timeout),))
                        conn.execute(sql.WAIT_XACT_LOCK[shared], (lock_id,))
                        conn.execute(sql.SET_LOCK_TIMEOUT, (before,))
                    taken = True
                except Exception as exc:
                    if not sql.is_not_acquired(exc):
                        raise
        except Exception as exc:
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring the transaction lock {name!r}", key=name) from exc
            raise
        # Negative tokens mark transaction-level locks: release() has nothing to do for them.
        return -next(self._xact_tokens) if taken else 0

    def _transaction_connection(self, transaction: Any) -> Any:
        if transaction is True:
            if not isinstance(self._source, _OneConnection):
                raise ConfigurationError(
                    "transaction=True needs a Locker made from your psycopg connection "
                    "(Locker(conn)); otherwise pass the connection itself: transaction=conn"
                )
            conn = self._source.session.conn
        elif pg.has_class(transaction, "psycopg", "Connection"):
            conn = transaction
        else:
            raise ConfigurationError(
                f"transaction must be True or a psycopg Connection inside a transaction, not {type(transaction).__qualname__}"
            )
        pg.check_transaction_status(conn, "with conn.transaction():")
        if conn.info.transaction_status == pg.ACTIVE:
            raise ConfigurationError("the connection given as transaction= is busy running another query")
        return conn

    # -- several keys -------------------------------------------------------

    def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[int] | None:
        """All or none: the local queue key by key, then one statement on one connection."""
        if not requests:
            return []
        if self.fencing or not self._source.closes:
            # One shared connection (or per-key counters): the generic path, key by key.
            return super().acquire_many(requests, timeout=timeout, on_wait=on_wait)
        deadline = None if timeout is None else _monotonic() + timeout
        local = self._local
        local_tokens: list[int] = []
        pinned = False
        try:
            for request in requests:
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                local_token = local.acquire(request.lock_id, request.shared, remaining, None)
                if not local_token:
                    return None
                local_tokens.append(local_token)
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            taken = self._acquire_many_on_server(requests, local_tokens, remaining, on_wait)
            pinned = taken is not None
            return taken
        finally:
            if not pinned:  # not taken: hand the local queue on
                for request, local_token in zip(requests, local_tokens):
                    local.release(request.lock_id, local_token)

    def _acquire_many_on_server(
        self,
        requests: Sequence[LockRequest],
        local_tokens: list[int],
        timeout: float | None,
        on_wait: Callable[[], None],
    ) -> list[int] | None:
        params = sql.many_params([r.lock_id for r in requests], [r.shared for r in requests])
        session = self._source.get()
        try:
            if session.conn not in self._checked:
                self._check_connection(session)
            # The session holds nothing yet, so TRY_MANY may give back everything on failure.
            taken = False
            if pg.try_first(session.conn, timeout, on_wait):
                taken, _, pid = session.run(sql.TRY_MANY, params)
            if not taken and timeout != 0:
                on_wait()
                row = self._wait(session, sql.WAIT_MANY, sql.TIMED_WAIT_MANY, params, timeout)
                if row is None:
                    session.run(sql.UNDO_MANY, params)
                else:
                    taken, pid = True, row[1]
        except BaseException as exc:
            self._source.discard(session)
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"acquiring {len(requests)} locks") from exc
            raise
        if not taken:
            self._source.put(session)
            return None
        for request, local_token in zip(requests, local_tokens):
            session.holds += 1
            self._pins[request.lock_id, local_token] = _Pin(request.name, session, pid, local_token, request.shared)
        return local_tokens

    # -- inspection ---------------------------------------------------------

    def _query(self, statement: str, params: Any = None) -> list[Any]:
        session = self._source.get()
        try:
            rows = session.conn.execute(statement, params).fetchall()
        except Exception as exc:
            self._source.discard(session)
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, "reading pg_locks") from exc
            raise
        if session.holds == 0:
            self._source.put(session)
        return rows  # type: ignore[no-any-return]

    def held(self, name: str, lock_id: int) -> bool:
        return bool(self._query(sql.HELD, sql.split_lock_id(lock_id))[0][0])

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        return [sql.holder_from_row(row, name) for row in self._query(sql.HOLDERS, sql.split_lock_id(lock_id))]

    def list_held(self) -> list[Holder]:
        # The server knows IDs only; names are known for the locks this backend holds.
        names = {lock_id: pin.name for (lock_id, _token), pin in list(self._pins.items())}
        return [sql.holder_from_row(row, names.get(row[0])) for row in self._query(sql.LIST_HELD)]

    # -- life cycle ---------------------------------------------------------

    def open_connections(self) -> int:
        """How many connections this backend has opened so far (URL lockers; 0 otherwise)."""
        return getattr(self._source, "opened", 0)

    def close(self) -> None:
        pins, self._pins = self._pins, {}
        for (lock_id, _token), pin in pins.items():
            self._local.release(lock_id, pin.local_token)
        if not self._source.closes and pins:
            # The user's connection stays open: give back what kannuki took on it.
            params = sql.many_params([lock_id for lock_id, _ in pins], [pin.shared for pin in pins.values()])
            try:
                self._source.get().run(sql.UNDO_MANY, params)
            except Exception:  # closing anyway; the locks end with the user's connection
                pass
        for session in {id(pin.session): pin.session for pin in pins.values()}.values():
            if self._source.closes:
                self._source.discard(session)
        self._source.close()

    def after_fork_in_child(self) -> None:
        # The parent's connections are the parent's: drop them without a word on their sockets.
        _ORPHANED_IN_CHILD.extend(pin.session.conn for pin in self._pins.values())
        self._pins = {}
        self._source.forget()  # the local table is emptied by kannuki.backends._tables

    def describe(self) -> str:
        return self._where


_monotonic = time.monotonic
