# WARNING: generated from src/kannuki/backends/sqlite_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""``sqlite:///path``: leases in a SQLite file, for the processes of one machine.

The embedded default of the command line: no server, only the standard
library's ``sqlite3``. Every held lock is a row (name, token, holder pid and
host, shared, acquired_at, expires_at) in ``kannuki_locks``; fencing tokens
come from a per-key counter row in ``kannuki_tokens`` and strictly increase.
A writer that waits for a key marks its intent in ``kannuki_intents`` (name,
owner, expires_at), refreshed at every try; while a live mark exists no new
shared holder gets in, so overlapping readers cannot starve a writer. A mark
that is not refreshed (its waiter died) expires after ``INTENT_TTL`` seconds.

- URL: ``sqlite:///relative/path.db`` (relative to the current directory) or
  ``sqlite:////absolute/path.db`` (four slashes), as in SQLAlchemy. The file
  is created on first use; its directory must exist. ``:memory:`` is refused
  (one database per connection would exclude nobody): use ``memory://``.
- Options: ``ttl`` (lease seconds, default 30), ``busy_timeout`` (seconds a
  statement waits for SQLite's own write lock, default 5).
- Acquire is one short ``BEGIN IMMEDIATE`` transaction; expired rows count as
  free. Release is ``DELETE ... WHERE name=? AND token=? AND expires_at > now``
  (compare-and-delete: a stale holder frees nothing), renew an ``UPDATE`` with
  the same guard. A holder killed with SIGKILL keeps its row until its lease
  expires; then the next acquirer takes over. The grant's ``ttl`` is the
  lease, which the hold owner renews every ttl/3.
- Waiting polls with backoff; threads (and tasks) of one process queue
  locally first, so only one of them polls the file per key.
- Every sqlite3 call blocks: the sync backend makes it directly, the async one
  in a worker thread, so an event loop never waits on SQLite. Connections
  (WAL, ``synchronous=NORMAL``), at most ``MAX_CONNECTIONS`` per backend, are
  shared by all threads: each call borrows one for its few statements and
  gives it back, so short-lived threads leave no connections behind.
- Leases use wall-clock time (``time.time``), which every process shares.
  Machines with one clock only: SQLite over a network filesystem is unsafe.

The async module is the source; the sync one is generated from it by
``tools/async_to_sync.py``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from kannuki._compat import run_blocking, sleep, table_acquire, table_release
from kannuki.backends._lease import DEFAULT_TTL, HOST, INTENT_TTL, LocalGate, check_ttl, poll_backoff
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, reject_unknown_options
from kannuki.backends.base import Backend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["MAX_CONNECTIONS", "SQLiteBackend", "path_from_url"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kannuki_locks (
    name TEXT NOT NULL,
    token INTEGER NOT NULL,
    lock_id INTEGER NOT NULL,
    shared INTEGER NOT NULL,
    pid INTEGER,
    host TEXT,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (name, token)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kannuki_tokens (
    name TEXT PRIMARY KEY,
    last_token INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kannuki_intents (
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (name, owner)
) WITHOUT ROWID;
"""

_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED

# Connections per backend, shared by all its threads (see _Connections), and how long a call
# waits for one beyond busy_timeout before it is a BackendError.
MAX_CONNECTIONS = 4
CONNECTION_WAIT = 30.0

# One-statement steps; ``:now`` is bound to the clock inside the blocking step.
_RELEASE = "DELETE FROM kannuki_locks WHERE name = :name AND token = :token AND expires_at > :now"
_DROP = "DELETE FROM kannuki_locks WHERE name = :name AND token = :token"
_RENEW = (
    "UPDATE kannuki_locks SET expires_at = :now + :ttl"
    " WHERE name = :name AND token = :token AND expires_at > :now"
)
_CHECK = "SELECT 1 FROM kannuki_locks WHERE name = :name AND token = :token AND expires_at > :now LIMIT 1"
_FORCE = "DELETE FROM kannuki_locks WHERE name = :name AND expires_at > :now"
_WITHDRAW = "DELETE FROM kannuki_intents WHERE name = :name AND (owner = :owner OR expires_at <= :now)"
_HOLDERS = (
    "SELECT name, lock_id, shared, token, pid, host, acquired_at, expires_at FROM kannuki_locks"
    " WHERE expires_at > :now {and_name} ORDER BY name, token LIMIT :limit"
)
_HOLDERS_OF_ONE = _HOLDERS.format(and_name="AND name = :name")
_HOLDERS_OF_ALL = _HOLDERS.format(and_name="")


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


def path_from_url(url: str) -> str:
    """The database path of a ``sqlite:///`` URL (SQLAlchemy convention); ConfigurationError if bad."""
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"url {url!r}: use sqlite:///relative.db or sqlite:////absolute/path.db (no host, no query)"
        )
    path = unquote(parts.path[1:])  # drop the slash that ends "sqlite://"
    if not path:
        raise ConfigurationError(f"url {url!r} names no database file: use sqlite:///path/to/locks.db")
    if path == ":memory:":
        raise ConfigurationError(
            "url 'sqlite:///:memory:' would give each connection its own database; use memory:// for in-process locks"
        )
    return path


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()  # rolls back an open transaction
    except sqlite3.Error:
        pass


class _Connections:
    """At most ``size`` connections of one backend to its database file, shared by every thread.

    ``take`` hands out an idle connection, opens one while fewer than ``size``
    exist, or waits (``CONNECTION_WAIT`` at most) for one to come back;
    ``give_back`` returns it, ``discard`` closes one that failed (its place
    is free again). A call holds a connection only for its few statements, so
    a handful serve any number of threads, and threads that come and go leave
    no connections behind (one per thread would leak theirs; opening one per
    call would pay WAL setup every time, and SQLite defers closing the file of
    a connection while another one in the process holds a lock on it, so
    short-lived connections pile up descriptors). A connection is used by one
    thread at a time (``check_same_thread=False`` only lets it change threads
    between calls), and never goes back while a transaction is open on it.
    Called from worker threads in the async backend: a real lock guards it.
    """

    def __init__(self, path: str, busy_timeout: float, size: int = MAX_CONNECTIONS) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.size = size
        self._idle: list[sqlite3.Connection] = []
        self._count = 0  # open connections: idle and lent
        self._cond = threading.Condition(threading.Lock())

    def take(self) -> sqlite3.Connection:
        deadline = time.monotonic() + CONNECTION_WAIT + self.busy_timeout
        with self._cond:
            while not self._idle and self._count >= self.size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(
                        f"all {self.size} connections to the sqlite lock database {self.path} stayed busy"
                    )
                self._cond.wait(remaining)
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return self._open()
        except BaseException:
            self._lost()
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open the sqlite lock database {self.path}: {exc}") from exc
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """WAL mode, the pragmas and the schema on a new connection, waiting out a busy database.

        Connections that set up a new database file at the same moment can be
        refused at once, without SQLite's busy handler (one switches the file
        to WAL while another reads it: SQLite answers SQLITE_BUSY rather than
        risk a deadlock). Those answers are retried here, up to ``busy_timeout``.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: commits skip fsync; after a power cut every holder is gone anyway.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)  # in the caller's thread (async: a worker thread), never on an event loop
            delay = min(delay * 2, 0.05)

    def _lost(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def give_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            self.discard(conn)
            return
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()

    def discard(self, conn: sqlite3.Connection) -> None:
        _close_quietly(conn)
        self._lost()

    def close(self) -> None:
        """Close the idle connections (lent ones come back and are kept for later use)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            _close_quietly(conn)

    def forget(self) -> None:
        """In a forked child: the parent's connections must not be used nor closed here."""
        self._idle = []
        self._count = 0
        self._cond = threading.Condition(threading.Lock())


class SQLiteBackend(Backend):
    """Leases in a SQLite database file shared by the processes of one machine."""

    scheme = "sqlite"
    supports_shared = True
    supports_ttl = True

    def __init__(
        self,
        path: str,
        *,
        ttl: float = DEFAULT_TTL,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.ttl = self._lease = check_ttl(ttl, "sqlite")
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, (int, float))
            or not busy_timeout >= 0
        ):
            raise ConfigurationError(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        self._now = clock
        self._gate = LocalGate()
        self._connections = _Connections(self.path, self.busy_timeout)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteBackend:
        path = path_from_url(url)
        known = {name: options.pop(name) for name in ("ttl", "busy_timeout") if name in options}
        reject_unknown_options("sqlite", options)
        return cls(path, **known)

    # -- blocking steps (run directly by the sync backend, in a worker thread by the async one) --

    def _using(self, what: str, work: Callable[[sqlite3.Connection], Any], busy: Any = None) -> Any:
        """``work(conn)`` on a borrowed connection; ``busy`` (when not None) is the answer to SQLITE_BUSY.

        A connection that failed, or was interrupted midway, is closed rather
        than given back; any other sqlite error is BackendError.
        """
        conn = self._connections.take()
        try:
            result = work(conn)
        except sqlite3.Error as exc:
            if busy is not None and _is_busy(exc) and not conn.in_transaction:
                self._connections.give_back(conn)
                return busy  # SQLite's own write lock stayed busy: poll again, like a held lock
            self._connections.discard(conn)
            raise BackendError(f"sqlite {what} failed on {self.path}: {exc}") from exc
        except BaseException:
            self._connections.discard(conn)
            raise
        self._connections.give_back(conn)
        return result

    def _try_acquire(
        self, name: str, lock_id: int, shared: bool, ttl: float, taken: list[int], intent: str | None = None
    ) -> int:
        """One ``BEGIN IMMEDIATE`` try: the new token, or 0 when held (or SQLite stayed busy).

        The token goes into ``taken`` just before COMMIT, and out again if the
        transaction rolls back: so whoever is interrupted after this returns
        (a cancelled task, Ctrl-C) finds in ``taken`` the row to delete.
        ``intent`` (a waiting writer's mark): written or refreshed when the key
        is busy, deleted in the transaction that takes the lock. A shared try
        fails while another writer's mark is live.
        """

        def attempt(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = self._now()
                rows = conn.execute(
                    "SELECT shared, expires_at FROM kannuki_locks WHERE name = ?", (name,)
                ).fetchall()
                live = [row_shared for row_shared, expires_at in rows if expires_at > now]
                busy = bool(live) and not (shared and all(live))
                if shared and not busy:
                    busy = (
                        conn.execute(
                            "SELECT 1 FROM kannuki_intents WHERE name = ? AND expires_at > ? LIMIT 1",
                            (name, now),
                        ).fetchone()
                        is not None
                    )
                if busy:
                    if intent is None:
                        conn.rollback()
                        return 0
                    conn.execute(
                        "INSERT OR REPLACE INTO kannuki_intents (name, owner, expires_at) VALUES (?, ?, ?)",
                        (name, intent, now + INTENT_TTL),
                    )
                    conn.execute("COMMIT")
                    return 0
                if intent is not None:  # ours, and any mark whose waiter died
                    conn.execute(_WITHDRAW, {"name": name, "owner": intent, "now": now})
                if len(live) < len(rows):  # reap expired leases of this key
                    conn.execute("DELETE FROM kannuki_locks WHERE name = ? AND expires_at <= ?", (name, now))
                row = conn.execute("SELECT last_token FROM kannuki_tokens WHERE name = ?", (name,)).fetchone()
                token: int = (row[0] if row else 0) + 1
                conn.execute(
                    "INSERT OR REPLACE INTO kannuki_tokens (name, last_token) VALUES (?, ?)", (name, token)
                )
                conn.execute(
                    "INSERT INTO kannuki_locks (name, token, lock_id, shared, pid, host, acquired_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, token, lock_id, int(shared), os.getpid(), HOST, now, now + ttl),
                )
                taken.append(token)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # not committed: nothing to undo (the token may be reused)
                    taken.clear()
                    conn.rollback()
                raise
            return token

        token: int = self._using("acquire", attempt, busy=0)
        return token

    def _write(self, what: str, statement: str, params: dict[str, Any]) -> int:
        """One autocommit statement (``:now`` bound here); the number of rows it changed."""
        bound = dict(params, now=self._now())
        count: int = self._using(what, lambda conn: conn.execute(statement, bound).rowcount)
        return count

    def _read(self, what: str, statement: str, params: dict[str, Any]) -> list[Any]:
        bound = dict(params, now=self._now())
        rows: list[Any] = self._using(what, lambda conn: conn.execute(statement, bound).fetchall())
        return rows

    def _select(self, name: str | None, limit: int = -1) -> list[Holder]:
        """The live holders of ``name`` (of every key when None), oldest token first."""
        statement = _HOLDERS_OF_ALL if name is None else _HOLDERS_OF_ONE
        rows = self._read("query", statement, {"name": name, "limit": limit})
        return [
            Holder(name=n, lock_id=i, shared=bool(s), token=t, pid=p, host=h, since=a, expires_at=e)
            for n, i, s, t, p, h, a, e in rows
        ]

    # -- locking --------------------------------------------------------------

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
        if transaction is not None:
            raise NotSupportedError("the sqlite backend has no transaction-level locks; drop transaction=")
        lease = self._lease if ttl is None else ttl
        taken: list[int] = []
        try:
            token = run_blocking(self._try_acquire, name, lock_id, shared, lease, taken, None)
            if not token and timeout != 0:
                on_wait()
                token = self._wait(name, lock_id, shared, lease, timeout, taken)
        except BaseException:
            for stray in taken:  # committed, but the caller will never hear of it: delete it again
                self._drop_quietly(name, stray)
            raise
        return Grant(name, lock_id, shared, token, lease) if token else None

    def _wait(
        self, name: str, lock_id: int, shared: bool, ttl: float, timeout: float | None, taken: list[int]
    ) -> int:
        """Queue behind this process's waiters for ``name``, then poll the file with backoff; token or 0.

        A writer marks its intent at every try, and withdraws it when it gives
        up (the try that takes the lock deletes it).
        """
        start = time.monotonic()
        gate = table_acquire(self._gate.table, name, shared, timeout, None)
        if not gate:
            return 0
        intent = None if shared else os.urandom(8).hex()
        token = 0
        try:
            backoff = poll_backoff()
            while True:
                token = run_blocking(self._try_acquire, name, lock_id, shared, ttl, taken, intent)
                if token:
                    return token
                remaining = None if timeout is None else timeout - (time.monotonic() - start)
                if remaining is not None and remaining <= 0:
                    return 0
                sleep(backoff.next_delay(remaining))
        finally:
            try:
                if intent is not None and not token:
                    self._withdraw_quietly(name, intent)
            finally:
                table_release(self._gate.table, name, gate)

    def _withdraw_quietly(self, name: str, owner: str) -> None:
        """Delete a waiting writer's mark (and expired ones of the key); never raises."""
        try:
            run_blocking(self._write, "withdraw", _WITHDRAW, {"name": name, "owner": owner})
        except Exception:  # the store is down: the mark runs out by itself
            pass

    def _drop_quietly(self, name: str, token: int) -> None:
        """Delete this acquisition's row whatever its lease says (the step runs to its end); never raises."""
        try:
            run_blocking(self._write, "release", _DROP, {"name": name, "token": token})
        except Exception:  # the store is down: the row's lease runs out by itself
            pass

    def release(self, grant: Grant) -> None:
        deleted = run_blocking(self._write, "release", _RELEASE, {"name": grant.name, "token": grant.token})
        if not deleted:
            raise LockLostError(
                f"the lock {grant.name!r} (token {grant.token}) was lost before release: its lease expired"
                " or its row was deleted",
                key=grant.name,
            )

    def abort(self, grant: Grant) -> None:
        # Compare-and-delete on the token, expired or not: tokens never repeat, so only ours goes.
        self._drop_quietly(grant.name, grant.token)

    def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        lease = ttl if ttl is not None else grant.ttl if grant.ttl is not None else self._lease
        params = {"name": grant.name, "token": grant.token, "ttl": lease}
        return bool(run_blocking(self._write, "renew", _RENEW, params))

    def check(self, grant: Grant) -> bool:
        return bool(run_blocking(self._read, "check", _CHECK, {"name": grant.name, "token": grant.token}))

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        # A lease is only a row: delete every live one of the key, whoever holds it. Their
        # holders find out at their next renew / check / release (LockLostError).
        freed: int = run_blocking(self._write, "force release", _FORCE, {"name": name})
        return freed

    # -- inspection -----------------------------------------------------------

    def held(self, name: str, lock_id: int) -> bool:
        return bool(run_blocking(self._select, name, 1))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        return run_blocking(self._select, name)

    def list_held(self) -> list[Holder]:
        return run_blocking(self._select, None)

    # -- life cycle -----------------------------------------------------------

    def close(self) -> None:
        run_blocking(self._connections.close)

    def hand_off(self, grant: Grant) -> bool:
        # A lease is a row named by its token: any process with the file can renew or delete it.
        return True

    def after_fork_in_child(self) -> None:
        # SQLite connections must not cross fork(): abandon the parent's, unclosed.
        self._connections.forget()
        self._gate.reset_after_fork()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"
