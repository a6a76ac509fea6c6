"""Reset hooks for your own connection pools: free any advisory lock a borrower stranded.

A pool that takes back a connection still holding a session lock hands that
lock to the next borrower (psycopg_pool only rolls back; it never unlocks).
Install one of these where your pool resets a returned connection::

    from psycopg_pool import ConnectionPool
    from kannuki.backends.pool_hooks import release_postgres_locks

    pool = ConnectionPool(url, reset=release_postgres_locks)

    from psycopg_pool import AsyncConnectionPool
    from kannuki.backends.pool_hooks import arelease_postgres_locks

    pool = AsyncConnectionPool(url, reset=arelease_postgres_locks)

The sync hooks take a DB-API connection (psycopg, MySQLdb, ...); the async one
a psycopg AsyncConnection. None needs a driver import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["arelease_postgres_locks", "release_mysql_locks", "release_postgres_locks"]

_UNLOCK_ALL_POSTGRES = "SELECT pg_advisory_unlock_all()"


def release_postgres_locks(conn: Any) -> None:
    """Free every session advisory lock held by ``conn`` (``pg_advisory_unlock_all()``).

    For psycopg_pool's ``reset=`` callback, or any pool's check-in hook.
    Transaction-level locks are untouched: they end with their transaction.
    """
    _run_on_return(conn, _UNLOCK_ALL_POSTGRES)


async def arelease_postgres_locks(conn: Any) -> None:
    """Free every session advisory lock held by the async ``conn`` (``pg_advisory_unlock_all()``).

    For the ``reset=`` callback of psycopg_pool's ``AsyncConnectionPool``
    (which awaits it). Transaction-level locks are untouched.
    """
    # As _run_on_return, awaited: end the SELECT's transaction again when the connection was idle.
    idle_before = _transaction_status(conn) == 0
    cursor = conn.cursor()
    try:
        await cursor.execute(_UNLOCK_ALL_POSTGRES)
        await cursor.fetchall()
    finally:
        await cursor.close()
    if idle_before and _transaction_status(conn) != 0:
        await conn.rollback()


def release_mysql_locks(conn: Any) -> None:
    """Free every named lock (``GET_LOCK``) held by ``conn`` (``RELEASE_ALL_LOCKS()``, MySQL 5.7+ / MariaDB 10.5+)."""
    _run_on_return(conn, "SELECT RELEASE_ALL_LOCKS()")


def _run_on_return(conn: Any, statement: str) -> None:
    # A connection not in autocommit opens a transaction for the SELECT: end it
    # again when it was idle before, so the pool gets the connection back idle.
    idle_before = _transaction_status(conn) == 0
    cursor = conn.cursor()
    try:
        cursor.execute(statement)
        cursor.fetchall()
    finally:
        cursor.close()
    if idle_before and _transaction_status(conn) != 0:
        conn.rollback()


def _transaction_status(conn: Any) -> int | None:
    """libpq's transaction status (0 = idle) for psycopg connections; None when the driver cannot tell."""
    info = getattr(conn, "info", None)
    status = getattr(info, "transaction_status", None)
    return None if status is None else int(status)
