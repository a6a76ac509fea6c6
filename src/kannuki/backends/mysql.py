# WARNING: generated from src/kannuki/backends/mysql_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""``mysql://`` / ``mariadb://``: session locks on GET_LOCK / RELEASE_LOCK through mysqlclient.

Each acquisition pins one connection of the locker's own pool until release
(``acquire_many`` takes all its keys on one connection). The grant carries the
connection, its server connection ID (CONNECTION_ID(), read at connect) and
the escaped server name; nothing else remembers the hold. Release is
compare-and-delete in one statement (RELEASE_LOCK only on the session that
took it), and a connection goes back to the pool only after the server
confirmed that its lock is released; on any failure or interruption it is
closed instead, which ends its server session and every lock of it.

Waiting happens on the server (GET_LOCK's timeout), after in-process waiters
for the same key have queued on the server's process-wide lock table
(``kannuki.backends._tables``), so at most one connection per key per process
waits on the server. The name sent to the server comes from
:func:`mysql_lock_name` (64 characters at most, see ``_mysql_names``).

mysqlclient has no async API: the async backend makes every blocking driver
call in a worker thread and waits for GET_LOCK's answer with a reader on the
event loop, so the loop never blocks and a cancelled wait stops at once; the
sync backend makes the same calls directly and waits in ``poll()``.

An interrupted wait (Ctrl-C in sync code, a cancelled task in async code) is
ended on the server: a side connection sends KILL QUERY for the waiting
connection, which is then closed, so nothing it may have been granted
meanwhile survives. A wrapped connection cannot be killed from the side (its
credentials are the caller's), and it serves every thread or task of its
locker one statement at a time (a FIFO guard): so it never waits on the
server longer than a short slice (``WRAPPED_SLICE``; MySQL, whose GET_LOCK
waits in whole seconds, polls with ``GET_LOCK(name, 0)`` and a capped
backoff instead). Between slices the others' statements (a release, a try,
another key's wait) go through, and an interruption takes effect at the end
of the current slice, followed by a RELEASE_LOCK of the name.

Fencing tokens. On MariaDB 10.3+ they come from the server sequence
``kannuki_fencing_seq`` (created when missing), drawn by the GET_LOCK
statement itself once the lock is granted (``CASE GET_LOCK(..) WHEN 1 THEN
NEXTVAL(..)``): no extra round trip, strictly increasing per key across every
client of the server, never rolled back. MySQL has no sequences: there the
tokens come from the in-process table (increasing within one process only)
unless ``fencing=True``, which draws them from a counter table in one more
round trip. Where the MariaDB sequence cannot be created or used, the tokens
are the in-process table's and one warning says why (``fencing=True`` falls
back to the counter table instead). ``fencing=False``: in-process tokens, no
server work. Tokens that are not the server's are no fencing tokens (another
process may repeat them): ``lock.token`` is None for those holds, and
``tokens_fenced`` False.

``check`` asks in one round trip whether the pinned session still holds the
name; ``abort`` closes the pinned connection; ``force_release`` refuses to
free another session's lock unless ``terminate=True``, which KILLs the holding
connection. A KILLed holder finds out at release: LockLostError.

A server that stops answering (a stopped process, a silent network) fails
every call within the connect timeout past its own wait: the connect, each
statement's reads and writes (the driver's ``read_timeout`` /
``write_timeout``) and the wait for GET_LOCK's answer past GET_LOCK's own
timeout; a release that gets no answer closes the connection and is a loss.
The watcher does not count silence as a loss: only a session the server
ended shows on the socket.

Options: ``connect_timeout`` (seconds, default 5; whole seconds on the wire,
and the longest silence of the server accepted on any call), ``pool_size`` (idle
connections kept, default 8), ``fencing`` (None: the sequence where the
server has one; True: server tokens always; False: in-process tokens),
``fencing_table``, ``allow_cluster`` (accept a Galera node).

The async module is the source; the sync one is generated from it by
``tools/async_to_sync.py``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import select
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from kannuki._compat import Mutex, finish, run_blocking, sleep, table_acquire, table_release
from kannuki._core import Backoff
from kannuki._core import lock_id as compute_lock_id
from kannuki.backends import _frameworks
from kannuki.backends._mysql_names import NAMESPACE, mysql_lock_name
from kannuki.backends._tables import object_table, process_table
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, LockRequest, reject_unknown_options
from kannuki.backends._watch import mysql_farewell, peek
from kannuki.backends.base import Backend
from kannuki.errors import (
    BackendError,
    ConfigurationError,
    DeadlockError,
    LockLostError,
    NotSupportedError,
)

__all__ = ["MySQLBackend", "cluster_refusal", "mysql_lock_name"]

_monotonic = time.monotonic


class _FairLock:
    """A lock handed over in arrival order, for a connection shared by several threads.

    ``threading.Lock`` is not fair: a thread that lets go and asks again at
    once (a waiter between two GET_LOCK slices) takes it again before the
    threads already waiting wake up, so their statements would wait for the
    whole wait. Tickets make it first come, first served; a waiter interrupted
    (Ctrl-C) gives its turn up.
    """

    __slots__ = ("_cond", "_gave_up", "_next", "_serving")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0
        self._gave_up: set[int] = set()

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while ticket != self._serving:
                    self._cond.wait()
            except BaseException:
                if ticket == self._serving:
                    self._serving += 1  # our turn came as we were interrupted: pass it on
                else:
                    self._gave_up.add(ticket)
                self._pass_on()
                raise

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._serving += 1
            self._pass_on()

    def locked(self) -> bool:
        """True while a thread has the turn (a statement may be in flight)."""
        return self._serving != self._next

    def acquire(self, blocking: bool = True) -> bool:
        """Take the turn now if nobody has it or waits for it; never waits (``blocking=False`` only)."""
        if blocking:
            raise ValueError("_FairLock.acquire() only tries (blocking=False); wait with `with lock:`")
        with self._cond:
            if self._serving != self._next:
                return False
            self._next += 1
            return True

    def release(self) -> None:
        """Give back a turn taken with ``acquire(blocking=False)``."""
        self.__exit__()

    def _pass_on(self) -> None:
        while self._serving in self._gave_up:
            self._gave_up.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


# One statement at a time on a connection: a pooled one is used by one acquisition at a time
# (a plain lock); a wrapped one by every thread or task of its locker (first come, first served).
_Guard = threading.Lock
_SharedGuard = _FairLock

