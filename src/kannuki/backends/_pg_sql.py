"""The SQL the PostgreSQL backends send, and small pure helpers around it.

Used by the one PostgreSQL backend source (:mod:`kannuki.backends.postgres_async`)
and so by its generated sync twin (:mod:`kannuki.backends.postgres`): both speak
exactly the same statements. Nothing here touches a connection
or imports a driver. Every value reaches the server as a bound parameter
(psycopg ``%s`` placeholders); the lock key never does, only its 64-bit ID.

Names here are stable: other modules import them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kannuki.backends._types import Holder
from kannuki.errors import BackendError, ConfigurationError, DeadlockError, KannukiError

__all__ = [
    "CHECK_HELD",
    "CONNECTION_INFO",
    "DEADLOCK_DETECTED",
    "DUPLICATE_TABLE",
    "FENCING_CHECK",
    "FENCING_DDL",
    "FENCING_SEQUENCE",
    "FREE_STRANDED",
    "HELD",
    "HOLDERS",
    "INSUFFICIENT_PRIVILEGE",
    "INVALID_SCHEMA_NAME",
    "IN_RECOVERY",
    "LIST_HELD",
    "LOCK_NOT_AVAILABLE",
    "MAX_LOCK_TIMEOUT_MS",
    "QUERY_CANCELED",
    "READ_ONLY_TRANSACTION",
    "SET_LOCK_TIMEOUT",
    "SHOW_LOCK_TIMEOUT",
    "TERMINATE_HOLDERS",
    "TERMINATE_HOLDERS_PRE14",
    "TERMINATE_WAIT_MS",
    "TIMED_WAIT",
    "TIMED_WAIT_LOCK",
    "TIMED_WAIT_LOCK_FENCED",
    "TIMED_WAIT_MANY",
    "TIMED_WAIT_MANY_FENCED",
    "TRY",
    "TRY_LOCK",
    "TRY_LOCK_FENCED",
    "TRY_MANY",
    "TRY_MANY_FENCED",
    "TRY_XACT",
    "TRY_XACT_LOCK",
    "TRY_XACT_LOCK_FENCED",
    "UNDEFINED_TABLE",
    "UNDO_MANY",
    "UNIQUE_VIOLATION",
    "UNLOCK",
    "UNLOCK_ALL",
    "UNLOCK_CHECKED",
    "WAIT",
    "WAIT_LOCK",
    "WAIT_LOCK_FENCED",
    "WAIT_MANY",
    "WAIT_MANY_FENCED",
    "WAIT_XACT",
    "WAIT_XACT_LOCK",
    "WAIT_XACT_LOCK_FENCED",
    "check_not_replica",
    "check_params",
    "holder_from_row",
    "is_not_acquired",
    "lock_timeout_setting",
    "many_params",
    "split_lock_id",
    "sqlstate",
    "stranded_params",
    "timed_params",
    "translate_error",
    "wait_slice",
]

# -- SQLSTATEs that change what an error means ------------------------------

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out: "not acquired", the only one
DEADLOCK_DETECTED = "40P01"
QUERY_CANCELED = "57014"  # Ctrl-C (a cancel request) or statement_timeout
UNDEFINED_TABLE = "42P01"  # the fencing sequence does not exist (any more)
UNIQUE_VIOLATION = "23505"  # two sessions racing CREATE SEQUENCE IF NOT EXISTS
DUPLICATE_TABLE = "42P07"  # the same race, seen another way
INSUFFICIENT_PRIVILEGE = "42501"
READ_ONLY_TRANSACTION = "25006"
INVALID_SCHEMA_NAME = "3F000"  # no schema in search_path to create the sequence in

# The server sequence fencing tokens come from (see "fencing tokens" below).
FENCING_SEQUENCE = "kannuki_fencing_seq"
# The token a fenced statement draws once it holds the lock: 0 in a read-only transaction, where
# nextval() would fail with the lock already taken (and a failed statement cannot undo it).
_NEXT = (
    f"CASE WHEN current_setting('transaction_read_only') = 'off' "
    f"THEN nextval('{FENCING_SEQUENCE}'::regclass) ELSE 0 END"
)

# -- one connection, once ---------------------------------------------------

# Asked once per new connection: the server PID to pin locks to, and whether it is a standby.
CONNECTION_INFO = "SELECT pg_backend_pid(), pg_is_in_recovery()"
# The same for a connection given as transaction= (servers before 14, which do not report in_hot_standby).
IN_RECOVERY = "SELECT pg_is_in_recovery()"

# -- session locks: indexed by ``shared`` (False, True) ---------------------
# Each returns the server PID of the session in the same row, so a pooler that
# moves statements between server backends (PgBouncer in transaction mode) is
# caught at release without an extra round trip.

TRY_LOCK = (
    "SELECT pg_try_advisory_lock(%s), pg_backend_pid()",
    "SELECT pg_try_advisory_lock_shared(%s), pg_backend_pid()",
)
WAIT_LOCK = (
    "SELECT pg_advisory_lock(%s), pg_backend_pid()",
    "SELECT pg_advisory_lock_shared(%s), pg_backend_pid()",
)
UNLOCK = (
    "SELECT pg_advisory_unlock(%s), pg_backend_pid()",
    "SELECT pg_advisory_unlock_shared(%s), pg_backend_pid()",
)
# The same, but only on the server backend the lock was taken on: parameters
# (pid, lock_id); the first column is NULL when the statement landed elsewhere.
UNLOCK_CHECKED = (
    "SELECT CASE WHEN pg_backend_pid() = %s THEN pg_advisory_unlock(%s) END, pg_backend_pid()",
    "SELECT CASE WHEN pg_backend_pid() = %s THEN pg_advisory_unlock_shared(%s) END, pg_backend_pid()",
)
UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"

# -- transaction-level locks: end with the caller's transaction -------------
# (taken, pid), like the session locks: the PID tells whether a pooler sits in between.

TRY_XACT_LOCK = (
    "SELECT pg_try_advisory_xact_lock(%s), pg_backend_pid()",
    "SELECT pg_try_advisory_xact_lock_shared(%s), pg_backend_pid()",
)
WAIT_XACT_LOCK = (
    "SELECT pg_advisory_xact_lock(%s), pg_backend_pid()",
    "SELECT pg_advisory_xact_lock_shared(%s), pg_backend_pid()",
)

# -- the server-side wait ---------------------------------------------------
# ``is_local = true``: the setting dies with the enclosing transaction or
# savepoint, which the backends always roll back (session advisory locks
# survive a rollback), so it never leaks into the session.
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %s, true)"
SHOW_LOCK_TIMEOUT = "SELECT current_setting('lock_timeout')"

# The same wait in ONE round trip, for an autocommit connection outside any
# transaction: the statement is its own implicit transaction, so the local
# setting ends with it (on success, on 55P03, on any error). The MATERIALIZED
# CTE runs set_config before the outer row, hence before the lock call, is
# evaluated. Parameters: (lock_timeout setting, *the wait's own); see timed_params.
_WITH_LOCK_TIMEOUT = "WITH setting AS MATERIALIZED (SELECT set_config('lock_timeout', %s, true))"

TIMED_WAIT_LOCK = tuple(
    f"{_WITH_LOCK_TIMEOUT} SELECT {fn}(%s), pg_backend_pid() FROM setting"
    for fn in ("pg_advisory_lock", "pg_advisory_lock_shared")
)

# lock_timeout is an int of milliseconds: a longer wait runs in slices of at most this.
MAX_LOCK_TIMEOUT_MS = 2_147_483_647

# -- several keys, all or none, one statement -------------------------------
# Parameters: (ids bigint[], shared bool[]) in the caller's (sorted) order.
# Volatile expressions under ORDER BY are evaluated after the sort, so the
# locks are taken in that order.

_REQUESTS = "unnest(%s::bigint[], %s::boolean[]) WITH ORDINALITY AS r(id, shared, ord)"

# One row: (all_taken, _, pid). When any try fails, the same statement gives back
# every advisory lock of this session, so callers must run it on a connection
# that held no lock before (a fresh one from the pool).
_TRY_MANY = f"""
SELECT t.all_taken, CASE WHEN NOT t.all_taken THEN pg_advisory_unlock_all() END IS NULL, pg_backend_pid(){{token}}
FROM (
    SELECT bool_and(x.ok) AS all_taken FROM (
        SELECT CASE WHEN r.shared THEN pg_try_advisory_lock_shared(r.id)
                    ELSE pg_try_advisory_lock(r.id) END AS ok
        FROM {_REQUESTS} ORDER BY r.ord
    ) AS x
) AS t
""".strip()
TRY_MANY = _TRY_MANY.format(token="")
# The same with the call's fencing token as a fourth column (NULL when not all were taken).
TRY_MANY_FENCED = _TRY_MANY.format(token=f", CASE WHEN t.all_taken THEN {_NEXT} END")

# Waits for each in order, under the lock_timeout set before it in the same
# transaction; returns (count, pid). On 55P03 the locks taken before the one
# that timed out stay held (session locks ignore the rollback): run UNDO_MANY.
_WAIT_MANY = f"""
SELECT count(x.ok), pg_backend_pid(){{token}} FROM (
    SELECT CASE WHEN r.shared THEN pg_advisory_lock_shared(r.id)::text
                ELSE pg_advisory_lock(r.id)::text END AS ok
    FROM {{setting}}{_REQUESTS} ORDER BY r.ord
) AS x
""".strip()
WAIT_MANY = _WAIT_MANY.format(token="", setting="")

# WAIT_MANY in one round trip (see _WITH_LOCK_TIMEOUT): every row of the join
# needs the setting's row, so the locks come after it.
TIMED_WAIT_MANY = f"{_WITH_LOCK_TIMEOUT}\n" + _WAIT_MANY.format(token="", setting="setting, ")

# The two waits with the call's fencing token as a third column: an aggregate's
# own columns are computed once all its rows are in, so after every lock.
WAIT_MANY_FENCED = _WAIT_MANY.format(token=f", {_NEXT}", setting="")
TIMED_WAIT_MANY_FENCED = f"{_WITH_LOCK_TIMEOUT}\n" + _WAIT_MANY.format(
    token=f", {_NEXT}", setting="setting, "
)

# Gives back those of the requested locks that this session holds now.
UNDO_MANY = f"""
SELECT count(CASE WHEN r.shared THEN pg_advisory_unlock_shared(r.id) ELSE pg_advisory_unlock(r.id) END)
FROM {_REQUESTS}
WHERE EXISTS (
    SELECT 1 FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND l.pid = pg_backend_pid()
      AND ((l.classid::bigint << 32) | l.objid::bigint) = r.id
      AND (l.mode = 'ShareLock') = r.shared
)
""".strip()

# -- who holds what ---------------------------------------------------------
# A bigint key appears in pg_locks as classid = high 32 bits, objid = low 32
# bits, objsubid = 1. Locks are per database: only this database's count.

_ADVISORY = """
FROM pg_locks AS l
LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
""".strip()

_HOLDER_COLUMNS = """
SELECT ((l.classid::bigint << 32) | l.objid::bigint) AS lock_id,
       l.mode = 'ShareLock' AS shared,
       l.pid, a.application_name, host(a.client_addr), a.usename,
       extract(epoch FROM coalesce(a.state_change, a.backend_start))::float8 AS since
