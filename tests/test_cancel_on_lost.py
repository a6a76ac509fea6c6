"""``async with locker.lock(key, cancel_on_lost=True):``, the async cancel scope, on every store.

A loss while the body runs cancels the body's task, and LockLostError (not CancelledError)
comes out of the block; a cancellation from outside still comes out as CancelledError, and
after the block the task runs on with no cancellation left pending. The lock is taken away
as each store allows: a lease's record deleted by another locker (``force_release``), a
database session ended (``force_release(terminate=True)``). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kannuki
from kannuki import AsyncLocker, LockLostError
from servers import etcd_cluster  # noqa: F401 (the session's cluster, a fixture)

STORES = ["memory-ttl", "sqlite", "file", "redis", "etcd", "postgres", "mysql"]
# Seconds within which a loss is noticed here (leases with ttl 0.6 renew every 0.2 s; etcd's
# keep-alive runs every ttl/3 of 3 s; databases are watched every second): a liveness bound.
NOTICED_WITHIN = 10.0
BODY_SLEEP = 30.0  # what the body would sleep if nothing cancelled it


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The URL and options of the store named by the test's ``store`` parameter."""
    store = request.node.callspec.params["store"]
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    if store == "memory-ttl":
        yield f"memory://{name}", {"ttl": 0.6}
    elif store == "sqlite":
        yield f"sqlite:///{tmp_path}/cancel.db", {"ttl": 0.6}
    elif store == "file":
        yield f"file://{tmp_path}/cancel", {"ttl": 0.6}
    elif store == "redis":
        yield request.getfixturevalue("redis_url"), {"ttl": 0.6, "key_prefix": name}
    elif store == "etcd":
        from etcd_cluster import b64

        cluster = request.getfixturevalue("etcd_cluster")
        yield cluster.url(namespace=name), {"ttl": 3}
        cluster.post("/v3/kv/deleterange", {"key": b64(name + "/"), "range_end": b64(name + "0")})
    elif store == "postgres":
        yield request.getfixturevalue("pg_url"), {"key_prefix": name}
    elif store == "mysql":
        yield request.getfixturevalue("mysql_url"), {"key_prefix": name}
    else:
        raise AssertionError(store)


async def take_away(url: str, options: dict[str, Any], key: str) -> None:
    """Another locker takes the lock away from its holder: deletes the lease, or ends the session."""
    async with AsyncLocker(url, **options) as other:
        terminate = url.startswith(("postgresql", "mysql"))
        assert await other.force_release(key, terminate=terminate) == 1


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("store", STORES)
def test_a_loss_cancels_the_body_and_raises_lock_lost(
    store: str, store_url: tuple[str, dict[str, Any]]
) -> None:
    """The lock is taken away while the body sleeps: the body is cancelled, LockLostError comes out, once."""
    url, options = store_url

    async def main() -> None:
        reasons: list[str] = []
        async with AsyncLocker(url, **options) as locker:
            lock = locker.lock("scoped", cancel_on_lost=True, on_lost=lambda lock, why: reasons.append(why))
            reached: list[str] = []

            async def scoped() -> None:
                async with lock:
                    await take_away(url, options, "scoped")
                    try:
                        await asyncio.sleep(BODY_SLEEP)
                    except asyncio.CancelledError:
                        reached.append("cancelled")
                        raise
                    reached.append("slept on")

            started = time.monotonic()
            with pytest.raises(LockLostError) as caught:
                await scoped()
            assert time.monotonic() - started < NOTICED_WITHIN
            assert reached == ["cancelled"]
            assert isinstance(caught.value.__context__, asyncio.CancelledError)
            assert lock.lost and not lock.locked()
            assert len(reasons) == 1 and locker.stats().lost == 1
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            await asyncio.sleep(0.05)  # no cancellation is left pending for the task

    run(main)


