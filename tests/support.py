"""Helpers shared by several test modules (not tests themselves)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kannuki

# The folder kannuki was imported from (site-packages in CI, src/ in a checkout):
# subprocesses get it on PYTHONPATH so they run the same build as the tests.
KANNUKI_PATH = str(Path(kannuki.__file__).resolve().parent.parent)


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ plus PYTHONPATH pointing at the kannuki under test, plus ``extra``."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (KANNUKI_PATH, env.get("PYTHONPATH", "")) if p)
    return env


def wait_until(predicate: Callable[[], object], seconds: float = 10.0) -> bool:
    """Poll ``predicate`` every 20 ms for at most ``seconds``; whether it came true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def join_all(processes: Sequence[Any], seconds: float) -> list[int | None]:
    """Join ``processes`` within ``seconds`` in all, kill what is still alive; return the exit codes."""
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5)
    return [process.exitcode for process in processes]


def mysql_connect(url: str) -> Any:
    """A raw autocommit MySQLdb connection to the server of a ``mysql://`` URL."""
    import MySQLdb

    parts = urlsplit(url)
    return MySQLdb.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        autocommit=True,
    )


class FakeClock:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _increment(url: str, prefix: str, counter: str, rounds: int) -> None:
    locker = kannuki.Locker(url, key_prefix=prefix)
    for _ in range(rounds):
        with locker.lock("counter", timeout=60) as lock:
            path = Path(counter)
            value = int(path.read_text() or 0)
            with open(counter + ".tokens", "a") as log:
                log.write(f"{lock.token}\n")
            path.write_text(str(value + 1))
    locker.close()


def contend(url: str, tmp_path: Path, processes: int = 4, rounds: int = 50) -> None:
    """Run ``processes`` spawned workers incrementing one file under the lock.

    Asserts no lost update and fencing tokens strictly increasing in lock order.
    """
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=_increment, args=(url, prefix, str(counter), rounds)) for _ in range(processes)
    ]
    for w in workers:
        w.start()
    assert join_all(workers, 90) == [0] * processes
    assert int(counter.read_text()) == processes * rounds
    tokens = [int(line) for line in (tmp_path / "counter.txt.tokens").read_text().split()]
    assert tokens == sorted(set(tokens)) and len(tokens) == processes * rounds


HOLDER = """
import sys, time, kannuki
locker = kannuki.Locker(sys.argv[1], ttl=float(sys.argv[2]))
lock = locker.lock("victim")
assert lock.acquire(timeout=5)
print(lock.token, flush=True)
time.sleep(60)
"""


@contextmanager
def killed_holder(url: str, ttl: float) -> Iterator[tuple[kannuki.Locker, int]]:
    """A subprocess takes 'victim' (with ``ttl``), is seen holding it, and is SIGKILLed.

    Yields a locker on ``url`` and the dead holder's token; closes both afterwards.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(ttl)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    locker = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip(), "the holder process did not acquire"
        locker = kannuki.Locker(url)
        (holder,) = locker.holders("victim")
        assert holder.pid == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        yield locker, int(line)
    finally:
        if locker is not None:
            locker.close()
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def mysql_scalar(conn: Any, sql: str, *args: Any) -> Any:
    """The first column of the first row of ``sql`` on a raw MySQLdb connection."""
    cur = conn.cursor()
    cur.execute(sql, args)
    row = cur.fetchone()
    cur.close()
    return row[0]


@contextmanager
def redis_namespace(url: str) -> Iterator[str]:
    """A fresh key namespace on the Redis at ``url``; every key under it is deleted afterwards.

    ``name + "*"`` also covers the sibling namespaces some tests derive from it.
    """
    import redis

    name = f"t-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=name + "*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# -- real task-queue workers (tests/test_celery.py, tests/test_rq.py) ---------------------------

WORKER_BOUND = 30.0  # seconds: the bound on every wait for a worker


class WorkerRun:
    """What a test needs of a worker subprocess (``worker``) whose jobs leave marker files in ``dir``
    (``name@...``) and wait at gates (``gate-NAME`` files) the test opens there."""

    dir: Path
    worker: subprocess.Popen[Any]

    def markers(self, start: str) -> list[str]:
        return sorted(p.name.split("@")[0] for p in self.dir.iterdir() if p.name.startswith(start))

    def open_gate(self, name: str) -> None:
        (self.dir / f"gate-{name}").touch()

    def until(self, what: Callable[[], bool], message: str, bound: float = WORKER_BOUND) -> None:
        deadline = time.monotonic() + bound
        while not what():
            assert self.worker.poll() is None, f"the worker exited with {self.worker.returncode}"
            assert time.monotonic() < deadline, message
            time.sleep(0.02)


@contextmanager
def environment(settings: dict[str, str]) -> Iterator[None]:
    """``settings`` in os.environ for the block (a module imported there reads them), then as before."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
