"""MySQL/MariaDB: uncontended try-acquire + release, and a contended 4-process run.

kannuki beside the floor (raw MySQLdb on one open connection: through a
cursor, as applications write it, and through the low-level ``query`` API)
and tooz's mysql driver (PyMySQL; ``pymysql`` is a benchmark-only dependency).
SPEC §7: kannuki within 10% of the floor and faster than tooz; contended
throughput at least 90% of the floor. Run::

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_mysql.py --benchmark-only
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kannuki
from bench_support import Round, kannuki_url_contender, time_contended, tooz_contender
from kannuki.backends.mysql import mysql_lock_name
from support import mysql_connect

MySQLdb = pytest.importorskip("MySQLdb")

# tooz calls PyMySQL's deprecated one-argument API; that is tooz's business, not this benchmark's.
pytestmark = pytest.mark.filterwarnings("ignore:single argument is deprecated:DeprecationWarning")


def _query_lock(conn: Any, key: str, timeout: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """GET_LOCK(name, timeout) and RELEASE_LOCK through MySQLdb's low-level ``query`` API on ``conn``."""
    literal = conn.literal(mysql_lock_name("bench:" + key))
    get, rel = b"SELECT GET_LOCK(%s, %d)" % (literal, timeout), b"SELECT RELEASE_LOCK(%s)" % literal

    def acquire() -> None:
        conn.query(get)
        conn.store_result().fetch_row()

    def release() -> None:
        conn.query(rel)
        conn.store_result().fetch_row()

    return acquire, release


def _raw_cursor(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = mysql_connect(url)
    cur = conn.cursor()
    name = mysql_lock_name("bench:" + key)

    def once() -> None:
        cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
        cur.fetchone()
        cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        cur.fetchone()

    return once, conn.close


def _raw_query(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = mysql_connect(url)
    acquire, release = _query_lock(conn, key, 0)

    def once() -> None:
        acquire()
        release()

    return once, conn.close


def _tooz(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pytest.importorskip("pymysql")
    return tooz_contender(url, key)


CONTENDERS = {
    "kannuki-url": kannuki_url_contender,
    "floor-cursor": _raw_cursor,
    "floor-query": _raw_query,
    "peer-tooz": _tooz,
}


@pytest.fixture
def contender(request: pytest.FixtureRequest, mysql_url: str, key_prefix: str) -> Iterator[Round]:
    once, close = CONTENDERS[request.param](mysql_url, key_prefix)
    once()  # connect outside the measurement
    yield once
    close()


@pytest.mark.parametrize("contender", list(CONTENDERS), indirect=True)
def test_uncontended_try_acquire_release(benchmark: Any, contender: Callable[[], None]) -> None:
    """GET_LOCK(name, 0) + RELEASE_LOCK, uncontended, one key."""
    benchmark.group = "mysql uncontended try-acquire+release"
    benchmark(contender)


def _worker(kind: str, url: str, table: str, rounds: int, *, key: str, ready: Any, start: Any) -> None:
    conn = mysql_connect(url)
    cur = conn.cursor()
    if kind == "kannuki-url":
        locker = kannuki.Locker(url, key_prefix="bench")
        lock = locker.lock(key, timeout=60)
        acquire, release = lock.acquire, lock.release
    else:
        acquire, release = _query_lock(mysql_connect(url), key, 60)

    ready.wait(30)
    start.wait(30)
    for _ in range(rounds):
        acquire()
        cur.execute(f"SELECT n FROM {table} WHERE id = 1")
        (value,) = cur.fetchone()
        cur.execute(f"UPDATE {table} SET n = %s WHERE id = 1", (value + 1,))
        release()


@pytest.mark.parametrize("kind", ["kannuki-url", "floor-query"])
def test_contended_four_processes(benchmark: Any, mysql_url: str, key_prefix: str, kind: str) -> None:
    """4 processes, one key, read-modify-write of one row under the lock; no lost update."""
    benchmark.group = "mysql contended 4 processes x 50 read-modify-writes"
    conn = mysql_connect(mysql_url)
    table = f"bench_{key_prefix.replace('-', '_')}"
    conn.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB")
    conn.cursor().execute(f"INSERT INTO {table} VALUES (1, 0)")
    rounds = 50
    try:
        runs = time_contended(benchmark, _worker, (kind, mysql_url, table, rounds), rounds=3)
        cur = conn.cursor()
        cur.execute(f"SELECT n FROM {table} WHERE id = 1")
        assert cur.fetchone()[0] == 4 * rounds * runs  # no lost update
    finally:
        conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
