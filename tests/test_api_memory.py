"""The public sync API (SPEC §3) on the memory backend: Lock, Locker, verbs, strategies."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import pytest

import kannuki
import kannuki._default
import kannuki.testing
from kannuki import AlreadyHeldError, LockNotAcquiredError, NotHeldError

JOIN = 10.0  # seconds: the most any helper thread may take in these tests


def unique_locker(**options: object) -> kannuki.Locker:
    return kannuki.Locker(f"memory://{uuid.uuid4().hex}", **options)


def start(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_lock_acquires_and_releases_like_threading_lock() -> None:
    """acquire() returns True, locked() follows, release() frees the key."""
    locker = unique_locker()
    lock = locker.lock("job")
    assert not lock.locked() and lock.token is None
    assert lock.acquire() is True
    assert lock.locked() and locker.held("job")
    assert isinstance(lock.token, int) and lock.token > 0
    lock.release()
    assert not lock.locked() and lock.token is None and not locker.held("job")


def test_lock_id_matches_module_function_with_prefix() -> None:
    """A lock's ID is kannuki.lock_id of prefix:key."""
    locker = unique_locker(key_prefix="billing")
    lock = locker.lock("invoice/1")
    assert (
        lock.lock_id == kannuki.lock_id("invoice/1", prefix="billing") == kannuki.lock_id("billing:invoice/1")
    )
    assert lock.name == "billing:invoice/1"
    assert locker.lock_id("invoice/1") == lock.lock_id


def test_two_lock_objects_exclude_each_other() -> None:
    """A second Lock on the same key cannot acquire while the first holds."""
    locker = unique_locker()
    first, second = locker.lock("k"), locker.lock("k")
    assert first.acquire()
    assert second.acquire(blocking=False) is False
    assert second.acquire(timeout=0.05) is False
    first.release()
    assert second.acquire(blocking=False) is True
    second.release()


def test_lockers_on_the_same_url_share_a_table_and_others_do_not() -> None:
    """memory://NAME is one table per name; a different name is independent."""
    name = uuid.uuid4().hex
    a, b, other = kannuki.Locker(f"memory://{name}"), kannuki.Locker(f"memory://{name}"), unique_locker()
    with a.lock("k"):
        assert b.held("k")
        assert not b.lock("k").acquire(blocking=False)
        assert not other.held("k")


def test_not_reentrant_and_release_without_hold() -> None:
    """acquire() on a held Lock raises AlreadyHeldError; release() of a free one raises NotHeldError."""
    locker = unique_locker()
    lock = locker.lock("k")
    with pytest.raises(NotHeldError, match="'k'"):
        lock.release()
    lock.acquire()
    with pytest.raises(AlreadyHeldError, match="not reentrant"):
        lock.acquire()
    lock.release()
    with pytest.raises(NotHeldError):
        lock.release()
    assert not locker.held("k")


def test_context_manager_raises_when_not_acquired_and_names_key() -> None:
    """`with lock:` raises LockNotAcquiredError (a TimeoutError) naming the key; nothing stays held."""
    locker = unique_locker()
    with locker.lock("busy"):
        with pytest.raises(LockNotAcquiredError, match="'busy'") as info:
            with locker.lock("busy", timeout=0.05):
                pytest.fail("body must not run")
        assert isinstance(info.value, TimeoutError)
        assert info.value.key == "busy"
        assert info.value.holder is not None and info.value.holder.pid == os.getpid()
    assert not locker.held("busy")


def test_context_manager_releases_when_body_raises() -> None:
    """An exception in the body releases the lock and propagates."""
    locker = unique_locker()
    with pytest.raises(ZeroDivisionError), locker.lock("k"):
        1 / 0
    assert not locker.held("k")


def test_with_lock_try_lock_lock_or_raise() -> None:
    """The three verbs return fn's result, or False / raise when the key is busy."""
    locker = unique_locker()
    assert locker.with_lock("k", lambda a, b=0: a + b, 40, b=2) == 42
    assert locker.try_lock("k", lambda: "ran") == "ran"
    assert locker.lock_or_raise("k", lambda: "ok", timeout=1) == "ok"
    calls: list[str] = []
    with locker.lock("k"):
        assert locker.with_lock("k", calls.append, "with", timeout=0.05) is False
        assert locker.try_lock("k", calls.append, "try") is False
        with pytest.raises(LockNotAcquiredError):
            locker.lock_or_raise("k", calls.append, "raise", timeout=0.05)
    assert calls == []
    assert not locker.held("k")


