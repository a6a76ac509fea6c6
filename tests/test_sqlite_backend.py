"""The sqlite:/// lease store: URLs, leases, fencing tokens, processes contending on one file."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import kannuki
from kannuki.backends.sqlite import SQLiteBackend, path_from_url
from support import FakeClock, contend, killed_holder


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/locks.db"


@pytest.fixture
def locker(url: str):
    locker = kannuki.Locker(url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
    yield locker
    locker.close()


def test_url_paths_follow_sqlalchemy() -> None:
    """Three slashes is a relative path, four an absolute one."""
    assert path_from_url("sqlite:///rel/locks.db") == "rel/locks.db"
    assert path_from_url("sqlite:////abs/locks.db") == "/abs/locks.db"


@pytest.mark.parametrize(
    "bad", ["sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///:memory:", "sqlite:///x?a=1"]
)
def test_bad_urls_are_refused(bad: str) -> None:
    """URLs without a file, with a host or query, and :memory: raise ConfigurationError naming the url."""
    with pytest.raises(kannuki.ConfigurationError, match="url"):
        kannuki.Locker(bad)


def test_bad_options_are_refused(url: str) -> None:
    """Unknown options and a bad ttl are named in the error."""
    with pytest.raises(kannuki.ConfigurationError, match="pool_size"):
        kannuki.Locker(url, pool_size=3)
    with pytest.raises(kannuki.ConfigurationError, match="ttl"):
        kannuki.Locker(url, ttl=0)
    with pytest.raises(kannuki.ConfigurationError, match="busy_timeout"):
        kannuki.Locker(url, busy_timeout=-1)


def test_no_file_is_touched_before_first_use(tmp_path: Path) -> None:
    """Making a Locker opens nothing: the database appears on the first acquire."""
    db = tmp_path / "lazy.db"
    locker = kannuki.Locker(f"sqlite:///{db}")
    assert not db.exists()
    with locker.lock("k"):
        assert db.exists()
    locker.close()


def test_exclusive_lock_holders_and_tokens(locker: kannuki.Locker) -> None:
    """A held key excludes a second Lock, names its holder, and tokens grow per acquisition."""
    first = locker.lock("job")
    assert first.acquire(timeout=0)
    assert locker.held("job")
    (holder,) = locker.holders("job")
    assert (holder.pid, holder.token, holder.shared) == (os.getpid(), first.token, False)
    assert holder.expires_at is not None and holder.expires_at > holder.since
    assert not locker.lock("job").acquire(timeout=0.05)
    token = first.token
    first.release()
    assert not locker.held("job")
    again = locker.lock("job")
    assert again.acquire(timeout=0)
    assert again.token > token
    assert [h.name for h in locker.backend.list_held()] == [again.name]
    again.release()


def test_shared_locks_coexist_and_exclude_writers(locker: kannuki.Locker) -> None:
    """Two shared holders at once; an exclusive one waits for both."""
    readers = [locker.lock("doc", shared=True) for _ in range(2)]
    assert all(r.acquire(timeout=0) for r in readers)
    assert len(locker.holders("doc")) == 2
    writer = locker.lock("doc")
    assert not writer.acquire(timeout=0)
    for r in readers:
        r.release()
    assert writer.acquire(timeout=0)
    assert not locker.lock("doc", shared=True).acquire(timeout=0)
    writer.release()


def test_expired_lease_is_free_and_stale_holder_cannot_touch_new_one(tmp_path: Path) -> None:
    """After expiry a new holder gets a higher token; the stale one can neither renew nor release it."""
    clock = FakeClock()
    backend = SQLiteBackend(str(tmp_path / "c.db"), ttl=10, clock=clock)
    locker = kannuki.Locker(backend, auto_renew=False)
    stale = locker.lock("k")
    assert stale.acquire(timeout=0)
    stale_grant = stale.grant
    assert stale_grant is not None and stale_grant.ttl == 10
    assert not locker.lock("k").acquire(timeout=0)
    clock.now += 10.5
    assert not locker.held("k")
    assert not backend.check(stale_grant)
    fresh = locker.lock("k")
    assert fresh.acquire(timeout=0)
    assert fresh.token > stale.token
    assert not backend.renew(stale_grant, 10)
    with pytest.raises(kannuki.LockLostError):
        stale.release()
    backend.abort(stale_grant)  # deletes only its own (expired) row, by token
    (holder,) = locker.holders("k")
    assert holder.token == fresh.token
    assert backend.renew(fresh.grant, 10) and backend.check(fresh.grant)
    fresh.release()
    locker.close()


def test_force_release_deletes_the_row_whoever_holds_it(locker: kannuki.Locker) -> None:
    """force_release frees every live holder of the key (shared ones too) and counts them; tokens go on."""
    readers = [locker.lock("stuck", shared=True) for _ in range(2)]
    assert all(r.acquire(timeout=0) for r in readers)
    assert locker.force_release("stuck") == 2
    assert not locker.held("stuck") and locker.force_release("stuck") == 0
    writer = locker.lock("stuck")
    assert writer.acquire(timeout=0) and writer.token > max(r.token or 0 for r in readers)
    for r in readers:
        with pytest.raises(kannuki.LockLostError):
            r.release()
    writer.release()


def _open_fds(path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(path)
        except OSError:  # closed meanwhile
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_short_lived_threads_leave_no_connections_open(tmp_path: Path) -> None:
    """150 threads each taking a lock once: afterwards a few connections stay open, not one per thread."""
    import threading

    from kannuki.backends.sqlite import MAX_CONNECTIONS

    db = str(tmp_path / "threads.db")
    locker = kannuki.Locker(f"sqlite:///{db}")
    errors: list[BaseException] = []
    start = threading.Barrier(30, timeout=30)

    def work(i: int) -> None:
        try:
            if i < 30:
                start.wait()  # the first 30 at once: more calls than connections
            with locker.lock(f"k{i % 7}", timeout=30):
                pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    # Each connection has the database file and its -wal open (the -shm is one shared mapping).
    assert _open_fds(db) <= 2 * MAX_CONNECTIONS + 1
    locker.close()
    assert _open_fds(db) == 0


def test_waiter_gets_the_lock_when_released(locker: kannuki.Locker) -> None:
    """A blocking acquire polls until the holder (another thread) lets go."""
    import threading

    holder = locker.lock("w")
    assert holder.acquire()
    timer = threading.Timer(0.2, holder.release)
    timer.start()
    waiter = locker.lock("w")
    try:
        assert waiter.acquire(timeout=10)
    finally:
        timer.join(10)
    waiter.release()


def test_processes_contending_lose_no_update(url: str, tmp_path: Path) -> None:
    """4 processes x 50 read-modify-writes: no lost update, tokens strictly increasing in lock order."""
    contend(url, tmp_path)


def test_sigkilled_holder_is_freed_when_its_lease_expires(url: str) -> None:
    """A SIGKILLed holder keeps the lock until its lease runs out, then a waiter gets it."""
    with killed_holder(url, ttl=0.6) as (locker, token):
        assert not locker.lock("victim").acquire(timeout=0)  # the lease outlives the process
        lock = locker.lock("victim")
        assert lock.acquire(timeout=10)
        assert lock.token > token
        lock.release()


def test_fork_child_does_not_hold_parents_lock(locker: kannuki.Locker) -> None:
    """In a forked child the parent's Lock is not held and the key stays busy for the child."""
    lock = locker.lock("forked")
    assert lock.acquire()
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child_checks, args=(locker, lock))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    lock.release()


