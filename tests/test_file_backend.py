"""The file:/// store: flock per key, lease record, tokens, processes, and what expiry means there."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

import kannuki
from kannuki.backends.file import FileBackend, file_name
from support import FakeClock, contend, killed_holder


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/locks"


@pytest.fixture
def locker(url: str):
    locker = kannuki.Locker(url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
    yield locker
    locker.close()


@pytest.mark.parametrize("bad", ["file://host/dir", "file:///dir?x=1"])
def test_bad_urls_are_refused(bad: str) -> None:
    """A host or a query in a file URL raises ConfigurationError naming the url."""
    with pytest.raises(kannuki.ConfigurationError, match="url"):
        kannuki.Locker(bad)


def test_bad_options_are_refused(url: str) -> None:
    """Unknown options and a bad ttl raise ConfigurationError naming them."""
    with pytest.raises(kannuki.ConfigurationError, match="busy_timeout"):
        kannuki.Locker(url, busy_timeout=1)
    with pytest.raises(kannuki.ConfigurationError, match="ttl"):
        kannuki.Locker(url, ttl=-1)


def test_shared_locks_are_not_supported(locker: kannuki.Locker) -> None:
    """shared=True is refused before anything is touched."""
    with pytest.raises(kannuki.NotSupportedError, match="shared"):
        locker.lock("k", shared=True)


def test_lock_file_record_holders_and_tokens(locker: kannuki.Locker, tmp_path: Path) -> None:
    """The lock file is named from the lock ID, records the holder, and tokens persist and grow."""
    lock = locker.lock("job")
    assert lock.acquire(timeout=0)
    path = tmp_path / "locks" / file_name(lock.lock_id)
    assert path.exists() and f'"token":{lock.token}' in path.read_text()
    (holder,) = locker.holders("job")
    assert (holder.name, holder.pid, holder.token) == (lock.name, os.getpid(), lock.token)
    assert [h.lock_id for h in locker.backend.list_held()] == [lock.lock_id]
    assert not locker.lock("job").acquire(timeout=0.05)
    first = lock.token
    lock.release()
    assert not locker.held("job") and locker.backend.list_held() == []
    other = kannuki.Locker(locker.backend.describe(), key_prefix=locker.options.key_prefix)
    again = other.lock("job")
    assert again.acquire(timeout=0) and again.token == first + 1
    again.release()
    other.close()


def test_processes_contending_lose_no_update(url: str, tmp_path: Path) -> None:
    """4 processes x 50 read-modify-writes: no lost update, tokens strictly increasing in lock order."""
    contend(url, tmp_path)


def test_sigkilled_holder_is_freed_at_once(url: str) -> None:
    """The OS drops a killed holder's flock: the lock is free at once, the next token is higher."""
    with killed_holder(url, ttl=30) as (locker, token):
        lock = locker.lock("victim")
        assert lock.acquire(timeout=5)
        assert lock.token == token + 1
        lock.release()


def test_live_holder_with_expired_lease_still_excludes(tmp_path: Path) -> None:
    """The rule of the file store: a live holder is never robbed, whatever its lease record says."""
    clock = FakeClock()
    backend = FileBackend(str(tmp_path), ttl=1, clock=clock)
    locker = kannuki.Locker(backend, auto_renew=False)
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    clock.now += 100
    (holder,) = locker.holders("k")
    assert holder.expires_at < clock.now
    assert not locker.lock("k").acquire(timeout=0)
    lock.release()
    locker.close()


def test_removed_lock_file_is_a_lost_lock(tmp_path: Path) -> None:
    """Deleting the lock file under a holder: renew says False, release raises LockLostError, others can lock."""
    backend = FileBackend(str(tmp_path), ttl=30)
    locker = kannuki.Locker(backend, auto_renew=False)
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    grant = lock.grant
    assert grant is not None and grant.ttl == 30
    assert backend.renew(grant) and backend.check(grant)
    os.unlink(tmp_path / file_name(lock.lock_id))
    assert not backend.renew(grant) and not backend.check(grant)
    newcomer = locker.lock("k")
    assert newcomer.acquire(timeout=0)
    with pytest.raises(kannuki.LockLostError, match="removed or replaced"):
        lock.release()
    newcomer.release()
    locker.close()


def test_release_does_not_delete_lock_files(locker: kannuki.Locker, tmp_path: Path) -> None:
    """Lock files stay after release (deleting them would race with a process about to lock)."""
    for _ in range(3):
        with locker.lock("stay", timeout=1):
            pass
    assert len(list((tmp_path / "locks").glob("*.lock"))) == 1


def test_long_non_ascii_key_record_is_read_whole(locker: kannuki.Locker, tmp_path: Path) -> None:
    """A key of 60 KB of UTF-8 (a JSON record of ~120 KB): holders name it and its token counts on by one."""
    key = "鍵" * 20_000
    lock = locker.lock(key)
    assert lock.acquire(timeout=0)
    assert (tmp_path / "locks" / file_name(lock.lock_id)).stat().st_size > 100_000
    (holder,) = locker.holders(key)
    assert holder.name == lock.name and holder.token == lock.token
    first = lock.token
    lock.release()
    again = locker.lock(key)
    assert again.acquire(timeout=0)
    assert again.token == first + 1  # the counter survived: the whole record was read back
    again.release()


def test_force_release_replaces_the_file_and_keeps_the_counter(
    locker: kannuki.Locker, tmp_path: Path
) -> None:
    """force_release frees a live holder's key: the holder's file is replaced, tokens go on from its token."""
    lock = locker.lock("stuck")
    assert lock.acquire(timeout=0)
    grant = lock.grant
    assert locker.force_release("stuck") == 1
    assert not locker.held("stuck") and locker.force_release("stuck") == 0
    assert not locker.backend.check(grant)
    again = locker.lock("stuck")
    assert again.acquire(timeout=0) and again.token == lock.token + 1
    with pytest.raises(kannuki.LockLostError, match="removed or replaced"):
        lock.release()
    again.release()
    assert sorted(p.suffix for p in (tmp_path / "locks").iterdir()) == [".lock"]  # no scratch file left


def test_forked_child_does_not_keep_the_parents_flock(locker: kannuki.Locker) -> None:
    """A child forked while the parent holds the key: the parent's release frees it while the child lives."""
    import multiprocessing

    lock = locker.lock("forked")
    assert lock.acquire(timeout=0)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    child = ctx.Process(target=_wait_for, args=(go,))
    child.start()
    try:
        time.sleep(0.2)  # the child is up, with its copies of our descriptors closed
        lock.release()
        other = kannuki.Locker(locker.backend.describe(), key_prefix=locker.options.key_prefix)
        try:
            taker = other.lock("forked")
            assert taker.acquire(timeout=5), "the forked child kept the parent's flock"
            taker.release()
        finally:
            other.close()
    finally:
        go.set()
        child.join(30)
    assert child.exitcode == 0


def _wait_for(event: object) -> None:
    event.wait(30)  # type: ignore[attr-defined]
