"""The in-process lock table on both twins: modes, FIFO hand-off, tokens, TTLs, interrupts."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

JOIN = 10.0  # seconds: the bound on every join and wait in this file


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_for(predicate: Callable[[], bool], timeout: float = JOIN) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def _start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _join(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(JOIN)
        assert not thread.is_alive(), "thread did not finish in time"


def _elsewhere(fn: Callable[[], int]) -> int:
    """``fn()`` run in another thread: a hold of another thread, so this one may wait for it."""
    out: list[int] = []
    _join(_start(lambda: out.append(fn())))
    return out[0]


def test_exclusive_excludes(core: ModuleType) -> None:
    """An exclusive holder blocks everyone; release frees the key and its entry."""
    table = core.LockTable()
    token = table.acquire("k")
    assert token > 0
    assert table.held("k") and len(table) == 1 and table.keys() == ["k"]
    assert table.acquire("k", timeout=0) == 0
    assert table.acquire("k", shared=True, timeout=0) == 0
    assert table.holders("k") == [(token, False, None)]
    assert table.release("k", token) is True
    assert not table.held("k") and len(table) == 0 and table.keys() == []


def test_shared_and_exclusive(core: ModuleType) -> None:
    """Shared holders coexist; exclusive waits for all of them."""
    table = core.LockTable()
    a = table.acquire("k", shared=True)
    b = table.acquire("k", shared=True, timeout=0)
    assert a and b and b > a
    assert [h[:2] for h in table.holders("k")] == [(a, True), (b, True)]
    assert table.acquire("k", timeout=0) == 0
    assert table.release("k", a)
    assert table.acquire("k", timeout=0) == 0
    assert table.release("k", b)
    c = table.acquire("k", timeout=0)
    assert c > b
    assert table.release("k", c)
    assert len(table) == 0


def test_keys_are_any_hashable(core: ModuleType) -> None:
    """str names and int IDs are separate keys."""
    table = core.LockTable()
    a = table.acquire("1")
    b = table.acquire(1, timeout=0)
    c = table.acquire(("tuple", 2), timeout=0)
    assert a and b and c
    assert sorted(map(repr, table.keys())) == sorted(map(repr, ["1", 1, ("tuple", 2)]))
    assert table.release(1, b) and table.release("1", a) and table.release(("tuple", 2), c)


def test_tokens_strictly_increase(core: ModuleType) -> None:
    """Tokens come from one table-wide counter starting at 1."""
    table = core.LockTable()
    tokens = []
    for i in range(50):
        key = f"k{i % 3}"
        tok = table.acquire(key, shared=bool(i % 2))
        tokens.append(tok)
        assert table.release(key, tok)
    assert tokens == list(range(1, 51))


def test_stale_release_never_frees_the_new_holder(core: ModuleType) -> None:
    """Compare-and-delete: an old or unknown token returns False and changes nothing."""
    table = core.LockTable()
    old = table.acquire("k")
    assert table.release("k", old)
    assert table.release("k", old) is False
    new = table.acquire("k")
    assert table.release("k", old) is False
    assert table.release("k", 0) is False
    assert table.release("k", -5) is False
    assert table.release("k", 2**80) is False
    assert table.release("other", new) is False
    assert table.holders("k") == [(new, False, None)]
    assert table.release("k", new)


def test_bad_token_type(core: ModuleType) -> None:
    """A token that is not an int is a TypeError naming 'token'."""
    table = core.LockTable()
    with pytest.raises(TypeError, match="token"):
        table.release("k", "1")
    with pytest.raises(TypeError, match="token"):
        table.renew("k", 1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1.0}, ValueError, "ttl"),
        ({"ttl": float("nan")}, ValueError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
    ],
)
def test_bad_acquire_arguments(
    core: ModuleType, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    """Bad timeout / ttl are refused by name and nothing is held afterwards."""
    table = core.LockTable()
    with pytest.raises(error, match=name):
        table.acquire("k", **kwargs)
    assert len(table) == 0 and table.waiters("k") == 0


def test_unhashable_key_leaves_nothing(core: ModuleType) -> None:
    """An unhashable key raises TypeError and the table stays usable."""
    table = core.LockTable()
    with pytest.raises(TypeError):
        table.acquire(["list"])
    tok = table.acquire("k", timeout=0)
    assert tok and table.release("k", tok)


def test_timeout_returns_zero_and_leaves_no_waiter(core: ModuleType) -> None:
    """A blocking acquire that times out returns 0 and is not queued any more."""
    table = core.LockTable()
    tok = _elsewhere(lambda: table.acquire("k"))
    assert table.acquire("k", timeout=0.05) == 0
    assert table.waiters("k") == 0
    assert table.release("k", tok)
    assert len(table) == 0


def test_hand_off_to_a_blocked_waiter(core: ModuleType) -> None:
    """Release hands the key to the blocked waiter, which gets a newer token."""
    table = core.LockTable()
    first = table.acquire("k")
    got: list[int] = []
    thread = _start(lambda: got.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 1)
    assert table.release("k", first)
    _join(thread)
    assert got and got[0] > first
    assert table.holders("k") == [(got[0], False, None)]
    assert table.release("k", got[0])


def test_fifo_order_of_waiters(core: ModuleType) -> None:
    """N waiters get the key in the order they queued."""
    table = core.LockTable()
    tok = table.acquire("k")
    order: list[int] = []
    threads = []

    def worker(i: int) -> None:
        mine = table.acquire("k", timeout=JOIN)
        assert mine
        order.append(i)
        table.release("k", mine)

    for i in range(8):
        threads.append(_start(lambda i=i: worker(i)))
        _wait_for(lambda i=i: table.waiters("k") == i + 1)
    assert table.release("k", tok)
    _join(*threads)
    assert order == list(range(8))
    assert len(table) == 0


def test_no_barging_while_waiters_queue(core: ModuleType) -> None:
    """A try never overtakes a queued waiter, even a shared try behind an exclusive waiter."""
    table = core.LockTable()
    reader = table.acquire("k", shared=True)
    got: list[int] = []
    writer = _start(lambda: got.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 1)
    assert table.acquire("k", shared=True, timeout=0) == 0
    assert table.acquire("k", timeout=0) == 0
    assert table.release("k", reader)
    _join(writer)
    assert got[0] and table.holders("k")[0][0] == got[0]
    assert table.acquire("k", shared=True, timeout=0) == 0
    assert table.release("k", got[0])


def test_consecutive_shared_waiters_are_granted_together(core: ModuleType) -> None:
    """Releasing an exclusive holder hands the key to all the shared waiters at the head at once."""
    table = core.LockTable()
    tok = table.acquire("k")
    readers_in = threading.Barrier(3, timeout=JOIN)
    results: list[int] = []

    def reader() -> None:
        mine = table.acquire("k", shared=True, timeout=JOIN)
        results.append(mine)
        readers_in.wait()  # all three hold it at the same time
        table.release("k", mine)

    threads = []
    for n in range(3):
        threads.append(_start(reader))
        _wait_for(lambda n=n: table.waiters("k") == n + 1)
    writer_got: list[int] = []
    threads.append(_start(lambda: writer_got.append(table.acquire("k", timeout=JOIN))))
    _wait_for(lambda: table.waiters("k") == 4)
    assert table.release("k", tok)
    _join(*threads)
    assert len(results) == 3 and all(results)
    assert writer_got[0] > max(results)
    assert table.release("k", writer_got[0])
    assert len(table) == 0


def test_abandoned_head_lets_the_ones_behind_in(core: ModuleType) -> None:
    """When a timed-out exclusive waiter leaves the head, shared waiters behind it join the readers."""
    table = core.LockTable()
    reader = table.acquire("k", shared=True)
    writer = _start(lambda: table.acquire("k", timeout=0.3))
    _wait_for(lambda: table.waiters("k") == 1)
    got: list[int] = []
    second = _start(lambda: got.append(table.acquire("k", shared=True, timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 2)
    _join(writer)
    _join(second)
    assert got[0] > reader and table.waiters("k") == 0
    assert table.release("k", got[0]) and table.release("k", reader)
    assert len(table) == 0


def test_counter_under_the_lock_has_no_lost_update(core: ModuleType) -> None:
    """8 threads read-modify-write a shared counter under the lock; no update is lost."""
    table = core.LockTable()
    state = {"n": 0}
    rounds = 300
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(rounds):
                tok = table.acquire("counter", timeout=JOIN)
                assert tok
                value = state["n"]
                if value % 7 == 0:
                    time.sleep(0)  # invite a thread switch inside the critical section
                state["n"] = value + 1
                assert table.release("counter", tok)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [_start(worker) for _ in range(8)]
    _join(*threads)
    assert not errors
    assert state["n"] == 8 * rounds
    assert len(table) == 0


def test_ttl_expiry_with_injected_clock(core: ModuleType) -> None:
    """A holder past its TTL is evicted by expire(); its token is then stale."""
    clock = FakeClock()
    table = core.LockTable(clock=clock)
    tok = table.acquire("k", ttl=10)
    other = table.acquire("j")
    assert table.holders("k") == [(tok, False, 1010.0)]
    clock.now += 9.9
    assert table.expire() == 0 and table.held("k")
    clock.now += 0.2
    assert table.expire() == 1
    assert not table.held("k") and table.keys() == ["j"]
    assert table.release("k", tok) is False
    assert table.renew("k", tok, 5) is False
    assert table.release("j", other)


def test_ttl_evicted_lazily_on_acquire(core: ModuleType) -> None:
    """An acquire after the lease ran out takes the key without expire()."""
    clock = FakeClock()
    table = core.LockTable(clock=clock)
    tok = table.acquire("k", ttl=1)
    assert table.acquire("k", timeout=0) == 0
    clock.now += 1.5
    new = table.acquire("k", timeout=0)
    assert new > tok
    assert table.release("k", tok) is False
    assert table.release("k", new)


def test_expire_hands_off_to_waiter(core: ModuleType) -> None:
    """expire() passes an expired key to the blocked waiter (injected clock)."""
    clock = FakeClock()
    table = core.LockTable(clock=clock)
    tok = table.acquire("k", ttl=1)
    got: list[int] = []
    thread = _start(lambda: got.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 1)
    clock.now += 2
    assert table.expire() == 1
    _join(thread)
    assert got[0] > tok
    assert table.release("k", got[0])


def test_renew_extends_and_clears(core: ModuleType) -> None:
    """renew() moves the expiry from now; None removes the TTL."""
    clock = FakeClock()
    table = core.LockTable(clock=clock)
    tok = table.acquire("k", ttl=1)
    clock.now += 0.8
    assert table.renew("k", tok, 1)
    assert table.holders("k") == [(tok, False, 1001.8)]
    clock.now += 0.8
    assert table.expire() == 0
    assert table.renew("k", tok, None)
    clock.now += 1000
    assert table.expire() == 0 and table.held("k")
    with pytest.raises(ValueError, match="ttl"):
        table.renew("k", tok, 0)
    assert table.release("k", tok)


def test_real_short_ttl_wakes_a_blocked_waiter(core: ModuleType) -> None:
    """With the default clock, a waiter behind a 0.2 s lease gets the key when it runs out."""
    table = core.LockTable()
    tok = _elsewhere(lambda: table.acquire("k", ttl=0.2))
    got = table.acquire("k", timeout=JOIN)
    assert got > tok
    assert table.release("k", tok) is False
    assert table.release("k", got)


def test_real_ttl_granted_to_a_waiter_wakes_the_next(core: ModuleType) -> None:
    """A lease handed off to a waiter still wakes the waiter behind it when it runs out."""
    table = core.LockTable()
    first = table.acquire("k")
    got: list[int] = []
    leased = _start(lambda: got.append(table.acquire("k", timeout=JOIN, ttl=0.2)))
    _wait_for(lambda: table.waiters("k") == 1)
    last: list[int] = []
    behind = _start(lambda: last.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 2)
    assert table.release("k", first)
    _join(leased, behind)
    assert last[0] > got[0] > first
    assert table.release("k", last[0])


def _signal_main_soon(signum: int, delay: float = 0.1) -> threading.Timer:
    """A real signal to the main thread: it interrupts the blocked wait, as Ctrl-C does."""
    timer = threading.Timer(delay, signal.pthread_kill, (threading.main_thread().ident, signum))
    timer.start()
    return timer


needs_signals = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")


@needs_signals
def test_keyboard_interrupt_during_wait_leaves_nothing(core: ModuleType) -> None:
    """Ctrl-C while blocked: the exception propagates and the waiter is gone."""
    table = core.LockTable()
    holder_tok: list[int] = []
    release = threading.Event()

    def holder() -> None:
        holder_tok.append(table.acquire("k"))
        release.wait(JOIN)
        table.release("k", holder_tok[0])

    thread = _start(holder)
    _wait_for(lambda: table.held("k"))
    timer = _signal_main_soon(signal.SIGINT)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            table.acquire("k", timeout=JOIN)
    finally:
        timer.cancel()
        release.set()
    assert time.monotonic() - started < JOIN / 2  # the signal, not the timeout, ended the wait
    _join(thread)
    assert table.waiters("k") == 0
    assert len(table) == 0


@needs_signals
def test_interrupt_after_hand_off_passes_the_key_on(core: ModuleType) -> None:
    """The key is handed to the waiter and then its wait raises: the key goes to the next waiter."""
    table = core.LockTable()
    tok = _elsewhere(lambda: table.acquire("k"))
    behind: list[int] = []

    def handler(signum: int, frame: object) -> None:
        # Runs in the blocked main thread: hand it the key, then abort its wait.
        assert table.release("k", tok)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        next_thread: list[threading.Thread] = []

        def queue_behind() -> None:
            _wait_for(lambda: table.waiters("k") == 1)
            behind.append(table.acquire("k", timeout=JOIN))

        next_thread.append(_start(queue_behind))

        def fire_when_both_wait() -> None:
            _wait_for(lambda: table.waiters("k") == 2)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

        firer = _start(fire_when_both_wait)
        with pytest.raises(KeyboardInterrupt):
            table.acquire("k", timeout=JOIN)
        _join(firer, *next_thread)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert behind and behind[0] > tok + 1  # the main thread's grant was passed on
    assert table.holders("k") == [(behind[0], False, None)]
    assert table.waiters("k") == 0
    assert table.release("k", behind[0])
    assert len(table) == 0


@needs_signals
@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals go to the main thread"
)
def test_ctrl_c_at_random_moments_under_contention_never_strands_the_key(core: ModuleType) -> None:
    """SIGINT at random moments of a contended blocking acquire: the token comes back, or nothing stays.

    Many threads take and release one key in a loop while the main thread's blocking acquire
    is interrupted by a real SIGINT at a random moment, often just as it is woken with the
    key already handed to it and waits to take the GIL back. After each round the workers
    pause: once every holder released, the key must be free with nobody queued.
    """
    import random

    table = core.LockTable()
    key = "contended"
    rng = random.Random(20240531)
    stop = threading.Event()
    running = threading.Event()
    running.set()
    active = [0]
    active_guard = threading.Lock()
    worker_errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                with active_guard:
                    active[0] += 1
                try:
                    if running.is_set():
                        token = table.acquire(
                            key, timeout=1.0
                        )  # bounded: a stranded key must not hang the round
                        if token:
                            sum(range(200))  # hold it a moment, busy with the GIL
                            table.release(key, token)
                finally:
                    with active_guard:
                        active[0] -= 1
                if not running.is_set():
                    running.wait(JOIN)
        except BaseException as exc:  # pragma: no cover - reported below
            worker_errors.append(exc)

    main = threading.main_thread().ident
    assert main is not None
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # the parent may ignore SIGINT
    workers = [_start(worker) for _ in range(8)]
    interrupted = stranded = rounds = 0
    deadline = time.monotonic() + 30.0
    try:
        while rounds < 300 and time.monotonic() < deadline:
            rounds += 1
            running.set()
            timer = threading.Timer(rng.uniform(0.0, 0.004), signal.pthread_kill, (main, signal.SIGINT))
            token = 0
            in_acquire = False
            try:
                timer.start()
                for _ in range(100_000):  # take and release until the signal lands, mostly mid-acquire
                    in_acquire = True
                    token = table.acquire(key, timeout=JOIN)
                    in_acquire = False
                    if token:
                        table.release(key, token)
                        token = 0
                    if not timer.is_alive():
                        break
                time.sleep(JOIN)  # the signal is on its way (or here): it interrupts this sleep
                raise AssertionError("the SIGINT never came")
            except KeyboardInterrupt:
                interrupted += in_acquire
                if token:  # the interrupt came after the acquire returned the token
                    table.release(key, token)
            timer.join(JOIN)
            running.clear()
            _wait_for(lambda: active[0] == 0)
            if table.held(key) or table.waiters(key):
                stranded += 1
                for leaked, _shared, _expires in table.holders(key):
                    table.release(key, leaked)
    finally:
        stop.set()
        running.set()
        signal.signal(signal.SIGINT, previous)
    _join(*workers)
    assert not worker_errors, worker_errors
    assert interrupted > 0
    assert stranded == 0, (
        f"{stranded} of {interrupted} interrupted acquires ({rounds} rounds) left the key held by nobody"
    )
    assert not table.held(key) and table.waiters(key) == 0 and len(table) == 0


def test_clear_hands_keys_to_waiters(core: ModuleType) -> None:
    """clear() drops every holder; queued waiters then get the keys."""
    table = core.LockTable()
    table.acquire("a")
    table.acquire("b", shared=True)
    got: list[int] = []
    thread = _start(lambda: got.append(table.acquire("a", timeout=JOIN)))
    _wait_for(lambda: table.waiters("a") == 1)
    table.clear()
    _join(thread)
    assert table.keys() == ["a"] and got[0]
    assert table.release("a", got[0])
    assert len(table) == 0


def test_entries_are_cleaned_up(core: ModuleType) -> None:
    """Many keys acquired and released leave nothing behind."""
    table = core.LockTable()
    for i in range(1000):
        tok = table.acquire(i, shared=bool(i % 2), timeout=0)
        assert table.acquire(i, timeout=0) == 0
        assert table.release(i, tok)
    assert len(table) == 0 and table.keys() == []
    assert "keys=0" in repr(table)


def test_reset_after_fork(core: ModuleType) -> None:
    """reset_after_fork() forgets holders; tokens keep increasing."""
    table = core.LockTable()
    tok = table.acquire("k")
    table.reset_after_fork()
    assert len(table) == 0 and not table.held("k")
    assert table.release("k", tok) is False
    new = table.acquire("k", timeout=0)
    assert new > tok
    assert table.release("k", new)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_reset_after_fork_in_a_real_child(core: ModuleType) -> None:
    """In a forked child whose parent held the key, reset_after_fork() makes the table usable."""
    table = core.LockTable()
    tok = table.acquire("k")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and exit without running pytest's teardown
        code = 1
        try:
            table.reset_after_fork()
            new = table.acquire("k", timeout=0)
            code = 0 if new > tok and table.release("k", new) else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(code)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"\x00"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert table.release("k", tok)


def test_try_acquire_is_one_try_without_ttl(core: ModuleType) -> None:
    """try_acquire takes a free key (no lease), shares with readers, and answers 0 when it would wait."""
    table = core.LockTable()
    first = table.try_acquire("k", False)
    assert first > 0 and table.holders("k") == [(first, False, None)]
    assert table.try_acquire("k", False) == 0 and table.try_acquire("k", True) == 0
    assert table.release("k", first)
    readers = [table.try_acquire("k", True), table.try_acquire("k", True)]
    assert all(readers) and readers[1] > readers[0] > first  # one token sequence with acquire()
    assert table.try_acquire("k", False) == 0
    for token in readers:
        assert table.release("k", token)
    assert len(table) == 0


def test_try_acquire_never_overtakes_a_waiter(core: ModuleType) -> None:
    """With a waiter queued, try_acquire answers 0 even for a shared request that would fit."""
    table = core.LockTable()
    reader = table.acquire("k", shared=True)
    got: list[int] = []
    thread = _start(lambda: got.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 1)
    assert table.try_acquire("k", True) == 0
    assert table.release("k", reader)
    _join(thread)
    assert got and got[0] > reader and table.holders("k") == [(got[0], False, None)]
    assert table.release("k", got[0])


def test_out_of_range_tokens_are_never_holders(core: ModuleType) -> None:
    """release() of a negative or over-64-bit token is False, and the real holder keeps the key."""
    table = core.LockTable()
    token = table.acquire("k")
    assert table.release("k", -1) is False
    assert table.release("k", 2**64) is False
    assert table.held("k") and table.release("k", token)


def test_a_released_key_is_reused_with_full_semantics(core: ModuleType) -> None:
    """A key taken and released over and over, and keys alternated, behave exactly as fresh keys."""
    table = core.LockTable()
    for _ in range(3):
        for key in ("a", "b", "a", "a"):
            token = table.try_acquire(key, False)
            assert token and table.holders(key) == [(token, False, None)]
            assert table.waiters(key) == 0 and table.keys() == [key]
            assert table.release(key, token) and not table.held(key)
            assert table.release(key, token) is False  # compare-and-delete: only once
    assert table.holders("a") == [] and table.holders("b") == [] and table.keys() == []
    held = table.acquire("a", shared=True)
    table.clear()  # with one idle key kept inside: clear still frees every holder
    assert not table.held("a") and table.release("a", held) is False
    token = table.acquire("a")
    table.reset_after_fork()
    assert len(table) == 0 and table.try_acquire("a", False) > token


# -- deadlocks: a wait that can never end raises DeadlockError at once ---------------------------


def test_waiting_for_a_key_this_thread_holds_is_a_deadlock(core: ModuleType) -> None:
    """Exclusive holder asks again with no timeout: DeadlockError at once; a timed ask times out; nothing queued."""
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    tok = table.acquire("k")
    assert table.acquire("k", timeout=0.05) == 0  # a timed wait on one's own key just times out
    for timeout in (None,):
        started = time.monotonic()
        with pytest.raises(DeadlockError, match="this thread holds it already") as caught:
            table.acquire("k", timeout=timeout)
        assert time.monotonic() - started < JOIN / 2  # at once, not after the timeout
        assert caught.value.key == "k" and caught.value.keys == ("k",)
        assert table.waiters("k") == 0 and table.holders("k") == [(tok, False, None)]
    with pytest.raises(DeadlockError):
        table.acquire("k", shared=True, timeout=None)
    assert table.acquire("k", timeout=0) == 0  # a try is no deadlock: it answers 0
    assert table.try_acquire("k", False) == 0
    by_id = table.acquire(12345)
    with pytest.raises(DeadlockError, match="12345") as caught:
        table.acquire(12345, timeout=None)
    assert caught.value.key is None  # int keys (lock IDs) are named in the message only
    assert table.release(12345, by_id)
    assert table.release("k", tok)
    assert table.acquire("k", timeout=JOIN) > tok  # free again: an ordinary acquire


def test_shared_holders_and_deadlocks(core: ModuleType) -> None:
    """Shared again is fine; an upgrade, or shared again behind a queued writer it blocks, deadlocks."""
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    first = table.acquire("k", shared=True)
    second = table.acquire("k", shared=True, timeout=JOIN)  # readers share: no wait at all
    assert second > first
    with pytest.raises(DeadlockError):
        table.acquire("k", timeout=None)  # an upgrade waits for this thread's own reads
    assert table.release("k", second)
    writer: list[int] = []
    thread = _start(lambda: writer.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 1)
    with pytest.raises(DeadlockError, match="this thread holds it already"):
        # No barging: this read would queue behind the writer, who waits for this thread's read.
        table.acquire("k", shared=True, timeout=None)
    assert table.waiters("k") == 1
    assert table.acquire("k", shared=True, timeout=0) == 0
    assert table.release("k", first)
    _join(thread)
    assert writer[0] and table.release("k", writer[0])
    assert len(table) == 0


def test_two_threads_in_a_cycle_one_gets_deadlock_error(core: ModuleType) -> None:
    """Thread 1 holds A and waits for B; the main thread holds B and asks for A: DeadlockError for it."""
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    b = table.acquire("B")
    got: list[int] = []
    held_a = threading.Event()
    done = threading.Event()

    def one() -> None:
        a = table.acquire("A")
        held_a.set()
        got.append(table.acquire("B", timeout=JOIN))
        table.release("B", got[0])
        done.wait(JOIN)
        table.release("A", a)

    thread = _start(one)
    assert held_a.wait(JOIN)
    _wait_for(lambda: table.waiters("B") == 1)
    started = time.monotonic()
    with pytest.raises(DeadlockError) as caught:
        table.acquire("A", timeout=JOIN)
    assert time.monotonic() - started < JOIN / 2
    message = str(caught.value)
    assert "'A'" in message and "'B'" in message and str(thread.ident) in message
    assert caught.value.key == "A" and table.waiters("A") == 0
    assert table.release("B", b)  # the cycle is broken: thread 1 goes on
    done.set()
    _join(thread)
    assert got[0] > b
    assert len(table) == 0


def test_a_cycle_through_three_threads_and_two_tables(core: ModuleType) -> None:
    """The wait-for graph spans every table of the process: t1 -> t2 -> main -> t1 is found."""
    from kannuki.errors import DeadlockError

    left, right = core.LockTable(), core.LockTable()
    x = left.acquire("x")  # main holds left:x
    results: dict[str, int] = {}
    ready = threading.Barrier(3, timeout=JOIN)
    release = threading.Event()

    def worker(name: str, mine: tuple[Any, str], wanted: tuple[Any, str]) -> None:
        token = mine[0].acquire(mine[1])
        ready.wait()
        results[name] = wanted[0].acquire(wanted[1], timeout=JOIN)
        release.wait(JOIN)
        mine[0].release(mine[1], token)
        wanted[0].release(wanted[1], results[name])

    t1 = _start(lambda: worker("t1", (right, "y"), (left, "x")))  # t1 holds right:y, waits left:x
    t2 = _start(lambda: worker("t2", (left, "z"), (right, "y")))  # t2 holds left:z, waits right:y
    ready.wait()
    _wait_for(lambda: left.waiters("x") == 1 and right.waiters("y") == 1)
    with pytest.raises(DeadlockError, match="would deadlock"):
        left.acquire("z", timeout=JOIN)  # main waits for t2 -> t1 -> main
    assert left.acquire("z", timeout=0) == 0
    assert left.release("x", x)  # t1 gets x, then its hold of y goes to t2
    release.set()
    _join(t1, t2)
    assert results["t1"] and results["t2"]
    assert len(left) == 0 and len(right) == 0


def test_waiting_for_a_running_thread_is_no_deadlock(core: ModuleType) -> None:
    """A chain that ends at a thread that does not wait is an ordinary wait, however long."""
    table = core.LockTable()
    a = table.acquire("A")
    got: list[int] = []
    proceed = threading.Event()

    def one() -> None:
        b = table.acquire("B")
        proceed.wait(JOIN)  # busy elsewhere: holds B, waits for nothing in any table
        table.release("B", b)

    def two() -> None:
        got.append(table.acquire("B", timeout=JOIN))  # waits for one, which waits for nothing

    first = _start(one)
    _wait_for(lambda: table.held("B"))
    second = _start(two)
    _wait_for(lambda: table.waiters("B") == 1)
    # main (holds A) -> waits for B, blocked by one (running) and by two (queued ahead, waits for one)
    waited: list[int] = []
    third = _start(lambda: waited.append(table.acquire("B", timeout=JOIN)))
    _wait_for(lambda: table.waiters("B") == 2)
    proceed.set()
    _join(first, second)
    assert got[0] and table.release("B", got[0])
    _join(third)
    assert waited[0] and table.release("B", waited[0])
    assert table.release("A", a) and len(table) == 0


def test_a_wait_that_ended_is_no_edge_any_more(core: ModuleType) -> None:
    """Thread 1 timed out waiting for B: asking for its A is an ordinary wait, not a deadlock."""
    table = core.LockTable()
    b = table.acquire("B")
    timed_out = threading.Event()
    release = threading.Event()
    tokens: list[int] = []

    def one() -> None:
        a = table.acquire("A")
        tokens.append(table.acquire("B", timeout=0.05))  # times out: main holds B
        timed_out.set()
        release.wait(JOIN)
        table.release("A", a)

    thread = _start(one)
    assert timed_out.wait(JOIN) and tokens == [0]
    assert table.acquire("A", timeout=0.05) == 0  # thread 1 holds A but waits for nothing
    release.set()
    _join(thread)
    assert table.acquire("A", timeout=JOIN) and table.release("B", b)


def test_a_hold_left_by_a_thread_that_ended_is_nobodys(core: ModuleType) -> None:
    """A new thread with the ident of a finished holder does not wait "for itself"."""
    table = core.LockTable()
    ident: list[int] = []

    def take() -> int:
        ident.append(threading.get_ident())
        return int(table.acquire("k"))

    tok = _elsewhere(take)  # held still; its thread has ended (a hold handed over, say)
    outcomes: list[object] = []
    reused = False
    for _ in range(50):  # a finished thread's ident is usually given to the next one; bounded
        time.sleep(0.005)  # let the last thread really end, so its ident is free
        seen: list[int] = []

        def wait_once(seen: list[int] = seen) -> None:
            seen.append(threading.get_ident())
            try:
                outcomes.append(table.acquire("k", timeout=0.01))
            except Exception as exc:  # a DeadlockError here would be the defect
                outcomes.append(exc)

        _join(_start(wait_once))
        if seen[0] == ident[0]:
            reused = True
            break
    assert all(outcome == 0 for outcome in outcomes), outcomes
    assert table.release("k", tok)
    if not reused:
        pytest.skip("no thread got the finished holder's ident again")


def test_a_lease_this_thread_holds_is_a_deadlock_too(core: ModuleType) -> None:
    """A TTL holder is a holder: waiting for one's own lease raises (its owner would renew it)."""
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    tok = table.acquire("k", ttl=JOIN)
    with pytest.raises(DeadlockError):
        table.acquire("k", timeout=None)
    assert table.release("k", tok)


