"""Instrumentation: subscribe / LockEvent, when each event fires, locker.stats(), and logging."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import kannuki
from kannuki import LockerStats, LockEvent


@pytest.fixture
def locker() -> Iterator[kannuki.Locker]:
    """A memory locker on a table of its own."""
    loc = kannuki.Locker(f"memory://ev-{uuid.uuid4().hex[:8]}")
    yield loc
    loc.close()


@pytest.fixture
def events() -> Iterator[list[LockEvent]]:
    """Every event delivered while the test runs."""
    seen: list[LockEvent] = []
    unsubscribe = kannuki.subscribe(seen.append)
    yield seen
    unsubscribe()


def names(events: list[LockEvent], key: str) -> list[str]:
    return [e.name for e in events if e.key == key]


def test_acquired_and_released_carry_the_lock_details(
    locker: kannuki.Locker, events: list[LockEvent]
) -> None:
    """acquired (duration = wait) and released (duration = hold) name the key as given, id, backend, token."""
    lock = locker.lock("ev/a", shared=True)
    with lock:
        token = lock.token
        time.sleep(0.02)
    acquired, released = [e for e in events if e.key == "ev/a"]
    assert isinstance(acquired, LockEvent)
    assert (acquired.name, acquired.lock_id, acquired.backend, acquired.token, acquired.shared) == (
        "acquired",
        locker.lock_id("ev/a"),
        "memory",
        token,
        True,
    )
    assert 0 <= acquired.duration < released.duration
    assert released.name == "released" and released.token == token and released.duration >= 0.02
    with pytest.raises(dataclasses.FrozenInstanceError):
        acquired.name = "x"  # type: ignore[misc]


def test_key_is_as_given_and_name_is_prefixed(events: list[LockEvent]) -> None:
    """With a key_prefix, event.key is the caller's key and event.name the event name."""
    loc = kannuki.Locker(f"memory://ev-{uuid.uuid4().hex[:8]}", key_prefix="app")
    with loc.lock("k1"):
        pass
    assert names(events, "k1") == ["acquired", "released"]
    assert events[-1].lock_id == kannuki.lock_id("k1", "app")


def test_failed_for_refused_try_and_exhausted_retries(
    locker: kannuki.Locker, events: list[LockEvent]
) -> None:
    """A non-blocking try refused and retries run out both give 'failed' (retries after one 'waiting')."""
    retry = kannuki.Locker(locker.backend, strategy="retry", retry_attempts=3, retry_interval=0.001)
    with locker.lock("ev/f"):
        assert not locker.lock("ev/f").acquire(blocking=False)
        assert not locker.lock("ev/f", timeout=0).acquire()
        assert not retry.lock("ev/f").acquire()
    assert names(events, "ev/f") == ["acquired", "failed", "failed", "waiting", "failed", "released"]
    assert locker.stats().failed == 2 and locker.stats().timeouts == 0
    assert retry.stats() == LockerStats(failed=1)


def test_blocking_timeout_emits_waiting_then_timeout(locker: kannuki.Locker, events: list[LockEvent]) -> None:
    """A blocking acquire that runs out emits waiting then timeout (duration = time waited), never failed."""
    with locker.lock("ev/t"):
        assert not locker.lock("ev/t", timeout=0.05).acquire()
    assert names(events, "ev/t") == ["acquired", "waiting", "timeout", "released"]
    timeout = next(e for e in events if e.name == "timeout")
    assert timeout.duration >= 0.05 and timeout.token is None
    stats = locker.stats()
    assert (stats.failed, stats.timeouts) == (1, 1)


def test_waiting_then_acquired_when_released(locker: kannuki.Locker, events: list[LockEvent]) -> None:
    """A wait that ends in success emits waiting, then acquired with the wait as duration."""
    holder = locker.lock("ev/w")
    holder.acquire()
    threading.Timer(0.05, holder.release).start()
    with locker.lock("ev/w", timeout=10):
        pass
    assert names(events, "ev/w") == ["acquired", "waiting", "released", "acquired", "released"]
    assert [e for e in events if e.name == "acquired"][-1].duration >= 0.04