# One server-side wait lasts at most this long; "forever" re-issues it (MariaDB refuses -1).
FOREVER_SLICE = 7 * 24 * 3600.0
# A wrapped connection is shared by the locker's threads and tasks, and nobody can KILL its
# wait from the side: it waits on the server in slices this short (MySQL: polls, at most this
# far apart), so the others' statements and Ctrl-C get through between two slices.
WRAPPED_SLICE = 0.05
# An idle pooled connection unused this long is pinged before reuse.
STALE_AFTER = 30.0
# Driver error codes: the connection is gone (server gone away, lost during a query).
_CONNECTION_GONE = (2006, 2013)
# ER_LOCK_DEADLOCK, ER_USER_LOCK_DEADLOCK: the server broke a wait-for cycle by failing this wait.
_DEADLOCK = (1213, 3058)

# Fencing tokens on MariaDB: one server sequence, drawn in the GET_LOCK statement once granted.
FENCING_SEQUENCE = "kannuki_fencing_seq"
_SEQUENCE_DDL = b"CREATE SEQUENCE IF NOT EXISTS `" + FENCING_SEQUENCE.encode() + b"`"
_SEQUENCE_SHAPE = b"SELECT minimum_value, increment, cycle_option FROM `" + FENCING_SEQUENCE.encode() + b"`"
_SEQUENCE_NEXT = b"SELECT NEXTVAL(`" + FENCING_SEQUENCE.encode() + b"`)"
# GET_LOCK's answer: 1 granted, 0 timed out, NULL error. With the sequence: the token (>= 1), 0, NULL.
_GET_LOCK = b"SELECT GET_LOCK(%s, %s)"
_GET_LOCK_FENCED = (
    b"SELECT CASE GET_LOCK(%s, %s) WHEN 1 THEN NEXTVAL(`"
    + FENCING_SEQUENCE.encode()
    + b"`) WHEN 0 THEN 0 END"
)
# Where the tokens come from: the sequence, the counter table (fencing=True without a sequence), or
# the in-process table (unfenced: increasing within this process only).
_SEQUENCE, _TABLE, _LOCAL = "sequence", "table", "local"

_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

# Who holds which user lock: MariaDB's METADATA_LOCK_INFO plugin, else MySQL's performance_schema.
_LIST_SQL = (
    (
        b"SELECT m.TABLE_SCHEMA, m.THREAD_ID, p.USER, p.HOST FROM information_schema.METADATA_LOCK_INFO m"
        b" LEFT JOIN information_schema.PROCESSLIST p ON p.ID = m.THREAD_ID WHERE m.LOCK_TYPE = 'User lock'"
    ),
    (
        b"SELECT m.OBJECT_NAME, t.PROCESSLIST_ID, t.PROCESSLIST_USER, t.PROCESSLIST_HOST"
        b" FROM performance_schema.metadata_locks m JOIN performance_schema.threads t"
        b" ON t.THREAD_ID = m.OWNER_THREAD_ID WHERE m.OBJECT_TYPE = 'USER LEVEL LOCK'"
    ),
)


def cluster_refusal(wsrep_on: str | None, allow_cluster: bool) -> str | None:
    """Why locking on this server must be refused, or None.

    ``wsrep_on`` is the server's ``wsrep_on`` variable (``"ON"``/``"OFF"``, or
    None when the server has no such variable, as on MySQL). On a Galera
    node GET_LOCK is local to that node and excludes nobody on the others.
    """
    if allow_cluster or wsrep_on is None or wsrep_on.upper() not in ("ON", "1"):
        return None
    return (
        "this server is a Galera cluster node (wsrep_on=ON): GET_LOCK on it excludes nobody on the other "
        "nodes. Point kannuki at one node that every client uses, or pass allow_cluster=True if they all do"
    )


class _Session:
    """One server connection: the driver object, its server connection ID, how many locks it pins."""

    __slots__ = (
        "broken",
        "checked",
        "conn_id",
        "db",
        "guard",
        "last_used",
        "locks",
        "mariadb",
        "owned",
        "pending",
    )

    def __init__(self, db: Any, owned: bool) -> None:
        self.db = db
        self.conn_id: int = db.thread_id()  # = CONNECTION_ID(), read from the handshake
        self.locks = 0
        self.owned = owned
        self.mariadb = "mariadb" in db.get_server_info().lower()
        self.last_used = _monotonic()
        # A wrapped connection is shared by every lock of its locker (threads or tasks); a pooled
        # one by the keys of one lock_many: one statement at a time.
        self.guard: Any = _Guard() if owned else _SharedGuard()
        self.broken = False
        self.checked = False  # the cluster check passed
        self.pending = False  # a statement was sent whose answer is not read yet (a GET_LOCK wait)


class _Pinned:
    """What a grant needs back at release: the escaped server name and the in-process table's token."""

    __slots__ = ("done", "literal", "table_token")

    def __init__(self, literal: bytes, table_token: int) -> None:
        self.literal = literal  # the escaped server name, ready for SQL
        self.table_token = table_token
        self.done = False  # released, or its connection written off: nothing more to undo


_SERVER_NAME_CHARS = re.compile(r"[a-z0-9._:/@=+#\-]{1,64}").fullmatch


@functools.lru_cache(maxsize=4096)
def _name_literal(name: str) -> bytes:
    """The SQL string literal of ``mysql_lock_name(name)``, quoted by the driver, ready for a statement.

    This is what ``cursor.execute("... %s", (server_name,))`` does (mysqlclient
    binds parameters by quoting them on the client), done once per name and
    cached. Twice safe: the server name is also built from a small alphabet with
    no quote, backslash or NUL (checked here, so a change to the name rule
    cannot open a hole).
    """
    from MySQLdb import _mysql

    server_name = mysql_lock_name(name)
    if not _SERVER_NAME_CHARS(server_name):
        raise AssertionError(f"unsafe server lock name {server_name!r}")
    quoted: Any = _mysql.string_literal(server_name.encode("ascii"))  # bytes (the stubs say str)
    return bytes(quoted)


# -- blocking driver steps (the async backend runs each in a worker thread) -------------


def _scalar(db: Any, sql: bytes) -> Any:
    """Run ``sql`` and return the first column of its first row."""
    db.query(sql)
    return db.store_result().fetch_row()[0][0]


