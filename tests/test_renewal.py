"""Lease renewal: the lazy thread, renewals, losses, on_lost, failures, close, fork."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import kannuki
from kannuki.backends.sqlite import SQLiteBackend
from kannuki.errors import BackendError
from kannuki.renewal import Renewer
from support import FakeClock, subprocess_env, wait_until


def renewer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kannuki-renewer"]


class FlakyBackend(SQLiteBackend):
    """A real sqlite store whose renewals fail while ``broken`` is set."""

    broken = False

    def renew(self, name, lock_id, token, ttl=None):
        if self.broken:
            raise BackendError("renewal refused for the test")
        return super().renew(name, lock_id, token, ttl)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "leases.db")


def test_import_and_locker_start_no_thread() -> None:
    """import kannuki and making a lease locker start no thread; only the first acquire does."""
    code = (
        "import threading, kannuki, tempfile, os\n"
        "d = tempfile.mkdtemp()\n"
        "l = kannuki.Locker('sqlite:///' + d + '/x.db')\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "lock = l.lock('k'); lock.acquire()\n"
        "assert [t.name for t in threading.enumerate()][1:] == ['kannuki-renewer']\n"
        "lock.release(); l.close()\n"
        "assert threading.active_count() == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=subprocess_env())


def test_renews_every_third_of_ttl_and_stops_on_close(db: str) -> None:
    """With ttl=0.3 a held lease outlives its ttl, renewed events arrive, close() ends the thread."""
    locker = kannuki.Locker(f"sqlite:///{db}", ttl=0.3)
    events: list[kannuki.LockEvent] = []
    unsubscribe = kannuki.subscribe(events.append, events={"renewed"})
    try:
        lock = locker.lock("k")
        assert lock.acquire()
        assert locker._renewer.running
        assert wait_until(lambda: locker.stats().renewed >= 3)
        assert locker.held("k") and lock.locked()
        assert events and events[0].key == "k" and events[0].token == lock.token
        lock.release()
        locker.close()
        assert not locker._renewer.running and renewer_threads() == []
    finally:
        unsubscribe()


def test_thread_stops_when_idle_and_restarts_on_demand(db: str) -> None:
    """With nothing held the thread exits after idle_stop; the next acquire starts a new one."""
    locker = kannuki.Locker(f"sqlite:///{db}", ttl=1)
    locker._renewer.idle_stop = 0.1
    with locker.lock("k"):
        assert locker._renewer.running
    assert wait_until(lambda: not locker._renewer.running)
    with locker.lock("k"):
        assert locker._renewer.running
    locker.close()


def test_auto_renew_off_means_no_renewer(db: str) -> None:
    """auto_renew=False: no renewer, the lease simply runs out."""
    locker = kannuki.Locker(f"sqlite:///{db}", ttl=0.2, auto_renew=False)
    assert locker._renewer is None
    lock = locker.lock("k")
    assert lock.acquire()
    assert wait_until(lambda: not locker.held("k"), 5)
    with pytest.raises(kannuki.LockLostError):
        lock.release()
    locker.close()


def manual_locker(backend: SQLiteBackend, **options):
    """A locker whose renewer is driven by hand on the backend's fake clock."""
    locker = kannuki.Locker(backend, **options)
    locker._renewer = Renewer(locker, clock=backend._now, autostart=False)
    return locker


