"""The file:/// store: flock per key, lease record, tokens, processes, and what expiry means there."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import kannuki
from kannuki.backends.file import FileBackend, file_name
from support import FakeClock, contend, killed_holder


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/locks"


@pytest.fixture
def locker(url: str):
    locker = kannuki.Locker(url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
    yield locker
    locker.close()


@pytest.mark.parametrize("bad", ["file://host/dir", "file:///dir?x=1"])
def test_bad_urls_are_refused(bad: str) -> None:
    """A host or a query in a file URL raises ConfigurationError naming the url."""
    with pytest.raises(kannuki.ConfigurationError, match="url"):
        kannuki.Locker(bad)


def test_bad_options_are_refused(url: str) -> None:
    """Unknown options and a bad ttl raise ConfigurationError naming them."""
    with pytest.raises(kannuki.ConfigurationError, match="busy_timeout"):
        kannuki.Locker(url, busy_timeout=1)
    with pytest.raises(kannuki.ConfigurationError, match="ttl"):
        kannuki.Locker(url, ttl=-1)


def test_item_24_shared_locks_coexist_and_exclude_writers(locker: kannuki.Locker, tmp_path: Path) -> None:
    """LOCK_SH: two readers (and a third from another backend) at once, each in the record; a writer waits for all."""
    readers = [locker.lock("doc", shared=True) for _ in range(2)]
    assert all(reader.acquire(timeout=0) for reader in readers)
    tokens = [reader.token for reader in readers]
    assert tokens[0] < tokens[1]
    holders = locker.holders("doc")
    assert [(h.shared, h.token, h.pid) for h in holders] == [(True, t, os.getpid()) for t in tokens]
    assert all(h.name == readers[0].name and h.expires_at > time.time() for h in holders)
    other = kannuki.Locker(locker.backend.describe(), key_prefix=locker.options.key_prefix)
    try:
        third = other.lock("doc", shared=True)
        assert third.acquire(timeout=0) and third.token > tokens[1]
        third_token = third.token
        assert len(other.holders("doc")) == 3
        third.release()
        writer = other.lock("doc")
        assert not writer.acquire(timeout=0)
        readers[0].ensure_held()
        readers[0].extend(60)  # a reader's renewal edits only its own entry
        (renewed,) = [h for h in locker.holders("doc") if h.token == tokens[0]]
        assert renewed.expires_at > time.time() + 50
        readers[0].release()
        assert [h.token for h in locker.holders("doc")] == [tokens[1]]
        assert not writer.acquire(timeout=0)
        readers[1].release()
        assert not locker.held("doc")
        assert writer.acquire(timeout=0) and writer.token == third_token + 1
        (holder,) = locker.holders("doc")
        assert (holder.shared, holder.token) == (False, writer.token)
        assert not locker.lock("doc", shared=True).acquire(timeout=0.05)
        writer.release()
    finally:
        other.close()
    assert not locker.held("doc")


def test_item_24_force_release_frees_every_reader_and_tokens_go_on(locker: kannuki.Locker) -> None:
    """force_release of a key held by two readers frees both (2); the next token is above every one issued."""
    readers = [locker.lock("stuck", shared=True) for _ in range(3)]
    assert all(reader.acquire(timeout=0) for reader in readers)
    highest = readers[2].token
    readers[2].release()  # the highest token is no longer held, but it was issued
    assert locker.force_release("stuck") == 2
    assert not locker.held("stuck")
    for reader in readers[:2]:
        with pytest.raises(kannuki.LockLostError):
            reader.release()
    again = locker.lock("stuck")
    assert again.acquire(timeout=0) and again.token == highest + 1
    again.release()


def test_item_24_killed_reader_is_freed_at_once(url: str, tmp_path: Path) -> None:
    """A reader process killed by SIGKILL drops its LOCK_SH with it: a writer gets the key at once."""
    import signal
    import subprocess
    import sys

    from support import subprocess_env

    script = (
        "import sys, time, kannuki\n"
        "lock = kannuki.Locker(sys.argv[1]).lock('victim', shared=True)\n"
        "assert lock.acquire(timeout=5)\n"
        "print(lock.token, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    locker = kannuki.Locker(url)
    try:
        assert proc.stdout is not None
        token = int(proc.stdout.readline())
        (holder,) = locker.holders("victim")
        assert (holder.shared, holder.pid, holder.token) == (True, proc.pid, token)
        assert not locker.lock("victim").acquire(timeout=0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        writer = locker.lock("victim")
        assert writer.acquire(timeout=5) and writer.token == token + 1
        writer.release()
    finally:
        locker.close()
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_lock_file_record_holders_and_tokens(locker: kannuki.Locker, tmp_path: Path) -> None:
    """The lock file is named from the lock ID, records the holder, and tokens persist and grow."""
    lock = locker.lock("job")
    assert lock.acquire(timeout=0)
    path = tmp_path / "locks" / file_name(lock.lock_id)
    assert path.exists() and f'"token":{lock.token}' in path.read_text()
    (holder,) = locker.holders("job")
    assert (holder.name, holder.pid, holder.token) == (lock.name, os.getpid(), lock.token)
    assert [h.lock_id for h in locker.backend.list_held()] == [lock.lock_id]
    assert not locker.lock("job").acquire(timeout=0.05)
    first = lock.token
    lock.release()
    assert not locker.held("job") and locker.backend.list_held() == []
    other = kannuki.Locker(locker.backend.describe(), key_prefix=locker.options.key_prefix)
    again = other.lock("job")
    assert again.acquire(timeout=0) and again.token == first + 1
    again.release()
    other.close()


def test_processes_contending_lose_no_update(url: str, tmp_path: Path) -> None:
    """4 processes x 50 read-modify-writes: no lost update, tokens strictly increasing in lock order."""
    contend(url, tmp_path)


def test_sigkilled_holder_is_freed_at_once(url: str) -> None:
    """The OS drops a killed holder's flock: the lock is free at once, the next token is higher."""
    with killed_holder(url, ttl=30) as (locker, token):
        lock = locker.lock("victim")
        assert lock.acquire(timeout=5)
        assert lock.token == token + 1
        lock.release()


