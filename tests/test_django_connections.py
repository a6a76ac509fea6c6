"""Lockers made of Django's database connections, against the real PostgreSQL and MariaDB.

Settings are configured here (a postgresql and a mysql database, no project):
``Locker(django.db.connection)`` and ``Locker(connections["alias"])`` lock on the
driver connection underneath (psycopg 3, mysqlclient), never close it, and a
transaction-level lock joins the ``atomic()`` block and ends with it.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from kannuki import AsyncLocker, Locker
from kannuki.backends._mysql_names import mysql_lock_name
from kannuki.errors import ConfigurationError, LockNotAcquiredError
from support import mysql_connect, mysql_scalar

django = pytest.importorskip("django")
pytest.importorskip("psycopg")
pytest.importorskip("MySQLdb")


def _database(url: str, engine: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "ENGINE": engine,
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or ""),
    }


@pytest.fixture(scope="module")
def db(pg_url: str, mysql_url: str) -> Any:
    """django.db, with settings for this process: ``default`` on PostgreSQL, ``mysql`` on MariaDB."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": _database(pg_url, "django.db.backends.postgresql"),
                "mysql": _database(mysql_url, "django.db.backends.mysql"),
            },
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    from django import db as django_db

    if "mysql" not in django_db.connections.settings:
        pytest.skip("Django settings were configured elsewhere in this process")
    yield django_db
    django_db.connections.close_all()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t-dj-{uuid.uuid4().hex[:8]}"


def pg_holders(conn: Any, lock_id: int) -> list[int]:
    """The server PIDs holding (granted) the advisory lock ``lock_id``."""
    unsigned = lock_id & 0xFFFFFFFFFFFFFFFF
    rows = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchall()
    return [pid for (pid,) in rows]


def backend_pid(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_postgres_connection_locks_on_it_and_stays_open(
    db: Any, pg_conn: Any, pg_url: str, prefix: str
) -> None:
    """Locker(django.db.connection): held by Django's own server session; contends; never closed by kannuki."""
    connection = db.connection
    pid = backend_pid(connection)
    locker = Locker(connection, key_prefix=prefix)
    other = Locker(pg_url, key_prefix=prefix)
    try:
        lock = locker.lock("k")
        with lock:
            assert pg_holders(pg_conn, lock.lock_id) == [pid]
            assert not other.lock("k").acquire(blocking=False)
        assert pg_holders(pg_conn, lock.lock_id) == []
        with other.lock("k"):
            with pytest.raises(LockNotAcquiredError):
                with locker.lock("k", timeout=0.1):
                    pass
        assert locker.try_lock("k", lambda: "ran") == "ran"
    finally:
        locker.close()
        other.close()
    assert connection.is_usable()
    assert backend_pid(connection) == pid


def test_postgres_transaction_lock_joins_atomic(db: Any, pg_conn: Any, prefix: str) -> None:
    """transaction=True inside atomic(): taken in its transaction, ended by its commit or its rollback."""
    from django.db import transaction

    connection = db.connections["default"]
    locker = Locker(connection, key_prefix=prefix)
    with transaction.atomic():
        lock = locker.lock("k", transaction=True)
        lock.acquire(timeout=5)
        pid = backend_pid(connection)
        assert pg_holders(pg_conn, lock.lock_id) == [pid]
        lock.release()
        assert pg_holders(pg_conn, lock.lock_id) == [pid]  # until the transaction ends
    assert pg_holders(pg_conn, lock.lock_id) == []

    class Boom(Exception):
        pass

    def fail_inside() -> None:
        with transaction.atomic(), locker.lock("k", transaction=connection):
            assert pg_holders(pg_conn, lock.lock_id) == [pid]
            raise Boom

    with pytest.raises(Boom):
        fail_inside()
    assert pg_holders(pg_conn, lock.lock_id) == []
    # Outside atomic() Django's connection is in autocommit: there is no transaction to join.
    with pytest.raises(ConfigurationError, match="open transaction"):
        locker.lock("k", transaction=True).acquire()
    locker.close()


def test_mysql_connection_locks_on_it(db: Any, mysql_url: str, prefix: str) -> None:
    """Locker(connections["mysql"]): GET_LOCK on Django's own session; contends with a URL locker."""
    connection = db.connections["mysql"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        conn_id = cursor.fetchone()[0]
    raw = mysql_connect(mysql_url)
    locker = Locker(connection, key_prefix=prefix)
    other = Locker(mysql_url, key_prefix=prefix)
    try:
        lock = locker.lock("k")
        with lock:
            assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) == conn_id
            assert not other.lock("k").acquire(blocking=False)
        assert mysql_scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name)) is None
        with other.lock("k"):
            assert not locker.lock("k").acquire(timeout=0.1)
    finally:
        locker.close()
        other.close()
        raw.close()
    assert connection.is_usable()


def test_async_locker_refuses_django_on_postgres(db: Any) -> None:
    """Django drives psycopg synchronously: an AsyncLocker of its connection is a clear ConfigurationError."""
    with pytest.raises(ConfigurationError, match="make a Locker of it"):
        AsyncLocker(db.connection)
