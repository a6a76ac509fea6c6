"""Helpers shared by several benchmark modules (not benchmarks themselves)."""

from __future__ import annotations

import multiprocessing
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kannuki
from support import join_all

Round = Callable[[], None]


def pairs(acquire: Callable[[], object], release: Callable[[], object], ops: int) -> Round:
    """A round of ``ops`` acquire+release pairs."""

    def run() -> None:
        for _ in range(ops):
            acquire()
            release()

    return run


def peer_filelock(path: Path, ops: int) -> Round:
    """``ops`` acquire+release pairs of filelock's FileLock on ``path`` (skips without filelock)."""
    filelock = pytest.importorskip("filelock")
    lock = filelock.FileLock(str(path))
    return pairs(lock.acquire, lock.release, ops)


def peer_portalocker(path: Path, ops: int) -> Round:
    """``ops`` acquire+release pairs of portalocker's Lock on ``path`` (skips without portalocker)."""
    portalocker = pytest.importorskip("portalocker")
    lock = portalocker.Lock(str(path), mode="a")
    return pairs(lock.acquire, lock.release, ops)


def time_contended(
    benchmark: Any, worker: Callable[..., None], args: tuple[Any, ...], *, rounds: int, processes: int = 4
) -> int:
    """Time ``processes`` forked ``worker(*args, key=, ready=, start=)`` from a starting shot until all exit.

    Untimed, per round: the processes start on a fresh key, connect, reach the ``ready`` barrier and
    wait for the ``start`` event. Each must exit with 0. Returns how many rounds ran (one under
    ``--benchmark-disable``), for the caller's no-lost-update check.
    """
    ctx = multiprocessing.get_context("fork")
    runs = 0

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        nonlocal runs
        runs += 1
        ready, start = ctx.Barrier(processes + 1), ctx.Event()
        shot = {"key": f"c-{uuid.uuid4().hex[:8]}", "ready": ready, "start": start}
        workers = [ctx.Process(target=worker, args=args, kwargs=shot) for _ in range(processes)]
        for process in workers:
            process.start()
        ready.wait(30)
        return (workers, start), {}

    def run(workers: list[Any], start: Any) -> None:
        start.set()
        assert join_all(workers, 120) == [0] * processes

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    return runs


def try_and_release(lock: Any) -> Round:
    """One non-blocking acquire and one release of ``lock`` (kannuki's, pals', tooz's: the same verbs)."""

    def once() -> None:
        lock.acquire(blocking=False)
        lock.release()

    return once


def kannuki_url_contender(url: str, key: str) -> tuple[Round, Callable[[], None]]:
    """A URL locker's try-acquire+release of ``key`` (prefix ``bench``), and its close."""
    locker = kannuki.Locker(url, key_prefix="bench")
    return try_and_release(locker.lock(key)), locker.close


def tooz_contender(url: str, key: str) -> tuple[Round, Callable[[], None]]:
    """tooz for ``url``: a try-acquire+release of ``bench:key``, and its stop (skips without tooz)."""
    coordination = pytest.importorskip("tooz.coordination")
    with warnings.catch_warnings():  # tooz 9 deprecates its postgresql driver; it is still the peer to beat
        warnings.simplefilter("ignore", DeprecationWarning)
        coordinator = coordination.get_coordinator(url, b"bench-" + uuid.uuid4().hex[:6].encode())
    coordinator.start()
    return try_and_release(coordinator.get_lock(("bench:" + key).encode())), coordinator.stop