def test_lost_lease_calls_on_lost_emits_lost_and_release_raises(db: str) -> None:
    """Another process took the expired lease: renewal finds it, on_lost runs once, release raises."""
    clock = FakeClock()
    lost_calls: list[tuple[kannuki.Lock, str]] = []
    locker = manual_locker(SQLiteBackend(db, ttl=3, clock=clock), on_lost=lambda lock, reason: lost_calls.append((lock, reason)))
    events: list[kannuki.LockEvent] = []
    unsubscribe = kannuki.subscribe(events.append, events={"lost"})
    try:
        lock = locker.lock("k")
        assert lock.acquire(timeout=0)
        clock.now += 1.1
        assert locker._renewer.tick() == pytest.approx(clock.now + 1)
        assert locker.stats().renewed == 1
        clock.now += 3.5  # the renewer missed its turns: the lease ran out
        thief = kannuki.Locker(SQLiteBackend(db, clock=clock), auto_renew=False).lock("k")
        assert thief.acquire(timeout=0)
        assert locker._renewer.tick() is None
        assert [(l, r) for l, r in lost_calls] == [(lock, "lease expired")]
        assert [e.token for e in events] == [lock.token]
        assert not lock.locked() and locker.stats().lost == 1
        with pytest.raises(kannuki.LockLostError, match="lease expired"):
            lock.release()
        assert thief.locker.held("k")
        thief.release()
    finally:
        unsubscribe()
        locker.close()


def test_failing_renewal_retries_then_loses_at_expiry(db: str) -> None:
    """A renewal that raises counts renew_failed and retries; past the expiry the lock is lost."""
    clock = FakeClock()
    backend = FlakyBackend(db, ttl=3, clock=clock)
    reasons: list[str] = []
    locker = manual_locker(backend, on_lost=lambda lock, reason: reasons.append(reason))
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    backend.broken = True
    clock.now += 1.0
    assert locker._renewer.tick() == pytest.approx(clock.now + 1.0)  # retry min(ttl/3, 1s) later
    assert locker.stats().renew_failed == 1 and reasons == []
    backend.broken = False
    clock.now += 1.0
    locker._renewer.tick()
    assert locker.stats().renewed == 1 and lock.locked()
    backend.broken = True
    clock.now += 3.1
    locker._renewer.tick()
    assert reasons and reasons[0].startswith("lease expired") and not lock.locked()
    with pytest.raises(kannuki.LockLostError):
        lock.release()
    locker.close()


def test_on_lost_errors_are_logged_not_raised(db: str, caplog: pytest.LogCaptureFixture) -> None:
    """An on_lost callback that raises is logged; the renewer goes on."""
    clock = FakeClock()

    def bad(lock: kannuki.Lock, reason: str) -> None:
        raise RuntimeError("boom")

    locker = manual_locker(SQLiteBackend(db, ttl=3, clock=clock), on_lost=bad)
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    clock.now += 10
    with caplog.at_level("ERROR", logger="kannuki"):
        locker._renewer.tick()
    assert "on_lost" in caplog.text
    with pytest.raises(kannuki.LockLostError):
        lock.release()
    locker.close()


def test_released_lock_is_not_renewed_or_lost(db: str) -> None:
    """After release the renewer forgets the lease: no renewal, no loss."""
    clock = FakeClock()
    locker = manual_locker(SQLiteBackend(db, ttl=3, clock=clock))
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    lock.release()
    clock.now += 10
    assert locker._renewer.tick() is None and len(locker._renewer) == 0
    assert locker.stats().lost == 0 and locker.stats().renewed == 0
    locker.close()


def test_on_lost_must_be_callable() -> None:
    """on_lost that is not callable is refused naming the option."""
    with pytest.raises(TypeError, match="on_lost"):
        kannuki.Locker("memory://", on_lost="print")


def test_forked_child_renews_its_own_leases_only(db: str) -> None:
    """In a forked child the parent's leases are forgotten and a fresh renewer thread serves the child."""
    locker = kannuki.Locker(f"sqlite:///{db}", ttl=0.3)
    lock = locker.lock("parent")
    assert lock.acquire()
    child = multiprocessing.get_context("fork").Process(target=_child, args=(locker,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert lock.locked() and locker.held("parent")
    lock.release()
    locker.close()


def _child(locker: kannuki.Locker) -> None:
    renewer = locker._renewer
    assert not renewer.running
    mine = locker.lock("child")
    assert mine.acquire(timeout=5)
    assert len(renewer) == 1 and renewer.running
    assert wait_until(lambda: locker.stats().renewed >= 2)
    mine.release()
    locker.close()
