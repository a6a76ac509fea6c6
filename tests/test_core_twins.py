"""The two core twins: same names, same results for the same seeded scenario, native really loaded."""

from __future__ import annotations

import os
import platform
import random
import threading
import time
from types import ModuleType
from typing import Any

import pytest

import kannuki._core
from kannuki import _coreapi, _pure

try:
    from kannuki import _native
except ImportError:
    _native = None

needs_native = pytest.mark.skipif(_native is None, reason="kannuki._native is not built")


def _public(module: ModuleType) -> set[str]:
    # "@py_builtins" / "@pytest_ar" appear when pytest rewrites the package (its plugin is ours).
    return {name for name in dir(module) if not name.startswith(("_", "@"))}


def test_pure_exports_exactly_core_names() -> None:
    """kannuki._pure exports CORE_NAMES, no more, no less."""
    assert set(_pure.__all__) == set(_coreapi.CORE_NAMES)
    assert _public(_pure) == set(_coreapi.CORE_NAMES)


@needs_native
def test_native_exports_exactly_core_names() -> None:
    """kannuki._native's public names are exactly CORE_NAMES."""
    assert _native is not None
    assert _public(_native) == set(_coreapi.CORE_NAMES)
    assert set(_native.__all__) == set(_coreapi.CORE_NAMES)


def test_dispatcher_reexports_the_chosen_implementation() -> None:
    """kannuki._core publishes NATIVE / IMPLEMENTATION and the core names from that module."""
    core = kannuki._core
    assert (core.IMPLEMENTATION is _native and _native is not None) == core.NATIVE
    assert (core.FALLBACK_REASON is None) == core.NATIVE
    for name in _coreapi.CORE_NAMES:
        assert getattr(core, name) is getattr(core.IMPLEMENTATION, name)