""".strip()

# One round trip for ``check``: is the lock still held by the session it was taken on?
# (pid of the session the statement ran on, held there in this mode). Parameters: check_params().
CHECK_HELD = """
SELECT pg_backend_pid(), EXISTS (
    SELECT 1 FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND l.pid = pg_backend_pid()
      AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.mode = %s
)
""".strip()

HELD = f"SELECT EXISTS (SELECT 1 {_ADVISORY} AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid)"
HOLDERS = f"{_HOLDER_COLUMNS}\n{_ADVISORY}\n  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid\nORDER BY l.pid"
LIST_HELD = f"{_HOLDER_COLUMNS}\n{_ADVISORY}\nORDER BY 1, l.pid"

# -- force_release(terminate=True): end the sessions that hold a key ---------
# Another session's advisory lock cannot be unlocked, only ended with its
# session. Never the session running the statement. Returns how many sessions
# ended. PostgreSQL >= 14 waits (up to the timeout, ms) until each is gone, so
# the lock is free when the statement returns; older servers only signal.
# Parameters: (timeout ms, classid, objid), or (classid, objid) before 14.
TERMINATE_WAIT_MS = 5000

_HOLDER_SESSIONS = f"""
SELECT DISTINCT l.pid {_ADVISORY}
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.pid <> pg_backend_pid()
""".strip()
TERMINATE_HOLDERS = (
    f"SELECT count(*) FILTER (WHERE pg_terminate_backend(h.pid, %s)) FROM ({_HOLDER_SESSIONS}) AS h"
)
TERMINATE_HOLDERS_PRE14 = (
    f"SELECT count(*) FILTER (WHERE pg_terminate_backend(h.pid)) FROM ({_HOLDER_SESSIONS}) AS h"
)

# -- fencing tokens from a server sequence ---------------------------------
# Every fenced lock statement takes the lock and THEN draws nextval() in the
# same statement (a CASE evaluates its condition first; an aggregate's own
# columns come after all its rows): a later holder of a key always draws a
# larger value than an earlier one, across processes and hosts, and one round
# trip still does it all. A sequence is never rolled back, so a caller's
# ROLLBACK cannot hand the next holder a token again. The sequence is resolved
# when the statement is parsed (``::regclass``): a missing one fails the
# statement before it takes anything; in a read-only transaction it draws 0
# (no token) instead of failing. CACHE 1 (the default) keeps the values in
# call order across sessions.

FENCING_DDL = f"CREATE SEQUENCE IF NOT EXISTS {FENCING_SEQUENCE} AS bigint CACHE 1"
# Once per backend, read-only: can this session draw from the sequence?
# (usable or NULL, exists, why not: 'standby' / 'read-only' or NULL)
FENCING_CHECK = f"""
SELECT CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'USAGE, UPDATE') END,
       c.oid IS NOT NULL,
       CASE WHEN pg_is_in_recovery() THEN 'standby'
            WHEN current_setting('transaction_read_only') = 'on' THEN 'read-only' END
