"""A PostgreSQL server that stops answering (every process SIGSTOPped): no wait outlives its bound.

The waits are for a key nobody holds in this process (a held one would queue on the in-process table,
never reaching the server). The server's kernel still acknowledges TCP while its processes are stopped, so only kannuki's own
deadline on its statements ends a wait: a blocking ``acquire(timeout=1)`` returns False or raises
BackendError within its timeout plus the connect timeout, a try within the connect timeout, and a
release raises LockLostError within the connect timeout, the loss reported once. After SIGCONT the
server reads the closed connections and frees their locks. Each test freezes a private instance of
its own (tests/pg_instance.py), never the shared server; the bounds are liveness bounds only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kannuki
from kannuki.errors import BackendError, LockLostError
from pg_instance import private_postgres
from support import wait_until

psycopg = pytest.importorskip("psycopg")

CONNECT_TIMEOUT = 2.0
# Room for a loaded machine on top of each bound (the bounds are what the test is about, not speed).
SLACK = 3.0


def _instance_pids(data: Path) -> list[int]:
    """The postmaster of the instance in ``data`` and its children (backends and helpers)."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


class Freezer:
    """SIGSTOP / SIGCONT every process of one private instance."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.stopped: list[int] = []

    def freeze(self) -> None:
        postmaster, *_ = _instance_pids(self.data)
        os.kill(postmaster, signal.SIGSTOP)  # first: a stopped postmaster forks no new child
        self.stopped.append(postmaster)
        for pid in _instance_pids(self.data)[1:]:
            os.kill(pid, signal.SIGSTOP)
            self.stopped.append(pid)

    def thaw(self) -> None:
        stopped, self.stopped = self.stopped, []
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def frozen() -> Iterator[tuple[str, Freezer]]:
    """(URL, Freezer) of a private instance; whatever the test did, it is thawed and stopped after."""
    with private_postgres("kannuki-frozen-") as (url, data):
        freezer = Freezer(data)
        try:
            yield url, freezer
        finally:
            freezer.thaw()


def _free_again(url: str, lock_id: int) -> bool:
    """Once thawed, the server frees the closed sessions' locks: nobody holds ``lock_id`` within a bound."""

    def free() -> bool:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()[0])

    return wait_until(free, 30)


def _ended_within(started: float, bound: float) -> float:
    elapsed = time.monotonic() - started
    assert elapsed <= bound + SLACK, f"took {elapsed:.2f}s, bound {bound:g}s (+{SLACK:g}s slack)"
    return elapsed


def test_waits_and_release_on_a_frozen_server_end_in_bounded_time(frozen: tuple[str, Freezer]) -> None:
    """Sync: a timed wait, a try (on a kept connection, then on a new one) and a release on a stopped
    server all end by their bounds; the release is a loss, reported once; the server frees all after SIGCONT."""
    url, freezer = frozen
    prefix = f"frozen-{uuid.uuid4().hex[:8]}"
    lost: list[str] = []
    holder = kannuki.Locker(url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
    waiter = kannuki.Locker(url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
    trier = kannuki.Locker(url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
    try:
        lock = holder.lock("k", on_lost=lambda _lock, reason: lost.append(reason))
        assert lock.acquire(timeout=10)
        for locker in (waiter, trier):  # each has a connection to keep and its fencing check done
            with locker.lock("warm"):
                pass
        freezer.freeze()

        started = time.monotonic()  # a try on a kept connection: its statement gets no answer
        try:
            assert trier.lock("free").acquire(blocking=False) is False
        except BackendError:
            pass
        _ended_within(started, CONNECT_TIMEOUT)

        started = time.monotonic()
        try:
            assert waiter.lock("free").acquire(timeout=1) is False
        except BackendError:
            pass
        _ended_within(started, 1 + CONNECT_TIMEOUT)

        for _ in range(2):  # the kept connection was closed by the wait above: this one connects
            started = time.monotonic()
            try:
                assert waiter.lock("free").acquire(blocking=False) is False
            except BackendError:
                pass
            _ended_within(started, CONNECT_TIMEOUT)

        started = time.monotonic()
        with pytest.raises(LockLostError):
            lock.release()
        _ended_within(started, CONNECT_TIMEOUT)
        assert len(lost) == 1 and lock.lost
        assert holder.stats().lost == 1

        freezer.thaw()
        assert _free_again(url, lock.lock_id)
    finally:
        freezer.thaw()
        holder.close()
        waiter.close()
        trier.close()


def test_async_waits_and_release_on_a_frozen_server_end_in_bounded_time(frozen: tuple[str, Freezer]) -> None:
    """Async: the same bounds, on the event loop (which keeps running meanwhile)."""
    url, freezer = frozen
    prefix = f"frozen-{uuid.uuid4().hex[:8]}"
    lost: list[str] = []

    async def main() -> None:
        holder = kannuki.AsyncLocker(url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
        waiter = kannuki.AsyncLocker(url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
        trier = kannuki.AsyncLocker(url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
        ticks = 0

        async def tick() -> None:  # the loop is never blocked by a frozen server
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            lock = holder.lock("k", on_lost=lambda _lock, reason: lost.append(reason))
            assert await lock.acquire(timeout=10)
            for locker in (waiter, trier):
                async with locker.lock("warm"):
                    pass
            freezer.freeze()

            started = time.monotonic()  # a try on a kept connection: its statement gets no answer
            try:
                assert await trier.lock("free").acquire(blocking=False) is False
            except BackendError:
                pass
            _ended_within(started, CONNECT_TIMEOUT)

            started = time.monotonic()
            try:
                assert await waiter.lock("free").acquire(timeout=1) is False
            except BackendError:
                pass
            elapsed = _ended_within(started, 1 + CONNECT_TIMEOUT)
            assert ticks >= elapsed / 0.05 / 4  # the loop ran meanwhile

            for _ in range(2):
                started = time.monotonic()
                try:
                    assert await waiter.lock("free").acquire(blocking=False) is False
                except BackendError:
                    pass
                _ended_within(started, CONNECT_TIMEOUT)

            started = time.monotonic()
            with pytest.raises(LockLostError):
                await lock.release()
            _ended_within(started, CONNECT_TIMEOUT)
            assert len(lost) == 1 and lock.lost
            assert holder.stats().lost == 1

            freezer.thaw()
            assert _free_again(url, lock.lock_id)
        finally:
            ticker.cancel()
            freezer.thaw()
            await holder.aclose()
            await waiter.aclose()
            await trier.aclose()

    asyncio.run(main())


def test_own_connections_carry_tcp_keepalives(pg_url: str) -> None:
    """A URL locker's connections set TCP keepalives and tcp_user_timeout (a network gone silent ends them);
    a value in the URL is the user's and is kept."""
    locker = kannuki.Locker(pg_url + ("&" if "?" in pg_url else "?") + "keepalives_idle=7")
    try:
        with locker.lock(f"ka-{uuid.uuid4().hex[:8]}"):
            pass
        (session,) = locker.backend._source.idle  # the locker's own connection, back from the lock
        options: dict[str, Any] = {
            o.keyword.decode(): (o.val or b"").decode() for o in session.conn.pgconn.info
        }
    finally:
        locker.close()
    assert options["keepalives"] == "1"
    assert options["keepalives_idle"] == "7"
    assert int(options["keepalives_interval"]) > 0 and int(options["keepalives_count"]) > 0
    assert int(options["tcp_user_timeout"]) > 0