def test_verbs_release_when_fn_raises() -> None:
    """with_lock / try_lock release the key when fn raises."""
    locker = unique_locker()
    for verb in (locker.with_lock, locker.try_lock, locker.lock_or_raise):
        with pytest.raises(KeyError):
            verb("k", {}.__getitem__, "missing")
        assert not locker.held("k")


def test_shared_locks_coexist_and_exclude_exclusive() -> None:
    """Shared holders coexist; an exclusive request waits for all of them."""
    locker = unique_locker()
    r1, r2 = locker.lock("doc", shared=True), locker.lock("doc", shared=True)
    writer = locker.lock("doc")
    assert r1.acquire() and r2.acquire(blocking=False)
    assert not writer.acquire(blocking=False)
    r1.release()
    assert not writer.acquire(blocking=False)
    r2.release()
    assert writer.acquire(blocking=False)
    assert not locker.lock("doc", shared=True).acquire(blocking=False)
    writer.release()


def test_waiter_wakes_when_holder_releases() -> None:
    """A blocked acquire in another thread returns True soon after release."""
    locker = unique_locker()
    holder = locker.lock("k")
    holder.acquire()
    got = threading.Event()

    def wait() -> None:
        if locker.lock("k", timeout=JOIN).acquire():
            got.set()

    thread = start(wait)
    time.sleep(0.05)
    assert not got.is_set()
    holder.release()
    assert got.wait(JOIN)
    thread.join(JOIN)


def test_read_modify_write_with_eight_threads_loses_no_update() -> None:
    """8 threads incrementing a shared value under the lock never lose an update."""
    locker = unique_locker()
    state = {"n": 0}
    rounds = 200

    def work() -> None:
        for _ in range(rounds):
            with locker.lock("counter", timeout=JOIN):
                value = state["n"]
                time.sleep(0)  # invite a thread switch inside the critical section
                state["n"] = value + 1

    threads = [start(work) for _ in range(8)]
    for thread in threads:
        thread.join(JOIN * 3)
    assert not any(t.is_alive() for t in threads)
    assert state["n"] == 8 * rounds
    assert locker.stats().acquired == locker.stats().released == 8 * rounds


def test_waiters_are_served_in_fifo_order() -> None:
    """Threads that queue one after another get the lock in that order."""
    locker = unique_locker()
    first = locker.lock("fifo")
    first.acquire()
    order: list[int] = []
    threads = []
    for i in range(5):

        def wait(i: int = i) -> None:
            with locker.lock("fifo", timeout=JOIN):
                order.append(i)

        threads.append(start(wait))
        deadline = time.monotonic() + JOIN  # until this waiter is queued
        while locker.backend.table.waiters(first.name) < i + 1 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
    first.release()
    for thread in threads:
        thread.join(JOIN)
    assert order == [0, 1, 2, 3, 4]


