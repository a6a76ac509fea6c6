"""The watcher of held database locks: what it costs an uncontended acquire + release.

SPEC §5 / issue 13: PostgreSQL and MySQL locks are watched while held (by default every
``watch_interval=1.0`` s, by peeking at the pinned connection's socket: no query). Here one
locker with the watcher on (the default) and one with it off (``watch_interval=None``) run the
same blocking ``acquire()`` + ``release()`` of one free key, side by side with the raw driver
doing the same two statements on one open connection (the floor). The watcher's cost is the
ratio of the two kannuki entries; the target is no measurable difference. Run::

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_watch.py --benchmark-only
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kannuki
from bench_support import Round
from kannuki.backends.mysql import mysql_lock_name
from support import mysql_connect

OPS = 200  # acquire+release pairs per round

Contender = Callable[[str, str], tuple[Round, Callable[[], None]]]


def _kannuki(watch_interval: float | None) -> Contender:
    """A URL locker (watcher on by default, off with None) doing ``OPS`` acquire+release pairs of one key."""

    def make(url: str, key: str) -> tuple[Round, Callable[[], None]]:
        options: dict[str, Any] = {} if watch_interval == -1 else {"watch_interval": watch_interval}
        locker = kannuki.Locker(url, key_prefix="bench", **options)
        lock = locker.lock(key)
        acquire, release = lock.acquire, lock.release

        def run() -> None:
            for _ in range(OPS):
                acquire()
                release()

        return run, locker.close

    return make


def _floor_postgres(url: str, key: str) -> tuple[Round, Callable[[], None]]:
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(url, autocommit=True)
    cur = conn.cursor()
    params = (kannuki.lock_id(key, prefix="bench"),)

    def run() -> None:
        for _ in range(OPS):
            cur.execute("SELECT pg_advisory_lock(%s)", params, prepare=True)
            cur.fetchone()
            cur.execute("SELECT pg_advisory_unlock(%s)", params, prepare=True)
            cur.fetchone()

    return run, conn.close


def _floor_mysql(url: str, key: str) -> tuple[Round, Callable[[], None]]:
    pytest.importorskip("MySQLdb")
    conn = mysql_connect(url)
    literal = conn.literal(mysql_lock_name("bench:" + key))
    get, rel = b"SELECT GET_LOCK(%s, 60)" % literal, b"SELECT RELEASE_LOCK(%s)" % literal

    def run() -> None:
        for _ in range(OPS):
            conn.query(get)
            conn.store_result().fetch_row()
            conn.query(rel)
            conn.store_result().fetch_row()

    return run, conn.close


# -1: the locker's default (the watcher on, every second).
KANNUKI = {"kannuki-watch-on": _kannuki(-1), "kannuki-watch-off": _kannuki(None)}
FLOORS = {"postgres": _floor_postgres, "mysql": _floor_mysql}


def _round(request: pytest.FixtureRequest, store: str, key_prefix: str) -> Iterator[Round]:
    url = request.getfixturevalue("pg_url" if store == "postgres" else "mysql_url")
    name = request.param
    make = FLOORS[store] if name.startswith("floor-") else KANNUKI[name]
    run, close = make(url, key_prefix)
    run()  # connect and warm up outside the measurement
    yield run
    close()


@pytest.fixture
def postgres_round(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Round]:
    yield from _round(request, "postgres", key_prefix)


@pytest.fixture
def mysql_round(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Round]:
    yield from _round(request, "mysql", key_prefix)


CONTENDERS = ["floor-psycopg", "kannuki-watch-on", "kannuki-watch-off"]


@pytest.mark.parametrize("postgres_round", CONTENDERS, indirect=True)
def test_postgres_acquire_release_watched(benchmark: Any, postgres_round: Round) -> None:
    """pg_advisory_lock + pg_advisory_unlock of a free key, OPS times a round."""
    benchmark.group = "postgres: uncontended acquire+release, watcher on / off"
    benchmark.pedantic(postgres_round, rounds=20, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize(
    "mysql_round", ["floor-mysqldb", "kannuki-watch-on", "kannuki-watch-off"], indirect=True
)
def test_mysql_acquire_release_watched(benchmark: Any, mysql_round: Round) -> None:
    """GET_LOCK + RELEASE_LOCK of a free key, OPS times a round."""
    benchmark.group = "mysql: uncontended acquire+release, watcher on / off"
    benchmark.pedantic(mysql_round, rounds=20, iterations=1, warmup_rounds=1)
