"""Regression tests for the defects the review and the fault tests found (the defects issue, item by item).

Each test names its item; each failed before its fix. Store-specific items live beside their
store's tests (test_postgres.py, test_redis.py ...); these are the ones every store shares.
"""

from __future__ import annotations

import enum
import threading
import uuid
from typing import Any

import pytest

import kannuki


class Job(str, enum.Enum):
    NIGHTLY = "nightly"


def test_item_9_an_int_timeout_too_large_for_a_float_is_a_value_error() -> None:
    """timeout=10**400 and default_timeout=10**400: ValueError naming the parameter, never OverflowError."""
    locker = kannuki.Locker("memory://")
    with pytest.raises(ValueError, match="timeout"):
        locker.lock("k", timeout=10**400)
    with pytest.raises(ValueError, match="default_timeout"):
        kannuki.Locker("memory://", default_timeout=10**400)
    with pytest.raises(ValueError, match="timeout"):
        locker.lock("k").acquire(timeout=10**400)
    with pytest.raises(ValueError, match="interval"):
        kannuki._core.Backoff("constant", 10**400)
    assert not locker.held("k")


def test_item_9_in_both_twins(core: Any) -> None:
    """The compiled and the pure backoff refuse a huge int interval alike."""
    with pytest.raises(ValueError, match="interval"):
        core.Backoff("constant", 10**400)


def test_item_15_a_str_enum_key_has_one_canonical_text(core: Any) -> None:
    """class Job(str, Enum): the name and the ID come from the same text, the member's value."""
    name, lock_id = core.name_and_id(Job.NIGHTLY, "app")
    assert (name, type(name)) == ("app:nightly", str)
    assert lock_id == core.lock_id("nightly", "app") == core.lock_id(Job.NIGHTLY, "app")
    assert core.full_name(Job.NIGHTLY) == "nightly" and type(core.full_name(Job.NIGHTLY)) is str


def test_item_15_name_based_and_id_based_stores_agree() -> None:
    """A lock on Job.NIGHTLY and one on "nightly" exclude each other on a name-keyed store."""
    locker = kannuki.Locker(f"memory://enum-{uuid.uuid4().hex[:6]}", key_prefix="app")
    with locker.lock(Job.NIGHTLY) as lock:
        assert lock.name == "app:nightly"
        assert lock.lock_id == kannuki.lock_id("nightly", prefix="app")
        assert locker.held("nightly")
        assert not locker.lock("nightly").acquire(blocking=False)


def test_item_16_the_twins_agree_on_strided_buffers(core: Any) -> None:
    """A non-contiguous buffer is hashed as its bytes in order, by both twins."""
    strided = memoryview(b"abcdefgh")[::2]
    assert core.hash_text_extended(strided) == core.hash_text_extended(b"aceg")


def test_item_20_a_failed_acquire_never_leaves_anything_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """The renewal thread cannot start (a thread limit): acquire raises and the lease is given back."""
    locker = kannuki.Locker(f"memory://threads-{uuid.uuid4().hex[:6]}", ttl=5)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="start new thread"):
            locker.lock("k").acquire()
    assert not locker.held("k")
    with locker.lock("k", timeout=0):
        pass
    locker.close()


def test_item_19_list_held_shows_names_this_locker_knows(pg_url: str) -> None:
    """PostgreSQL knows locks by ID only: the locks this locker holds are listed by their names."""
    locker = kannuki.Locker(pg_url, key_prefix=f"list-{uuid.uuid4().hex[:6]}")
    try:
        with locker.lock("report/7"):
            names = [h.name for h in locker.list_held() if h.lock_id == locker.lock_id("report/7")]
            assert names == [f"{locker.options.key_prefix}:report/7"]
    finally:
        locker.close()


@pytest.mark.parametrize("api", ["sync", "async"])
def test_item_25_extend_renews_a_lease_now(api: str, tmp_path: Any) -> None:
    """lock.extend(ttl) renews at once (to a new ttl); LockLostError once lost; NotSupportedError without a lease."""
    import asyncio
    import time

    async def maybe(value: Any) -> Any:
        return await value if asyncio.iscoroutine(value) else value

    async def body() -> None:
        cls = kannuki.Locker if api == "sync" else kannuki.AsyncLocker
        url = f"sqlite:///{tmp_path}/extend.db"
        locker = cls(url, ttl=0.5, auto_renew=False)
        other = cls(url, auto_renew=False)
        lock = locker.lock("lease")
        assert await maybe(lock.acquire())
        await maybe(lock.extend(ttl=3))  # now a 3 s lease though nobody renews it
        time.sleep(1.0)
        assert not await maybe(other.lock("lease").acquire(blocking=False))
        await maybe(other.force_release("lease"))
        with pytest.raises(kannuki.LockLostError):
            await maybe(lock.extend())
        assert lock.lost
        plain = cls(f"memory://extend-{uuid.uuid4().hex[:6]}").lock("p")
        assert await maybe(plain.acquire())
        with pytest.raises(kannuki.NotSupportedError, match="not a lease"):
            await maybe(plain.extend())
        await maybe(plain.release())
        with pytest.raises(kannuki.NotHeldError):
            await maybe(plain.extend())

    asyncio.run(body())


def test_ensure_held_of_a_plain_memory_hold_sees_a_forced_release() -> None:
    """memory:// without a lease: ensure_held() asks the table, reports the loss once and raises."""
    calls: list[str] = []
    locker = kannuki.Locker(
        f"memory://ensure-{uuid.uuid4().hex[:6]}", on_lost=lambda lock, why: calls.append(why)
    )
    lock = locker.lock("k")
    assert lock.acquire()
    lock.ensure_held()
    assert locker.force_release("k") == 1
    with pytest.raises(kannuki.LockLostError):
        lock.ensure_held()
    assert lock.lost and not lock.locked() and len(calls) == 1 and locker.stats().lost == 1
    with pytest.raises(kannuki.NotHeldError):
        lock.release()


def test_a_locker_without_a_url_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Locker() with no URL and no $KANNUKI_URL: ConfigurationError that says how to give one."""
    monkeypatch.delenv("KANNUKI_URL", raising=False)
    with pytest.raises(kannuki.ConfigurationError, match="KANNUKI_URL"):
        kannuki.Locker()


def test_item_19_kannuki_list_on_mariadb_says_what_it_cannot_see(mysql_url: str) -> None:
    """Without METADATA_LOCK_INFO, `kannuki list` says it cannot see instead of "no locks held"."""
    import subprocess
    import sys

    from support import subprocess_env

    locker = kannuki.Locker(mysql_url, key_prefix=f"list-{uuid.uuid4().hex[:6]}")
    try:
        with locker.lock("visible?"):
            listed = locker.list_held()
            result = subprocess.run(
                [sys.executable, "-m", "kannuki", "list", "--url", mysql_url],
                env=subprocess_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert result.returncode == 0
        if listed:  # a server that can list: the lock is shown
            assert "visible?" in result.stdout or "#" in result.stdout
        else:
            assert "no locks held" not in result.stdout
            assert "cannot list" in result.stdout
    finally:
        locker.close()
