"""Handing a held lock to another process: ``Lock.detach()`` -> ticket -> ``Locker.adopt(ticket)``.

The stores whose holds live in the store alone (memory within a process, sqlite, redis) hand
off; the others refuse and keep holding. A ticket is only as good as the hold it names: once
its lease ran out or it was released, adopting it raises LockLostError and frees nothing of a
newer holder's (every release is the store's compare-and-delete).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import kannuki

BOUND = 20.0  # seconds: the bound on every wait here


@pytest.fixture(params=["memory", "sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://handoff-{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/locks.db"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def prefix() -> str:
    return f"handoff-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def lockers(url: str, prefix: str) -> Iterator[tuple[kannuki.Locker, kannuki.Locker]]:
    """Two lockers on one store: the one that takes a lock, the one that takes it over."""
    first, second = kannuki.Locker(url, key_prefix=prefix), kannuki.Locker(url, key_prefix=prefix)
    yield first, second
    first.close()
    second.close()


def test_detach_then_adopt_then_release(lockers: tuple[kannuki.Locker, kannuki.Locker]) -> None:
    """A detached lock stays held in the store; the adopter holds it (same token) and its release frees it."""
    sender, worker = lockers
    lock = sender.lock("job/1", ttl=30)
    lock.acquire()
    token = lock.token
    ticket = lock.detach()
    assert json.loads(ticket)["key"] == "job/1"
    assert not lock.locked() and lock.token is None
    with pytest.raises(kannuki.NotHeldError):
        lock.release()
    assert sender.held("job/1")
    sender.close()  # a detached hold is not the sender's to release at close
    assert worker.held("job/1")
    adopted = worker.adopt(ticket, ttl=10)
    assert adopted.locked() and adopted.token == token and adopted.key == "job/1"
    assert not worker.lock("job/1", timeout=0).acquire()  # still excludes others
    adopted.release()
    assert not worker.held("job/1")


def test_a_stale_ticket_never_frees_a_newer_holder(lockers: tuple[kannuki.Locker, kannuki.Locker]) -> None:
    """After the lease ran out and someone else took the key, the old ticket is refused and frees nothing."""
    sender, worker = lockers
    lock = sender.lock("job/2", ttl=0.5)
    lock.acquire()
    ticket = lock.detach()  # nobody renews it from here on
    deadline = time.monotonic() + BOUND
    newer = worker.lock("job/2", ttl=30)
    while not newer.acquire(blocking=False):  # the lease runs out by itself
        assert time.monotonic() < deadline, "the detached lease never ran out"
        time.sleep(0.02)
    with pytest.raises(kannuki.LockLostError, match="job/2"):
        sender.adopt(ticket)
    assert newer.locked() and worker.held("job/2")
    newer.ensure_held()
    newer.release()


def test_a_released_ticket_is_refused(lockers: tuple[kannuki.Locker, kannuki.Locker]) -> None:
    """Adopting the same ticket after its holder released it: LockLostError, nothing held."""
    sender, worker = lockers
    lock = sender.lock("job/3")
    lock.acquire()
    ticket = lock.detach()
    worker.adopt(ticket).release()
    with pytest.raises(kannuki.LockLostError):
        worker.adopt(ticket)
    assert not worker.held("job/3")


def test_the_adopter_renews_the_lease(lockers: tuple[kannuki.Locker, kannuki.Locker]) -> None:
    """An adopted lease is renewed every ttl/3 by the adopting locker, like any lease."""
    sender, worker = lockers
    lock = sender.lock("job/4", ttl=30)
    lock.acquire()
    adopted = worker.adopt(lock.detach(), ttl=0.6)
    before = worker.stats().renewed
    deadline = time.monotonic() + BOUND
    while worker.stats().renewed < before + 2:
        assert time.monotonic() < deadline, "the adopted lease was never renewed"
        time.sleep(0.02)
    adopted.ensure_held()
    adopted.release()


def test_a_ticket_crosses_processes(url: str, prefix: str, tmp_path: Path) -> None:
    """The ticket taken here is adopted and released by another process."""
    if url.startswith("memory"):
        pytest.skip("a memory table is one process's")
    locker = kannuki.Locker(url, key_prefix=prefix)
    try:
        lock = locker.lock("job/5", ttl=30)
        lock.acquire()
        ticket = lock.detach()
        code = (
            "import sys, kannuki\n"
            "locker = kannuki.Locker(sys.argv[1], key_prefix=sys.argv[2])\n"
            "lock = locker.adopt(sys.argv[3])\n"
            "assert lock.locked()\n"
            "lock.release()\n"
            "locker.close()\n"
        )
        src = str(Path(kannuki.__file__).parent.parent)
        subprocess.run(
            [sys.executable, "-c", code, url, prefix, ticket],
            check=True,
            timeout=60,
            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        )
        assert not locker.held("job/5")
    finally:
        locker.close()


def test_stores_whose_holds_live_in_this_process_refuse_and_keep_holding(tmp_path: Path) -> None:
    """file://: the hold is a descriptor of this process; detach raises NotSupportedError, still holding."""
    locker = kannuki.Locker(f"file://{tmp_path}/locks")
    try:
        lock = locker.lock("job")
        lock.acquire()
        with pytest.raises(kannuki.NotSupportedError, match="cannot be handed off"):
            lock.detach()
        assert lock.locked()
        lock.release()
    finally:
        locker.close()


def test_bad_tickets_are_refused_naming_the_ticket(
    lockers: tuple[kannuki.Locker, kannuki.Locker], url: str
) -> None:
    """Not a str, not JSON, a wrong field, another store, another key_prefix: clear errors, nothing held."""
    sender, worker = lockers
    with pytest.raises(TypeError, match="ticket"):
        worker.adopt(42)  # type: ignore[arg-type]
    for bad in ("", "nope", "{}", json.dumps({"kannuki": 1, "store": "redis"})):
        with pytest.raises(ValueError, match="ticket"):
            worker.adopt(bad)
    lock = sender.lock("job/6")
    lock.acquire()
    ticket = lock.detach()
    fields = json.loads(ticket)
    other_store = json.dumps({**fields, "store": "etcd"})
    with pytest.raises(ValueError, match="etcd store"):
        worker.adopt(other_store)
    other_prefix = kannuki.Locker(url, key_prefix="other")
    try:
        with pytest.raises(ValueError, match="key_prefix"):
            other_prefix.adopt(ticket)
    finally:
        other_prefix.close()
    with pytest.raises(ValueError, match="ttl"):
        worker.adopt(ticket, ttl=0)
    worker.adopt(ticket).release()
    with pytest.raises(kannuki.NotHeldError):
        sender.lock("job/6").detach()


def test_async_detach_and_adopt(url: str, prefix: str) -> None:
    """The same with AsyncLocker, and across the twins: an async lock adopted by a sync locker."""

    async def main() -> None:
        async with kannuki.AsyncLocker(url, key_prefix=prefix) as alocker:
            lock = alocker.lock("job/7", ttl=30)
            assert await lock.acquire()
            ticket = lock.detach()
            assert not lock.locked() and await alocker.held("job/7")
            adopted = await alocker.adopt(ticket, ttl=10)
            assert adopted.locked()
            ticket = adopted.detach()
            with kannuki.Locker(url, key_prefix=prefix) as sync_locker:
                if url.startswith("memory"):
                    assert sync_locker.held("job/7")
                sync_locker.adopt(ticket).release()
            assert not await alocker.held("job/7")
            with pytest.raises(kannuki.LockLostError):
                await alocker.adopt(ticket)

    asyncio.run(asyncio.wait_for(main(), BOUND))
