"""PostgreSQL: uncontended try-acquire + release, and a contended 4-process run.

kannuki beside the floor (raw psycopg on one open autocommit connection, one
reused cursor, prepared statements: ``pg_try_advisory_lock`` then
``pg_advisory_unlock``) and the peers pals (SQLAlchemy) and tooz (its
postgresql driver, which needs psycopg2: ``pip install psycopg2-binary``).

Contended: 4 processes, one key, 50 read-modify-writes of one row each. Every
contender does the same work in the critical section and has connected (and
prepared its statements) before the clock starts. The floor is what a careful
hand-written client does: ``pg_advisory_lock``, the work, ``pg_advisory_unlock``
on one connection per process (``floor-psycopg-2conn``: the lock on a second
connection, as a URL locker does, to show what that costs by itself).
kannuki runs twice: a URL locker (the lock on its own connection, the work on
another) and ``Locker(conn)`` on the work's own connection.

Beside the cursor floor, two more: bare libpq (``floor-libpq``: ``PGconn.exec_`` of the two
statements as text on a plain libpq connection, no psycopg layer at all) and, for AsyncLocker,
raw psycopg's AsyncConnection (``floor-psycopg-async``, one reused cursor, prepared statements);
each async round runs ``ASYNC_OPS`` pairs inside one ``run_until_complete``.

SPEC §7: kannuki within 10% of the floor and faster than the peers; contended
throughput at least 90% of the floor; "beyond the raw driver": at or below the cursor floor,
within 1.3x of bare libpq, async within 1.10x of raw psycopg async. Run::

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_postgres.py --benchmark-only
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kannuki
from bench_support import kannuki_url_contender, time_contended, tooz_contender, try_and_release

psycopg = pytest.importorskip("psycopg")


def _floor(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = psycopg.connect(url, autocommit=True)
    cur = conn.cursor()
    params = (kannuki.lock_id(key, prefix="bench"),)

    def once() -> None:
        cur.execute("SELECT pg_try_advisory_lock(%s)", params, prepare=True)
        cur.fetchone()
        cur.execute("SELECT pg_advisory_unlock(%s)", params, prepare=True)
        cur.fetchone()

    return once, conn.close


def _libpq(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pgconn = psycopg.pq.PGconn.connect(url.encode())
    lock_id = kannuki.lock_id(key, prefix="bench")
    take = f"SELECT pg_try_advisory_lock({lock_id})".encode()
    give = f"SELECT pg_advisory_unlock({lock_id})".encode()
    exec_ = pgconn.exec_

    def once() -> None:
        exec_(take).get_value(0, 0)
        exec_(give).get_value(0, 0)

    return once, pgconn.finish


def _pals(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pals = pytest.importorskip("pals")
    locker = pals.Locker("bench", url.replace("postgresql://", "postgresql+psycopg://", 1))
    return try_and_release(locker.lock(key)), locker.engine.dispose


def _tooz(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pytest.importorskip("psycopg2")
    return tooz_contender(url, key)


CONTENDERS = {
    "floor-psycopg": _floor,
    "kannuki-url": kannuki_url_contender,
    "peer-pals": _pals,
    "peer-tooz": _tooz,
}


def _kannuki_unfenced(url: str, key: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A URL locker without fencing tokens: the same two statements as the floors, bar the PID column."""
    locker = kannuki.Locker(url, key_prefix="bench", fencing=False)
    return try_and_release(locker.lock(key)), locker.close


CONTENDERS["kannuki-url-unfenced"] = _kannuki_unfenced
LIBPQ_CONTENDERS = {
    "floor-libpq": _libpq,
    "kannuki-url": kannuki_url_contender,
    "kannuki-url-unfenced": _kannuki_unfenced,
}


@pytest.fixture
def contender(request: pytest.FixtureRequest, pg_url: str, key_prefix: str) -> Iterator[Callable[[], None]]:
    once, close = {**CONTENDERS, **LIBPQ_CONTENDERS}[request.param](pg_url, key_prefix)
    for _ in range(6):  # connect and let the prepared statements settle outside the measurement
        once()
    yield once
    close()


@pytest.mark.parametrize("contender", list(CONTENDERS), indirect=True)
def test_uncontended_try_acquire_release(benchmark: Any, contender: Callable[[], None]) -> None:
    """pg_try_advisory_lock + pg_advisory_unlock, uncontended, one key."""
    benchmark.group = "postgres: uncontended try-acquire+release"
    benchmark(contender)