@pytest.mark.parametrize("store", STORES)
def test_an_outer_cancellation_still_comes_out_as_cancelled(
    store: str, store_url: tuple[str, dict[str, Any]]
) -> None:
    """The task is cancelled from outside while the body runs: CancelledError, and the key is free again."""
    url, options = store_url

    async def main() -> None:
        async with AsyncLocker(url, **options) as locker:
            entered = asyncio.Event()

            async def holder() -> None:
                async with locker.lock("outer", cancel_on_lost=True):
                    entered.set()
                    await asyncio.sleep(BODY_SLEEP)

            task = asyncio.ensure_future(holder())
            await asyncio.wait_for(entered.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not await locker.held("outer")
            assert locker.stats().lost == 0

    run(main)


@pytest.mark.parametrize("store", ["memory-ttl", "postgres"])
def test_a_loss_and_an_outer_cancellation_together_come_out_as_cancelled(
    store: str, store_url: tuple[str, dict[str, Any]]
) -> None:
    """The loss cancels the body and the task is cancelled from outside too: the outer CancelledError wins."""
    url, options = store_url

    async def main() -> None:
        async with AsyncLocker(url, **options) as locker:
            entered = asyncio.Event()
            task: asyncio.Task[None] | None = None

            def cancel_from_outside(lock: Any, reason: str) -> None:
                assert task is not None
                task.cancel()  # at the very moment of the loss: both cancellations are pending

            async def holder() -> None:
                async with locker.lock("both", cancel_on_lost=True, on_lost=cancel_from_outside):
                    entered.set()
                    await asyncio.sleep(BODY_SLEEP)

            task = asyncio.ensure_future(holder())
            await asyncio.wait_for(entered.wait(), 10)
            await take_away(url, options, "both")
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, NOTICED_WITHIN)
            assert locker.stats().lost == 1

    run(main)


@pytest.mark.parametrize("store", ["memory-ttl", "redis", "postgres", "mysql"])
def test_a_loss_found_by_the_body_itself_leaves_no_cancellation_pending(
    store: str, store_url: tuple[str, dict[str, Any]]
) -> None:
    """ensure_held() in the body finds the loss: LockLostError comes out, and the task is not cancelled later."""
    url, options = store_url

    async def main() -> None:
        async with AsyncLocker(url, **options, watch_interval=None, auto_renew=False) as locker:
            lock = locker.lock("found", cancel_on_lost=True)

            async def scoped() -> None:
                async with lock:
                    await take_away(url, options, "found")
                    await lock.ensure_held()

            with pytest.raises(LockLostError):
                await scoped()
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            await asyncio.sleep(0.05)  # a cancellation left pending would land here
            assert locker.stats().lost == 1

    run(main)


def test_a_raising_on_lost_still_cancels_the_body() -> None:
    """The per-lock on_lost raises: the body is cancelled all the same (the callback is only logged)."""

    def raises(lock: Any, reason: str) -> None:
        raise RuntimeError("a callback that fails")

    async def main() -> None:
        url = f"memory://cancel-{uuid.uuid4().hex[:8]}"
        async with AsyncLocker(url, ttl=0.6) as locker:

            async def scoped() -> None:
                async with locker.lock("k", cancel_on_lost=True, on_lost=raises):
                    await take_away(url, {"ttl": 0.6}, "k")
                    await asyncio.sleep(BODY_SLEEP)

            started = time.monotonic()
            with pytest.raises(LockLostError):
                await scoped()
            assert time.monotonic() - started < NOTICED_WITHIN, "the body was not cancelled"

    run(main)


def test_cancel_on_lost_must_be_a_bool() -> None:
    """A bad cancel_on_lost names the parameter."""
    locker = kannuki.AsyncLocker(f"memory://cancel-{uuid.uuid4().hex[:8]}")
    with pytest.raises(TypeError, match="cancel_on_lost"):
        locker.lock("k", cancel_on_lost="yes")  # type: ignore[arg-type]