def _child_checks(locker: kannuki.Locker, lock: kannuki.Lock) -> None:
    assert not lock.locked() and lock.token is None
    assert not locker.lock("forked").acquire(timeout=0)
    other = locker.lock("child-only")
    assert other.acquire(timeout=0)
    other.release()
    locker.close()


# -- item 23: a waiting writer keeps new readers out ----------------------------------

LIVENESS = 10.0  # seconds: the writer must get in well within this, and always does after the fix


def _overlapping_reader(locker: kannuki.Locker, key: str, started: Any, stop: Any, errors: list[str]) -> None:
    """Hand over hand: take the next shared lock (one try) before letting go of the last, so this
    reader always overlaps itself; only when the try is refused does it let go and wait its turn."""
    current = locker.lock(key, shared=True)
    if not current.acquire(timeout=LIVENESS):
        errors.append("a reader could not start")
        return
    started.set()
    deadline = time.monotonic() + 3 * LIVENESS
    for _ in range(100_000):
        if stop.is_set() or time.monotonic() > deadline:
            break
        time.sleep(0.002)
        following = locker.lock(key, shared=True)
        got = following.acquire(timeout=0)
        current.release()
        if not got and not following.acquire(timeout=LIVENESS):
            errors.append("a reader waited past the liveness bound")
            return
        current = following
    current.release()