def test_live_holder_with_expired_lease_still_excludes(tmp_path: Path) -> None:
    """The rule of the file store: a live holder is never robbed, whatever its lease record says."""
    clock = FakeClock()
    backend = FileBackend(str(tmp_path), ttl=1, clock=clock)
    locker = kannuki.Locker(backend, auto_renew=False)
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    clock.now += 100
    (holder,) = locker.holders("k")
    assert holder.expires_at < clock.now
    assert not locker.lock("k").acquire(timeout=0)
    lock.release()
    locker.close()


def test_removed_lock_file_is_a_lost_lock(tmp_path: Path) -> None:
    """Deleting the lock file under a holder: renew says False, release raises LockLostError, others can lock."""
    backend = FileBackend(str(tmp_path), ttl=30)
    locker = kannuki.Locker(backend, auto_renew=False)
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    grant = lock.grant
    assert grant is not None and grant.ttl == 30
    assert backend.renew(grant) and backend.check(grant)
    os.unlink(tmp_path / file_name(lock.lock_id))
    assert not backend.renew(grant) and not backend.check(grant)
    newcomer = locker.lock("k")
    assert newcomer.acquire(timeout=0)
    with pytest.raises(kannuki.LockLostError, match="removed or replaced"):
        lock.release()
    newcomer.release()
    locker.close()


def test_release_does_not_delete_lock_files(locker: kannuki.Locker, tmp_path: Path) -> None:
    """Lock files stay after release (deleting them would race with a process about to lock)."""
    for _ in range(3):
        with locker.lock("stay", timeout=1):
            pass
    assert len(list((tmp_path / "locks").glob("*.lock"))) == 1


def test_long_non_ascii_key_record_is_read_whole(locker: kannuki.Locker, tmp_path: Path) -> None:
    """A key of 60 KB of UTF-8 (a JSON record of ~120 KB): holders name it and its token counts on by one."""
    key = "鍵" * 20_000
    lock = locker.lock(key)
    assert lock.acquire(timeout=0)
    assert (tmp_path / "locks" / file_name(lock.lock_id)).stat().st_size > 100_000
    (holder,) = locker.holders(key)
    assert holder.name == lock.name and holder.token == lock.token
    first = lock.token
    lock.release()
    again = locker.lock(key)
    assert again.acquire(timeout=0)
    assert again.token == first + 1  # the counter survived: the whole record was read back
    again.release()