def test_threads_closing_a_cycle_at_once_exactly_one_raises(core: ModuleType) -> None:
    """Two threads each hold one key and ask for the other's at the same moment: one DeadlockError."""
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    for round_ in range(30):
        start = threading.Barrier(2, timeout=JOIN)
        outcomes: dict[str, object] = {}

        def cross(mine: str, theirs: str, outcomes: dict[str, object] = outcomes, start: Any = start) -> None:
            token = table.acquire(mine)
            start.wait()
            try:
                got = table.acquire(theirs, timeout=JOIN)
                outcomes[mine] = got
            except DeadlockError as exc:
                outcomes[mine] = exc
                got = 0
            table.release(mine, token)  # the one that raised lets the other through
            if got:
                table.release(theirs, got)

        threads = [_start(lambda: cross("A", "B")), _start(lambda: cross("B", "A"))]
        _join(*threads)
        errors = [value for value in outcomes.values() if isinstance(value, DeadlockError)]
        tokens = [value for value in outcomes.values() if isinstance(value, int) and value]
        assert len(errors) == 1 and len(tokens) == 1, (round_, outcomes)
        assert len(table) == 0 and table.waiters("A") == table.waiters("B") == 0


def test_a_disowned_hold_is_waited_for_like_anyone_elses(core: ModuleType) -> None:
    """disown(): a hold taken for someone else (a simulated holder) is an ordinary wait, never a deadlock."""
    table = core.LockTable()
    tok = table.acquire("k")
    assert table.disown("k", tok) is True
    assert table.acquire("k", timeout=0.05) == 0  # waited, timed out: no DeadlockError
    assert table.holders("k") == [(tok, False, None)] and table.waiters("k") == 0
    assert table.disown("k", tok + 1) is False and table.disown("other", tok) is False
    with pytest.raises(TypeError, match="token"):
        table.disown("k", "1")
    readers = [table.acquire("r", shared=True), table.acquire("r", shared=True)]
    assert table.disown("r", readers[1])  # the second holder of a shared key
    with pytest.raises(Exception, match="this thread holds it already"):
        table.acquire("r", timeout=None)  # the first reader is still this thread's
    assert table.release("r", readers[0])
    assert table.acquire("r", timeout=0.05) == 0  # only the disowned reader is left
    got: list[int] = []
    thread = _start(lambda: got.append(table.acquire("k", timeout=JOIN)))
    _wait_for(lambda: table.waiters("k") == 1)
    assert table.release("k", tok)  # released by a thread other than the one that took it
    _join(thread)
    assert got[0] > tok and table.release("k", got[0]) and table.release("r", readers[1])
    assert len(table) == 0


