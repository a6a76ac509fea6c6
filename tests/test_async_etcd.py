"""AsyncLocker on the real 3-member etcd cluster: the parity scenarios of tests/test_etcd.py.

The same session cluster as test_etcd.py (tests/etcd_cluster.py), each test in its own key
namespace, deleted afterwards; tests that stop or freeze members heal the cluster after. Every
wait is bounded by a count and by time.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import etcd_cluster as etcd
import kannuki
from etcd_cluster import EtcdCluster, b64
from kannuki import AsyncLocker, LockLostError
from kannuki.backends.etcd_async import AsyncEtcdBackend
from servers import etcd_cluster  # noqa: F401 (the session's cluster, a fixture)
from support import killed_holder

WAIT = 20.0  # seconds: the most any awaited step may take in these tests


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run one test coroutine, bounded by WAIT * 3."""
    return asyncio.run(asyncio.wait_for(main(), WAIT * 3))


@pytest.fixture
def cluster(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:  # noqa: F811 (the fixture above)
    """The shared cluster, healed after a test that stopped or froze a member."""
    yield etcd_cluster
    if any(not m.running or m.paused for m in etcd_cluster.members):
        etcd_cluster.heal()


@pytest.fixture
def namespace(cluster: EtcdCluster) -> Iterator[str]:
    """A fresh key namespace; every key under it is deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    cluster.post("/v3/kv/deleterange", {"key": b64(name + "/"), "range_end": b64(name + "0")})


@pytest.fixture
def url(cluster: EtcdCluster, namespace: str) -> str:
    return cluster.url(namespace=namespace)


def keys_of(cluster: EtcdCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return cluster.keys(f"{namespace}/lock/{name}/")


async def until(predicate: Callable[[], Any], seconds: float = WAIT) -> bool:
    """Poll ``predicate`` (sync or async) every 20 ms for at most ``seconds``; whether it came true."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            return bool(value)
        await asyncio.sleep(0.02)


class Lost:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, lock: Any, reason: str) -> None:
        self.calls.append(reason)


def test_acquire_release_excludes_another_locker(url: str, cluster: EtcdCluster, namespace: str) -> None:
    """A key held by one AsyncLocker cannot be taken by another; its token is the key's create revision."""

    async def main() -> None:
        async with AsyncLocker(url) as first, AsyncLocker(url) as second:
            lock = first.lock("job")
            assert await lock.acquire(timeout=0)
            (kv,) = keys_of(cluster, namespace, "job")
            assert int(kv["create_revision"]) == lock.token
            assert await second.held("job")
            assert not await second.lock("job").acquire(blocking=False)
            (holder,) = await second.holders("job")
            assert holder.token == lock.token and not holder.shared
            await lock.release()
            assert not await first.held("job")
            async with second.lock("job", timeout=5) as other:
                assert not await first.lock("job").acquire(blocking=False)
                assert other.token is not None and other.token > int(kv["create_revision"])
            assert await first.list_held() == []

    run(main)


def test_waiting_tasks_queue_in_order_and_wake_on_release(url: str) -> None:
    """Tasks waiting on one key get it in the order they asked, each as the one before releases."""

    async def main() -> None:
        async with AsyncLocker(url) as first, AsyncLocker(url) as second:
            holder = first.lock("fifo")
            await holder.acquire()
            order: list[int] = []

            async def take(i: int) -> None:
                async with second.lock("fifo", timeout=WAIT):
                    order.append(i)

            tasks = []
            for i in range(3):
                tasks.append(asyncio.create_task(take(i)))
                assert await until(lambda i=i: _count_waiters(second, "fifo", i + 1))
            assert await second.try_lock("fifo", lambda: 1) is False
            await holder.release()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
            assert order == [0, 1, 2]

    run(main)


async def _count_waiters(locker: AsyncLocker, name: str, count: int) -> bool:
    return len(await locker.backend.waiters(name, 0)) == count


