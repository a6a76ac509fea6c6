# WARNING: generated from src/kannuki/backends/postgres_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
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
first, and only the head of that queue waits on the server. Transaction-level
locks queue the same way on the table of their connection (one server session:
its advisory locks are re-entrant, so the server cannot tell two of its lockers
apart), which is also the table of a locker wrapping that connection.

Fencing tokens come from a server sequence (``kannuki_fencing_seq``, created
when missing), drawn by the lock statement itself once the lock is taken: one
round trip, strictly increasing per key across processes and hosts, and never
rolled back by the caller's ROLLBACK. Where the role may not create or use it
(or on a standby), the tokens come from the in-process table instead,
``tokens_fenced`` turns False and one warning says why.

Poolers. The server PID is recorded at acquire and checked by the release
statement itself before it unlocks: behind a pooler in transaction mode
(PgBouncer) a release that lands on another server backend unlocks nothing
there and is LockLostError; the lock, still held on the backend it was taken
on, is then unlocked there if the next statement lands on it, or that server
session is ended. A connection's first lock statement tells whether a pooler
sits in between (the PID it returns differs from the one the connection was
given at login, which a pooler makes up): until then, and from then on behind a
pooler, kannuki prepares no statement on it, as psycopg advises for poolers.

The locker may also wrap a user's psycopg_pool pool (a connection is borrowed
per acquisition and given back, once, only once it holds nothing) or a user's
single connection, shared by every lock of the locker. That connection is one
server session that other threads or tasks may use meanwhile, so a wait on it
never holds it: it polls with ``pg_try_advisory_lock`` (capped backoff), one
short statement at a time. A connection outside autocommit mode is used by one
thread or task at a time, as psycopg's transactions are.