def _rows(db: Any, sql: bytes, max_rows: int = 0) -> tuple[Any, ...]:
    """Run ``sql`` and return its rows (all of them when ``max_rows`` is 0)."""
    db.query(sql)
    return tuple(db.store_result().fetch_row(max_rows))


def _send(session: _Session, sql: bytes) -> None:
    """Send ``sql`` without waiting for its answer (read it with ``_read_scalar``)."""
    session.pending = True  # set first: if Ctrl-C lands right after the send, it is known to be pending
    session.db.send_query(sql)


def _read_scalar(session: _Session) -> Any:
    """Read the answer of the statement sent with ``_send``: the first column of its first row."""
    db = session.db
    try:
        db.read_query_result()
    finally:
        session.pending = False
    return db.store_result().fetch_row()[0][0]


def _drain(session: _Session, seconds: float) -> None:
    """Read and drop the answer of a statement still running on ``session`` (at most ``seconds``); best effort."""
    db = session.db
    try:
        if session.pending and _wait_readable(db.fileno(), seconds):
            db.read_query_result()
            db.store_result()
    except Exception:
        pass  # the connection failed: its server session, and what it held, end with it
    finally:
        session.pending = False


def _close(db: Any) -> None:
    try:
        db.close()
    except Exception:  # closing a broken connection may fail; it is gone either way
        pass


def _wait_readable(fd: int, seconds: float) -> bool:
    """Wait for the server's answer; a signal handler's exception (Ctrl-C) propagates."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(seconds * 1000.0))


class _NoAnswer(TimeoutError):
    """The server said nothing for the connect timeout after a GET_LOCK's own timeout ran out."""


def _try_turn(guard: Any) -> bool:
    """Take a connection's guard if it is free, without waiting; True when taken (give it back with _end_turn).

    On the event loop nothing runs between two lines of a sync function, so "free" is enough there.
    """
    return bool(guard.acquire(blocking=False))


def _end_turn(guard: Any) -> None:
    """Give back a guard taken by _try_turn (on the event loop nothing was taken)."""
    guard.release()


def _is_driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("MySQLdb", "_mysql"))


def _error_code(exc: BaseException) -> Any:
    return exc.args[0] if _is_driver_error(exc) and exc.args else None


