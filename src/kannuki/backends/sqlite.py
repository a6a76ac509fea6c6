"""``sqlite:///path``: leases in a SQLite file, for the processes of one machine.

The embedded default of the command line: no server, only the standard
library's ``sqlite3``. Every held lock is a row (name, token, holder pid and
host, shared, acquired_at, expires_at) in ``kannuki_locks``; fencing tokens
come from a per-key counter row in ``kannuki_tokens`` and strictly increase.

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
  expires; then the next acquirer takes over.
- Waiting polls with backoff; threads of one process queue locally first.
- Leases use wall-clock time (``time.time``), which every process shares.
  Machines with one clock only: SQLite over a network filesystem is unsafe.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from kannuki.backends._lease import DEFAULT_TTL, HOST, LocalGate, check_ttl
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, reject_unknown_options
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["SQLiteBackend"]

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
"""

_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED


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


class SQLiteBackend(Backend):
    """Leases in a SQLite database file shared by the processes of one machine."""

    scheme = "sqlite"
    supports_shared = True
    supports_ttl = True
    reports_loss = True

    def __init__(
        self,
        path: str,
        *,
        ttl: float = DEFAULT_TTL,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.ttl = check_ttl(ttl, "sqlite")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise ConfigurationError(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        self._now = clock
        self._gate = LocalGate()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "SQLiteBackend":
        path = path_from_url(url)
        known = {name: options.pop(name) for name in ("ttl", "busy_timeout") if name in options}
        reject_unknown_options("sqlite", options)
        return cls(path, **known)

    # -- connections ----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: commits skip fsync; after a power cut every holder is gone anyway.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open the sqlite lock database {self.path}: {exc}") from exc
        self._local.conn = conn
        with self._guard:
            self._connections.append(conn)
        return conn

    def _fail(self, conn: sqlite3.Connection | None, what: str, exc: sqlite3.Error) -> BackendError:
        if conn is not None and conn.in_transaction:
            try:
                conn.rollback()
            except sqlite3.Error:
                pass
        return BackendError(f"sqlite {what} failed on {self.path}: {exc}")

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
    ) -> int:
        if transaction is not None:
            raise NotSupportedError("the sqlite backend has no transaction-level locks; drop transaction=")
        lease = self.ttl if ttl is None else ttl
        return self._gate.acquire(name, shared, timeout, on_wait, lambda: self._try_acquire(name, lock_id, shared, lease))

    def _try_acquire(self, name: str, lock_id: int, shared: bool, ttl: float) -> int:
        conn = None
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = self._now()
                rows = conn.execute(
                    "SELECT shared, expires_at FROM kannuki_locks WHERE name = ?", (name,)
                ).fetchall()
                live = [row_shared for row_shared, expires_at in rows if expires_at > now]
                if live and not (shared and all(live)):
                    conn.rollback()
                    return 0
                if len(live) < len(rows):  # reap expired leases of this key
                    conn.execute("DELETE FROM kannuki_locks WHERE name = ? AND expires_at <= ?", (name, now))
                row = conn.execute("SELECT last_token FROM kannuki_tokens WHERE name = ?", (name,)).fetchone()
                token = (row[0] if row else 0) + 1
                conn.execute("INSERT OR REPLACE INTO kannuki_tokens (name, last_token) VALUES (?, ?)", (name, token))
                conn.execute(
                    "INSERT INTO kannuki_locks (name, token, lock_id, shared, pid, host, acquired_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, token, lock_id, int(shared), os.getpid(), HOST, now, now + ttl),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except sqlite3.Error as exc:
            if _is_busy(exc):
                return 0  # SQLite's own write lock stayed busy: poll again, like a held lock
            raise self._fail(conn, "acquire", exc) from exc
        return token

    def release(self, name: str, lock_id: int, token: int) -> None:
        conn = None
        try:
            conn = self._conn()
            deleted = conn.execute(
                "DELETE FROM kannuki_locks WHERE name = ? AND token = ? AND expires_at > ?", (name, token, self._now())
            ).rowcount
        except sqlite3.Error as exc:
            raise self._fail(conn, "release", exc) from exc
        if not deleted:
            raise LockLostError(
                f"the lock {name!r} (token {token}) was lost before release: its lease expired", key=name
            )

    def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        conn = None
        now = self._now()
        try:
            conn = self._conn()
            updated = conn.execute(
                "UPDATE kannuki_locks SET expires_at = ? WHERE name = ? AND token = ? AND expires_at > ?",
                (now + (self.ttl if ttl is None else ttl), name, token, now),
            ).rowcount
        except sqlite3.Error as exc:
            raise self._fail(conn, "renew", exc) from exc
        return bool(updated)

    # -- inspection -----------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...], limit: int = -1) -> list[Holder]:
        conn = None
        try:
            conn = self._conn()
            rows = conn.execute(
                "SELECT name, lock_id, shared, token, pid, host, acquired_at, expires_at FROM kannuki_locks"
                f" WHERE expires_at > ? {where} ORDER BY name, token LIMIT ?",
                (self._now(), *params, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(conn, "query", exc) from exc
        return [
            Holder(name=n, lock_id=i, shared=bool(s), token=t, pid=p, host=h, since=a, expires_at=e)
            for n, i, s, t, p, h, a, e in rows
        ]

    def held(self, name: str, lock_id: int) -> bool:
        return bool(self._select("AND name = ?", (name,), limit=1))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        return self._select("AND name = ?", (name,))

    def list_held(self) -> list[Holder]:
        return self._select("", ())

    # -- life cycle -----------------------------------------------------------

    def close(self) -> None:
        with self._guard:
            connections, self._connections = self._connections, []
        self._local = threading.local()
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def after_fork_in_child(self) -> None:
        # SQLite connections must not cross fork(): abandon the parent's, unclosed.
        self._local = threading.local()
        self._connections = []
        self._guard = threading.Lock()
        self._gate.reset_after_fork()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"