def test_shared_readers_and_a_waiting_writer(url: str) -> None:
    """Readers share; a writer waits for them; a later reader waits for the writer."""

    async def main() -> None:
        async with AsyncLocker(url) as first, AsyncLocker(url) as second:
            readers = [first.lock("rw", shared=True), second.lock("rw", shared=True)]
            for reader in readers:
                assert await reader.acquire(timeout=0)
            writer = asyncio.create_task(second.lock("rw").acquire(timeout=WAIT))
            assert await until(lambda: _count_waiters(first, "rw", 1))
            assert not await first.lock("rw", shared=True).acquire(timeout=0)
            for reader in readers:
                await reader.release()
            assert await asyncio.wait_for(writer, WAIT) is True
            assert [h.shared for h in await first.holders("rw")] == [False]

    run(main)


def test_cancelled_waiter_leaves_no_key(url: str, cluster: EtcdCluster, namespace: str) -> None:
    """A task cancelled while it waits in the queue takes its key out (its lease is revoked)."""

    async def main() -> None:
        async with AsyncLocker(url) as first, AsyncLocker(url) as second:
            holder = first.lock("cancel")
            await holder.acquire()
            waiter = asyncio.create_task(second.lock("cancel").acquire(timeout=WAIT))
            assert await until(lambda: _count_waiters(first, "cancel", 1))
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert [kv["create_revision"] for kv in keys_of(cluster, namespace, "cancel")] == [
                str(holder.token)
            ]
            await holder.release()
            assert keys_of(cluster, namespace, "cancel") == []

    run(main)


def test_cancellation_at_any_point_of_an_acquire_leaves_nothing_held(
    url: str, cluster: EtcdCluster, namespace: str
) -> None:
    """Cancel an acquire after 0, 1, 2 ... loop turns: whatever it had done is undone before it ends."""

    async def main() -> None:
        async with AsyncLocker(url) as locker:
            for turns in range(0, 40, 3):
                task = asyncio.create_task(locker.lock("mid-cancel").acquire(timeout=5))
                for _ in range(turns):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    acquired = await task
                except asyncio.CancelledError:
                    acquired = False
                if acquired:
                    await locker.force_release("mid-cancel")
                assert keys_of(cluster, namespace, "mid-cancel") == [], turns

    run(main)


def test_read_modify_write_under_the_lock_loses_no_update(url: str) -> None:
    """4 tasks on 2 lockers increment a counter with awaits inside the critical section: no lost update."""

    async def main() -> None:
        counter = {"value": 0}
        tokens: list[int] = []
        async with AsyncLocker(url) as first, AsyncLocker(url) as second:

            async def worker(locker: AsyncLocker) -> None:
                for _ in range(10):
                    async with locker.lock("counter", timeout=WAIT) as lock:
                        value = counter["value"]
                        await asyncio.sleep(0.001)
                        counter["value"] = value + 1
                        assert lock.token is not None
                        tokens.append(lock.token)

            await asyncio.wait_for(
                asyncio.gather(*(worker(lk) for lk in (first, second, first, second))), WAIT * 2
            )
        assert counter["value"] == 40
        assert tokens == sorted(set(tokens))

    run(main)


@pytest.mark.parametrize("how", ["lease revoked", "key deleted"])
def test_loss_is_reported_once(url: str, cluster: EtcdCluster, namespace: str, how: str) -> None:
    """The renewal task finds a revoked lease or a deleted key: on_lost once, lock.lost, LockLostError."""

    async def main() -> None:
        lost = Lost()
        async with AsyncLocker(url, ttl=3, on_lost=lost) as locker:
            lock = locker.lock("stolen")
            await lock.acquire()
            (kv,) = keys_of(cluster, namespace, "stolen")
            if how == "lease revoked":
                cluster.post("/v3/lease/revoke", {"ID": kv["lease"]})
            else:
                cluster.post("/v3/kv/deleterange", {"key": b64(kv["key"])})
            assert await until(lambda: lock.lost, 10)
            with pytest.raises(LockLostError):
                await lock.release()
            assert len(lost.calls) == 1 and locker.stats().lost == 1

    run(main)