FROM (SELECT to_regclass('{FENCING_SEQUENCE}') AS oid) AS r LEFT JOIN pg_class AS c ON c.oid = r.oid
""".strip()

# (token or NULL when not taken, pid)
TRY_LOCK_FENCED = tuple(
    f"SELECT CASE WHEN {fn}(%s) THEN {_NEXT} END, pg_backend_pid()"
    for fn in ("pg_try_advisory_lock", "pg_try_advisory_lock_shared")
)
# (token, pid); the lock functions return void, whose text is ''.
WAIT_LOCK_FENCED = tuple(
    f"SELECT CASE WHEN {fn}(%s)::text = '' THEN {_NEXT} END, pg_backend_pid()"
    for fn in ("pg_advisory_lock", "pg_advisory_lock_shared")
)
TIMED_WAIT_LOCK_FENCED = tuple(
    f"{_WITH_LOCK_TIMEOUT} SELECT CASE WHEN {fn}(%s)::text = '' THEN {_NEXT} END, pg_backend_pid() FROM setting"
    for fn in ("pg_advisory_lock", "pg_advisory_lock_shared")
)
TRY_XACT_LOCK_FENCED = tuple(
    f"SELECT CASE WHEN {fn}(%s) THEN {_NEXT} END, pg_backend_pid()"
    for fn in ("pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared")
)
WAIT_XACT_LOCK_FENCED = tuple(
    f"SELECT CASE WHEN {fn}(%s)::text = '' THEN {_NEXT} END, pg_backend_pid()"
    for fn in ("pg_advisory_xact_lock", "pg_advisory_xact_lock_shared")
)

# The session and transaction statements by [fenced][shared].
TRY = (TRY_LOCK, TRY_LOCK_FENCED)
WAIT = (WAIT_LOCK, WAIT_LOCK_FENCED)
TIMED_WAIT = (TIMED_WAIT_LOCK, TIMED_WAIT_LOCK_FENCED)
TRY_XACT = (TRY_XACT_LOCK, TRY_XACT_LOCK_FENCED)
WAIT_XACT = (WAIT_XACT_LOCK, WAIT_XACT_LOCK_FENCED)

# -- a session that a pooler moved: free the lock where it was taken ---------
# After a release landed on another server backend than the lock (PgBouncer in
# transaction mode), the lock is still held there, by a server session that
# other clients of the pooler now use (and could take the same key in, since
# advisory locks are re-entrant). One statement: when it lands on the original
# backend it unlocks there; elsewhere it ends that backend (pg_terminate_backend
# frees its locks; on PostgreSQL >= 14 it waits up to TERMINATE_WAIT_MS for it
# to be gone), and only while that backend still holds the key in this mode.
# Parameters (named): pid, id, classid, objid, mode, ms. Returns (unlocked or
# NULL, ended or NULL, pid the statement ran on).
_STRANDED_ON = """
SELECT bool_or(pg_terminate_backend(l.pid{wait})) FROM pg_locks AS l
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND l.pid = %(pid)s
  AND l.pid <> pg_backend_pid() AND l.classid = %(classid)s::bigint::oid
  AND l.objid = %(objid)s::bigint::oid AND l.mode = %(mode)s
