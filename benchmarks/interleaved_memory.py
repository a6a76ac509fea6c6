"""The memory targets of SPEC §7 as ratios from one interleaved run (not a pytest module).

pytest-benchmark times one contender after the other, so on a shared, noisy machine a ratio can
swing with the load of the moment. Here every round runs each contender once, in a shuffled
order, and the report is the median of the per-round ratios kannuki / floor:

- ``lock.acquire(); lock.release()`` on ``memory://`` beside ``threading.Lock`` (target <= 2x)
- ``with locker.lock(key):`` beside ``with threading.Lock():`` (target <= 3x)

    python benchmarks/interleaved_memory.py [ROUNDS]
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections.abc import Callable

import kannuki

OPS = 2000  # operations per contender per round


def main(rounds: int) -> None:
    locker = kannuki.Locker("memory://interleaved")
    floor_lock = threading.Lock()
    make_floor = threading.Lock

    def floor_pair() -> int:
        acquire, release = floor_lock.acquire, floor_lock.release
        start = time.perf_counter_ns()
        for _ in range(OPS):
            acquire()
            release()
        return time.perf_counter_ns() - start

    def kannuki_pair() -> int:
        lock = locker.lock("k")
        acquire, release = lock.acquire, lock.release
        start = time.perf_counter_ns()
        for _ in range(OPS):
            acquire()
            release()
        return time.perf_counter_ns() - start

    def floor_with() -> int:
        start = time.perf_counter_ns()
        for _ in range(OPS):
            with make_floor():
                pass
        return time.perf_counter_ns() - start

    def kannuki_with() -> int:
        make = locker.lock
        start = time.perf_counter_ns()
        for _ in range(OPS):
            with make("k"):
                pass
        return time.perf_counter_ns() - start

    contenders: dict[str, Callable[[], int]] = {
        "floor acquire+release": floor_pair,
        "kannuki acquire+release": kannuki_pair,
        "floor with threading.Lock()": floor_with,
        "kannuki with locker.lock(key)": kannuki_with,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for run in contenders.values():
        run()  # warm up
    for _ in range(rounds):
        order = list(contenders.items())
        random.shuffle(order)
        for name, run in order:
            times[name].append(run() / OPS)
    print(f"core: {'native' if kannuki.NATIVE else 'pure'}; {rounds} rounds of {OPS} operations")
    for name, values in times.items():
        print(f"  {name:31s} median {statistics.median(values):7.1f} ns  min {min(values):7.1f} ns")
    for what, floor, target in (
        ("acquire+release", "floor acquire+release", 2.0),
        ("with", "floor with threading.Lock()", 3.0),
    ):
        mine = next(name for name in times if name.startswith("kannuki") and what in name)
        ratios = [k / f for k, f in zip(times[mine], times[floor], strict=True)]
        print(
            f"  {what}: {statistics.median(ratios):.2f}x the floor (median of per-round ratios; target {target}x)"
        )
    locker.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