def test_force_release_replaces_the_file_and_keeps_the_counter(
    locker: kannuki.Locker, tmp_path: Path
) -> None:
    """force_release frees a live holder's key: the holder's file is replaced, tokens go on from its token."""
    lock = locker.lock("stuck")
    assert lock.acquire(timeout=0)
    grant = lock.grant
    assert locker.force_release("stuck") == 1
    assert not locker.held("stuck") and locker.force_release("stuck") == 0
    assert not locker.backend.check(grant)
    again = locker.lock("stuck")
    assert again.acquire(timeout=0) and again.token == lock.token + 1
    with pytest.raises(kannuki.LockLostError, match="removed or replaced"):
        lock.release()
    again.release()
    assert sorted(p.suffix for p in (tmp_path / "locks").iterdir()) == [".lock"]  # no scratch file left


def test_forked_child_does_not_keep_the_parents_flock(locker: kannuki.Locker) -> None:
    """A child forked while the parent holds the key: the parent's release frees it while the child lives."""
    import multiprocessing

    lock = locker.lock("forked")
    assert lock.acquire(timeout=0)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    child = ctx.Process(target=_wait_for, args=(go,))
    child.start()
    try:
        time.sleep(0.2)  # the child is up, with its copies of our descriptors closed
        lock.release()
        other = kannuki.Locker(locker.backend.describe(), key_prefix=locker.options.key_prefix)
        try:
            taker = other.lock("forked")
            assert taker.acquire(timeout=5), "the forked child kept the parent's flock"
            taker.release()
        finally:
            other.close()
    finally:
        go.set()
        child.join(30)
    assert child.exitcode == 0


def _wait_for(event: object) -> None:
    event.wait(30)  # type: ignore[attr-defined]


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
    """file: a waiting writer's mark in the key's mutex file stops new readers; it gets in within the bound."""
    key = f"doc-{uuid.uuid4().hex[:8]}"
    readers, writers = kannuki.Locker(url), kannuki.Locker(url)
    try:
        _writer_gets_in_among_readers(readers, writers, key)
    finally:
        readers.close()
        writers.close()


def test_item_23_a_dead_writers_mark_expires(url: str) -> None:
    """file: the mark of a writer killed while waiting keeps readers out only until it expires."""
    locker = kannuki.Locker(url)
    try:
        _dead_writers_mark_runs_out(locker, url, f"doc-{uuid.uuid4().hex[:8]}")
    finally:
        locker.close()


# -- kept descriptors: a hold reuses its key's open lock file, never trusting a stale one -----


def _two_lockers(url: str) -> tuple[kannuki.Locker, kannuki.Locker]:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return kannuki.Locker(url, key_prefix=prefix), kannuki.Locker(url, key_prefix=prefix)


def test_kept_descriptor_of_a_removed_file_is_not_trusted(url: str, tmp_path: Path) -> None:
    """The file is removed while this locker keeps it open between holds: its next hold is on the new file,
    so it excludes (and is excluded by) a locker that opened the new one."""
    first, second = _two_lockers(url)
    try:
        lock = first.lock("k")
        assert lock.acquire(timeout=0)
        lock.release()  # the descriptor stays open, unlocked
        os.unlink(tmp_path / "locks" / file_name(lock.lock_id))
        other = second.lock("k")
        assert other.acquire(timeout=0)  # creates and locks a new file
        assert not first.lock("k").acquire(timeout=0), "a hold on the removed file excluded nobody"
        other.release()
        again = first.lock("k")
        assert again.acquire(timeout=0)
        assert not second.lock("k").acquire(timeout=0)
        again.release()
    finally:
        first.close()
        second.close()


def test_kept_descriptor_of_a_replaced_file_is_not_trusted(url: str, tmp_path: Path) -> None:
    """The file is replaced (renamed over) between holds: the next hold locks the new file and counts on
    from the token the new file records."""
    first, second = _two_lockers(url)
    try:
        lock = first.lock("k")
        assert lock.acquire(timeout=0)
        token = lock.token
        assert token is not None
        lock.release()
        path = tmp_path / "locks" / file_name(lock.lock_id)
        scratch = path.with_suffix(".new")
        scratch.write_text(f'{{"token":{token + 1000},"name":"{lock.name}"}}\n')
        os.replace(scratch, path)
        holder = second.lock("k")
        assert holder.acquire(timeout=0) and holder.token == token + 1001
        assert not first.lock("k").acquire(timeout=0), "a hold on the replaced file excluded nobody"
        holder.release()
    finally:
        first.close()
        second.close()