class MySQLBackend(Backend):
    """Session locks on MySQL 5.7+ / MariaDB 10.0.2+ via GET_LOCK."""

    scheme = "mysql"
    supports_shared = False
    supports_transaction = False
    supports_ttl = False
    watches = True  # gone(): an idle session's socket shows a KILL or a restart with no round trip

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        *,
        connection: Any = None,
        connect_timeout: float = 5.0,
        pool_size: int = 8,
        fencing: bool | None = None,
        fencing_table: str = "kannuki_fencing",
        allow_cluster: bool = False,
        scheme: str = "mysql",
        engine: Any = None,
    ) -> None:
        if not (isinstance(connect_timeout, (int, float)) and 0 < connect_timeout < math.inf):
            raise ConfigurationError(
                f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}"
            )
        if not (isinstance(pool_size, int) and not isinstance(pool_size, bool) and pool_size >= 0):
            raise ConfigurationError(f"pool_size must be an int >= 0, not {pool_size!r}")
        if fencing is not None and not isinstance(fencing, bool):
            raise ConfigurationError(f"fencing must be None, True or False, not {fencing!r}")
        if not (
            isinstance(fencing_table, str)
            and 0 < len(fencing_table) <= 64
            and set(fencing_table) <= _IDENTIFIER_CHARS
        ):
            raise ConfigurationError(
                f"fencing_table must be a plain table name (letters, digits, _), not {fencing_table!r}"
            )
        if not isinstance(allow_cluster, bool):
            raise ConfigurationError(f"allow_cluster must be True or False, not {allow_cluster!r}")
        if fencing and connection is not None:
            raise ConfigurationError(
                "fencing=True needs connections kannuki owns (its counter table commits on its own); use a "
                "mysql:// URL. On MariaDB a wrapped connection draws its tokens from the server sequence by "
                "default (fencing=None)"
            )
        self._url_scheme = scheme  # mysql or mariadb, for messages; the store's scheme stays "mysql"
        self._params = dict(params or {})
        # The connect timeout bounds every silence of the server: the connect, each read and write of a
        # statement (the driver's own timeouts, whole seconds), and the wait for GET_LOCK's answer past
        # GET_LOCK's own timeout. A server that stops answering fails a call within it; never a hang.
        silence = max(1, math.ceil(connect_timeout))
        self._silence = float(silence)
        self._params.update(
            connect_timeout=silence,
            read_timeout=silence,
            write_timeout=silence,
            autocommit=True,
            charset="utf8mb4",
        )
        self.pool_size = pool_size
        self.fencing = fencing
        self._fencing_sql = (
            b"INSERT INTO `" + fencing_table.encode() + b"` (name, value) VALUES (%s, LAST_INSERT_ID(1))"
            b" ON DUPLICATE KEY UPDATE value = LAST_INSERT_ID(value + 1)"
        )
        self._fencing_ddl = (
            b"CREATE TABLE IF NOT EXISTS `"
            + fencing_table.encode()
            + b"` (name VARCHAR(64) CHARACTER SET ascii"
            b" COLLATE ascii_bin NOT NULL PRIMARY KEY, value BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"
        )
        self._fencing_ready = False
        # Where tokens come from (_SEQUENCE, _TABLE, _LOCAL); None until the first connection tells.
        self._token_mode: str | None = _LOCAL if fencing is False else None
        self.allow_cluster = allow_cluster
        self._idle: list[_Session] = []
        self._sessions: set[_Session] = set()  # every connection we opened and have not closed
        self._pid = os.getpid()
        self._mutex = Mutex()
        self._wrapped: _Session | None = None
        self._wrapped_obj = connection
        # A user's SQLAlchemy engine: pooled connections are checked out of it, and back in, instead.
        self._lender = None if engine is None else _frameworks.EngineLender(engine)
        # In-process queues, one per server (or per wrapped connection), shared by every locker on it,
        # sync and async alike.
        if connection is not None:
            self._table = object_table("mysql", connection)
        else:
            where = (
                self._params.get("unix_socket") or f"{self._params.get('host')}:{self._params.get('port')}"
            )
            self._table = process_table(("mysql", "server", where))
        self._wait_slice = WRAPPED_SLICE if connection is not None else FOREVER_SLICE

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MySQLBackend:
        """``mysql://user:password@host:port/database?unix_socket=/path`` (also ``mariadb://``)."""
        _driver()
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        params: dict[str, Any] = {"host": parts.hostname or "127.0.0.1"}
        try:
            params["port"] = parts.port or 3306
        except ValueError:
            raise ConfigurationError(f"bad port in url {_redact(url)!r}") from None
        if parts.username:
            params["user"] = unquote(parts.username)
        if parts.password:
            params["password"] = unquote(parts.password)
        database = parts.path.lstrip("/")
        if database:
            params["database"] = unquote(database)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "unix_socket":
                params["unix_socket"] = value
            elif key == "connect_timeout":
                options.setdefault("connect_timeout", _seconds_from_url(value))
            else:
                raise ConfigurationError(f"unknown query parameter {key!r} in the {scheme} url")
        names = ("connect_timeout", "pool_size", "fencing", "fencing_table", "allow_cluster")
        known = {k: options.pop(k) for k in names if k in options}
        reject_unknown_options(scheme, options)
        return cls(params, scheme=scheme, **known)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        # mysqlclient has only blocking connections: the async backend drives them from worker threads.
        return type(obj).__module__.startswith("MySQLdb")

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> MySQLBackend:
        """Lock on the caller's MySQLdb connection (every lock of this locker pins it)."""
        known = {k: options.pop(k) for k in ("allow_cluster", "fencing") if k in options}
        reject_unknown_options("mysql", options)
        framework = _frameworks.kind(obj)
        if framework == _frameworks.ORM_SESSION:
            obj = _frameworks.session_bind(obj)  # the session gives its connection back at commit
            framework = _frameworks.kind(obj)
        if framework == _frameworks.ENGINE:  # a pool: a connection per hold, given back holding nothing
            return cls(_frameworks.connect_params(obj), engine=obj, pool_size=0, **known)
        if framework is not None:  # SQLAlchemy or Django: lock on the MySQLdb connection underneath
            obj = _frameworks.driver_connection(obj)
        return cls(connection=obj, **known)

    def describe(self) -> str:
        if self._wrapped_obj is not None:
            return f"{self._url_scheme}:// (wrapped connection)"
        where = self._params.get("unix_socket") or f"{self._params['host']}:{self._params['port']}"
        user = self._params.get("user")
        database = self._params.get("database", "")
        return f"{self._url_scheme}://{user + '@' if user else ''}{where}/{database}"

    @property
    def tokens_fenced(self) -> bool:
        """True while this backend's tokens come from the server (strictly increasing across processes).

        False with ``fencing=False``, on MySQL without ``fencing=True`` and
        once the MariaDB sequence was found unusable: the tokens are then the
        in-process table's, > 0 and increasing within this process only.
        """
        return self._token_mode != _LOCAL

    # -- fencing tokens -----------------------------------------------------

    def _ready_tokens(self, session: _Session) -> None:
        """Once per backend, on its first connection: where do the tokens come from? (Sets ``_token_mode``.)

        MariaDB: the sequence, created when missing (on a wrapped connection only
        outside a transaction, where DDL commits nothing of the caller's) and
        checked to count upwards from 1 and to be ours to advance. When it
        cannot be used, ``fencing=True`` takes the counter table; the default
        takes in-process tokens and one warning says why. MySQL: the counter
        table with ``fencing=True``, in-process tokens by default.
        """
        if not session.mariadb:
            self._token_mode = _TABLE if self.fencing else _LOCAL
            return
        with session.guard:
            why_not = run_blocking(self._probe_sequence, session)
        if why_not is None:
            self._token_mode = _SEQUENCE
            return
        if self.fencing:
            self._token_mode = _TABLE
            return
        if self._token_mode is None:  # the first to find out says it, once
            self._token_mode = _LOCAL
            warnings.warn(
                f"kannuki: fencing tokens on {self.describe()} are not strictly increasing across processes: "
                f"they need the server sequence {FENCING_SEQUENCE}, and {why_not}. Create it once as a user "
                f"that may (CREATE SEQUENCE {FENCING_SEQUENCE}; GRANT SELECT, INSERT ON {FENCING_SEQUENCE} "
                "TO <user>), pass fencing=True for a counter table (one more round trip per acquire), or "
                "fencing=False to go without.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _probe_sequence(self, session: _Session) -> str | None:
        """Blocking step: None when the fencing sequence is there (made if missing) and usable, else why not."""
        db = session.db
        try:
            if session.owned or _scalar(db, b"SELECT @@in_transaction") == 0:
                db.query(_SEQUENCE_DDL)
            shape = _rows(db, _SEQUENCE_SHAPE, 1)
            _rows(db, _SEQUENCE_NEXT, 1)  # may we advance it? (needs INSERT on it)
        except Exception as exc:
            if not _is_driver_error(exc) or _error_code(exc) in _CONNECTION_GONE:
                raise
            if _error_code(exc) == 1064:
                return "this server has no sequences (MariaDB 10.3 and later have)"
            return f"it cannot be created or used ({exc})"
        minimum, increment, cycle = shape[0] if shape else (0, 0, 1)
        if not (int(minimum) >= 1 and int(increment) >= 1 and not int(cycle)):
            return (
                f"it does not count upwards from 1 without cycling (minimum_value={minimum}, "
                f"increment={increment}, cycle_option={cycle})"
            )
        return None

    # -- connections --------------------------------------------------------

    def _connect(self) -> _Session:
        driver = _driver()
        lender = self._lender
        borrowed: list[Any] = []
        try:
            if lender is not None:
                run_blocking(lender.borrow, borrowed)
                db = borrowed[0]
            else:
                db = run_blocking(functools.partial(driver.connect, **self._params))
        except BaseException as exc:
            # Interrupted once checked out (it holds nothing yet): give it back, or the engine loses it.
            if borrowed and lender is not None:
                finish(run_blocking(lender.give_back, borrowed[0], False))
            if not isinstance(exc, Exception) or (lender is None and not isinstance(exc, driver.Error)):
                raise
            raise BackendError(f"cannot connect to {self.describe()}: {exc}") from exc
        session = _Session(db, owned=True)
        self._sessions.add(session)
        try:
            self._check_cluster(session)
        except BaseException:
            finish(self._discard(session))
            raise
        return session

    def _check_cluster(self, session: _Session) -> None:
        try:
            rows = run_blocking(_rows, session.db, b"SHOW VARIABLES LIKE 'wsrep_on'", 1)
        except Exception as exc:
            raise self._error("cannot read wsrep_on", exc) from exc
        value = rows[0][1] if rows else None
        reason = cluster_refusal(value.decode() if isinstance(value, bytes) else value, self.allow_cluster)
        if reason:
            raise NotSupportedError(reason)
        session.checked = True

    def _checkout(self) -> _Session:
        """A connection for one acquisition or question: the wrapped one, an idle pooled one, or a new one."""
        if self._wrapped_obj is not None:
            return self._wrapped_session()
        idle = self._idle
        while idle:
            try:
                session = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if _monotonic() - session.last_used < STALE_AFTER:
                return session
            pinged = _monotonic()
            try:  # it may have died idle (wait_timeout, a server restart)
                run_blocking(_scalar, session.db, b"SELECT 1")
                return session
            except BaseException as exc:
                finish(self._discard(session))
                if not isinstance(exc, Exception):
                    raise
                # No answer at all (not a closed connection): a new connection would wait just as long.
                if _monotonic() - pinged >= self._silence:
                    raise BackendError(
                        f"{self.describe()} did not answer within {self._silence:g}s: {exc}"
                    ) from exc
        return self._connect()

    def _wrapped_session(self) -> _Session:
        if os.getpid() != self._pid:
            raise BackendError(
                "this locker wraps a connection of the parent process; open a new one in the child"
            )
        with self._mutex:
            session = self._wrapped
            if session is None:
                session = self._wrapped = _Session(self._wrapped_obj, owned=False)
        if not session.checked:
            with session.guard:
                if not session.checked:
                    self._check_cluster(session)
        return session

    def _checkin(self, session: _Session) -> None:
        """Back to the pool if it pins nothing and is healthy; closed when the pool is full."""
        if not session.owned or session.locks or session.broken:
            return
        if self._lender is not None:  # back to the user's engine, holding nothing; never used again here
            session.broken = True
            self._sessions.discard(session)
            run_blocking(self._lender.give_back, session.db, False)
            return
        session.last_used = _monotonic()
        if len(self._idle) < self.pool_size:
            self._idle.append(session)
        else:
            self._discard(session)

    def _discard(self, session: _Session) -> bool:
        """Drop a connection; closing it ends its server session, which frees every lock it held.

        A wrapped connection is the caller's: it is never closed nor written off. True when this call closed it.
        """
        if not session.owned or session.broken:
            return False
        session.broken = True
        self._sessions.discard(session)
        if self._lender is not None:  # the engine's connection: invalidated, which closes it
            run_blocking(self._lender.give_back, session.db, True)
        else:
            run_blocking(_close, session.db)
        return True

    def _error(self, what: str, exc: BaseException) -> BackendError:
        """The BackendError (DeadlockError for the server's deadlock report) for a failed statement."""
        if _error_code(exc) in _DEADLOCK:
            return DeadlockError(f"{what}: the server reports a deadlock on {self.describe()}: {exc}")
        return BackendError(f"{what} on {self.describe()}: {exc}")

    # -- locking ------------------------------------------------------------

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
        if shared or transaction is not None or ttl is not None:
            self._refuse(shared, transaction, ttl, name)
        literal = _name_literal(name)
        table = self._table
        deadline = None if timeout is None else _monotonic() + timeout
        table_token: int = table.acquire(lock_id, False, 0.0, None)
        if not table_token:
            if timeout == 0:
                return None
            on_wait()
            on_wait = NO_WAIT_CALLBACK
            table_token = table_acquire(table, lock_id, False, timeout, None)
            if not table_token:
                return None
        session: _Session | None = None
        try:
            session = self._checkout()
            if self._token_mode is None:
                self._ready_tokens(session)
            got = self._lock_on(session, literal, timeout, deadline, on_wait)
            if got:
                token = self._token_for(session, literal, table_token, got)
                pinned = _Pinned(literal, table_token)
                return Grant(
                    name, lock_id, False, token, None, conn=session, pid=session.conn_id, data=pinned
                )
        except BaseException:
            # Failed or interrupted, maybe after the server granted it: leave nothing held.
            finish(self._give_back(session, [literal], [(lock_id, table_token)], failed=True))
            raise
        finish(self._give_back(session, [], [(lock_id, table_token)], failed=False))
        return None

    def _refuse(self, shared: bool, transaction: Any, ttl: float | None, name: str) -> None:
        if shared:
            raise NotSupportedError(
                f"the {self._url_scheme} backend has no shared locks (GET_LOCK is exclusive); use an exclusive lock, "
                "or the postgresql backend for shared locks",
                key=name,
            )
        if transaction is not None:
            raise NotSupportedError(
                f"the {self._url_scheme} backend has no transaction-level locks; use a session lock "
                "(drop transaction=) and release it when the transaction ends, or the postgresql backend",
                key=name,
            )
        raise NotSupportedError(
            f"the {self._url_scheme} backend has no leases: a lock lives as long as its connection; drop ttl=",
            key=name,
        )

    def _lock_on(
        self,
        session: _Session,
        literal: bytes,
        timeout: float | None,
        deadline: float | None,
        on_wait: Callable[[], None],
    ) -> int:
        """GET_LOCK on ``session``: the server's answer when taken (1, or the token from the sequence), else 0.

        When it raises, the server may have granted the lock: the caller undoes
        it (``_give_back(..., failed=True)``).
        """
        if timeout == 0 or on_wait is not NO_WAIT_CALLBACK:
            with session.guard:
                try:
                    got = run_blocking(_scalar, session.db, self._get_lock_sql(literal, b"0"))
                except Exception as exc:
                    raise self._error("GET_LOCK failed", exc) from exc
            if self._granted(session, got):
                return int(got)
            if timeout == 0:
                return 0
            on_wait()
        return self._wait_on_server(session, literal, deadline)

    def _get_lock_sql(self, literal: bytes, seconds: bytes) -> bytes:
        template = _GET_LOCK_FENCED if self._token_mode == _SEQUENCE else _GET_LOCK
        return template % (literal, seconds)

    def _wait_on_server(self, session: _Session, literal: bytes, deadline: float | None) -> int:
        """GET_LOCK until ``deadline`` in server waits of at most ``_wait_slice``; the answer when taken, else 0.

        A wrapped connection on MySQL (whole-second waits only) polls with
        ``GET_LOCK(name, 0)`` and sleeps between tries without holding the
        connection, so it never keeps the locker's other threads out for long.
        """
        db = session.db
        polling = not session.owned and not session.mariadb
        backoff = Backoff("exponential", 0.005, WRAPPED_SLICE, "full")
        while True:
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            if polling:
                wait = 0.0
            else:
                wait = self._wait_slice if remaining is None else min(remaining, self._wait_slice)
            seconds = b"%.6f" % wait if session.mariadb else b"%d" % math.ceil(wait)  # MySQL: whole seconds
            with session.guard:
                try:
                    run_blocking(_send, session, self._get_lock_sql(literal, seconds))
                    if not _wait_readable(db.fileno(), wait + self._silence):
                        raise _NoAnswer(
                            f"no answer from the server {self._silence:g}s after GET_LOCK's timeout"
                        )
                    got = run_blocking(_read_scalar, session)
                except BaseException as exc:  # Ctrl-C and cancellation included: end the wait on the server
                    finish(self._end_wait(session, exc, wait))
                    if isinstance(exc, Exception):
                        raise self._error("GET_LOCK failed", exc) from exc
                    raise
            if self._granted(session, got):
                return int(got)
            if remaining is not None and wait >= remaining:
                return 0
            if polling:
                sleep(backoff.next_delay(remaining))

    def _end_wait(self, session: _Session, exc: BaseException, wait: float) -> bool:
        """A GET_LOCK wait on ``session`` failed or was interrupted: stop it on the server.

        Our own connection: KILL QUERY from a side connection (the caller then
        closes it). The caller's connection cannot be killed from the side: an
        interrupted wait runs out its slice (a second at most) and its answer
        is read, so the connection is in step for the RELEASE_LOCK that follows.
        True when it did either.
        """
        if _is_driver_error(exc) or not session.pending:
            return False  # the statement failed, or its answer was read: nothing runs on the server
        if isinstance(exc, _NoAnswer):
            # The server is silent: a side connection would not get through either. Its GET_LOCK ends by
            # its own timeout, and closing our connection ends the session with whatever it was granted.
            return False
        if session.owned:
            run_blocking(self._kill_query, session.conn_id)
            return True
        if not isinstance(exc, Exception):
            run_blocking(_drain, session, wait + self._silence)
            return True
        return False

    def _kill_query(self, conn_id: int) -> None:
        """End the statement running on server connection ``conn_id`` from a side connection; best effort."""
        try:
            side = _driver().connect(**self._params)
        except Exception:
            return  # the server sees the closed socket instead
        try:
            side.query(b"KILL QUERY %d" % conn_id)
        except Exception:
            pass
        finally:
            _close(side)

    def _granted(self, session: _Session, got: Any) -> bool:
        """GET_LOCK's answer: True when taken (counted on ``session``), False when its timeout ran out.

        Taken is 1, or with the sequence the token it drew (>= 1: the sequence
        was checked to count upwards from 1); 0 is a timeout, NULL an error.
        """
        if got is None:
            raise BackendError(f"GET_LOCK returned NULL (a server error) on {self.describe()}")
        if got == 0:
            return False
        session.locks += 1
        return True

    def _token_for(self, session: _Session, literal: bytes, table_token: int, got: int) -> int:
        """The acquisition's token: drawn by GET_LOCK from the sequence, the counter table's next value,
        or the in-process table's token."""
        if self._token_mode == _SEQUENCE:
            return got
        if self._token_mode != _TABLE:
            return table_token
        with session.guard:
            try:
                return run_blocking(self._next_token, session.db, literal)
            except Exception as exc:
                raise self._error("the fencing counter failed", exc) from exc

    def _next_token(self, db: Any, literal: bytes) -> int:
        if not self._fencing_ready:
            db.query(self._fencing_ddl)
            self._fencing_ready = True
        db.query(self._fencing_sql % literal)
        return int(db.insert_id())

    def _give_back(
        self,
        session: _Session | None,
        literals: list[bytes],
        table_tokens: list[tuple[int, int]],
        *,
        failed: bool,
    ) -> bool:
        """Undo an acquisition that was not made: server locks on ``session``, then the in-process queue.

        ``failed``: it raised or was interrupted, so the connection's state is
        unknown: our own connection is closed (ending every lock of its
        session), the caller's gets a RELEASE_LOCK of every name, granted or
        not (harmless for a name it does not hold). Otherwise each of
        ``literals`` (all granted) is released and the connection goes back
        to the pool; if that fails, it is closed. True when the connection is still usable.
        """
        try:
            if session is not None and (failed and session.owned):
                self._discard(session)
            elif session is not None:
                with session.guard:
                    for literal in reversed(literals):
                        try:
                            run_blocking(_scalar, session.db, b"SELECT RELEASE_LOCK(%s)" % literal)
                        except Exception:
                            self._discard(session)
                            break
                        session.locks = max(0, session.locks - 1)
                self._checkin(session)
        finally:
            for lock_id, table_token in table_tokens:
                table_release(self._table, lock_id, table_token)
        return session is not None and not session.broken

    def release(self, grant: Grant) -> None:
        pinned: _Pinned = grant.data
        session: _Session = grant.conn
        name = grant.name
        if pinned.done:
            raise LockLostError(f"the lock {name!r} is not held by this grant any more (released)", key=name)
        pinned.done = True
        free_queue = True
        try:
            if session.broken:
                raise LockLostError(
                    f"the lock {name!r} was lost: its connection failed while it was held", key=name
                )
            # Compare-and-delete in one statement: RELEASE_LOCK runs only on the session that took the
            # lock (behind a proxy that switched server connections it answers -1 and frees nothing).
            sql = b"SELECT IF(CONNECTION_ID() = %d, RELEASE_LOCK(%s), -1)" % (_pid(grant), pinned.literal)
            with session.guard:
                try:
                    released = run_blocking(_scalar, session.db, sql)
                except Exception as exc:
                    self._discard(session)
                    raise LockLostError(
                        f"the lock {name!r} was lost: its connection (id {grant.pid}) failed: {exc}", key=name
                    ) from exc
                except BaseException:
                    # Interrupted: whether the server released it is unknown. Our own connection is
                    # closed, never pooled while it may hold a lock. On the caller's, abort() releases
                    # the name again and only then frees the in-process queue, so that no other lock
                    # of ours takes the name on that connection before.
                    if session.owned:
                        finish(self._discard(session))
                    else:
                        pinned.done = False
                        free_queue = False
                    raise
                if released == 1:
                    session.locks -= 1
                elif released == -1:
                    now = self._connection_id(session)
                    why = f"its connection is now server session {now}, not {grant.pid} (a proxy?)"
                else:
                    why = "it is held by another connection" if released == 0 else "it no longer exists"
            if released != 1:
                self._discard(session)  # it no longer holds what we think: trust nothing on it
                raise LockLostError(f"the lock {name!r} was lost before release: {why}", key=name)
            self._checkin(session)
        finally:
            if free_queue:
                table_release(self._table, grant.lock_id, pinned.table_token)

    def abort(self, grant: Grant) -> None:
        """Make sure nothing stays held for ``grant``: close its connection (or RELEASE_LOCK on the caller's)."""
        pinned: _Pinned = grant.data
        session: _Session = grant.conn
        try:
            if pinned.done:
                return
            pinned.done = True
            if session.owned:
                self._discard(session)  # ends the session: every lock of it is freed
                return
            if os.getpid() != self._pid:
                return  # the parent's connection: not ours to touch
            with session.guard:
                released = run_blocking(_scalar, session.db, b"SELECT RELEASE_LOCK(%s)" % pinned.literal)
                if released == 1:
                    session.locks -= 1
        except Exception:
            pass  # the connection failed: its server session, and the lock, end with it
        finally:
            table_release(self._table, grant.lock_id, pinned.table_token)

    def gone(self, grant: Grant) -> str | None:
        """A KILL, a server timeout or a restart, seen on the idle pinned connection's socket.

        MySQL sends nothing unasked on a healthy idle session; as it ends one it sends a
        "connection was killed" / shutdown error, or just closes. Any other bytes are the answer
        to a statement that began after the check above (the user's own on their connection,
        or another thread's): not a loss.
        """
        session = grant.conn
        if not isinstance(session, _Session) or session.pending or session.broken:
            return None
        # The look holds the connection's guard: a statement of another hold on it (lock_many) that
        # started between a check and the peek would show its own answer, which is no loss.
        if not _try_turn(session.guard):
            return None  # a statement is in flight: its own answer will tell
        try:
            if session.broken:
                return None
            try:
                fd = session.db.fileno()
            except Exception:  # the driver already closed it
                return "the connection holding the lock was closed"
            data = peek(fd)
        finally:
            _end_turn(session.guard)
        if data is None:
            return None
        if not data:
            return f"the server closed the session (connection {session.conn_id}) holding the lock"
        if mysql_farewell(data):
            return f"the server ended the session (connection {session.conn_id}) holding the lock: KILL or a restart"
        return None  # the answer to a statement just sent (the user's own, or another thread's): not a loss

    def check(self, grant: Grant) -> bool:
        """One round trip on the pinned connection: does this very session still hold the name?"""
        pinned: _Pinned = grant.data
        session: _Session = grant.conn
        if pinned.done or session.broken:
            return False
        sql = b"SELECT COALESCE(IS_USED_LOCK(%s) = CONNECTION_ID() AND CONNECTION_ID() = %d, 0)" % (
            pinned.literal,
            _pid(grant),
        )
        try:
            with session.guard:
                held = run_blocking(_scalar, session.db, sql)
        except Exception:
            self._discard(session)  # its session is gone or unusable: so is the lock
            return False
        return bool(held)

    def _connection_id(self, session: _Session) -> Any:
        try:
            return run_blocking(_scalar, session.db, b"SELECT CONNECTION_ID()")
        except Exception:
            return "unknown"

    def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[Grant] | None:
        """All or none, in the given order, on one connection; given back when one is not had in time."""
        for request in requests:
            if request.shared or ttl is not None:
                self._refuse(request.shared, None, ttl, request.name)
        deadline = None if timeout is None else _monotonic() + timeout
        told: list[bool] = []

        def wait_once() -> None:
            if not told:
                told.append(True)
                on_wait()

        tell = NO_WAIT_CALLBACK if on_wait is NO_WAIT_CALLBACK else wait_once
        table = self._table
        taken: list[tuple[int, int]] = []  # (lock_id, table token)
        literals: list[bytes] = []  # taken (or being taken) on the server, in order
        answers: list[int] = []  # GET_LOCK's answer for each of them (the token, with the sequence)
        session: _Session | None = None
        try:
            for request in requests:
                table_token = table.acquire(request.lock_id, False, 0.0, None)
                if not table_token:
                    if timeout == 0:
                        break
                    tell()
                    remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                    table_token = table_acquire(table, request.lock_id, False, remaining, None)
                    if not table_token:
                        break
                taken.append((request.lock_id, table_token))
                if session is None:
                    session = self._checkout()
                    if self._token_mode is None:
                        self._ready_tokens(session)
                literal = _name_literal(request.name)
                literals.append(literal)
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                got = self._lock_on(session, literal, remaining, deadline, tell)
                if not got:
                    literals.pop()
                    break
                answers.append(got)
            else:
                assert session is not None or not requests
                if session is None:
                    return []
                grants = []
                for request, literal, got, (_lock_id, table_token) in zip(
                    requests, literals, answers, taken, strict=False
                ):
                    token = self._token_for(session, literal, table_token, got)
                    pinned = _Pinned(literal, table_token)
                    grants.append(
                        Grant(
                            request.name,
                            request.lock_id,
                            False,
                            token,
                            None,
                            conn=session,
                            pid=session.conn_id,
                            data=pinned,
                        )
                    )
                return grants
        except BaseException:
            finish(self._give_back(session, literals, taken, failed=True))
            raise
        finish(self._give_back(session, literals, taken, failed=False))
        return None

    # -- inspection ---------------------------------------------------------

    def _ask(self, sql: bytes, what: str, max_rows: int = 1) -> tuple[Any, ...]:
        """The rows of a read-only statement, on a pooled connection (or the wrapped one)."""
        session = self._checkout()
        try:
            with session.guard:
                rows = run_blocking(_rows, session.db, sql, max_rows)
        except BaseException as exc:
            finish(self._discard(session))
            if isinstance(exc, Exception):
                raise self._error(what, exc) from exc
            raise
        self._checkin(session)
        return rows

    def held(self, name: str, lock_id: int) -> bool:
        rows = self._ask(b"SELECT IS_USED_LOCK(%s)" % _name_literal(name), f"checking the lock {name!r}")
        return rows[0][0] is not None

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        # One round trip; without the PROCESS privilege the processlist shows only our own
        # connections, and user / host stay None. The server knows no tokens: token is None.
        rows = self._ask(
            b"SELECT x.id, p.USER, p.HOST FROM (SELECT IS_USED_LOCK(%s) AS id) x"
            b" LEFT JOIN information_schema.PROCESSLIST p ON p.ID = x.id" % _name_literal(name),
            f"listing the holders of {name!r}",
        )
        if not rows or rows[0][0] is None:
            return []
        conn_id, user, host = rows[0]
        return [Holder(name=name, lock_id=lock_id, pid=int(conn_id), user=_text(user), host=_text(host))]

    _blind = False

    def listing_note(self) -> str | None:
        """Said by ``kannuki list`` when this server cannot list locks at all."""
        if not self._blind:
            return None
        return (
            "this server cannot list GET_LOCK locks (MariaDB needs the METADATA_LOCK_INFO plugin, "
            "MySQL performance_schema); `kannuki held KEY` still answers for one key"
        )

    def list_held(self) -> list[Holder]:
        """kannuki's locks on the server: needs MariaDB's METADATA_LOCK_INFO plugin or MySQL's
        performance_schema (metadata_locks); without either the server cannot list them: []."""
        session = self._checkout()
        rows: tuple[Any, ...] | None = None
        used = -1
        try:
            with session.guard:
                for source, sql in enumerate(_LIST_SQL):
                    try:
                        rows = run_blocking(_rows, session.db, sql)
                        used = source
                        break
                    except Exception as exc:
                        if not _is_driver_error(exc) or _error_code(exc) in _CONNECTION_GONE:
                            raise
        except BaseException as exc:
            finish(self._discard(session))
            if isinstance(exc, Exception):
                raise self._error("listing locks failed", exc) from exc
            raise
        self._checkin(session)
        # Neither source exists, or MariaDB's performance_schema, which does not show GET_LOCK
        # locks (off by default, and not instrumented for them): listing_note() says so.
        self._blind = rows is None or (used == 1 and session.mariadb)
        out: list[Holder] = []
        for raw_name, conn_id, user, host in rows or ():
            server_name = _text(raw_name) or ""
            if not server_name.startswith(NAMESPACE):
                continue
            # A readable server name gives the full name back; a hashed one does not (lock_id 0).
            readable = "#" not in server_name
            name = server_name[len(NAMESPACE) :] if readable else server_name
            out.append(
                Holder(
                    name=name,
                    lock_id=compute_lock_id(name) if readable else 0,
                    pid=conn_id,
                    user=_text(user),
                    host=_text(host),
                )
            )
        return out

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        """Free ``name`` whoever holds it: only with ``terminate=True``, by KILLing the holding connection.

        GET_LOCK belongs to a server session; nobody else can release it. So
        without ``terminate`` this refuses, naming the holder; with it, the
        holder's connection is KILLed, which ends every lock and open
        transaction of that session. Returns how many holds were freed (0 or 1).
        """
        literal = _name_literal(name)
        session = self._checkout()
        refusal = None
        holder = None
        freed = 0
        try:
            with session.guard:
                rows = run_blocking(
                    _rows,
                    session.db,
                    b"SELECT x.id, p.USER, p.HOST, CONNECTION_ID() FROM (SELECT IS_USED_LOCK(%s) AS id) x"
                    b" LEFT JOIN information_schema.PROCESSLIST p ON p.ID = x.id" % literal,
                    1,
                )
                conn_id, user, host, own_id = rows[0] if rows else (None, None, None, None)
                if conn_id is None:
                    pass
                elif not terminate:
                    holder = Holder(
                        name=name, lock_id=lock_id, pid=int(conn_id), user=_text(user), host=_text(host)
                    )
                    refusal = (
                        f"the lock {name!r} is held by {self._url_scheme} connection {conn_id} ({holder.describe()}); "
                        "only its own session can release a GET_LOCK. Pass terminate=True to KILL that "
                        "connection (it ends every lock and open transaction of that session)"
                    )
                elif conn_id == own_id:
                    # The connection we ask on holds it (the wrapped one): release every nesting of it here.
                    while run_blocking(_scalar, session.db, b"SELECT RELEASE_LOCK(%s)" % literal) == 1:
                        freed = 1
                else:
                    try:
                        run_blocking(_execute, session.db, b"KILL %d" % int(conn_id))
                        freed = 1
                    except Exception as exc:
                        if _error_code(exc) != 1094:  # ER_NO_SUCH_THREAD: it ended meanwhile
                            raise
        except BaseException as exc:
            finish(self._discard(session))
            if isinstance(exc, Exception):
                raise self._error(f"force-releasing the lock {name!r} failed", exc) from exc
            raise
        self._checkin(session)
        if refusal is not None:
            raise NotSupportedError(refusal, key=name, holder=holder)
        return freed

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Close every connection kannuki opened (a lock still held on one is freed, and lost).

        The caller's wrapped connection is left open; the hold owner has released its locks first.
        """
        self._idle = []
        for session in list(self._sessions):
            self._discard(session)

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections without touching the parent's server sessions."""
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for session in list(self._sessions):
                # Point our copy of the socket at /dev/null: whatever the driver writes later
                # (COM_QUIT when the object is freed) cannot end the parent's session.
                try:
                    os.dup2(devnull, session.db.fileno())
                except Exception:
                    pass
                session.broken = True
        finally:
            os.close(devnull)
        if self._wrapped is not None:
            self._wrapped.broken = True
        if self._lender is not None:
            self._lender.forget()
        self._sessions = set()
        self._idle = []
        self._wrapped = None
        self._mutex = Mutex()
        self._pid = os.getpid()


def _execute(db: Any, sql: bytes) -> None:
    """Run a statement that returns no rows (KILL)."""
    db.query(sql)


def _pid(grant: Grant) -> int:
    """The server connection ID the grant was taken on (0, which no session has, if unknown)."""
    return int(grant.pid or 0)


def _text(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _seconds_from_url(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(
            f"connect_timeout in the url must be a number of seconds, not {value!r}"
        ) from None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(":" + parts.password + "@", ":***@", 1)
    return url


def _driver() -> Any:
    try:
        import MySQLdb
    except ImportError:
        raise ConfigurationError("the mysql backend needs mysqlclient: install kannuki[mysql]") from None
    return MySQLdb