def test_a_timed_upgrade_still_finds_a_cycle_among_threads(core: ModuleType) -> None:
    """Main holds K (shared) and B; another reader of K waits for B. Main's timed upgrade of K raises.

    Main holding K itself is no deadlock for a timed wait, but the other reader of K waits for
    main: a cycle among threads, whatever the timeout.
    """
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    mine = table.acquire("K", shared=True)
    b = table.acquire("B")
    got: list[int] = []
    reading = threading.Event()

    def reader() -> None:
        theirs = table.acquire("K", shared=True)
        reading.set()
        got.append(table.acquire("B", timeout=JOIN))  # waits for main
        table.release("B", got[0])
        table.release("K", theirs)

    thread = _start(reader)
    assert reading.wait(JOIN)
    _wait_for(lambda: table.waiters("B") == 1)
    started = time.monotonic()
    with pytest.raises(DeadlockError, match="would deadlock"):
        table.acquire("K", timeout=JOIN)
    assert time.monotonic() - started < JOIN / 2
    assert table.waiters("K") == 0
    assert table.release("B", b) and table.release("K", mine)
    _join(thread)
    assert got[0] and len(table) == 0


def test_a_timed_wait_on_ones_own_key_is_still_part_of_the_graph(core: ModuleType) -> None:
    """A thread in a timed wait for a key it holds (an upgrade) is waiting: a cycle through it is found."""
    from kannuki.errors import DeadlockError

    table = core.LockTable()
    theirs: list[int] = []
    upgraded: list[int] = []

    def upgrader() -> None:
        theirs.append(table.acquire("K", shared=True))
        theirs.append(table.acquire("C"))
        upgraded.append(table.acquire("K", timeout=JOIN))  # timed: waits (for itself and main)
        table.release("K", upgraded[0])
        table.release("C", theirs[1])

    mine = table.acquire("K", shared=True)
    thread = _start(upgrader)
    _wait_for(lambda: table.waiters("K") == 1)
    with pytest.raises(DeadlockError, match="would deadlock"):
        table.acquire("C", timeout=JOIN)  # C's holder waits for K, which main holds
    assert table.release("K", mine) and table.release("K", theirs[0])  # the upgrade goes through
    _join(thread)
    assert upgraded[0] and len(table) == 0