def test_stale_grant_touches_nothing_of_the_next_holder(url: str) -> None:
    async def main() -> None:
        old_side = AsyncEtcdBackend.from_url(url, ttl=1)
        new_side = AsyncEtcdBackend.from_url(url, ttl=30)
        name, lock_id = "fenced", kannuki.lock_id("fenced")
        try:
            old = await old_side.acquire(name, lock_id, timeout=0)
            assert old is not None
            new = await new_side.acquire(name, lock_id, timeout=WAIT)
            assert new is not None and new.token > old.token
            assert await old_side.renew(old) is False and await old_side.check(old) is False
            with pytest.raises(LockLostError):
                await old_side.release(old)
            await old_side.abort(old)
            assert await new_side.check(new)
            await new_side.release(new)
        finally:
            await old_side.aclose()
            await new_side.aclose()

    run(main)


def test_sigkilled_holder_is_taken_over_within_ttl(url: str) -> None:
    """A (sync) holder process SIGKILLed: an async waiter takes over within ttl + 2 s."""
    ttl = 2.0
    with killed_holder(url, ttl) as (_locker, dead_token):

        async def main() -> None:
            async with AsyncLocker(url) as locker:
                lock = locker.lock("victim")
                assert await lock.acquire(timeout=ttl + 2)
                assert lock.token is not None and lock.token > dead_token
                await lock.release()

        run(main)


@pytest.mark.slow
def test_majority_stopped_reports_the_loss_then_a_new_locker_works(
    cluster: EtcdCluster, namespace: str
) -> None:
    """Two of three members stopped: on_lost within ttl + 2 s from the renewal task; a new locker works after."""
    ttl = 3
    url = cluster.url(namespace=namespace, request_timeout=1, connect_timeout=1)

    async def main() -> None:
        lost = Lost()
        async with AsyncLocker(url, ttl=ttl, on_lost=lost) as locker:
            lock = locker.lock("quorum")
            assert await lock.acquire(timeout=5)
            leader = cluster.leader()
            follower = next(m for m in cluster.members if m is not leader)
            cluster.kill(leader, signal.SIGTERM)
            cluster.kill(follower, signal.SIGTERM)
            assert await until(lambda: lost.calls, ttl + 2), "no on_lost within ttl + 2 s"
            cluster.heal()
            with pytest.raises(LockLostError):
                await lock.release()
        async with AsyncLocker(url, ttl=ttl) as fresh:
            assert await fresh.lock("quorum").acquire(timeout=ttl + 10)
        assert len(lost.calls) == 1

    run(main)


@pytest.mark.slow
def test_frozen_member_never_blocks_the_event_loop(cluster: EtcdCluster, namespace: str) -> None:
    """The first member is SIGSTOPped: requests to it time out and fail over while the loop keeps running
    (a ticker task ticks during the acquire), and a lock held meanwhile is not reported lost."""
    frozen = cluster.members[0]
    url = cluster.url(namespace=namespace, request_timeout=1, connect_timeout=1)

    async def main() -> None:
        lost = Lost()
        async with AsyncLocker(url, ttl=5, on_lost=lost) as holder_locker:
            held = holder_locker.lock("held-through-pause")
            assert await held.acquire(timeout=5)
            cluster.pause(frozen)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticking = asyncio.create_task(ticker())
            try:
                async with AsyncLocker(
                    url
                ) as locker:  # a new locker: its first request goes to the frozen member
                    before = ticks
                    lock = locker.lock("through-pause")
                    assert await lock.acquire(timeout=10)
                    assert ticks > before, "the event loop did not run while the request waited"
                    await lock.release()
                await asyncio.sleep(5 + 1)  # past the lease: renewals failed over too
                assert lost.calls == [] and not held.lost
                await held.ensure_held()
                await held.release()
            finally:
                ticking.cancel()

    run(main)


def test_unreachable_members_are_a_backend_error_within_connect_timeout() -> None:
    ports = etcd.free_ports(2)

    async def main() -> None:
        async with AsyncLocker(
            f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", connect_timeout=1
        ) as locker:
            started = time.monotonic()
            with pytest.raises(kannuki.BackendError, match="no etcd member reachable"):
                await locker.lock("nowhere").acquire(timeout=0)
            assert time.monotonic() - started < 1 + 2

    run(main)