def test_tokens_strictly_increase_for_a_key() -> None:
    """Every acquisition of a key gets a larger fencing token than the one before."""
    locker = unique_locker()
    tokens = []
    for _ in range(20):
        with locker.lock("k") as lock:
            tokens.append(lock.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 20


def test_stale_release_cannot_free_a_newer_holder() -> None:
    """After a lease expires and another holder takes the key, the old release raises LockLostError."""
    locker = unique_locker(ttl=0.05, auto_renew=False)  # nobody renews: the lease runs out
    old = locker.lock("k")
    old.acquire()
    time.sleep(0.1)
    successor = kannuki.Locker(locker.backend.describe()).lock("k")
    assert successor.acquire(timeout=JOIN)
    with pytest.raises(kannuki.LockLostError, match="'k'"):
        old.release()
    assert successor.locked() and locker.held("k")
    successor.release()
    assert locker.stats().lost == 1


def test_non_blocking_strategy_tries_once() -> None:
    """strategy='non_blocking' makes `with` fail at once instead of waiting."""
    locker = unique_locker(strategy="non_blocking", default_timeout=30)
    with locker.lock("k"):
        started = time.monotonic()
        with pytest.raises(LockNotAcquiredError, match="at once"), locker.lock("k"):
            pass
        assert time.monotonic() - started < 10  # a generous bound: it must not wait 30 s


def test_retry_strategy_retries_until_released() -> None:
    """strategy='retry' tries again with backoff and succeeds once the holder lets go."""
    locker = unique_locker(strategy="retry", retry_attempts=50, retry_interval=0.01, retry_max_interval=0.02)
    holder = locker.lock("k")
    holder.acquire()
    timer = threading.Timer(0.05, holder.release)
    timer.start()
    try:
        with locker.lock("k", timeout=JOIN) as lock:
            assert lock.locked()
    finally:
        timer.join(JOIN)


def test_retry_strategy_gives_up_after_attempts() -> None:
    """Retries stop after retry_attempts and count as one failure, not a timeout."""
    locker = unique_locker(strategy="retry", retry_attempts=3, retry_interval=0.001, retry_max_interval=0.002)
    seen: list[str] = []
    unsubscribe = kannuki.subscribe(lambda e: seen.append(e.name), events={"failed", "timeout", "waiting"})
    try:
        with locker.lock("k"), pytest.raises(LockNotAcquiredError, match="after 3 attempts"):
            with locker.lock("k"):
                pass
    finally:
        unsubscribe()
    assert seen == ["waiting", "failed"]
    assert locker.stats().failed == 1 and locker.stats().timeouts == 0


def test_blocking_timeout_emits_waiting_then_timeout() -> None:
    """A blocking acquire that times out emits `waiting` then `timeout`, and counts a timeout."""
    locker = unique_locker()
    seen: list[kannuki.LockEvent] = []
    unsubscribe = kannuki.subscribe(seen.append)
    try:
        with locker.lock("k"):
            assert not locker.lock("k", timeout=0.02).acquire()
    finally:
        unsubscribe()
    names = [e.name for e in seen]
    assert names == ["acquired", "waiting", "timeout", "released"]
    timeout = seen[2]
    assert timeout.key == "k" and timeout.backend == "memory" and timeout.duration >= 0.02
    stats = locker.stats()
    assert (stats.acquired, stats.failed, stats.timeouts, stats.released) == (1, 1, 1, 1)


def test_default_timeout_applies_and_none_waits() -> None:
    """default_timeout bounds waits for locks made without a timeout."""
    locker = unique_locker(default_timeout=0.02)
    with locker.lock("k"):
        lock = locker.lock("k")
        assert lock.timeout == 0.02
        assert lock.acquire() is False
    assert locker.lock("k", timeout=None).timeout is None


def test_lock_many_takes_all_or_none_in_id_order() -> None:
    """lock_many acquires every key or none, and sorts by lock ID."""
    locker = unique_locker()
    keys = ["a", "b", "c", "d"]
    multi = locker.lock_many(keys, timeout=0)
    assert [lk.lock_id for lk in multi.locks] == sorted(kannuki.lock_id(k) for k in keys)
    with multi:
        assert all(locker.held(k) for k in keys)
    assert not any(locker.held(k) for k in keys)
    with locker.lock("c"):
        assert locker.lock_many(keys, timeout=0).acquire() is False
        assert not any(locker.held(k) for k in ("a", "b", "d"))


def test_lock_many_in_opposite_orders_does_not_deadlock() -> None:
    """Two threads taking the same keys in opposite orders both finish."""
    locker = unique_locker()
    done = []

    def work(keys: list[str]) -> None:
        for _ in range(50):
            with locker.lock_many(keys, timeout=JOIN):
                pass
        done.append(keys)

    threads = [start(work, ["x", "y", "z"]), start(work, ["z", "y", "x"])]
    for thread in threads:
        thread.join(JOIN * 2)
    assert len(done) == 2


def test_module_level_verbs_use_the_configured_locker() -> None:
    """kannuki.configure sets the default locker behind kannuki.lock / with_lock / try_lock / held."""
    previous = kannuki._default._default
    try:
        kannuki._default._default = None
        with pytest.raises(kannuki.ConfigurationError, match="configure"):
            kannuki.held("k")
        locker = kannuki.configure(f"memory://{uuid.uuid4().hex}", key_prefix="app")
        assert kannuki.get_locker() is locker
        with kannuki.lock("k"):
            assert kannuki.held("k")
            assert kannuki.try_lock("k", lambda: 1) is False
        assert kannuki.with_lock("k", lambda: 7) == 7
        assert kannuki.lock_or_raise("k", lambda: 8) == 8
        assert locker.held("k") is False
    finally:
        kannuki._default._default = previous


def test_acquire_rejects_timeout_for_non_blocking() -> None:
    """acquire(blocking=False, timeout=...) is refused like threading.Lock does."""
    lock = unique_locker().lock("k")
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(blocking=False, timeout=1)
    assert not lock.locked()


def test_child_process_does_not_hold_parents_lock() -> None:
    """After fork(), the child's copy of a held Lock is not held and cannot be released."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork()")
    locker = unique_locker()
    lock = locker.lock("k")
    lock.acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running atexit / pytest machinery
        try:
            ok = not lock.locked() and lock.token is None
            try:
                lock.release()
                ok = False
            except NotHeldError:
                pass
            ok = ok and not locker.held("k")  # the child's table starts empty
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert lock.locked()
    lock.release()


def test_ttl_expiry_follows_the_injected_clock() -> None:
    """A memory lease expires when the table's clock passes its TTL, not before."""
    from kannuki._core import LockTable
    from kannuki.backends.memory import MemoryBackend

    now = [1000.0]
    locker = kannuki.Locker(MemoryBackend(LockTable(clock=lambda: now[0]), ttl=10))
    first = locker.lock("k")
    assert first.acquire()
    now[0] += 9.9
    assert locker.held("k") and not locker.lock("k").acquire(blocking=False)
    now[0] += 0.2
    assert not locker.held("k")
    second = locker.lock("k")
    assert second.acquire(blocking=False)
    assert second.token > first.token  # type: ignore[operator]
    with pytest.raises(kannuki.LockLostError):
        first.release()
    assert second.locked()
    second.release()


def test_plain_path_keeps_stats_exact() -> None:
    """Many uncontended acquire/release pairs count every acquisition, release and hold time."""
    locker = unique_locker()
    lock = locker.lock("stats")
    for _ in range(50):
        assert lock.acquire()
        lock.release()
    with locker.lock("stats"):
        pass
    stats = locker.stats()
    assert stats.acquired == 51 and stats.released == 51 and stats.failed == 0
    assert stats.hold_time > 0


def test_plain_path_still_emits_and_logs_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    """A subscriber (even one added while held) gets the events; turning DEBUG on brings the log lines."""
    locker = unique_locker()
    lock = locker.lock("quiet")
    lock.acquire()
    seen: list[str] = []
    unsubscribe = kannuki.subscribe(lambda event: seen.append(event.name))
    try:
        lock.release()
        assert seen == ["released"]
        with lock:
            pass
        assert seen == ["released", "acquired", "released"]
    finally:
        unsubscribe()
    with lock:  # quiet again: fills the logger's level cache with "DEBUG is off"
        pass
    with caplog.at_level(logging.DEBUG, logger="kannuki"):  # a level change empties that cache
        with lock:
            pass
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("acquired 'quiet'") for m in messages)
    assert any(m.startswith("released 'quiet'") for m in messages)


