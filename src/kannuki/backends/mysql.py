"""``mysql://`` / ``mariadb://``: session locks on GET_LOCK / RELEASE_LOCK through mysqlclient.

Each acquisition pins one connection of the locker's own pool until release
(``acquire_many`` takes all its keys on one connection); a connection goes
back to the pool only when it holds nothing. Waiting happens on the server
(GET_LOCK's timeout), after in-process waiters for the same key have queued
on a :class:`~kannuki._core.LockTable`, so at most one connection per key
per process waits on the server. The name sent to the server comes from
:func:`mysql_lock_name` (64 characters at most, see ``_mysql_names``).

Options: ``connect_timeout`` (seconds, default 5), ``pool_size`` (idle
connections kept, default 8), ``fencing`` (tokens from a server-side counter
table), ``fencing_table``, ``allow_cluster`` (accept a Galera node).
"""

from __future__ import annotations

import functools
import math
import os
import re
import select
import threading
import time
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from kannuki._core import lock_id as compute_lock_id
from kannuki.backends._mysql_names import NAMESPACE, mysql_lock_name
from kannuki.backends._tables import object_table, process_table
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, LockRequest, reject_unknown_options
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["MySQLBackend", "cluster_refusal", "mysql_lock_name"]

_monotonic = time.monotonic

# One server-side wait lasts at most this long; "forever" re-issues it.
FOREVER_SLICE = 7 * 24 * 3600.0
# On a wrapped connection nobody can KILL the wait from the side, so it waits
# in short slices and Ctrl-C takes effect at the end of the current one.
WRAPPED_SLICE = 1.0
# Extra time to wait for the server's answer beyond GET_LOCK's own timeout.
ANSWER_GRACE = 30.0
# An idle pooled connection unused this long is pinged before reuse.
STALE_AFTER = 30.0

_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


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

    __slots__ = ("db", "conn_id", "locks", "owned", "mariadb", "last_used", "guard", "broken")

    def __init__(self, db: Any, owned: bool) -> None:
        self.db = db
        self.conn_id: int = db.thread_id()  # = CONNECTION_ID(), read from the handshake
        self.locks = 0
        self.owned = owned
        self.mariadb = "mariadb" in db.get_server_info().lower()
        self.last_used = _monotonic()
        # A wrapped connection may be shared by threads; one statement at a time.
        self.guard = threading.Lock()
        self.broken = False


class _Held:
    """One acquisition this backend holds: where, under which server name, since when."""

    __slots__ = ("session", "literal", "table_token", "name", "since")

    def __init__(self, session: _Session, literal: bytes, table_token: int, name: str) -> None:
        self.session = session
        self.literal = literal  # the escaped server name, ready for SQL
        self.table_token = table_token
        self.name = name
        self.since = time.time()


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
    return bytes(_mysql.string_literal(server_name.encode("ascii")))


def _scalar(db: Any, sql: bytes) -> Any:
    """Run ``sql`` and return the first column of its first row."""
    db.query(sql)
    return db.store_result().fetch_row()[0][0]


def _is_driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("MySQLdb", "_mysql"))


