"""MySQL/MariaDB: uncontended try-acquire + release, and a contended 4-process run.

kannuki beside the floor (raw MySQLdb on one open connection: through a
cursor, as applications write it, and through the low-level ``query`` API)
and tooz's mysql driver (PyMySQL; ``pymysql`` is a benchmark-only dependency).
SPEC §7: kannuki within 10% of the floor and faster than tooz; contended
throughput at least 90% of the floor. Run::

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_mysql.py --benchmark-only
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest

import kannuki
from kannuki.backends.mysql import mysql_lock_name

MySQLdb = pytest.importorskip("MySQLdb")

# tooz calls PyMySQL's deprecated one-argument API; that is tooz's business, not this benchmark's.
pytestmark = pytest.mark.filterwarnings("ignore:single argument is deprecated:DeprecationWarning")

URL = os.environ.get("KANNUKI_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


def _connect(url: str) -> Any:
    parts = urlsplit(url)
    return MySQLdb.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                           password=parts.password or "", database=parts.path.lstrip("/"), autocommit=True)


def _kannuki(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    locker = kannuki.Locker(url, key_prefix="bench")
    lock = locker.lock(key)

    def once() -> None:
        lock.acquire(blocking=False)
        lock.release()

    return once, locker.close


def _raw_cursor(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = _connect(url)
    cur = conn.cursor()
    name = mysql_lock_name("bench:" + key)

    def once() -> None:
        cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
        cur.fetchone()
        cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        cur.fetchone()

    return once, conn.close


def _raw_query(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = _connect(url)
    literal = conn.literal(mysql_lock_name("bench:" + key))
    get, release = b"SELECT GET_LOCK(%s, 0)" % literal, b"SELECT RELEASE_LOCK(%s)" % literal

    def once() -> None:
        conn.query(get)
        conn.store_result().fetch_row()
        conn.query(release)
        conn.store_result().fetch_row()

    return once, conn.close


def _tooz(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pytest.importorskip("pymysql")
    coordination = pytest.importorskip("tooz.coordination")
    coordinator = coordination.get_coordinator(url, b"bench-" + uuid.uuid4().hex[:6].encode())
    coordinator.start()
    lock = coordinator.get_lock(("bench:" + key).encode())

    def once() -> None:
        lock.acquire(blocking=False)
        lock.release()

    return once, coordinator.stop


CONTENDERS = {"kannuki": _kannuki, "raw-cursor": _raw_cursor, "raw-query": _raw_query, "tooz": _tooz}


@pytest.fixture(scope="module")
def url() -> str:
    import socket

    parts = urlsplit(URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 3306), timeout=2).close()
    except OSError:
        pytest.skip(f"MariaDB/MySQL not reachable at {URL}")
    return URL


@pytest.fixture
def contender(request: pytest.FixtureRequest, url: str) -> Iterator[Callable[[], None]]:
    once, close = CONTENDERS[request.param](url, f"u-{uuid.uuid4().hex[:8]}")
    once()  # connect outside the measurement
    yield once
    close()


@pytest.mark.parametrize("contender", list(CONTENDERS), indirect=True)
def test_uncontended_try_acquire_release(benchmark: Any, contender: Callable[[], None]) -> None:
    """GET_LOCK(name, 0) + RELEASE_LOCK, uncontended, one key."""
    benchmark.group = "mysql uncontended try-acquire+release"
    benchmark(contender)


def _worker(kind: str, url: str, key: str, table: str, rounds: int, ready: Any, start: Any) -> None:
    conn = _connect(url)
    cur = conn.cursor()
    if kind == "kannuki":
        locker = kannuki.Locker(url, key_prefix="bench")
        lock = locker.lock(key, timeout=60)
        acquire, release = lock.acquire, lock.release
    else:
        side = _connect(url)
        literal = side.literal(mysql_lock_name("bench:" + key))
        get, rel = b"SELECT GET_LOCK(%s, 60)" % literal, b"SELECT RELEASE_LOCK(%s)" % literal

        def acquire() -> None:
            side.query(get)
            side.store_result().fetch_row()

        def release() -> None:
            side.query(rel)
            side.store_result().fetch_row()

    ready.wait(30)
    start.wait(30)
    for _ in range(rounds):
        acquire()
        cur.execute(f"SELECT n FROM {table} WHERE id = 1")
        (value,) = cur.fetchone()
        cur.execute(f"UPDATE {table} SET n = %s WHERE id = 1", (value + 1,))
        release()


@pytest.mark.parametrize("kind", ["kannuki", "raw-query"])
def test_contended_four_processes(benchmark: Any, url: str, kind: str) -> None:
    """4 processes, one key, read-modify-write of one row under the lock; no lost update."""
    benchmark.group = "mysql contended 4 processes x 50 read-modify-writes"
    conn = _connect(url)
    table = f"bench_{uuid.uuid4().hex[:10]}"
    conn.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB")
    conn.cursor().execute(f"INSERT INTO {table} VALUES (1, 0)")
    ctx = multiprocessing.get_context("fork")
    rounds = 50
    runs = 0

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        # Untimed: the processes start and connect, then wait for the starting shot.
        nonlocal runs
        runs += 1
        ready, start = ctx.Barrier(5), ctx.Event()
        key = f"c-{uuid.uuid4().hex[:8]}"
        processes = [ctx.Process(target=_worker, args=(kind, url, key, table, rounds, ready, start)) for _ in range(4)]
        for process in processes:
            process.start()
        ready.wait(30)
        return (processes, start), {}

    def run(processes: list[Any], start: Any) -> None:
        start.set()
        for process in processes:
            process.join(120)
            if process.is_alive():
                process.kill()
                process.join(10)
        assert [p.exitcode for p in processes] == [0] * 4

    try:
        benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
        cur = conn.cursor()
        cur.execute(f"SELECT n FROM {table} WHERE id = 1")
        assert cur.fetchone()[0] == 4 * rounds * runs  # no lost update
    finally:
        conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