Waits happen on the server, under a ``lock_timeout`` set with
``set_config(..., true)``, so the setting never outlives the wait (a wait
longer than its maximum, about 24.8 days, goes in slices). On an autocommit
connection outside a transaction (kannuki's own connections) the setting and
the wait are one statement, its own implicit transaction: one round trip, like
a bare ``pg_advisory_lock``. Inside the caller's transaction they run in a
savepoint that is always rolled back: session advisory locks survive the
rollback, the setting does not. A blocking acquire tries first only when someone
listens for the ``waiting`` event (the try is what tells a wait is coming).
Only SQLSTATE 55P03 means "not acquired"; 40P01 is DeadlockError; anything
else is BackendError.

Standbys. A lock taken on a hot standby, or a reading of its pg_locks,
excludes or sees nobody on the primary: session and transaction-level locks,
``held``, ``holders``, ``list_held`` and ``force_release`` are refused there
unless ``allow_replica=True``.

Statements and deadlines. On the connections kannuki owns or borrows (not a
user's single shared connection, which stays with psycopg's cursors) every
statement goes through libpq itself (psycopg's ``pgconn``, see
:mod:`kannuki.backends._pg_wire`): one round trip, no cursor; the try, the
timed wait and the release are prepared once a connection is known to reach
the server directly (kannuki's own connections only), with binary parameters
and results. kannuki waits for each answer on the socket itself, up to the
statement's own server-side wait (a lock wait's timeout) plus the connect
timeout: a server that stops answering (its processes stopped, a network gone
silent while the kernel still acknowledges) gets a cancel request (libpq's
non-blocking cancel, libpq >= 17, given at most a second) and the connection
is closed, so a timed acquire ends within its timeout plus the connect
timeout and a release within the connect timeout (LockLostError: the server
frees the lock once it reads the close). No thread is left waiting. kannuki's
own connections also set TCP keepalives and ``tcp_user_timeout`` unless the
URL sets them.

Interruptions. Ctrl-C (sync) or a cancelled task (async) during a server
wait: the statement is cancelled on the server and its answer read (or the
connection closed). The lock may have been granted just before, so an
interrupted or failed acquire closes its connection (or, on a connection that
holds other locks, gives back just that key); an interrupted release does the
same. In async code the release and that undo run to their end even when the
task is cancelled meanwhile.

The backend keeps no record of its holds: everything a release needs (the
connection, the server PID, the in-process queue token) is in the Grant. In a
forked child the parent's connections are forgotten, never closed.
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from kannuki._compat import finish, sleep, socket_wait, table_acquire, table_release
from kannuki._core import Backoff, LockTable
from kannuki.backends import _frameworks
from kannuki.backends import _pg_common as pg
from kannuki.backends import _pg_sql as sql
from kannuki.backends import _pg_wire as wire
from kannuki.backends._tables import object_table, process_table
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, LockRequest, reject_unknown_options
from kannuki.backends._watch import peek, postgres_farewell
from kannuki.backends.base import Backend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["PostgresBackend"]

# Connections a forked child inherited. Kept referenced forever: letting them be
# collected is harmless to the parent (psycopg's PGconn skips PQfinish in another
# process), but holding them avoids ResourceWarnings from their finalizers.
_ORPHANED_IN_CHILD: list[Any] = []

# A wait on a connection shared with other threads or tasks polls: first and longest pause (seconds).
POLL_FIRST = 0.002
POLL_CAP = 0.05

# What a failed statement on the fencing sequence means: look at it again before the next lock.
_FENCING_ERRORS = (sql.UNDEFINED_TABLE, sql.INSUFFICIENT_PRIVILEGE, sql.READ_ONLY_TRANSACTION)
# Why CREATE SEQUENCE fails for good: no privilege, a read-only session, no schema to create in.
_CANNOT_CREATE = (sql.INSUFFICIENT_PRIVILEGE, sql.READ_ONLY_TRANSACTION, sql.INVALID_SCHEMA_NAME)

# Whether a user's connection reaches the server directly (no pooler in between), once known:
# kannuki prepares its statements there only then (transaction-level locks; sessions keep their own).
_DIRECT: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

_monotonic = time.monotonic

ASYNCHRONOUS = False
# Seconds a statement on a private connection may go unanswered beyond its own wait on the server,
# unless the locker's connect_timeout says otherwise; and the most a cancel request may take then.
GRACE = 5.0
CANCEL_WAIT = 1.0


def _fetch(cursor: Any, every: bool) -> Any:
    if every:
        return cursor.fetchall()
    return cursor.fetchone()


def _taken(value: Any) -> bool:
    """The first column of a try: True (plain), a token (fenced); False or NULL when not taken."""
    return value is not None and value is not False


def _is_direct(conn: Any, pid: Any) -> bool:
    """Does ``conn`` reach the server itself? A pooler hands out a made-up backend PID at login."""
    return bool(pid == conn.info.backend_pid)


class _Xact:
    """``Grant.data`` of a transaction-level lock: its entry in the connection's in-process table."""

    __slots__ = ("table", "token")

    def __init__(self, table: LockTable, token: int) -> None:
        self.table = table
        self.token = token


class _Session:
    """One connection and what this backend knows about it (``Grant.conn`` of a session lock)."""

    __slots__ = (
        "_cursor",
        "budget",
        "checked",
        "conn",
        "direct",
        "grace",
        "holds",
        "out",
        "prepared",
        "prepares",
        "process",
        "wire",
    )

    def __init__(self, conn: Any, *, private: bool, prepares: bool = False, grace: float = GRACE) -> None:
        self.conn = conn
        self.holds = 0  # locks pinned on this connection now
        self.checked = False  # passed the standby check
        # True: no pooler in between (statements are prepared); False: a pooler; None: not known yet.
        self.direct: bool | None = None
        self.out = False  # borrowed from its source (given back at most once per borrowing)
        self.process = os.getpid()  # a forked child never touches the parent's connection
        # A private connection is used by one acquisition at a time: its statements go through
        # libpq itself, each bounded by a deadline. A shared one (the user's own connection) goes
        # through psycopg's cursors, a cursor per call.
        self._cursor = conn.cursor() if private else None
        # Named prepared statements only on kannuki's own connections: a user's pool may reset
        # its connections (DISCARD ALL) behind kannuki's back, and keeps them after kannuki.
        self.prepares = prepares
        self.prepared: set[bytes] = set()  # the names prepared on this session
        self.wire = private
        # Seconds a statement may go unanswered beyond its own server-side wait (the connect timeout);
        # the deadline comes that much less the cancel request's wait, which follows it.
        self.grace = grace
        self.budget = grace - self._cancel_wait()

    def run(
        self,
        statement: str,
        params: Any = None,
        *,
        every: bool = False,
        apart: bool = False,
        waits: float | None = 0.0,
    ) -> Any:
        """Execute one statement and return its row (every row if ``every``).

        Prepared on the server only once the connection is known to reach it
        directly. ``apart``: on a cursor of its own, for a call that may
        overlap the holder's own use of the connection (``check`` from another
        thread). ``waits``: how long the statement may wait on the server by
        design (a lock wait; None: no limit); on a private connection outside
        a transaction an answer that takes ``grace`` seconds longer ends the
        connection (a server that stopped answering) and raises
        psycopg.OperationalError.
        """
        conn = self.conn
        if self.wire and conn.autocommit and conn.pgconn.transaction_status == pg.IDLE:
            limit = None if waits is None else waits + self.budget
            return self._exchange(wire.statement(statement), params, every, limit, True)
        prepare = self.direct is True
        if not conn.autocommit and conn.info.transaction_status == pg.IDLE:
            # A non-autocommit connection of the user: don't leave it idle in transaction.
            with conn.transaction():
                return _fetch(conn.execute(statement, params, prepare=prepare), every)
        cursor = self._cursor
        if cursor is None or apart:
            return _fetch(conn.execute(statement, params, prepare=prepare), every)
        cursor.execute(statement, params, prepare=prepare)
        return _fetch(cursor, every)

    def _exchange(
        self, statement: wire.Statement, params: Any, every: bool, limit: float | None, retry: bool
    ) -> Any:
        """One statement straight through libpq: one round trip (two the first time a statement is prepared)."""
        conn = self.conn
        pgconn = conn.pgconn
        values = statement.params(params)
        name = statement.name
        with conn.lock:  # what psycopg's own calls take: one statement at a time on the connection
            deadline = None if limit is None else _monotonic() + limit
            if name is not None and self.direct is True and self.prepares:
                if name not in self.prepared:
                    pgconn.send_prepare(name, statement.text, statement.types)
                    prepared = self._answer(pgconn, deadline)
                    if prepared.status == wire.FATAL_ERROR:
                        raise self._error(prepared)
                    self.prepared.add(name)
                pgconn.send_query_prepared(name, values, statement.formats, statement.result_format)
            else:
                name = None
                pgconn.send_query_params(
                    statement.text, values, statement.types, statement.formats, statement.result_format
                )
            result = self._answer(pgconn, deadline)
        if result.status == wire.FATAL_ERROR:
            error = self._error(result)
            if name is not None and retry and sql.sqlstate(error) == wire.INVALID_STATEMENT_NAME:
                self.prepared.clear()  # the session lost its prepared statements (DISCARD ALL): again
                return self._exchange(statement, params, every, limit, False)
            raise error
        if every:
            return statement.rows(result)
        return statement.row(result)

    def _answer(self, pgconn: Any, deadline: float | None) -> Any:
        """The result of the statement just sent (the error result, if any), read by ``deadline``.

        No answer by then: the server stopped answering (a stopped process, a
        silent network whose kernel still acknowledges). The statement is
        cancelled where libpq can without blocking and the connection closed
        (the server frees its locks when it reads the close); raises
        psycopg.OperationalError. Interrupted (Ctrl-C, a cancelled task): the
        statement is cancelled and its answer read, so the connection is idle
        again, or else closed.
        """
        result: Any = None
        try:
            fd = pgconn.socket
            while pgconn.flush():  # a large statement the socket took only part of
                if not socket_wait(fd, deadline, True):
                    break
            else:
                while socket_wait(fd, deadline):
                    pgconn.consume_input()
                    while not pgconn.is_busy():
                        got = pgconn.get_result()
                        if got is None:
                            return result
                        if result is None or got.status == wire.FATAL_ERROR:
                            result = got
        except BaseException:
            if self.alive() and pgconn.transaction_status == pg.ACTIVE:
                self._settle()
            raise
        self._end(cancel=True)
        raise pg.psycopg().OperationalError(
            f"PostgreSQL did not answer in time (more than {self.grace:g}s beyond the statement's own "
            "wait): kannuki closed the connection; the server frees what it held once it reads the close"
        )

    def _error(self, result: Any) -> Exception:
        """psycopg's exception for an error result (its SQLSTATE class: LockNotAvailable, ...)."""
        error: Exception = pg.psycopg().errors.error_from_result(result, encoding=self.conn.info.encoding)
        return error

    def _settle(self) -> None:
        """After an interrupt mid-statement: cancel it and read its answer (bounded), else close the connection."""
        pgconn = self.conn.pgconn
        try:
            self._cancel()
            self._answer(pgconn, _monotonic() + self.grace)
        except Exception:  # no answer (the connection is closed then), or a broken one: nothing to save
            self._end(cancel=False)

    def _cancel(self) -> None:
        """Ask the server to cancel the statement in flight, without ever blocking past a short wait."""
        if pg.psycopg().capabilities.has_cancel_safe():  # libpq >= 17: a cancel with a timeout
            try:
                self.conn.cancel_safe(timeout=self._cancel_wait())
            except Exception:  # the server did not take it: closing the connection ends the statement
                pass

    def _cancel_wait(self) -> float:
        return min(CANCEL_WAIT, self.grace / 4)

    def _end(self, *, cancel: bool) -> None:
        """Close the connection after a statement got no answer (cancelled first if ``cancel``)."""
        if cancel:
            self._cancel()
        try:
            self.conn.close()
        except Exception:  # closing a connection that has failed: nothing left to save
            pass

    def learn(self, pid: Any) -> None:
        """Take note, from the server PID a statement returned, of whether a pooler sits in between."""
        if self.direct is None and pid is not None:
            self.direct = _is_direct(self.conn, pid)

    def outside_transaction(self) -> bool:
        """Autocommit with no transaction open: one statement is its own transaction."""
        return pg.outside_transaction(self.conn)

    def alive(self) -> bool:
        """Open and not broken (its session, and the locks on it, may still exist)."""
        conn = self.conn
        return not conn.closed and not conn.broken

    def usable(self) -> bool:
        """Open, not broken, and not inside a transaction: fit to be reused."""
        return self.alive() and self.conn.pgconn.transaction_status == pg.IDLE

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

    def get(self) -> _Session:
        idle = self.idle
        while idle:
            try:
                session = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if session.usable():
                session.out = True
                return session
            self._close(session)
        session = self._connect()
        session.out = True
        return session

    def _connect(self) -> _Session:
        psycopg = pg.psycopg()
        kwargs = pg.connect_kwargs(psycopg, self.url, self.connect_timeout, self.application_name)
        try:
            # psycopg honours connect_timeout itself, sync and async.
            conn = psycopg.Connection.connect(self.url, **kwargs)
        except (psycopg.Error, OSError) as exc:
            raise BackendError(f"could not connect to PostgreSQL at {pg.safe_url(self.url)}: {exc}") from exc
        self.opened += 1
        self.live.add(conn)
        return _Session(conn, private=True, prepares=True, grace=self.connect_timeout)

    def put(self, session: _Session) -> None:
        if not session.out:  # given back already (every key of a lock_many shares it)
            return
        session.out = False
        if len(self.idle) < self.pool_size and session.usable():
            self.idle.append(session)
        else:
            self._close(session)

    def discard(self, session: _Session) -> None:
        if session.out:
            session.out = False
            self._close(session)

    def _close(self, session: _Session) -> None:
        try:
            session.conn.close()
        except Exception:  # closing a broken connection: nothing left to save
            pass

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for session in idle:
            self._close(session)

    def forget(self) -> None:
        _ORPHANED_IN_CHILD.extend(self.live)
        self.idle = []
        self.live = weakref.WeakSet()


class _PoolConnections:
    """A user's psycopg_pool ConnectionPool: a connection is borrowed per acquisition."""

    closes = True

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
        self.inherited = False

    def local_table(self) -> LockTable:
        """The in-process queue of every locker of this process on this pool."""
        return object_table("postgresql", self.pool)

    def get(self) -> _Session:
        if self.inherited:
            raise BackendError(
                f"this locker wraps the psycopg_pool {self.pool.name!r} of the parent process: after fork() "
                "the child must make its own pool (and a locker of it)"
            )
        try:
            conn = self.pool.getconn()
        except Exception as exc:
            if pg.is_driver_error(exc):
                raise BackendError(
                    f"could not get a connection from psycopg_pool {self.pool.name!r}: {exc}"
                ) from exc
            raise
        session = self.sessions.get(conn)
        if session is None:
            session = self.sessions[conn] = _Session(conn, private=True)
        session.out = True
        return session

    def put(self, session: _Session) -> None:
        # Once per borrowing: each putconn of a connection the pool has back already would
        # count it out once more, and the pool would open more than max_size.
        if session.out:
            session.out = False
            self.pool.putconn(session.conn)

    def discard(self, session: _Session) -> None:
        if not session.out:
            return
        session.out = False
        try:
            session.conn.close()
        except Exception:
            pass
        try:
            self.pool.putconn(session.conn)  # the pool sees it closed and replaces it
        except Exception:  # the pool was closed meanwhile: it has let go of the connection anyway
            pass

    def close(self) -> None:
        """The pool is the user's: they close it."""

    def forget(self) -> None:
        # Its connections (and its worker threads) are the parent's: this child must not use it.
        self.sessions = weakref.WeakKeyDictionary()
        self.inherited = True


class _EngineConnections:
    """A user's SQLAlchemy Engine (its pool): a connection is checked out per acquisition.

    While checked out it runs in autocommit, as kannuki's own connections do
    (a wait is one statement). It is given back (``close()``: the engine's pool
    resets it) only once it holds nothing, with its autocommit setting as it
    came; a connection that failed or was interrupted is invalidated instead,
    which closes it. ``orm_session``: the Session the locker was made of,
    whose transaction a transaction-level lock joins.
    """

    closes = True

    def __init__(self, engine: Any, orm_session: Any = None) -> None:
        self.engine = engine
        self.orm_session = orm_session
        self.sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
        # session -> (the engine's connection it came in, its driver connection's autocommit before)
        self.checked_out: dict[_Session, tuple[Any, bool]] = {}
        self.inherited = False

    def local_table(self) -> LockTable:
        """The in-process queue of every locker of this process on this engine."""
        return object_table("postgresql", self.engine)

    def get(self) -> _Session:
        if self.inherited:
            raise BackendError(
                "this locker wraps a SQLAlchemy engine of the parent process: after fork() the child must "
                "dispose of the engine's pool (engine.dispose(close=False)) and make a new locker"
            )
        try:
            handle = self.engine.connect()
        except Exception as exc:
            raise BackendError(
                f"could not check a connection out of {_frameworks.describe(self.engine)}: {exc}"
            ) from exc
        try:
            conn = _frameworks.driver_connection(handle)
            before = bool(conn.autocommit)
            if not before:
                conn.autocommit = True
        except BaseException as exc:
            self._invalidate(handle)
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise BackendError(
                    f"could not set up a connection of {_frameworks.describe(self.engine)}: {exc}"
                ) from exc
            raise
        session = self.sessions.get(conn)
        if session is None:
            session = self.sessions[conn] = _Session(conn, private=True)
        self.checked_out[session] = (handle, before)
        session.out = True
        return session

    def put(self, session: _Session) -> None:
        entry = self.checked_out.pop(session, None)
        session.out = False
        if entry is None:  # given back already (every key of a lock_many shares it)
            return
        handle, before = entry
        if not before:
            try:
                session.conn.autocommit = False
            except BaseException as exc:  # not idle, broken or interrupted: not fit to go back as it came
                self._invalidate(handle)
                if not isinstance(exc, Exception):
                    raise
                return
        handle.close()

    def discard(self, session: _Session) -> None:
        entry = self.checked_out.pop(session, None)
        session.out = False
        if entry is not None:
            self._invalidate(entry[0])

    def _invalidate(self, handle: Any) -> None:
        """Close the driver connection (the pool replaces it), then give the engine its connection back."""
        try:
            handle.invalidate()
        except Exception:
            pass
        try:
            handle.close()
        except Exception:
            pass

    def transaction_connection(self) -> Any:
        """The psycopg connection of the ORM session's transaction (begun if it was not)."""
        if self.orm_session is None:
            raise ConfigurationError(
                "transaction=True needs a locker made from a connection or an ORM session; with an engine, "
                "pass the session or connection whose transaction it joins: transaction=session"
            )
        return _frameworks.driver_connection(self.orm_session.connection())

    def close(self) -> None:
        """The engine is the user's: they dispose of it."""

    def forget(self) -> None:
        # Its pool's connections are the parent's: this child must not use them.
        self.sessions = weakref.WeakKeyDictionary()
        self.checked_out = {}
        self.inherited = True


class _OneConnection:
    """A user's own psycopg Connection: every lock of the locker lives on it."""

    closes = False

    def __init__(self, conn: Any) -> None:
        self.session = _Session(conn, private=False)
        self.inherited = False

    def local_table(self) -> LockTable:
        """The in-process queue of every locker on this connection (one server session: it cannot tell them apart)."""
        return object_table("postgresql", self.session.conn)

    def get(self) -> _Session:
        if self.inherited:
            raise BackendError(
                "this locker wraps a psycopg connection of the parent process: after fork() "
                "the child must open its own connection (and make a locker of it)"
            )
        return self.session

    def put(self, session: _Session) -> None:
        pass

    def discard(self, session: _Session) -> None:
        pass  # the user's connection: never closed by kannuki

    def transaction_connection(self) -> Any:
        """Transaction-level locks of this locker join the transaction open on its connection."""
        return self.session.conn

    def close(self) -> None:
        pass

    def forget(self) -> None:
        self.inherited = True


class PostgresBackend(Backend):
    """Advisory locks in PostgreSQL through psycopg 3.

    Options (keywords of the locker): ``pool_size`` (idle connections kept for
    reuse, default 4), ``connect_timeout`` (seconds, default 5),
    ``application_name`` (default "kannuki"), ``allow_replica`` (default False:
    a standby is refused), ``fencing`` (default True: fencing tokens come from
    the server sequence ``kannuki_fencing_seq``, strictly increasing per key
    across processes and hosts; False: from the in-process table only, with no
    sequence to create).

    ``tokens_fenced`` is True while the tokens of this backend come from the
    server sequence; False with ``fencing=False``, and once the sequence was
    found unusable (the role may not create or use it, a standby, a read-only
    session), which one warning explains. The tokens (``Grant.token``) are
    then the in-process table's: > 0 and increasing within this process only.
    """

    scheme = "postgresql"
    supports_shared = True
    supports_transaction = True
    watches = True  # gone(): an idle session's socket shows a terminate or a shutdown with no round trip

    def __init__(self, source: Any, *, where: str, allow_replica: bool = False, fencing: bool = True) -> None:
        self._source = source
        self._where = where
        self.allow_replica = allow_replica
        self.fencing = fencing
        # Waiters of this process queue here first, so one connection per key waits on the server.
        self._local = source.local_table()
        # The fencing sequence: True usable, False not (tokens are local), None not looked at yet.
        self._fence: bool | None = None if fencing else False
        # Connections given as transaction= that passed the standby check (servers before 14 only).
        self._primaries: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def tokens_fenced(self) -> bool:
        """True while fencing tokens come from the server sequence (strictly increasing across processes)."""
        return self._fence is not False

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        connect = pg.pop_connect_options(options)
        common = cls._common_options(options)
        url = pg.checked_url(url, connect)
        return cls(_OwnConnections(url, **connect), where=pg.safe_url(url), **common)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        return pg.has_class(obj, "psycopg", "Connection") or pg.has_class(
            obj, "psycopg_pool", "ConnectionPool"
        )

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> PostgresBackend:
        common = cls._common_options(options)
        framework = _frameworks.kind(obj)
        if framework is not None:  # SQLAlchemy or Django: lock through the psycopg connection underneath
            where = _frameworks.describe(obj)
            orm_session = None
            if framework == _frameworks.ORM_SESSION:
                orm_session, obj = obj, _frameworks.session_bind(obj)
            if _frameworks.kind(obj) == _frameworks.ENGINE:
                return cls(_EngineConnections(obj, orm_session), where=where, **common)
            obj = _frameworks.driver_connection(obj)
        if pg.has_class(obj, "psycopg_pool", "ConnectionPool"):
            return cls(_PoolConnections(obj), where=f"psycopg_pool {obj.name!r}", **common)
        if pg.has_class(obj, "psycopg", "Connection"):
            return cls(_OneConnection(obj), where="a psycopg connection", **common)
        raise ConfigurationError(
            "the postgresql backend wraps a psycopg Connection or a psycopg_pool ConnectionPool, "
            f"not {type(obj).__qualname__}"
        )

    @staticmethod
    def _common_options(options: dict[str, Any]) -> dict[str, Any]:
        allow_replica = options.pop("allow_replica", False)
        fencing = options.pop("fencing", True)
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
    ) -> Grant | None:
        if ttl is not None:
            raise NotSupportedError(
                "the postgresql backend has no leases: a lock lives as long as its connection; drop ttl="
            )
        if transaction is not None and transaction is not False:
            return self._acquire_in_transaction(name, lock_id, shared, timeout, on_wait, transaction)
        local = self._local
        local_token: int = local.acquire(lock_id, shared, 0.0, None)
        if not local_token:
            # Another thread or task of this process holds or waits for the key: queue behind it here.
            if timeout == 0:
                return None
            on_wait()
            on_wait = NO_WAIT_CALLBACK
            started = _monotonic()
            local_token = table_acquire(local, lock_id, shared, timeout, None)
            if not local_token:
                return None
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        try:
            grant = self._acquire_on_server(name, lock_id, shared, timeout, on_wait, local_token)
        except BaseException:
            table_release(local, lock_id, local_token)
            raise
        if grant is None:
            table_release(local, lock_id, local_token)
        return grant

    def _acquire_on_server(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        timeout: float | None,
        on_wait: Callable[[], None],
        local_token: int,
    ) -> Grant | None:
        source = self._source
        session = source.get()
        asked = False  # has a statement that may take the lock been sent?
        try:
            if not session.checked:
                self._check_connection(session)
            fenced = self._fence
            if fenced is None:
                fenced = self._ready_fencing(session)
            value: Any = None
            pid, params = None, (lock_id,)
            # The user's connection, shared with other threads or tasks: a wait on it polls.
            polls = not source.closes
            asked = True
            if polls or pg.try_first(session.conn, timeout, on_wait):
                value, pid = session.run(sql.TRY[fenced][shared], params)
            taken = _taken(value)
            if not taken and timeout != 0:
                on_wait()
                if polls:
                    row = self._poll(session, sql.TRY[fenced][shared], params, timeout)
                else:
                    row = self._wait(
                        session, sql.WAIT[fenced][shared], sql.TIMED_WAIT[fenced][shared], params, timeout
                    )
                if row is not None:
                    taken, (value, pid) = True, row
            session.learn(pid)
            # (In here: a warning made an error by the caller's filters must not leave the lock held.)
            token = self._token(value, local_token) if fenced and taken else local_token
        except BaseException as exc:
            # Failed or interrupted, maybe just after the server granted it: leave nothing held.
            if asked or source.closes:
                finish(self._give_back(session, lock_id, shared, None))
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                self._fencing_failed(exc)
                raise sql.translate_error(exc, f"acquiring the lock {name!r}", key=name) from exc
            raise
        if not taken:
            if session.holds == 0:
                finish(source.put(session))
            return None
        session.holds += 1
        return Grant(name, lock_id, shared, token, conn=session, pid=pid, data=local_token)

    def _wait(self, session: _Session, statement: str, timed: str, params: Any, timeout: float | None) -> Any:
        """Wait on the server up to ``timeout``; the wait's row, or None when 55P03 ended the wait.

        ``timed`` is ``statement`` with its lock_timeout in the same statement
        (sql.TIMED_WAIT_*), used when the connection is outside any transaction.
        A wait longer than ``lock_timeout`` can be goes in slices, each a wait of its own.
        """
        conn = session.conn
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            part = sql.wait_slice(timeout)
            try:
                if session.outside_transaction():
                    # One round trip: the statement's implicit transaction takes the setting with it.
                    return session.run(timed, sql.timed_params(part, params), waits=part)
                # Rolled back whatever happens: the lock_timeout goes with it, the session lock stays.
                prepare = session.direct is True
                with conn.transaction(force_rollback=True):
                    setting = (sql.lock_timeout_setting(part),)
                    conn.execute(sql.SET_LOCK_TIMEOUT, setting, prepare=prepare)
                    return _fetch(conn.execute(statement, params, prepare=prepare), False)
            except Exception as exc:
                if not sql.is_not_acquired(exc):
                    raise
            if deadline is None or part == timeout:
                return None
            timeout = max(0.0, deadline - _monotonic())

    def _poll(self, session: _Session, statement: str, params: Any, timeout: float | None) -> Any:
        """Try again and again (``statement`` is a try) up to ``timeout``: its row once taken, else None.

        For a connection that other threads or tasks use too: each try holds
        it for one short statement, never for the whole wait.
        """
        deadline = None if timeout is None else _monotonic() + timeout
        backoff = Backoff("exponential", POLL_FIRST, POLL_CAP, "full")
        while True:
            remaining = None if deadline is None else deadline - _monotonic()
            if remaining is not None and remaining <= 0:
                return None
            sleep(backoff.next_delay(remaining))
            row = session.run(statement, params)
            if _taken(row[0]):
                return row

    # -- fencing tokens -----------------------------------------------------

    def _ready_fencing(self, session: _Session) -> bool:
        """Once per backend: can this role draw from the fencing sequence (created when missing)?

        True when it can. Otherwise the tokens become local (``tokens_fenced``
        False) and one warning says why. A server error here never fails the
        acquire; a lost connection does (BackendError).
        """
        try:
            usable, exists, why_not = session.run(sql.FENCING_CHECK)
            if not exists and why_not is None:
                self._create_sequence(session)
                usable, exists, why_not = session.run(sql.FENCING_CHECK)
        except Exception as exc:
            # Only what says "this role, here, cannot": anything else (a failed transaction, a lost
            # connection) fails this acquire and leaves the question open for the next one.
            if not (pg.is_driver_error(exc) and sql.sqlstate(exc) in _CANNOT_CREATE):
                raise
            reason = f"it could not be created ({exc})"
            usable = False
        else:
            usable = bool(usable) and why_not is None
            if why_not == "standby":
                reason = "the server is a read-only standby, which cannot advance a sequence"
            elif why_not is not None:
                reason = "the session is read-only (transaction_read_only is on)"
            elif not usable:
                reason = "this role may not use it (GRANT USAGE ON SEQUENCE it to the role)"
        if usable:
            self._fence = True
            return True
        self._unfenced(reason)
        return False

    def _token(self, drawn: Any, local_token: int) -> int:
        """The token of a fenced acquisition: the sequence's value, or (0: a read-only transaction) the local one."""
        token = int(drawn)
        if token:
            return token
        self._unfenced("the session is read-only (transaction_read_only is on)")
        return local_token

    def _unfenced(self, reason: str) -> None:
        """From now on the tokens are the in-process ones; the first to find out says why, once."""
        if self._fence is not False:
            self._fence = False
            warnings.warn(
                f"kannuki: fencing tokens on {self._where} are not strictly increasing across processes: "
                f"they need the server sequence {sql.FENCING_SEQUENCE}, and {reason}. Create it once as a role "
                f"that may (CREATE SEQUENCE {sql.FENCING_SEQUENCE}; GRANT USAGE ON SEQUENCE "
                f"{sql.FENCING_SEQUENCE} TO <role>), or pass fencing=False to go without.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _create_sequence(self, session: _Session) -> None:
        conn = session.conn
        try:
            if pg.outside_transaction(conn):
                conn.execute(sql.FENCING_DDL, prepare=False)
            else:
                # Its own transaction on an idle non-autocommit connection, a savepoint inside the
                # caller's: a failure here never aborts the caller's transaction.
                with conn.transaction():
                    conn.execute(sql.FENCING_DDL, prepare=False)
        except Exception as exc:
            # Two sessions racing CREATE SEQUENCE IF NOT EXISTS: the loser sees one of these.
            if sql.sqlstate(exc) not in (sql.UNIQUE_VIOLATION, sql.DUPLICATE_TABLE):
                raise

    def _fencing_failed(self, exc: BaseException) -> None:
        """A lock statement failed on the sequence (dropped, privilege revoked): look at it again next time."""
        if self._fence is True and sql.sqlstate(exc) in _FENCING_ERRORS:
            self._fence = None

    # -- standbys -----------------------------------------------------------

    def _check_connection(self, session: _Session) -> None:
        """Once per connection: refuse a standby unless allowed."""
        standby = session.conn.info.parameter_status(
            "in_hot_standby"
        )  # reported by PostgreSQL >= 14, no round trip
        if standby is None:
            in_recovery = bool((session.run(sql.CONNECTION_INFO))[1])
        else:
            in_recovery = standby == "on"
        sql.check_not_replica(in_recovery, self.allow_replica, self._where)
        session.checked = True

    def _check_primary(self, conn: Any) -> None:
        """The standby check for a connection given as ``transaction=`` (no round trip on PostgreSQL >= 14)."""
        if self.allow_replica:
            return
        standby = conn.info.parameter_status("in_hot_standby")
        if standby is None:
            if conn in self._primaries:
                return
            (in_recovery,) = _fetch(conn.execute(sql.IN_RECOVERY, prepare=False), False)
            sql.check_not_replica(bool(in_recovery), False, "the connection given as transaction=")
            self._primaries.add(conn)
        else:
            sql.check_not_replica(standby == "on", False, "the connection given as transaction=")

    # -- release ------------------------------------------------------------

    def _give_back(self, session: _Session, lock_id: int, shared: bool, pid: int | None) -> bool:
        """Make sure ``session`` no longer holds ``lock_id`` for one acquisition (failed, interrupted, aborted).

        The key is unlocked first, so it is free the moment this returns (a
        closed connection frees its locks only once the server has seen the
        close, some time later): checked against the server PID it was taken
        on when known (never another client's lock behind a pooler; when the
        statement lands on another backend, the lock is freed where it was
        taken), else only if this session holds it. Then a connection of
        kannuki's that holds nothing else is closed anyway, the surest end
        after an interruption (a late cancel request cannot hit its next user);
        so is one where the unlock failed. The user's own connection is never
        closed. True when the connection was closed. Never raises.
        """
        source = self._source
        alone = session.holds == 0 and source.closes
        given_back = False
        try:
            if session.alive() and session.conn.info.transaction_status != pg.INERROR:
                if pid is None:
                    session.run(sql.UNDO_MANY, sql.many_params([lock_id], [shared]))
                else:
                    unlocked, _ = session.run(sql.UNLOCK_CHECKED[shared], (pid, lock_id))
                    if unlocked is None:  # moved by a pooler: free it on the backend it was taken on
                        self._free_stranded(session, lock_id, shared, pid)
                        alone = source.closes  # and don't keep a connection that moves
                given_back = True
        except Exception:  # best effort; the original error is what the caller needs
            pass
        finally:  # a second interruption meanwhile included: the connection is not left holding the key
            closing = source.closes and (alone or not given_back)
            if closing:
                source.discard(session)
        return closing

    def _free_stranded(self, session: _Session, lock_id: int, shared: bool, pid: int) -> str:
        """Free a lock left on server PID ``pid`` after a pooler moved ``session`` away; what happened, in words.

        Never raises: the words say what could not be done.
        """
        try:
            waits = session.conn.info.server_version >= 140000
            unlocked, ended, _ = session.run(
                sql.FREE_STRANDED[waits][shared],
                sql.stranded_params(pid, lock_id, shared),
                waits=sql.TERMINATE_WAIT_MS / 1000 if waits else 0.0,
            )
        except Exception as exc:
            return f"it could not be freed there ({exc}): it stays held until that server session ends"
        if unlocked:
            return "it was unlocked there by a second statement that landed on that backend"
        if ended:
            return f"kannuki ended server session {pid} (pg_terminate_backend) to free it"
        return "that server session no longer holds it"

    def release(self, grant: Grant) -> None:
        data = grant.data
        if isinstance(data, _Xact):  # a transaction-level lock: it ends with its transaction
            table_release(data.table, grant.lock_id, data.token)
            return
        session: _Session | None = grant.conn
        if session is None or session.inherited():
            raise LockLostError(
                f"the lock {grant.name!r} is not held here (already released, or this is a forked child)",
                key=grant.name,
            )
        grant.conn = None  # from here on the unlock below, or its undo, frees it: abort has nothing left
        # Run to its end even when the task is cancelled meanwhile: the hold owner, the one caller,
        # awaits this whole release under finish (a second shield here would cost two loop turns).
        self._unlock(grant, session)

    def _unlock(self, grant: Grant, session: _Session) -> None:
        name, source = grant.name, self._source
        session.holds -= 1
        try:
            try:
                # Checked against the PID at acquire BEFORE unlocking: on another server backend nothing is unlocked.
                released, pid = session.run(sql.UNLOCK_CHECKED[grant.shared], (grant.pid, grant.lock_id))
            except BaseException as exc:
                # Failed or interrupted: the lock may still be held on this session; end that.
                self._give_back(session, grant.lock_id, grant.shared, grant.pid)
                if not (isinstance(exc, Exception) and pg.is_driver_error(exc)):
                    raise
                if source.closes or not session.alive():
                    raise LockLostError(
                        f"the lock {name!r} was lost: its connection failed ({exc}); the server has freed it",
                        key=name,
                    ) from exc
                raise sql.translate_error(exc, f"releasing the lock {name!r}", key=name) from exc
            if released is None:  # the statement ran on another server backend than the lock
                freed = self._free_stranded(session, grant.lock_id, grant.shared, grant.pid or 0)
                source.discard(session)
                raise LockLostError(
                    f"the lock {name!r} was taken on server PID {grant.pid} but released on PID {pid}: "
                    f"a pooler in transaction mode (PgBouncer) moved the session, so other clients shared "
                    f"the backend holding it; {freed}. Use transaction-level locks behind such a pooler, "
                    "or connect directly",
                    key=name,
                )
            if not released:
                source.discard(session)
                raise LockLostError(
                    f"the lock {name!r} was no longer held by its connection at release", key=name
                )
            if session.holds == 0:
                source.put(session)
        finally:
            table_release(self._local, grant.lock_id, grant.data)

    def abort(self, grant: Grant) -> None:
        data = grant.data
        if isinstance(data, _Xact):  # ends with its transaction: only the in-process entry to free
            table_release(data.table, grant.lock_id, data.token)
            return
        session: _Session | None = grant.conn
        if session is None or session.inherited():
            return  # nothing pinned (released), or the parent's
        grant.conn = None
        session.holds -= 1
        try:
            finish(self._give_back(session, grant.lock_id, grant.shared, grant.pid))
        except Exception:  # never raises: the hold is gone either way
            pass
        finally:
            table_release(self._local, grant.lock_id, grant.data)

    def gone(self, grant: Grant) -> str | None:
        """A terminated session (pg_terminate_backend, an idle timeout, a shutdown), seen on its socket.

        The server's last words on a session it ends are an ErrorResponse ("E", FATAL) and
        then the close; on a healthy idle session it sends nothing but, at most, a notice or
        a notification. Transaction-level locks live on the caller's busy connection: not
        watched (they end with the transaction).
        """
        if isinstance(grant.data, _Xact):
            return None
        session: _Session | None = grant.conn
        if session is None or session.inherited():
            return None
        conn = session.conn
        if conn.closed or conn.broken:
            return f"the connection holding the lock (server pid {grant.pid}) was closed"
        if conn.lock.locked() or conn.info.transaction_status != pg.IDLE:
            return None  # a statement is in flight: its own answer will tell
        data = peek(conn.fileno())
        if data is None:
            return None
        if not data:
            return f"the server closed the session (pid {grant.pid}) holding the lock"
        if postgres_farewell(data):
            return f"the server ended the session (pid {grant.pid}) holding the lock: terminated, a timeout or a shutdown"
        return None  # a notice, a notification, or the answer to a statement just sent: its reader will see

    def check(self, grant: Grant) -> bool:
        """One round trip at most: does the session the lock was taken on (same server PID) still hold it?

        Without a round trip: True while a shared connection is busy (another
        lock's wait runs on it) or in a failed transaction of its user; the
        connection is alive and nothing says the lock is gone.
        """
        if isinstance(grant.data, _Xact):
            conn = grant.conn
            return not conn.closed and not conn.broken  # it lives as long as its transaction
        session: _Session | None = grant.conn
        if session is None or session.inherited() or not session.alive():
            return False
        if session.conn.info.transaction_status in (pg.ACTIVE, pg.INERROR):
            return True
        try:
            pid, held = session.run(sql.CHECK_HELD, sql.check_params(grant.lock_id, grant.shared), apart=True)
        except Exception as exc:
            if not session.alive():
                return False
            if pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"checking the lock {grant.name!r}", key=grant.name) from exc
            raise
        return bool(held) and pid == grant.pid

    # -- transaction-level locks -------------------------------------------

    def _acquire_in_transaction(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        timeout: float | None,
        on_wait: Callable[[], None],
        transaction: Any,
    ) -> Grant | None:
        conn = self._transaction_connection(transaction)
        # One server session: its own advisory locks never exclude each other, so its lockers
        # (this one, other lockers given it, a locker wrapping it) queue on its in-process table.
        table = object_table("postgresql", conn)
        local_token: int = table.acquire(lock_id, shared, 0.0, None)
        if not local_token:
            if timeout == 0:
                return None
            on_wait()
            on_wait = NO_WAIT_CALLBACK
            started = _monotonic()
            local_token = table_acquire(table, lock_id, shared, timeout, None)
            if not local_token:
                return None
            if timeout is not None:
                timeout = max(0.0, timeout - (_monotonic() - started))
        try:
            token = self._xact_on_server(conn, name, lock_id, shared, timeout, on_wait, local_token)
        except BaseException:
            table_release(table, lock_id, local_token)
            raise
        if token is None:
            table_release(table, lock_id, local_token)
            return None
        return Grant(name, lock_id, shared, token, conn=conn, data=_Xact(table, local_token))

    def _xact_on_server(
        self,
        conn: Any,
        name: str,
        lock_id: int,
        shared: bool,
        timeout: float | None,
        on_wait: Callable[[], None],
        local_token: int,
    ) -> int | None:
        """The transaction-level lock on the server: its token, or None when not taken in ``timeout``."""
        # Interrupted at the try, a lock already granted stays until the caller's transaction ends,
        # which the interruption (an exception through its transaction block) rolls back.
        try:
            self._check_primary(conn)
            fenced = self._fence
            if fenced is None:
                fenced = self._ready_fencing(_Session(conn, private=False))
            # Prepared only where no pooler is in between (psycopg's own advice for poolers).
            prepare = _DIRECT.get(conn) is True
            value, pid = _fetch(
                conn.execute(sql.TRY_XACT[fenced][shared], (lock_id,), prepare=prepare), False
            )
            if conn not in _DIRECT:
                _DIRECT[conn] = _is_direct(conn, pid)
            taken = _taken(value)
            if not taken and timeout != 0:
                on_wait()
                # Inside a savepoint: on 55P03 (or an interrupt) it rolls back, taking the setting and any
                # lock with it; on success the caller's own lock_timeout is put back before it is released.
                (before,) = _fetch(conn.execute(sql.SHOW_LOCK_TIMEOUT, prepare=prepare), False)
                deadline = None if timeout is None else _monotonic() + timeout
                while True:
                    part = sql.wait_slice(timeout)
                    try:
                        with conn.transaction():
                            setting = (sql.lock_timeout_setting(part),)
                            conn.execute(sql.SET_LOCK_TIMEOUT, setting, prepare=prepare)
                            value, _ = _fetch(
                                conn.execute(sql.WAIT_XACT[fenced][shared], (lock_id,), prepare=prepare),
                                False,
                            )
                            conn.execute(sql.SET_LOCK_TIMEOUT, (before,), prepare=prepare)
                        taken = True
                        break
                    except Exception as exc:
                        if not sql.is_not_acquired(exc):
                            raise
                    if deadline is None or part == timeout:
                        break
                    timeout = max(0.0, deadline - _monotonic())
        except Exception as exc:
            if pg.is_driver_error(exc):
                self._fencing_failed(exc)
                raise sql.translate_error(exc, f"acquiring the transaction lock {name!r}", key=name) from exc
            raise
        if not taken:
            return None
        return self._token(value, local_token) if fenced else local_token

    def _transaction_connection(self, transaction: Any) -> Any:
        if transaction is True:
            if not isinstance(self._source, (_OneConnection, _EngineConnections)):
                raise ConfigurationError(
                    "transaction=True needs a locker made from your psycopg connection "
                    "(Locker(conn)); otherwise pass the connection itself: transaction=conn"
                )
            conn = self._source.transaction_connection()
        elif pg.has_class(transaction, "psycopg", "Connection"):
            conn = transaction
        elif _frameworks.kind(transaction) in (_frameworks.ONE_CONNECTION, _frameworks.ORM_SESSION):
            _frameworks.store_of(transaction, asynchronous=ASYNCHRONOUS)  # the right dialect and side
            if _frameworks.kind(transaction) == _frameworks.ORM_SESSION:
                transaction = transaction.connection()  # its transaction's connection (begun if not)
            conn = _frameworks.driver_connection(transaction)
        else:
            raise ConfigurationError(
                "transaction must be True, or a psycopg Connection, a SQLAlchemy Session or "
                f"Connection inside a transaction, not {type(transaction).__qualname__}"
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
        if not self._source.closes:
            # One shared connection: the generic path, key by key (each wait polls).
            return super().acquire_many(requests, timeout=timeout, on_wait=on_wait)
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
                    local_token = table_acquire(local, request.lock_id, request.shared, remaining, None)
                    if not local_token:
                        return None
                local_tokens.append(local_token)
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            grants = self._acquire_many_on_server(requests, local_tokens, remaining, on_wait)
            return grants
        finally:
            if grants is None:  # not taken: hand the local queue on
                for request, local_token in zip(requests, local_tokens, strict=True):
                    table_release(local, request.lock_id, local_token)

    def _acquire_many_on_server(
        self,
        requests: Sequence[LockRequest],
        local_tokens: list[int],
        timeout: float | None,
        on_wait: Callable[[], None],
    ) -> list[Grant] | None:
        params = sql.many_params([r.lock_id for r in requests], [r.shared for r in requests])
        source = self._source
        session = source.get()
        try:
            if not session.checked:
                self._check_connection(session)
            fenced = self._fence
            if fenced is None:
                fenced = self._ready_fencing(session)
            # The session holds nothing yet, so TRY_MANY may give back everything on failure.
            taken, pid = False, None
            token: Any = None
            if pg.try_first(session.conn, timeout, on_wait):
                if fenced:
                    taken, _, pid, token = session.run(sql.TRY_MANY_FENCED, params)
                else:
                    taken, _, pid = session.run(sql.TRY_MANY, params)
            if not taken and timeout != 0:
                on_wait()
                if fenced:
                    row = self._wait(
                        session, sql.WAIT_MANY_FENCED, sql.TIMED_WAIT_MANY_FENCED, params, timeout
                    )
                else:
                    row = self._wait(session, sql.WAIT_MANY, sql.TIMED_WAIT_MANY, params, timeout)
                if row is None:
                    session.run(sql.UNDO_MANY, params)
                else:
                    taken, pid = True, row[1]
                    if fenced:
                        token = row[2]
            session.learn(pid)
            # One token for the whole call (the sequence's, drawn once every key was taken).
            drawn = self._token(token, 0) if fenced and taken else 0
        except BaseException as exc:
            finish(source.discard(session))  # closing it frees whatever it took
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                self._fencing_failed(exc)
                raise sql.translate_error(exc, f"acquiring {len(requests)} locks") from exc
            raise
        if not taken:
            finish(source.put(session))
            return None
        session.holds += len(requests)
        return [
            Grant(
                request.name,
                request.lock_id,
                request.shared,
                drawn or local_token,
                conn=session,
                pid=pid,
                data=local_token,
            )
            for request, local_token in zip(requests, local_tokens, strict=True)
        ]

    # -- inspection ---------------------------------------------------------

    def _query(self, statement: str, params: Any = None, *, what: str = "reading pg_locks") -> list[Any]:
        source = self._source
        session = source.get()
        try:
            if not session.checked:  # a standby's pg_locks shows nothing the primary holds
                self._check_connection(session)
            rows: list[Any] = session.run(statement, params, every=True)
        except BaseException as exc:
            finish(source.discard(session))
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, what) from exc
            raise
        if session.holds == 0:
            finish(source.put(session))
        return rows

    def held(self, name: str, lock_id: int) -> bool:
        return bool((self._query(sql.HELD, sql.split_lock_id(lock_id)))[0][0])

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        return [
            sql.holder_from_row(row, name) for row in self._query(sql.HOLDERS, sql.split_lock_id(lock_id))
        ]

    def list_held(self) -> list[Holder]:
        # The server knows IDs only: a lock is named by its ID (#<id>).
        return [sql.holder_from_row(row, None) for row in self._query(sql.LIST_HELD)]

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        """Free ``name`` whoever holds it: only by ending the holders' sessions (``terminate=True``).

        PostgreSQL unlocks a session lock only in the session that holds it, so
        without ``terminate`` this refuses (NotSupportedError naming each
        holder's PID and application) when someone holds it, and returns 0 when
        nobody does. With it, ``pg_terminate_backend`` ends every session
        holding the key (never the one asking) and waits for each to be gone;
        returns how many ended.
        """
        if not terminate:
            holders = self.holders(name, lock_id)
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
        session = source.get()
        try:
            if not session.checked:  # ending sessions on a standby frees nothing on the primary
                self._check_connection(session)
            if session.conn.info.server_version >= 140000:
                params: tuple[Any, ...] = (sql.TERMINATE_WAIT_MS, *sql.split_lock_id(lock_id))
                (ended,) = session.run(
                    sql.TERMINATE_HOLDERS, params, apart=True, waits=sql.TERMINATE_WAIT_MS / 1000
                )
            else:
                (ended,) = session.run(sql.TERMINATE_HOLDERS_PRE14, sql.split_lock_id(lock_id), apart=True)
        except BaseException as exc:
            finish(source.discard(session))
            if isinstance(exc, Exception) and pg.is_driver_error(exc):
                raise sql.translate_error(exc, f"ending the sessions holding {name!r}", key=name) from exc
            raise
        if session.holds == 0:
            finish(source.put(session))
        return int(ended)

    # -- life cycle ---------------------------------------------------------

    def open_connections(self) -> int:
        """How many connections this backend has opened so far (URL lockers; 0 otherwise)."""
        opened: int = getattr(self._source, "opened", 0)
        return opened

    def close(self) -> None:
        # The hold owner has released every hold: what is left is idle.
        self._source.close()

    def after_fork_in_child(self) -> None:
        # The parent's connections are the parent's: drop them without a word on their sockets.
        # (The local table is emptied by kannuki.backends._tables.)
        self._source.forget()

    def describe(self) -> str:
        return self._where