def test_descriptors_kept_between_holds_are_bounded(locker: kannuki.Locker) -> None:
    """Holds of many keys keep at most IDLE_FILES lock files open; close() closes them all."""
    from kannuki.backends.file import IDLE_FILES

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    with locker.lock("warm-up"):
        pass
    before = open_descriptors()
    for n in range(3 * IDLE_FILES):
        with locker.lock(f"key-{n}"):
            pass
    assert open_descriptors() - before <= IDLE_FILES
    locker.close()
    assert open_descriptors() < before


def test_a_late_renewal_never_writes_into_the_next_holds_file(locker: kannuki.Locker, tmp_path: Path) -> None:
    """A renewal of a released grant says False and leaves the record of the hold that reuses its descriptor."""
    backend = locker.backend
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)
    released = lock.grant
    lock.release()
    assert lock.acquire(timeout=0)  # the same kept descriptor, a new hold
    assert released is not None and not backend.renew(released) and not backend.check(released)
    text = (tmp_path / "locks" / file_name(lock.lock_id)).read_text()
    assert text.startswith(f'{{"token":{lock.token},')
    lock.release()


def test_earlier_record_layout_is_read(locker: kannuki.Locker, tmp_path: Path) -> None:
    """A lock file in the earlier layout (name first, times in seconds): the token counts on from it, and a
    live holder's record in that layout reads as before."""
    lock = locker.lock("k")
    path = tmp_path / "locks" / file_name(lock.lock_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"name":"{lock.name}","token":77,"held":false}}\n')
    assert lock.acquire(timeout=0) and lock.token == 78
    (holder,) = locker.holders("k")
    assert holder.token == 78 and holder.since is not None and holder.expires_at is not None
    assert holder.expires_at > holder.since
    lock.release()
    backend = locker.backend
    record = {"name": lock.name, "token": 90, "pid": 1, "host": "h", "since": 5.0, "expires_at": 35.0}
    with open(path, "w") as handle:
        handle.write(__import__("json").dumps(record) + "\n")
    fd = os.open(path, os.O_RDWR)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        (old,) = backend.holders(lock.name, lock.lock_id)
        assert (old.token, old.since, old.expires_at) == (90, 5.0, 35.0)
    finally:
        os.close(fd)


def test_record_stays_one_json_line(locker: kannuki.Locker, tmp_path: Path) -> None:
    """After a longer record (shared holders), an exclusive holder's shorter one leaves no leftovers:
    the file is one JSON document."""
    import json

    readers = [locker.lock("k", shared=True) for _ in range(3)]
    for reader in readers:
        assert reader.acquire(timeout=0)
    for reader in readers:
        reader.release()
    writer = locker.lock("k")
    assert writer.acquire(timeout=0)
    path = tmp_path / "locks" / file_name(writer.lock_id)
    assert json.loads(path.read_bytes())["token"] == writer.token
    writer.release()


def test_forked_child_does_not_use_the_parents_kept_descriptor(locker: kannuki.Locker) -> None:
    """A child forked while the parent keeps the key's file open (unlocked) opens its own: the parent's hold
    excludes the child (a shared open file would let both hold it)."""
    import multiprocessing

    lock = locker.lock("kept")
    assert lock.acquire(timeout=0)
    lock.release()  # kept open, unlocked
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_try_after, args=(locker, go, done))
    child.start()
    try:
        assert lock.acquire(timeout=0)
        go.set()
        assert done.wait(30)
        lock.release()
    finally:
        go.set()
        child.join(30)
    assert child.exitcode == 0, "the child got the key while the parent held it"


def _try_after(locker: kannuki.Locker, go: Any, done: Any) -> None:
    go.wait(30)
    got = locker.lock("kept").acquire(timeout=0)
    done.set()
    os._exit(1 if got else 0)


def test_lockers_of_many_directories_leave_no_descriptors(tmp_path: Path) -> None:
    """Each directory in use has one watch, shared by its lockers and closed with the last of them."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        lockers = [kannuki.Locker(f"file://{tmp_path}/dir-{n}") for _ in range(2)]
        for locker in lockers:
            with locker.lock("k"):
                pass
        for locker in lockers:
            locker.close()
    assert len(os.listdir("/proc/self/fd")) <= before