""".strip()
FREE_STRANDED = tuple(
    tuple(
        f"SELECT CASE WHEN pg_backend_pid() = %(pid)s THEN {fn}(%(id)s) END, "
        f"CASE WHEN pg_backend_pid() <> %(pid)s THEN ({_STRANDED_ON.format(wait=wait)}) END, pg_backend_pid()"
        for fn in ("pg_advisory_unlock", "pg_advisory_unlock_shared")
    )
    for wait in ("", ", %(ms)s")
)

# -- helpers ----------------------------------------------------------------


def lock_timeout_setting(timeout: float | None) -> str:
    """The ``lock_timeout`` value for a wait of ``timeout`` seconds: '0' (forever) for None.

    Rounded up to whole milliseconds and at least 1 ms, since 0 would mean
    forever; never above the server's maximum (a longer wait goes in slices:
    see :func:`wait_slice`).
    """
    if timeout is None:
        return "0"
    if timeout * 1000 >= MAX_LOCK_TIMEOUT_MS:
        return f"{MAX_LOCK_TIMEOUT_MS}ms"
    return f"{max(1, math.ceil(timeout * 1000))}ms"


def wait_slice(timeout: float | None) -> float | None:
    """The part of a wait of ``timeout`` seconds that one server wait can do: all of it, up to ~24.8 days."""
    if timeout is None:
        return None
    return min(timeout, MAX_LOCK_TIMEOUT_MS / 1000)


def stranded_params(pid: int, lock_id: int, shared: bool) -> dict[str, Any]:
    """The parameters of FREE_STRANDED for a lock taken on server PID ``pid``."""
    classid, objid = split_lock_id(lock_id)
    mode = "ShareLock" if shared else "ExclusiveLock"
    return {
        "pid": pid,
        "id": lock_id,
        "classid": classid,
        "objid": objid,
        "mode": mode,
        "ms": TERMINATE_WAIT_MS,
    }


def timed_params(timeout: float | None, params: Sequence[Any]) -> tuple[Any, ...]:
    """The parameters of TIMED_WAIT_LOCK / TIMED_WAIT_MANY: the wait's ``params`` under a ``timeout``."""
    return (lock_timeout_setting(timeout), *params)