def test_native_core_loaded_on_cpython() -> None:
    """On CPython without KANNUKI_NO_EXTENSIONS, the compiled core must be the one loaded.

    Wheels and CI builds must never come out pure by accident.
    """
    if platform.python_implementation() != "CPython":
        pytest.skip("the compiled core is CPython-only")
    if os.environ.get("KANNUKI_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("KANNUKI_NO_EXTENSIONS forces the pure core")
    assert kannuki._core.NATIVE, f"pure core loaded: {kannuki._core.FALLBACK_REASON}"


def _scenario(core: ModuleType, seed: int) -> list[object]:
    """A seeded random single-thread workout of every core function; returns the observed results."""
    rng = random.Random(seed)
    out: list[object] = []
    now = [0.0]
    table = core.LockTable(clock=lambda: now[0])
    held: list[tuple[str, int]] = []
    backoff = core.Backoff(
        rng.choice(["constant", "linear", "exponential"]),
        interval=rng.random(),
        cap=1 + rng.random() * 10,
        jitter=rng.choice(["none", "full", "decorrelated"]),
        seed=rng.getrandbits(64),
    )
    for _ in range(400):
        op = rng.randrange(8)
        key = f"k{rng.randrange(5)}"
        if op <= 2:
            ttl = rng.choice([None, 0.5, 2.0])
            tok = table.acquire(key, shared=rng.random() < 0.5, timeout=0, ttl=ttl)
            out.append(("acquire", key, tok))
            if tok:
                held.append((key, tok))
        elif op == 3 and held:
            key, tok = held.pop(rng.randrange(len(held)))
            out.append(("release", key, tok, table.release(key, tok)))
        elif op == 4:
            now[0] += rng.random()
            out.append(("expire", table.expire(), sorted(table.keys()), len(table)))
        elif op == 5 and held:
            key, tok = rng.choice(held)
            out.append(("renew", table.renew(key, tok, 1.0), table.holders(key)))
        elif op == 6:
            remaining = rng.choice([None, rng.random()])
            out.append(("delay", backoff.next_delay(remaining), backoff.attempt))
            if rng.random() < 0.1:
                backoff.reset()
        else:
            text = "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(1, 40)))
            out.append(("hash", core.name_and_id(text, rng.choice([None, "", "p"]))))
            out.append(
                ("bytes", core.hash_text_extended(text.encode("utf-8", "replace"), rng.getrandbits(64)))
            )
    return out


@needs_native
@pytest.mark.parametrize("seed", range(5))
def test_same_scenario_same_results(seed: int) -> None:
    """The same seeded scenario gives identical tokens, results and delays (floats compared exactly)."""
    assert _scenario(_native, seed) == _scenario(_pure, seed)


@needs_native
def test_backoff_streams_identical() -> None:
    """For every kind and jitter, the same seed gives the same floats bit for bit."""
    for kind in ("constant", "linear", "exponential"):
        for jitter in ("none", "full", "decorrelated"):
            a = _native.Backoff(kind, 0.013, 7.5, jitter, seed=12345)
            b = _pure.Backoff(kind, 0.013, 7.5, jitter, seed=12345)
            seq_a = [a.next_delay().hex() for _ in range(300)]
            seq_b = [b.next_delay().hex() for _ in range(300)]
            assert seq_a == seq_b, (kind, jitter)


def test_counters_agree_and_measure_holds(core: Any) -> None:
    """Both twins count outcomes the same way; released() returns the hold measured from acquired()."""
    counters = core.Counters()
    started = counters.acquired()
    assert abs(started - time.monotonic()) < 60  # the same clock as time.monotonic
    held = counters.released(started)
    assert held >= 0
    for name in ("failed", "timeouts", "timeouts", "lost", "renewed", "renew_failed"):
        counters.add(name)
    snap = counters.snapshot()
    assert snap[:7] == (1, 1, 2, 1, 1, 1, 1)
    assert snap[7] == pytest.approx(held)
    with pytest.raises(ValueError, match="name"):
        counters.add("exploded")


def test_counters_lose_no_count_under_threads(core: Any) -> None:
    """4 threads counting concurrently lose no increment."""
    counters = core.Counters()

    def work() -> None:
        for _ in range(2000):
            counters.released(counters.acquired())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    acquired, _, _, released, *_ = counters.snapshot()
    assert acquired == released == 8000


def _deadlock_scenario(core: ModuleType) -> list[object]:
    """Every kind of in-process deadlock, step by step; returns what each step observed.

    Thread idents in messages are replaced by the thread's name, so both twins' outcomes
    compare equal when they behave the same.
    """
    from kannuki.errors import DeadlockError

    out: list[object] = []
    names: dict[int, str] = {}
    bound = 10.0

    def attempt(table: Any, key: object, **kwargs: Any) -> object:
        try:
            return table.acquire(key, **kwargs)
        except DeadlockError as exc:
            text = str(exc)
            for ident, name in names.items():
                text = text.replace(str(ident), name)
            return ("DeadlockError", exc.key, text)

    def settle(predicate: Any) -> None:
        deadline = time.monotonic() + bound
        while not predicate():
            assert time.monotonic() < deadline, "scenario step not reached in time"
            time.sleep(0.002)

    def background(name: str, target: Any) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        assert thread.ident is not None
        names[thread.ident] = name
        return thread

    table, other = core.LockTable(), core.LockTable()
    mine = table.acquire("a")
    out.append(("again", [attempt(table, "a", timeout=t) for t in (None, 1.0, 0)]))
    out.append(("shared-on-exclusive", attempt(table, "a", shared=True, timeout=1.0)))
    read = table.acquire("r", shared=True)
    read_again = attempt(table, "r", shared=True, timeout=1.0)
    out.append(("read-again", read_again, attempt(table, "r", timeout=1.0)))
    results: dict[str, object] = {}
    go = threading.Event()

    def writer() -> None:
        results["writer"] = token = table.acquire("r", timeout=bound)
        go.wait(bound)
        table.release("r", token)

    w = background("writer", writer)
    settle(lambda: table.waiters("r") == 1)
    out.append(("read-behind-writer", attempt(table, "r", shared=True, timeout=1.0)))
    table.release("r", read)
    table.release("r", read_again)  # type: ignore[arg-type]
    settle(lambda: "writer" in results)

    def holds_b_wants_a() -> None:
        b = table.acquire("b")
        results["t-b"] = got = table.acquire("a", timeout=bound)
        table.release("a", got)
        table.release("b", b)

    t = background("t-b", holds_b_wants_a)
    settle(lambda: table.waiters("a") == 1)
    out.append(("cycle-of-two", attempt(table, "b", timeout=1.0)))

    def holds_y_wants_b() -> None:
        y = other.acquire("y")
        results["t-y"] = got = table.acquire("b", timeout=bound)
        table.release("b", got)
        other.release("y", y)

    u = background("t-y", holds_y_wants_b)
    settle(lambda: table.waiters("b") == 1)
    out.append(("cycle-of-three-across-tables", attempt(other, "y", timeout=1.0)))
    simulated = other.acquire("s")
    out.append(("disowned", other.disown("s", simulated), attempt(other, "s", timeout=0.05)))
    table.release("a", mine)
    go.set()
    for thread in (w, t, u):
        thread.join(bound)
        assert not thread.is_alive()
    out.append(("tokens", results["writer"], results["t-b"], results["t-y"]))
    other.release("s", simulated)
    out.append(("left", len(table), len(other), table.waiters("a"), table.waiters("b")))
    return out


@needs_native
def test_deadlock_detection_identical_on_both_twins() -> None:
    """The same deadlock scenario gives the same errors, messages, tokens and final state."""
    pure, native = _deadlock_scenario(_pure), _deadlock_scenario(_native)
    assert pure == native
    assert ("again", [pure[0][1][0], pure[0][1][1], 0]) == pure[0]  # type: ignore[index]
    # A wait without end on one's own key and the waits that close a cycle among threads raise;
    # a timed wait on one's own key times out (SPEC §3).
    assert sum(1 for step in pure if "DeadlockError" in repr(step)) == 3
    assert ("disowned", True, 0) in pure