def test_lost_lease_emits_lost_counts_and_warns(
    locker: kannuki.Locker, events: list[LockEvent], caplog: pytest.LogCaptureFixture
) -> None:
    """A lease that ran out: release raises LockLostError, a 'lost' event, stats.lost and a warning on 'kannuki'."""
    locker = kannuki.Locker(locker.backend.describe(), auto_renew=False)  # nobody renews: the lease runs out
    lock = locker.lock("ev/lost", ttl=0.02)
    lock.acquire()
    time.sleep(0.06)
    locker.lock("ev/lost", timeout=0).acquire()  # another holder takes the expired key
    with caplog.at_level(logging.WARNING, logger="kannuki"), pytest.raises(kannuki.LockLostError):
        lock.release()
    assert names(events, "ev/lost")[-1] == "lost"
    assert locker.stats().lost == 1 and locker.stats().released == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(r.name == "kannuki" for r in warnings) and "ev/lost" in warnings[0].getMessage()


def test_events_filter_and_unsubscribe(locker: kannuki.Locker) -> None:
    """events= limits what a callback receives; unsubscribe stops delivery."""
    only_released: list[LockEvent] = []
    unsubscribe = kannuki.subscribe(only_released.append, events={"released"})
    with locker.lock("ev/filter"):
        pass
    unsubscribe()
    with locker.lock("ev/filter"):
        pass
    assert [e.name for e in only_released] == ["released"]
    unsubscribe()  # twice is harmless


def test_subscribe_refuses_bad_arguments() -> None:
    """A non-callable, a str of events or an unknown event name are refused, naming the problem."""
    with pytest.raises(TypeError, match="callback"):
        kannuki.subscribe("print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="events"):
        kannuki.subscribe(print, events="acquired")
    with pytest.raises(ValueError, match="acquire"):
        kannuki.subscribe(print, events={"acquire"})


def test_instrumentation_off_sends_no_events_but_counts(events: list[LockEvent]) -> None:
    """instrumentation=False silences a locker's events; its stats still count."""
    loc = kannuki.Locker(f"memory://ev-{uuid.uuid4().hex[:8]}", instrumentation=False)
    with loc.lock("ev/quiet"):
        assert not loc.lock("ev/quiet", timeout=0.01).acquire()
    assert names(events, "ev/quiet") == []
    stats = loc.stats()
    assert (stats.acquired, stats.released, stats.failed, stats.timeouts) == (1, 1, 1, 1)


def test_raising_callback_is_logged_and_breaks_nothing(
    locker: kannuki.Locker, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged on 'kannuki'; the lock is still acquired and released."""

    def broken(event: LockEvent) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = kannuki.subscribe(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="kannuki"):
            with locker.lock("ev/broken") as lock:
                assert lock.locked()
            assert not locker.held("ev/broken")
    finally:
        unsubscribe()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) >= 2 and all(r.name == "kannuki" for r in errors)
    assert "subscriber bug" in (errors[0].exc_text or "")
    assert locker.stats().released == locker.stats().acquired


def test_stats_counts_and_hold_time(locker: kannuki.Locker) -> None:
    """stats() is a frozen LockerStats: acquired, failed (timeouts included), timeouts, released, hold_time."""
    assert locker.stats() == LockerStats()
    with locker.lock("s"):
        time.sleep(0.02)
        locker.lock("s").acquire(blocking=False)
        locker.lock("s", timeout=0.01).acquire()
    stats = locker.stats()
    assert isinstance(stats, LockerStats)
    assert (stats.acquired, stats.released, stats.failed, stats.timeouts, stats.lost) == (1, 1, 2, 1, 0)
    assert (stats.renewed, stats.renew_failed) == (0, 0)
    assert stats.hold_time >= 0.02
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.acquired = 5  # type: ignore[misc]


def test_debug_logging_on_kannuki_logger_only(
    locker: kannuki.Locker, caplog: pytest.LogCaptureFixture
) -> None:
    """acquire, wait and release log at debug on 'kannuki' (no subscriber needed); nothing on the root logger."""
    holder = locker.lock("log/k")
    with caplog.at_level(logging.DEBUG, logger="kannuki"):
        holder.acquire()
        threading.Timer(0.03, holder.release).start()
        with locker.lock("log/k", timeout=10):
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("acquired 'log/k'") for m in messages)
    assert any(m.startswith("waiting for 'log/k'") for m in messages)
    assert any(m.startswith("released 'log/k'") for m in messages)
    assert all(r.name == "kannuki" for r in caplog.records)


def test_nothing_logged_when_debug_is_off(locker: kannuki.Locker, caplog: pytest.LogCaptureFixture) -> None:
    """At the default level a lock cycle logs nothing at all."""
    with caplog.at_level(logging.INFO), locker.lock("quiet"):
        pass
    assert caplog.records == []