@pytest.mark.parametrize("contender", list(LIBPQ_CONTENDERS), indirect=True)
def test_uncontended_try_acquire_release_vs_libpq(benchmark: Any, contender: Callable[[], None]) -> None:
    """The same pair beside bare libpq exec (no psycopg layer): the wire floor."""
    benchmark.group = "postgres: uncontended try-acquire+release, bare libpq floor"
    benchmark(contender)


# Pairs per async round: one run_until_complete per round, so its own cost is spread thin.
ASYNC_OPS = 50


async def _floor_async(url: str, key: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    cur = conn.cursor()
    params = (kannuki.lock_id(key, prefix="bench"),)

    async def run() -> None:
        for _ in range(ASYNC_OPS):
            await cur.execute("SELECT pg_try_advisory_lock(%s)", params, prepare=True)
            await cur.fetchone()
            await cur.execute("SELECT pg_advisory_unlock(%s)", params, prepare=True)
            await cur.fetchone()

    return run, conn.close


async def _kannuki_async(url: str, key: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    locker = kannuki.AsyncLocker(url, key_prefix="bench")
    lock = locker.lock(key)

    async def run() -> None:
        for _ in range(ASYNC_OPS):
            await lock.acquire(blocking=False)
            await lock.release()

    return run, locker.aclose


ASYNC_CONTENDERS = {"floor-psycopg-async": _floor_async, "kannuki-async": _kannuki_async}


@pytest.mark.parametrize("kind", list(ASYNC_CONTENDERS))
def test_async_uncontended_try_acquire_release(
    benchmark: Any, pg_url: str, key_prefix: str, kind: str
) -> None:
    """AsyncLocker's try-acquire+release beside raw psycopg async, ASYNC_OPS pairs per round."""
    benchmark.group = f"postgres async: uncontended try-acquire+release x{ASYNC_OPS}"
    loop = asyncio.new_event_loop()
    try:
        run, close = loop.run_until_complete(ASYNC_CONTENDERS[kind](pg_url, key_prefix))
        loop.run_until_complete(run())  # connect and prepare outside the measurement
        benchmark.pedantic(lambda: loop.run_until_complete(run()), rounds=40, iterations=1, warmup_rounds=2)
        loop.run_until_complete(close())
    finally:
        loop.close()


def _worker(kind: str, url: str, table: str, rounds: int, *, key: str, ready: Any, start: Any) -> None:
    conn = psycopg.connect(url, autocommit=True)
    if kind.startswith("floor-psycopg"):
        params = (kannuki.lock_id(key, prefix="bench"),)
        side = conn if kind == "floor-psycopg" else psycopg.connect(url, autocommit=True)

        def acquire() -> None:
            side.execute("SELECT pg_advisory_lock(%s)", params, prepare=True)

        def release() -> None:
            side.execute("SELECT pg_advisory_unlock(%s)", params, prepare=True)

    else:
        locker = kannuki.Locker(url if kind == "kannuki-url" else conn, key_prefix="bench")
        lock = locker.lock(key, timeout=60)
        acquire, release = lock.acquire, lock.release

    acquire()  # connect and prepare before the clock starts
    release()
    ready.wait(30)
    start.wait(30)
    for _ in range(rounds):
        acquire()
        value = conn.execute(f"SELECT n FROM {table} WHERE id = 1", prepare=True).fetchone()[0]
        conn.execute(f"UPDATE {table} SET n = %s WHERE id = 1", (value + 1,), prepare=True)
        release()


@pytest.mark.parametrize("kind", ["floor-psycopg", "floor-psycopg-2conn", "kannuki-url", "kannuki-conn"])
def test_contended_four_processes(benchmark: Any, pg_url: str, key_prefix: str, kind: str) -> None:
    """4 processes, one key, read-modify-write of one row under the lock; no lost update."""
    benchmark.group = "postgres: contended 4 processes x 50 read-modify-writes"
    table = f"bench_{key_prefix.replace('-', '_')}"
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)")
    conn.execute(f"INSERT INTO {table} VALUES (1, 0)")
    rounds = 50
    try:
        runs = time_contended(benchmark, _worker, (kind, pg_url, table, rounds), rounds=5)
        assert conn.execute(f"SELECT n FROM {table}").fetchone()[0] == 4 * rounds * runs  # no lost update
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