class MySQLBackend(Backend):
    """Session locks on MySQL 5.7+ / MariaDB 10.0.2+ via GET_LOCK."""

    scheme = "mysql"
    supports_shared = False
    supports_transaction = False

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        *,
        connection: Any = None,
        connect_timeout: float = 5.0,
        pool_size: int = 8,
        fencing: bool = False,
        fencing_table: str = "kannuki_fencing",
        allow_cluster: bool = False,
        scheme: str = "mysql",
    ) -> None:
        if not (isinstance(connect_timeout, (int, float)) and 0 < connect_timeout < math.inf):
            raise ConfigurationError(f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}")
        if not (isinstance(pool_size, int) and not isinstance(pool_size, bool) and pool_size >= 0):
            raise ConfigurationError(f"pool_size must be an int >= 0, not {pool_size!r}")
        if not isinstance(fencing, bool):
            raise ConfigurationError(f"fencing must be True or False, not {fencing!r}")
        if not (
            isinstance(fencing_table, str) and 0 < len(fencing_table) <= 64 and set(fencing_table) <= _IDENTIFIER_CHARS
        ):
            raise ConfigurationError(
                f"fencing_table must be a plain table name (letters, digits, _), not {fencing_table!r}"
            )
        if not isinstance(allow_cluster, bool):
            raise ConfigurationError(f"allow_cluster must be True or False, not {allow_cluster!r}")
        if fencing and connection is not None:
            raise ConfigurationError(
                "fencing needs connections kannuki owns (its counter commits on its own); use a mysql:// URL"
            )
        self.scheme = scheme
        self._params = dict(params or {})
        self._params.update(connect_timeout=max(1, math.ceil(connect_timeout)), autocommit=True, charset="utf8mb4")
        self.pool_size = pool_size
        self.fencing = fencing
        self._fencing_sql = (
            b"INSERT INTO `" + fencing_table.encode() + b"` (name, value) VALUES (%s, LAST_INSERT_ID(1))"
            b" ON DUPLICATE KEY UPDATE value = LAST_INSERT_ID(value + 1)"
        )
        self._fencing_ddl = (
            b"CREATE TABLE IF NOT EXISTS `" + fencing_table.encode() + b"` (name VARCHAR(64) CHARACTER SET ascii"
            b" COLLATE ascii_bin NOT NULL PRIMARY KEY, value BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"
        )
        self._fencing_ready = False
        self.allow_cluster = allow_cluster
        self._idle: list[_Session] = []
        self._sessions: set[_Session] = set()  # every connection we opened and have not closed
        self._held: dict[tuple[int, int], _Held] = {}  # by (lock_id, token)
        self._pid = os.getpid()
        self._wrapped: _Session | None = None
        self._wrapped_obj = connection
        self._checked_wrapped = False
        # In-process queues, one per server (or per wrapped connection), shared by every locker on it.
        if connection is not None:
            self._table = object_table("mysql", connection)
        else:
            where = self._params.get("unix_socket") or f"{self._params.get('host')}:{self._params.get('port')}"
            self._table = process_table(("mysql", "server", where))
        self._wait_slice = WRAPPED_SLICE if connection is not None else FOREVER_SLICE

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "MySQLBackend":
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
        return type(obj).__module__.startswith("MySQLdb")

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> "MySQLBackend":
        """Lock on the caller's MySQLdb connection (every lock of this locker pins it)."""
        known = {k: options.pop(k) for k in ("allow_cluster", "fencing") if k in options}
        reject_unknown_options("mysql", options)
        return cls(connection=obj, **known)

    def describe(self) -> str:
        if self._wrapped_obj is not None:
            return f"{self.scheme}:// (wrapped connection)"
        where = self._params.get("unix_socket") or f"{self._params['host']}:{self._params['port']}"
        user = self._params.get("user")
        database = self._params.get("database", "")
        return f"{self.scheme}://{user + '@' if user else ''}{where}/{database}"

    # -- connections --------------------------------------------------------

    def _connect(self) -> _Session:
        driver = _driver()
        try:
            db = driver.connect(**self._params)
        except driver.Error as exc:
            raise BackendError(f"cannot connect to {self.describe()}: {exc}") from exc
        session = _Session(db, owned=True)
        self._sessions.add(session)
        try:
            self._check_cluster(session)
        except BaseException:
            self._discard(session)
            raise
        return session

    def _check_cluster(self, session: _Session) -> None:
        try:
            session.db.query(b"SHOW VARIABLES LIKE 'wsrep_on'")
            rows = session.db.store_result().fetch_row()
        except Exception as exc:
            raise self._failure(session, "cannot read wsrep_on", exc) from exc
        value = rows[0][1] if rows else None
        reason = cluster_refusal(value.decode() if isinstance(value, bytes) else value, self.allow_cluster)
        if reason:
            raise NotSupportedError(reason)

    def _checkout(self) -> _Session:
        """A connection for one acquisition: the wrapped one, an idle pooled one, or a new one."""
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
            try:
                _scalar(session.db, b"SELECT 1")  # may have died idle (wait_timeout, server restart)
                return session
            except Exception:
                self._discard(session)
        return self._connect()

    def _wrapped_session(self) -> _Session:
        if os.getpid() != self._pid:
            raise BackendError("this locker wraps a connection of the parent process; open a new one in the child")
        session = self._wrapped
        if session is None:
            session = _Session(self._wrapped_obj, owned=False)
            with session.guard:
                self._check_cluster(session)
            self._wrapped = session
        return session

    def _checkin(self, session: _Session) -> None:
        """Back to the pool if it pins nothing and is healthy; closed when the pool is full."""
        if not session.owned or session.locks or session.broken:
            return
        session.last_used = _monotonic()
        if len(self._idle) < self.pool_size:
            self._idle.append(session)
        else:
            self._discard(session)

    def _discard(self, session: _Session) -> None:
        """Drop a connection; closing it ends its server session, which frees every lock it held.

        A wrapped connection is the caller's: it is never closed nor written off.
        """
        if not session.owned:
            return
        session.broken = True
        self._sessions.discard(session)
        try:
            session.db.close()
        except Exception:
            pass

    def _failure(self, session: _Session, what: str, exc: BaseException) -> BackendError:
        self._discard(session)
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
    ) -> int:
        if shared or transaction is not None or ttl is not None:
            self._refuse(shared, transaction, ttl, name)
        table = self._table
        table_token: int = table.acquire(lock_id, False, 0.0, None)
        deadline = None
        if not table_token:
            if timeout == 0:
                return 0
            on_wait()
            on_wait = NO_WAIT_CALLBACK
            if timeout is not None:
                deadline = _monotonic() + timeout
            table_token = table.acquire(lock_id, False, timeout, None)
            if not table_token:
                return 0
        elif timeout:
            deadline = _monotonic() + timeout
        try:
            session = self._checkout()
            literal = _name_literal(name)
            token = self._lock_on(session, literal, timeout, deadline, on_wait)
            if token:
                token = self._token_for(session, literal, table_token)
        except BaseException:
            table.release(lock_id, table_token)
            raise
        if not token:
            table.release(lock_id, table_token)
            self._checkin(session)
            return 0
        self._held[lock_id, token] = _Held(session, literal, table_token, name)
        return token

    def _refuse(self, shared: bool, transaction: Any, ttl: float | None, name: str) -> None:
        if shared:
            raise NotSupportedError(
                f"the {self.scheme} backend has no shared locks (GET_LOCK is exclusive); use an exclusive lock, "
                "or the postgresql backend for shared locks",
                key=name,
            )
        if transaction is not None:
            raise NotSupportedError(
                f"the {self.scheme} backend has no transaction-level locks; use a session lock "
                "(drop transaction=) and release it when the transaction ends, or the postgresql backend",
                key=name,
            )
        raise NotSupportedError(
            f"the {self.scheme} backend has no leases: a lock lives as long as its connection; drop ttl=", key=name
        )

    def _lock_on(
        self,
        session: _Session,
        literal: bytes,
        timeout: float | None,
        deadline: float | None,
        on_wait: Callable[[], None],
    ) -> int:
        """GET_LOCK on ``session``; 1 when taken, 0 when not within the timeout. Leaves nothing held when it raises."""
        db = session.db
        if timeout == 0 or on_wait is not NO_WAIT_CALLBACK:
            with session.guard:
                try:
                    got = _scalar(db, b"SELECT GET_LOCK(%s, 0)" % literal)
                except BaseException as exc:
                    self._give_up(session, literal, exc, "GET_LOCK failed")
                    raise
            if self._granted(session, got):
                return 1
            if timeout == 0:
                return 0
            on_wait()
        return self._wait_on_server(session, literal, deadline)

    def _wait_on_server(self, session: _Session, literal: bytes, deadline: float | None) -> int:
        db = session.db
        with session.guard:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                wait = self._wait_slice if remaining is None else min(remaining, self._wait_slice)
                seconds = b"%.6f" % wait if session.mariadb else b"%d" % math.ceil(wait)  # MySQL: whole seconds
                try:
                    db.send_query(b"SELECT GET_LOCK(%s, %s)" % (literal, seconds))
                    if not _readable_within(db.fileno(), wait + ANSWER_GRACE):
                        raise TimeoutError(f"no answer from the server {ANSWER_GRACE:g}s after GET_LOCK's timeout")
                    db.read_query_result()
                    got = db.store_result().fetch_row()[0][0]
                except BaseException as exc:  # Ctrl-C included: end the wait on the server first
                    self._give_up(session, literal, exc, "GET_LOCK failed", waiting=True)
                    raise
                if self._granted(session, got):
                    return 1
                if remaining is not None and wait >= remaining:
                    return 0

    def _granted(self, session: _Session, got: Any) -> bool:
        """GET_LOCK's answer: True when taken (counted on ``session``), False when its timeout ran out."""
        if got == 1:
            session.locks += 1
            return True
        if got is None:
            raise self._failure(session, "GET_LOCK returned NULL", RuntimeError("server error"))
        return False

    def _give_up(self, session: _Session, literal: bytes, exc: BaseException, what: str, waiting: bool = False) -> None:
        """Undo an acquisition that ``exc`` interrupted; an Exception becomes BackendError(``what``).

        The caller re-raises anything else (Ctrl-C) as it is.
        """
        self._abandon(session, literal, exc, waiting)
        if isinstance(exc, Exception):
            raise self._failure(session, what, exc) from exc

    def _abandon(self, session: _Session, literal: bytes, exc: BaseException, waiting: bool = False) -> None:
        """An acquisition on ``session`` failed or was interrupted: make sure it holds nothing new."""
        if session.owned:
            # Our own connection pins only this acquisition: kill its server session (ends a
            # pending wait and frees anything taken), then drop it.
            if waiting:
                self._kill_from_side(session.conn_id)
            self._discard(session)
            return
        # The caller's connection: let a pending wait finish (one slice at most), then undo
        # whatever it took. RELEASE_LOCK of a name this connection does not hold is harmless.
        try:
            db = session.db
            if waiting and not _is_driver_error(exc):
                db.read_query_result()
                db.store_result()
            _scalar(db, b"SELECT RELEASE_LOCK(%s)" % literal)
        except Exception:
            pass  # the connection failed: its server session, and the lock, end with it

    def _kill_from_side(self, conn_id: int) -> None:
        try:
            side = _driver().connect(**self._params)
        except Exception:
            return  # the server will see the closed socket instead
        try:
            side.query(b"KILL %d" % conn_id)
        except Exception:
            pass
        finally:
            side.close()

    def _token_for(self, session: _Session, literal: bytes, table_token: int) -> int:
        """The acquisition's token: the server counter's next value with fencing, else the table token."""
        if not self.fencing:
            return table_token
        db = session.db
        try:
            if not self._fencing_ready:
                db.query(self._fencing_ddl)
                self._fencing_ready = True
            db.query(self._fencing_sql % literal)
            return int(db.insert_id())
        except BaseException as exc:
            self._give_up(session, literal, exc, "the fencing counter failed")
            raise

    def release(self, name: str, lock_id: int, token: int) -> None:
        entry = self._held.pop((lock_id, token), None)
        if entry is None:
            raise LockLostError(f"the lock {name!r} is not held by this locker (forked, or closed)", key=name)
        try:
            self._release_on(entry.session, entry.literal, name)
        finally:
            self._table.release(lock_id, entry.table_token)
            self._checkin(entry.session)

    def _release_on(self, session: _Session, literal: bytes, name: str) -> None:
        session.locks -= 1
        if session.broken:
            raise LockLostError(f"the lock {name!r} was lost: its connection failed while it was held", key=name)
        with session.guard:
            try:
                released = _scalar(session.db, b"SELECT RELEASE_LOCK(%s)" % literal)
            except Exception as exc:
                self._discard(session)
                raise LockLostError(
                    f"the lock {name!r} was lost: its connection (id {session.conn_id}) failed: {exc}", key=name
                ) from exc
        if released != 1:
            self._discard(session)  # it no longer holds what we think: trust nothing on it
            why = "held by another connection" if released == 0 else "no longer exists"
            raise LockLostError(f"the lock {name!r} was lost before release: it {why} on the server", key=name)

    def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[int] | None:
        """All or none, in the given order, on one connection; given back when one is not had in time."""
        for request in requests:
            if request.shared:
                self._refuse(True, None, None, request.name)
        deadline = None if timeout is None else _monotonic() + timeout
        taken: list[tuple[LockRequest, int]] = []  # (request, table token)
        session: _Session | None = None
        literals: list[bytes] = []
        try:
            for request in requests:
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                table_token = self._table.acquire(request.lock_id, False, remaining, None)
                if not table_token:
                    break
                taken.append((request, table_token))
                if session is None:
                    session = self._checkout()
                literal = _name_literal(request.name)
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                if not self._lock_on(session, literal, remaining, None if remaining is None else deadline, on_wait):
                    break
                literals.append(literal)
            else:
                assert session is not None
                tokens = [self._token_for(session, literal, t) for literal, (_r, t) in zip(literals, taken)]
                for (request, table_token), literal, token in zip(taken, literals, tokens):
                    self._held[request.lock_id, token] = _Held(session, literal, table_token, request.name)
                return tokens
        except BaseException:
            if session is not None and session.owned:
                self._discard(session)  # frees every lock taken on it
            elif session is not None:
                self._undo(session, literals)
            for request, table_token in taken:
                self._table.release(request.lock_id, table_token)
            raise
        if session is not None:
            self._undo(session, literals)
            self._checkin(session)
        for request, table_token in taken:
            self._table.release(request.lock_id, table_token)
        return None

    def _undo(self, session: _Session, literals: list[bytes]) -> None:
        """RELEASE_LOCK each of ``literals`` on ``session``, last first; on failure drop the connection."""
        for literal in reversed(literals):
            session.locks -= 1
            try:
                with session.guard:
                    _scalar(session.db, b"SELECT RELEASE_LOCK(%s)" % literal)
            except Exception:
                self._discard(session)
                return

    # -- inspection ---------------------------------------------------------

    def _ask(self, sql: bytes, name: str) -> tuple[Any, ...]:
        """First row of a read-only statement about ``name``, on a pooled connection."""
        session = self._checkout()
        try:
            with session.guard:
                session.db.query(sql % _name_literal(name))
                rows = session.db.store_result().fetch_row()
        except Exception as exc:
            raise self._failure(session, "inspecting locks failed", exc) from exc
        self._checkin(session)
        return rows[0] if rows else ()

    def held(self, name: str, lock_id: int) -> bool:
        return self._ask(b"SELECT IS_USED_LOCK(%s)", name)[0] is not None

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        # One round trip; without the PROCESS privilege the processlist shows only our own
        # connections, and user / host stay None.
        row = self._ask(
            b"SELECT x.id, p.USER, p.HOST FROM (SELECT IS_USED_LOCK(%s) AS id) x"
            b" LEFT JOIN information_schema.PROCESSLIST p ON p.ID = x.id",
            name,
        )
        if not row or row[0] is None:
            return []
        conn_id, user, host = row
        ours = [(t, h) for (lid, t), h in list(self._held.items()) if lid == lock_id and h.session.conn_id == conn_id]
        token, since = (ours[0][0], ours[0][1].since) if ours else (None, None)
        return [
            Holder(name=name, lock_id=lock_id, token=token, pid=int(conn_id),
                   user=_text(user), host=_text(host), since=since)
        ]

    def list_held(self) -> list[Holder]:
        """kannuki's locks on the server: needs MariaDB's METADATA_LOCK_INFO plugin or MySQL's
        performance_schema; otherwise only this locker's own."""
        session = self._checkout()
        rows: tuple[Any, ...] = ()
        for sql in (
            b"SELECT m.TABLE_SCHEMA, m.THREAD_ID, p.USER, p.HOST FROM information_schema.METADATA_LOCK_INFO m"
            b" LEFT JOIN information_schema.PROCESSLIST p ON p.ID = m.THREAD_ID WHERE m.LOCK_TYPE = 'User lock'",
            b"SELECT m.OBJECT_NAME, t.PROCESSLIST_ID, t.PROCESSLIST_USER, t.PROCESSLIST_HOST"
            b" FROM performance_schema.metadata_locks m JOIN performance_schema.threads t"
            b" ON t.THREAD_ID = m.OWNER_THREAD_ID WHERE m.OBJECT_TYPE = 'USER LEVEL LOCK'",
        ):
            try:
                with session.guard:
                    session.db.query(sql)
                    rows = session.db.store_result().fetch_row(0)
                break
            except Exception as exc:
                if not _is_driver_error(exc):
                    raise
                if exc.args and exc.args[0] in (2006, 2013):
                    raise self._failure(session, "listing locks failed", exc) from exc
        else:
            self._checkin(session)
            return self._own_holders()
        self._checkin(session)
        own = self._own_holders()
        seen = {(holder.pid, mysql_lock_name(holder.name)) for holder in own}
        for server_name, conn_id, user, host in rows:
            server_name = _text(server_name) or ""
            if not server_name.startswith(NAMESPACE) or (conn_id, server_name) in seen:
                continue
            # A readable server name gives the full name back; a hashed one does not (lock_id 0).
            readable = "#" not in server_name
            name = server_name[len(NAMESPACE):] if readable else server_name
            own.append(Holder(name=name, lock_id=compute_lock_id(name) if readable else 0,
                              pid=conn_id, user=_text(user), host=_text(host)))
        return own

    def _own_holders(self) -> list[Holder]:
        return [
            Holder(name=held.name, lock_id=lock_id, token=token, pid=held.session.conn_id, since=held.since)
            for (lock_id, token), held in list(self._held.items())
        ]

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Close every connection kannuki opened; locks still held are freed on the server (and lost).

        On a wrapped connection (left open) the locks still held are released.
        """
        held, self._held = self._held, {}
        for (lock_id, _token), entry in held.items():
            if not entry.session.owned and os.getpid() == self._pid:
                self._undo(entry.session, [entry.literal])
            self._table.release(lock_id, entry.table_token)
        for session in list(self._sessions):
            self._discard(session)
        self._idle.clear()

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
        self._sessions = set()
        self._idle = []
        self._held = {}
        self._wrapped = None
        self._pid = os.getpid()


def _readable_within(fd: int, seconds: float) -> bool:
    """Wait for the server's answer; a signal handler's exception (Ctrl-C) propagates."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(seconds * 1000.0))


def _text(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _seconds_from_url(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"connect_timeout in the url must be a number of seconds, not {value!r}") from None


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