def split_lock_id(lock_id: int) -> tuple[int, int]:
    """``(classid, objid)`` of a signed 64-bit ID as pg_locks shows it (two unsigned 32-bit halves)."""
    unsigned = lock_id & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def check_params(lock_id: int, shared: bool) -> tuple[int, int, str]:
    """The parameters of CHECK_HELD: the ID's two halves and the pg_locks mode of the lock."""
    return (*split_lock_id(lock_id), "ShareLock" if shared else "ExclusiveLock")


def many_params(ids: Sequence[int], shared: Sequence[bool]) -> tuple[list[int], list[bool]]:
    """The parameters of TRY_MANY / WAIT_MANY / UNDO_MANY."""
    return list(ids), list(shared)


def holder_from_row(row: Sequence[Any], name: str | None) -> Holder:
    """A :class:`~kannuki.backends._types.Holder` from a HOLDERS / LIST_HELD row.

    ``name`` is the full lock name when known; otherwise the ID stands in (``#<id>``).
    """
    lock_id, shared, pid, application, host, user, since = row
    return Holder(
        name=name if name is not None else f"#{lock_id}",
        lock_id=lock_id,
        shared=bool(shared),
        pid=pid,
        host=host,
        user=user,
        application=application or None,
        since=since,
    )


def check_not_replica(in_recovery: bool, allow_replica: bool, where: str) -> None:
    """Refuse a standby: a lock taken there excludes nobody on the primary.

    Raises ConfigurationError unless ``allow_replica``.
    """
    if in_recovery and not allow_replica:
        raise ConfigurationError(
            f"{where} is a read-only standby (pg_is_in_recovery() is true): advisory locks taken "
            "there exclude nobody on the primary. Connect to the primary, or pass allow_replica=True "
            "if every locker uses this same standby."
        )


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, or None."""
    return getattr(exc, "sqlstate", None)


def is_not_acquired(exc: BaseException) -> bool:
    """True for the one error that means "the wait ran out": lock_not_available (55P03)."""
    return sqlstate(exc) == LOCK_NOT_AVAILABLE


def translate_error(exc: BaseException, what: str, key: Any = None) -> KannukiError:
    """The kannuki error for a driver error: DeadlockError for 40P01, else BackendError.

    Raise the result ``from exc``.
    """
    code = sqlstate(exc)
    if code == DEADLOCK_DETECTED:
        return DeadlockError(f"PostgreSQL detected a deadlock while {what}; the wait was cancelled", key=key)
    detail = f" (SQLSTATE {code})" if code else ""
    return BackendError(f"PostgreSQL failed while {what}: {exc}{detail}".rstrip(), key=key)