def _writer_gets_in_among_readers(readers: kannuki.Locker, writers: kannuki.Locker, key: str) -> None:
    """Two reader threads overlap without a gap; a writer (another locker) must still get the key."""
    stop = threading.Event()
    errors: list[str] = []
    starts = [threading.Event() for _ in range(2)]
    threads = [
        threading.Thread(target=_overlapping_reader, args=(readers, key, started, stop, errors), daemon=True)
        for started in starts
    ]
    for thread in threads:
        thread.start()
    try:
        assert all(started.wait(LIVENESS) for started in starts), errors
        writer = writers.lock(key)
        assert writer.acquire(timeout=LIVENESS), "the writer starved behind overlapping readers"
        assert all(not h.shared for h in writers.holders(key))
        writer.release()
    finally:
        stop.set()
        for thread in threads:
            thread.join(3 * LIVENESS)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


WAITING_WRITER = """
import sys, kannuki
options = {"namespace": sys.argv[3]} if len(sys.argv) > 3 else {}
lock = kannuki.Locker(sys.argv[1], **options).lock(sys.argv[2])
print("waiting", flush=True)
lock.acquire(timeout=60)
"""


def _shared_try(locker: kannuki.Locker, key: str) -> bool:
    lock = locker.lock(key, shared=True)
    got = lock.acquire(timeout=0)
    if got:
        lock.release()
    return got


def _dead_writers_mark_runs_out(locker: kannuki.Locker, url: str, key: str, *extra: str) -> None:
    """A writer process waits behind a reader (its mark keeps new readers out) and is SIGKILLed:
    its mark expires by itself, and new readers get in again."""
    import subprocess
    import sys

    from support import subprocess_env, wait_until

    reader = locker.lock(key, shared=True)
    assert reader.acquire(timeout=0)
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITING_WRITER, url, key, *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
        assert wait_until(lambda: not _shared_try(locker, key), LIVENESS), "the waiting writer left no mark"
        proc.kill()
        proc.wait(10)
        late = locker.lock(key, shared=True)
        assert late.acquire(timeout=LIVENESS), "a dead writer's mark kept readers out"
        late.release()
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        reader.release()


def test_item_23_waiting_writer_is_not_starved_by_overlapping_readers(url: str) -> None:
    """sqlite: a waiting writer's mark in kannuki_intents stops new readers; it gets in within the bound."""
    key = f"doc-{uuid.uuid4().hex[:8]}"
    readers, writers = kannuki.Locker(url), kannuki.Locker(url)
    try:
        _writer_gets_in_among_readers(readers, writers, key)
    finally:
        readers.close()
        writers.close()


def test_item_23_a_dead_writers_mark_expires(url: str) -> None:
    """sqlite: the mark of a writer killed while waiting keeps readers out only until it expires."""
    locker = kannuki.Locker(url)
    try:
        _dead_writers_mark_runs_out(locker, url, f"doc-{uuid.uuid4().hex[:8]}")
    finally:
        locker.close()


def test_threads_opening_a_new_database_file_at_once_all_get_in(tmp_path: Path) -> None:
    """The first connections to a new file set it up together (WAL, schema): SQLite refuses some of
    them at once, without its busy handler; none of that reaches the caller as a BackendError."""
    errors: list[BaseException] = []
    for trial in range(25):
        url = f"sqlite:///{tmp_path}/fresh-{trial}.db"
        lockers = [kannuki.Locker(url) for _ in range(4)]
        barrier = threading.Barrier(len(lockers), timeout=30)

        def first_call(locker: kannuki.Locker, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                locker.held("k")  # opens this locker's first connection
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=first_call, args=(locker,)) for locker in lockers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for locker in lockers:
            locker.close()
    assert errors == []


def test_tasks_opening_a_new_database_file_at_once_all_get_in(tmp_path: Path) -> None:
    """The same for AsyncLocker: tasks whose first calls open their connections together."""

    async def trial(url: str) -> list[BaseException]:
        lockers = [kannuki.AsyncLocker(url) for _ in range(4)]
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(locker.held("k") for locker in lockers), return_exceptions=True), 30
            )
        finally:
            for locker in lockers:
                await locker.aclose()
        return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]

    errors = [error for n in range(25) for error in asyncio.run(trial(f"sqlite:///{tmp_path}/fresh-{n}.db"))]
    assert errors == []
