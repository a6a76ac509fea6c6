"""The memory backend: acquire+release beside threading.Lock and the file-lock peers.

Uncontended: every contender does OPS acquire+release pairs per round on one lock it made
beforehand; the with-block group makes the lock in each block (``with locker.lock(key):`` as users
write it, beside ``with threading.Lock():``).
Contended: THREADS threads each do INCREMENTS acquire / read-modify-write / release on one key.
SPEC §7: uncontended acquire+release within 2x of ``threading.Lock`` (the floor), >= 10x faster
than filelock and fasteners; ``with locker.lock(key):`` within 3x of ``with threading.Lock():``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kannuki
from bench_support import Round, pairs, peer_filelock, peer_portalocker

OPS = 100  # acquire+release pairs per round: amortises the harness's own call
THREADS = 4
INCREMENTS = 500  # per thread per round


@pytest.fixture
def memory_locker(key_prefix: str) -> Iterator[kannuki.Locker]:
    """A memory:// locker on a table of its own, without subscribers (the default hot path)."""
    locker = kannuki.Locker(f"memory://{key_prefix}")
    try:
        yield locker
    finally:
        locker.close()


def _floor_threading(locker: kannuki.Locker, path: Path) -> Round:
    lock = threading.Lock()
    return pairs(lock.acquire, lock.release, OPS)


def _kannuki_acquire_release(locker: kannuki.Locker, path: Path) -> Round:
    lock = locker.lock("uncontended")
    return pairs(lock.acquire, lock.release, OPS)


def _kannuki_with(locker: kannuki.Locker, path: Path) -> Round:
    make = locker.lock

    def run() -> None:
        for _ in range(OPS):
            with make("uncontended"):
                pass

    return run


def _kannuki_table(locker: kannuki.Locker, path: Path) -> Round:
    # The compiled LockTable alone, as the backend calls it: what the API layer adds is the rest.
    table = locker.backend.table
    acquire, release = table.acquire, table.release

    def run() -> None:
        for _ in range(OPS):
            release("uncontended", acquire("uncontended", False, 0.0, None))

    return run


def _peer_fasteners(locker: kannuki.Locker, path: Path) -> Round:
    fasteners = pytest.importorskip("fasteners")
    lock = fasteners.InterProcessLock(str(path))
    return pairs(lock.acquire, lock.release, OPS)


@pytest.mark.parametrize(
    "make_round",
    [
        pytest.param(_floor_threading, id="floor-threading.Lock"),
        pytest.param(_kannuki_acquire_release, id="kannuki-acquire+release"),
        pytest.param(_kannuki_table, id="kannuki-LockTable"),
        pytest.param(lambda locker, path: peer_filelock(path, OPS), id="peer-filelock"),
        pytest.param(_peer_fasteners, id="peer-fasteners"),
        pytest.param(lambda locker, path: peer_portalocker(path, OPS), id="peer-portalocker"),
    ],
)
def test_uncontended(benchmark, make_round, memory_locker: kannuki.Locker, tmp_path: Path) -> None:
    """OPS uncontended acquire+release pairs per round, on one key / one lock file."""
    run = make_round(memory_locker, tmp_path / "bench.lock")
    benchmark.group = f"memory: uncontended acquire+release x{OPS}"
    benchmark(run)
    assert not memory_locker.held("uncontended")


def _floor_with_threading(locker: kannuki.Locker, path: Path) -> Round:
    make = threading.Lock  # a lock made per block, as ``with locker.lock(key):`` makes its Lock

    def run() -> None:
        for _ in range(OPS):
            with make():
                pass

    return run


@pytest.mark.parametrize(
    "make_round",
    [
        pytest.param(_floor_with_threading, id="floor-with-threading.Lock()"),
        pytest.param(_kannuki_with, id="kannuki-with-locker.lock(key)"),
    ],
)
def test_with_block(benchmark, make_round, memory_locker: kannuki.Locker, tmp_path: Path) -> None:
    """OPS ``with`` blocks per round, each on a lock made for it (SPEC §7: kannuki within 3x)."""
    run = make_round(memory_locker, tmp_path / "bench.lock")
    benchmark.group = f"memory: uncontended with-block x{OPS}"
    benchmark(run)
    assert not memory_locker.held("uncontended")


def _threading_worker(locker: kannuki.Locker, counter: list[int]) -> Callable[[], None]:
    lock = threading.Lock()  # one lock shared by the threads of a round

    def work() -> None:
        for _ in range(INCREMENTS):
            with lock:
                counter[0] += 1

    return work


def _kannuki_worker(locker: kannuki.Locker, counter: list[int]) -> Callable[[], None]:
    def work() -> None:
        lock = locker.lock("contended")  # a Lock object belongs to one thread at a time
        for _ in range(INCREMENTS):
            lock.acquire()
            try:
                counter[0] += 1
            finally:
                lock.release()

    return work


@pytest.mark.parametrize(
    "make_worker",
    [
        pytest.param(_threading_worker, id="floor-threading.Lock"),
        pytest.param(_kannuki_worker, id="kannuki-memory"),
    ],
)
def test_contended_threads(benchmark, make_worker, memory_locker: kannuki.Locker) -> None:
    """THREADS threads x INCREMENTS locked increments per round; no update is ever lost."""
    counter = [0]
    work = make_worker(memory_locker, counter)

    def run_round() -> None:
        threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a worker thread hung"

    benchmark.group = f"memory: contended {THREADS} threads x {INCREMENTS} increments"
    benchmark.pedantic(run_round, rounds=10, iterations=1, warmup_rounds=1)
    rounds_run = counter[0] // (THREADS * INCREMENTS)
    assert rounds_run >= 1
    assert counter[0] == rounds_run * THREADS * INCREMENTS
