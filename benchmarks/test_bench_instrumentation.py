"""Cost of instrumentation on the hot path: memory acquire+release with events off, on with nobody
subscribed, and on with one subscriber. The issue's target: nobody subscribed within 5% of
``instrumentation=False``.

Run: ``PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_instrumentation.py --benchmark-only``
"""

from __future__ import annotations

import uuid

import pytest

import kannuki

CASES = ["instrumentation_off", "nobody_subscribed", "one_subscriber"]


@pytest.mark.parametrize("case", CASES)
def test_memory_acquire_release(benchmark, case: str) -> None:  # type: ignore[no-untyped-def]
    """One uncontended memory acquire+release per round."""
    benchmark.group = "instrumentation: memory acquire+release"
    locker = kannuki.Locker(
        f"memory://bench-{uuid.uuid4().hex[:8]}", instrumentation=case != "instrumentation_off"
    )
    unsubscribe = kannuki.subscribe(lambda event: None) if case == "one_subscriber" else None
    lock = locker.lock("bench/instrumentation")
    acquire, release = lock.acquire, lock.release

    def cycle() -> None:
        acquire()
        release()

    try:
        benchmark(cycle)
    finally:
        if unsubscribe is not None:
            unsubscribe()
    assert not lock.locked() and locker.stats().acquired == locker.stats().released > 0
