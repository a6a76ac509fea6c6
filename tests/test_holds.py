"""SPEC §8, the guarantees of a hold, on every store, sync and async alike.

Each test body is written once as a coroutine over ``api`` (sync Locker or
AsyncLocker): ``await maybe(x)`` awaits what the async API returns and passes
the sync API's values through.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import multiprocessing
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kannuki

LEASE_STORES = ["memory-ttl", "sqlite", "file", "redis"]
ALL_STORES = ["memory", *LEASE_STORES, "postgres", "mysql"]


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def wait_for(predicate: Callable[[], Any], seconds: float = 10.0) -> bool:
    """Poll ``predicate`` (sync or async) every 20 ms for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await maybe(predicate()):
            return True
        await asyncio.sleep(0.02)
    return bool(await maybe(predicate()))


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def store_url(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The URL and options of ``store`` for one test (servers from the shared fixtures)."""
    name = uuid.uuid4().hex[:8]
    if store == "memory":
        return f"memory://holds-{name}", {}
    if store == "memory-ttl":
        return f"memory://holds-{name}", {"ttl": 0.6}
    if store == "sqlite":
        return f"sqlite:///{tmp_path}/holds.db", {"ttl": 0.6}
    if store == "file":
        return f"file://{tmp_path}/holds", {"ttl": 0.6}
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        return url, {"ttl": 0.6, "key_prefix": f"holds-{name}"}
    if store == "postgres":
        return request.getfixturevalue("pg_url"), {"key_prefix": f"holds-{name}"}
    if store == "mysql":
        return request.getfixturevalue("mysql_url"), {"key_prefix": f"holds-{name}"}
    raise AssertionError(store)


class Stores:
    """Makes lockers of one store for one test and closes them all afterwards."""

    def __init__(self, api: str, url: str, options: dict[str, Any]) -> None:
        self.api = api
        self.url = url
        self.options = options
        self.made: list[Any] = []

    def locker(self, **extra: Any) -> Any:
        cls = kannuki.Locker if self.api == "sync" else kannuki.AsyncLocker
        locker = cls(self.url, **{**self.options, **extra})
        self.made.append(locker)
        return locker

    async def close(self) -> None:
        for locker in self.made:
            await maybe(locker.aclose() if self.api == "async" else locker.close())


def run(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest, body: Callable[[Stores], Any]
) -> None:
    url, options = store_url(store, tmp_path, request)
    stores = Stores(api, url, options)

    async def main() -> None:
        try:
            await body(stores)
        finally:
            await stores.close()

    asyncio.run(main())


@pytest.mark.parametrize("store", LEASE_STORES)
def test_lease_is_renewed_while_held(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A lease held three times its ttl is still ours: renewed every ttl/3, nobody else gets it."""

    async def body(stores: Stores) -> None:
        locker, other = stores.locker(), stores.locker()
        lock = locker.lock("renewed")
        assert await maybe(lock.acquire())
        await asyncio.sleep(1.8)
        assert lock.locked() and not lock.lost
        assert not await maybe(other.lock("renewed").acquire(blocking=False))
        assert locker.stats().renewed >= 3
        await maybe(lock.release())
        assert locker.stats().lost == 0

    run(api, store, tmp_path, request, body)


@pytest.mark.parametrize("store", LEASE_STORES)
def test_lock_many_leases_are_renewed(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every key of a lock_many is a renewed lease too: none expires while the MultiLock holds it."""

    async def body(stores: Stores) -> None:
        locker, other = stores.locker(), stores.locker()
        many = locker.lock_many(["a", "b"])
        assert await maybe(many.acquire())
        await asyncio.sleep(1.8)
        assert many.locked()
        for key in ("a", "b"):
            assert not await maybe(other.lock(key).acquire(blocking=False))
        await maybe(many.release())

    run(api, store, tmp_path, request, body)


@pytest.mark.parametrize("store", LEASE_STORES)
def test_a_loss_is_reported_exactly_once(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A lease deleted behind our back: on_lost (locker and lock), lost event, stats, lock.lost, once each."""

    async def body(stores: Stores) -> None:
        calls: list[str] = []
        locker = stores.locker(on_lost=lambda lock, reason: calls.append("locker"))
        events: list[kannuki.LockEvent] = []
        unsubscribe = kannuki.subscribe(events.append, events={"lost"})
        try:
            lock = locker.lock("lost", on_lost=lambda lock, reason: calls.append("lock"))
            assert await maybe(lock.acquire())
            assert await maybe(stores.locker().force_release("lost")) == 1
            assert await wait_for(lambda: lock.lost, 5)
            assert not lock.locked()
            with pytest.raises(kannuki.LockLostError):
                await maybe(lock.release())
            await asyncio.sleep(0.5)
            assert sorted(calls) == ["lock", "locker"]
            assert [e.key for e in events] == ["lost"] and locker.stats().lost == 1
        finally:
            unsubscribe()

    run(api, store, tmp_path, request, body)


@pytest.mark.parametrize("store", LEASE_STORES)
def test_a_loss_found_by_release_is_reported_once(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """release() that finds the lease gone before the renewer did still calls on_lost, once."""

    async def body(stores: Stores) -> None:
        calls: list[str] = []
        locker = stores.locker(on_lost=lambda lock, reason: calls.append(reason))
        lock = locker.lock("found-at-release")
        assert await maybe(lock.acquire())
        await maybe(stores.locker().force_release("found-at-release"))
        with pytest.raises(kannuki.LockLostError):
            await maybe(lock.release())
        assert lock.lost and not lock.locked()
        with pytest.raises(kannuki.NotHeldError):
            await maybe(lock.release())
        await asyncio.sleep(0.3)
        assert len(calls) == 1 and locker.stats().lost == 1

    run(api, store, tmp_path, request, body)


@pytest.mark.parametrize("store", ["memory-ttl", "sqlite"])
def test_a_callback_raising_systemexit_never_stops_renewals(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """on_lost raising SystemExit is logged; the other leases go on being renewed."""

    def exits(lock: Any, reason: str) -> None:
        raise SystemExit("a callback that exits")

    async def body(stores: Stores) -> None:
        locker = stores.locker(on_lost=exits)
        doomed, survivor = locker.lock("doomed"), locker.lock("survivor")
        assert await maybe(doomed.acquire()) and await maybe(survivor.acquire())
        await maybe(stores.locker().force_release("doomed"))
        assert await wait_for(lambda: doomed.lost, 5)
        renewed = locker.stats().renewed
        await asyncio.sleep(1.5)
        assert survivor.locked() and locker.stats().renewed > renewed
        await maybe(survivor.release())

    run(api, store, tmp_path, request, body)


@pytest.mark.parametrize("store", ALL_STORES)
def test_a_collected_held_lock_is_released_with_a_warning(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A held Lock dropped without release(): ResourceWarning naming the key, and the key is free again."""

    async def body(stores: Stores) -> None:
        locker = stores.locker()
        lock = locker.lock("dropped-key")
        assert await maybe(lock.acquire())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del lock
            gc.collect()
            assert await wait_for(lambda: _not(locker.held("dropped-key")), 10)
        assert any(
            issubclass(w.category, ResourceWarning) and "dropped-key" in str(w.message) for w in caught
        )

    run(api, store, tmp_path, request, body)


async def _not(value: Any) -> bool:
    return not await maybe(value)


@pytest.mark.parametrize("store", ALL_STORES)
def test_close_releases_every_hold(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Locker.close() releases its locks and its lock_many holds; another locker then gets them all."""

    async def body(stores: Stores) -> None:
        locker = stores.locker()
        single = locker.lock("c1")
        many = locker.lock_many(["c2", "c3"])
        assert await maybe(single.acquire()) and await maybe(many.acquire())
        await maybe(locker.aclose() if stores.api == "async" else locker.close())
        stores.made.remove(locker)
        assert not single.locked() and not many.locked()
        other = stores.locker()
        taken = other.lock_many(["c1", "c2", "c3"])
        assert await maybe(taken.acquire(blocking=False))
        await maybe(taken.release())
        with pytest.raises(kannuki.LockLostError):
            await maybe(single.release())

    run(api, store, tmp_path, request, body)


@pytest.mark.parametrize("store", ["memory-ttl", "sqlite", "redis"])
def test_an_interrupted_release_leaves_nothing_held(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """KeyboardInterrupt inside the store's release: the owner aborts the grant, so the key is free."""

    async def body(stores: Stores) -> None:
        locker = stores.locker()
        backend = locker.backend
        real_release = backend.release
        interrupted: list[bool] = []

        def interrupt_once(grant: Any) -> Any:
            if not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            return real_release(grant)

        lock = locker.lock("interrupted")
        assert await maybe(lock.acquire())
        backend.release = interrupt_once
        try:
            with pytest.raises(KeyboardInterrupt):
                await maybe(lock.release())
        finally:
            del backend.release
        assert interrupted and not await maybe(locker.held("interrupted"))

    run(api, store, tmp_path, request, body)


def test_async_release_survives_cancellation() -> None:
    """A task cancelled while its release is under way: the release still completes."""

    async def main() -> None:
        # A lease, so the release goes through the store's release (a plain hold's is one C call).
        locker = kannuki.AsyncLocker(f"memory://cancel-{uuid.uuid4().hex[:6]}", ttl=5)
        backend = locker.backend
        real_release = backend.release
        entered = asyncio.Event()

        async def slow_release(grant: Any) -> None:
            entered.set()
            await asyncio.sleep(0.2)
            await real_release(grant)

        lock = locker.lock("k")
        assert await lock.acquire()
        backend.release = slow_release
        task = asyncio.ensure_future(lock.release())
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del backend.release
        assert not await locker.held("k")
        await locker.aclose()

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("store", ["memory-ttl", "sqlite", "redis", "postgres", "mysql"])
def test_a_forked_child_holds_nothing_and_leaves_the_parents_locks(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """After fork() the child's view of the parent's lock: not held, no token, no renewal; the parent keeps it."""
    url, options = store_url(store, tmp_path, request)
    cls = kannuki.Locker if api == "sync" else kannuki.AsyncLocker

    async def take() -> tuple[Any, Any]:
        locker = cls(url, **options)
        lock = locker.lock("parent-held")
        assert await maybe(lock.acquire())
        return locker, lock

    loop = asyncio.new_event_loop()
    try:
        locker, lock = loop.run_until_complete(take())
        child = multiprocessing.get_context("fork").Process(target=_child_view, args=(locker, lock, api))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert lock.locked()
        other = cls(url, **options)
        assert not loop.run_until_complete(maybe(other.lock("parent-held").acquire(blocking=False)))
        loop.run_until_complete(maybe(lock.release()))
        loop.run_until_complete(maybe(other.aclose() if api == "async" else other.close()))
        loop.run_until_complete(maybe(locker.aclose() if api == "async" else locker.close()))
    finally:
        loop.close()


def _child_view(locker: Any, lock: Any, api: str) -> None:
    assert not lock.locked() and lock.token is None
    assert len(locker._keeper) == 0 and not locker._keeper.renewing
    try:
        asyncio.run(maybe(lock.release()))
    except kannuki.NotHeldError:
        pass
    else:
        raise AssertionError("the child released its parent's lock")

    async def close() -> None:
        await maybe(locker.aclose() if api == "async" else locker.close())

    asyncio.run(close())
    os._exit(0)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_an_interrupted_circuit_probe_lets_the_next_call_probe(api: str) -> None:
    """The half-open probe is cut by KeyboardInterrupt: the next call probes again, never CircuitOpenError."""

    async def body() -> None:
        cls = kannuki.Locker if api == "sync" else kannuki.AsyncLocker
        locker = cls(f"memory://probe-{uuid.uuid4().hex[:6]}", circuit_failures=1, circuit_reset=0.05)
        backend = locker.backend
        real_acquire = backend.acquire
        outcomes: list[BaseException] = [kannuki.BackendError("store down"), KeyboardInterrupt()]

        def failing(*args: Any, **kwargs: Any) -> Any:
            if outcomes:
                raise outcomes.pop(0)
            return real_acquire(*args, **kwargs)

        backend.acquire = failing
        try:
            with pytest.raises(kannuki.BackendError):
                await maybe(locker.lock("k").acquire())
            with pytest.raises(kannuki.CircuitOpenError):
                await maybe(locker.lock("k").acquire())
            await asyncio.sleep(0.1)
            with pytest.raises(KeyboardInterrupt):  # the probe, interrupted
                await maybe(locker.lock("k").acquire())
            lock = locker.lock("k")
            assert await maybe(lock.acquire())  # probes again and closes the circuit
            await maybe(lock.release())
            assert locker.circuit_state().state == "closed"
        finally:
            del backend.acquire
            await maybe(locker.aclose() if api == "async" else locker.close())

    asyncio.run(body())


def test_adopting_a_watched_hold_never_wakes_the_idle_worker(pg_url: str) -> None:
    """A watched hold (PostgreSQL) taken while the worker idles is first looked at on the worker's own
    wake-up, within the watch interval: no wake-up call per acquisition (each one a thread switch, which
    halved the uncontended throughput)."""
    locker = kannuki.Locker(pg_url, key_prefix=f"t-wake-{uuid.uuid4().hex[:8]}")
    keeper = locker._keeper
    wakes = []
    real_wake = keeper._worker.wake
    keeper._worker.wake = lambda: (wakes.append(1), real_wake())[1]
    try:
        lock = locker.lock("k")
        assert lock.acquire(blocking=False)  # starts the worker
        lock.release()
        time.sleep(1.5)  # past one watch interval (1 s): the worker found nothing watched and idles
        for _ in range(20):
            assert lock.acquire(blocking=False)
            lock.release()
        assert wakes == []
        assert keeper.renewing
    finally:
        locker.close()


@pytest.mark.parametrize("store", ["postgres", "mysql"])
def test_a_store_without_server_tokens_gives_no_token(
    api: str, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """fencing=False: the locks work, lock.token and MultiLock.tokens are None (never a number another
    process may repeat); with the server's tokens (the default) they are ints."""

    async def body(stores: Stores) -> None:
        unfenced, fenced = stores.locker(fencing=False), stores.locker()
        assert unfenced.backend.tokens_fenced is False
        lock = unfenced.lock("tokenless")
        assert await maybe(lock.acquire(timeout=5))
        assert lock.locked() and lock.token is None
        await maybe(lock.release())
        many = unfenced.lock_many(["tokenless-a", "tokenless-b"])
        assert await maybe(many.acquire(timeout=5))
        assert many.tokens == [None, None]
        await maybe(many.release())
        lock = fenced.lock("tokenless")
        assert await maybe(lock.acquire(timeout=5))
        if fenced.backend.tokens_fenced:  # MySQL without sequences gives none by default either
            assert isinstance(lock.token, int) and lock.token > 0
        else:
            assert lock.token is None
        await maybe(lock.release())

    run(api, store, tmp_path, request, body)