def test_plain_lock_follows_test_mode() -> None:
    """A lock made before test mode acquires in the test table while it is on, in its own store after."""
    locker = unique_locker()
    own_table = locker.backend.table  # type: ignore[attr-defined]
    lock = locker.lock("swap")
    with lock:
        pass  # the plain path ran on the locker's own table
    kannuki.testing.enable()
    try:
        with lock:
            assert not own_table.held("swap")
            assert locker.backend.table.held("swap")  # type: ignore[attr-defined]  # the test table
    finally:
        kannuki.testing.disable()
    with lock:
        assert own_table.held("swap")


def test_plain_lock_reports_a_loss_on_release() -> None:
    """A plain hold whose table was cleared raises LockLostError at release and counts the loss."""
    locker = unique_locker()
    lock = locker.lock("gone")
    assert lock.acquire()
    locker.backend.table.clear()  # type: ignore[attr-defined]
    with pytest.raises(kannuki.LockLostError, match="gone"):
        lock.release()
    assert not lock.locked() and locker.stats().lost == 1
    with pytest.raises(NotHeldError):
        lock.release()


def test_lock_with_default_options_still_validates_the_key_and_given_options() -> None:
    """locker.lock(key) checks the key; options given explicitly are checked even when falsy."""
    locker = unique_locker(default_timeout=3, strategy="non_blocking", key_prefix="p")
    lock = locker.lock("k")
    assert (lock.timeout, lock.strategy, lock.shared, lock.ttl, lock.name) == (
        3,
        "non_blocking",
        False,
        None,
        "p:k",
    )
    with pytest.raises(TypeError, match="key"):
        locker.lock(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        locker.lock("")
    with pytest.raises(TypeError, match="shared"):
        locker.lock("k", shared=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy"):
        locker.lock("k", strategy="sometimes")
    with pytest.raises(ValueError, match="timeout"):
        locker.lock("k", timeout=-1)
