"""Helpers shared by several test modules (not tests themselves)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import uuid
from pathlib import Path

import kannuki

# The folder kannuki was imported from (site-packages in CI, src/ in a checkout):
# subprocesses get it on PYTHONPATH so they run the same build as the tests.
KANNUKI_PATH = str(Path(kannuki.__file__).resolve().parent.parent)


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ plus PYTHONPATH pointing at the kannuki under test, plus ``extra``."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (KANNUKI_PATH, env.get("PYTHONPATH", "")) if p)
    return env


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


def contend(url: str, tmp_path: Path, processes: int = 4, rounds: int = 50) -> list[int]:
    """Run ``processes`` spawned workers incrementing one file under the lock; return the tokens in order."""
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_increment, args=(url, prefix, str(counter), rounds)) for _ in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(90)
    for w in workers:
        if w.is_alive():
            w.kill()
    assert [w.exitcode for w in workers] == [0] * processes
    assert int(counter.read_text()) == processes * rounds
    return [int(line) for line in (tmp_path / "counter.txt.tokens").read_text().split()]


HOLDER = """
import sys, time, kannuki
locker = kannuki.Locker(sys.argv[1], ttl=float(sys.argv[2]))
lock = locker.lock("victim")
assert lock.acquire(timeout=5)
print(lock.token, flush=True)
time.sleep(60)
"""


def start_holder(url: str, ttl: float) -> tuple[subprocess.Popen[str], int]:
    """A subprocess that takes 'victim' and sleeps; returns it and its token."""
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(ttl)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip(), "the holder process did not acquire"
    return proc, int(line)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a holder subprocess and close its pipe."""
    proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
