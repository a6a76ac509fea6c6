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
    assert backend.renew(lock.name, lock.lock_id, lock.token)
    os.unlink(tmp_path / file_name(lock.lock_id))
    assert not backend.renew(lock.name, lock.lock_id, lock.token)
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
    time.sleep(0)
