"""The MySQL/MariaDB backend against the real server on 127.0.0.1:3306."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kannuki
from kannuki.backends.mysql import MySQLBackend, cluster_refusal, mysql_lock_name
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError
from support import join_all, mysql_connect, mysql_scalar, subprocess_env, wait_until

MySQLdb = pytest.importorskip("MySQLdb")


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return _prefix()


@pytest.fixture
def make_locker(make_lockers: Any, mysql_url: str, prefix: str) -> Any:
    """Builds lockers on the test server with this test's prefix; closes them after the test."""
    return lambda **options: make_lockers(mysql_url, **{"key_prefix": prefix, **options})


@pytest.fixture
def raw(mysql_url: str) -> Iterator[Any]:
    """A raw autocommit MySQLdb connection to the test server."""
    conn = mysql_connect(mysql_url)
    yield conn
    conn.close()


_scalar = mysql_scalar


# -- names ---------------------------------------------------------------------


def test_short_lower_case_names_stay_readable() -> None:
    """A short lower-case name is sent as kannuki:<name>."""
    assert mysql_lock_name("jobs:nightly-report") == "kannuki:jobs:nightly-report"


def test_long_case_and_odd_names_are_hashed_within_64() -> None:
    """Names that are long, upper-case or unusual become head#digest, 64 characters at most."""
    for name in ("Jobs", "a" * 57, "x" * 500, "a b", "é", "'; DROP TABLE t; --", "k#1"):
        sent = mysql_lock_name(name)
        assert len(sent) <= 64 and "#" in sent and sent.isascii(), name
    assert mysql_lock_name("a" * 56) == "kannuki:" + "a" * 56


def test_names_that_differ_in_case_or_late_get_different_server_names() -> None:
    """Case-only and after-character-64 differences give different (case-insensitively) names."""
    names = ["Key", "KEY", "key", "a" * 64 + "x", "a" * 64 + "y", "a" * 500 + "1", "a" * 500 + "2"]
    sent = {mysql_lock_name(name).lower() for name in names}
    assert len(sent) == len(names)


# -- locking against the server ------------------------------------------------------


def test_two_lockers_contend(make_locker: Any) -> None:
    """A lock held by one locker is refused to another until released."""
    first, second = make_locker(), make_locker()
    held = first.lock("job")
    assert held.acquire(timeout=0)
    assert first.held("job") and second.held("job")
    assert second.try_lock("job", lambda: "ran") is False
    held.release()
    assert second.try_lock("job", lambda: "ran") == "ran"
    assert not first.held("job")


def test_timeout_is_honoured_and_bounded(make_locker: Any) -> None:
    """A wait for a held lock returns False after about the timeout, not before."""
    first, second = make_locker(), make_locker()
    with first.lock("slow"):
        start = time.monotonic()
        assert second.lock("slow").acquire(timeout=0.3) is False
        elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 5.0


def test_waiter_gets_the_lock_when_released(make_locker: Any) -> None:
    """A waiter on the server is handed the lock as soon as the holder releases it."""
    first, second = make_locker(), make_locker()
    holder = first.lock("handoff")
    holder.acquire()
    threading.Timer(0.2, holder.release).start()
    waiter = second.lock("handoff")
    assert waiter.acquire(timeout=10)
    waiter.release()


def test_waiters_in_one_process_queue_locally(make_locker: Any, raw: Any) -> None:
    """Threads of one locker waiting on one key use one server connection wait at most."""
    locker = make_locker()
    holder = locker.lock("queue")
    holder.acquire()
    results: list[bool] = []

    def wait() -> None:
        lock = locker.lock("queue")
        if lock.acquire(timeout=10):
            results.append(True)
            lock.release()

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    name = mysql_lock_name(holder.name)
    waiting = _scalar(
        raw, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s", f"%GET_LOCK('{name}'%"
    )
    assert waiting == 0  # the others wait on the in-process table, not on the server
    holder.release()
    for thread in threads:
        thread.join(timeout=20)
    assert results == [True, True, True]


def test_fractional_and_forever_timeouts(make_locker: Any) -> None:
    """A fractional timeout is kept to the millisecond; None waits until the lock is free.

    The holder is another thread's (a thread that waits forever for a key it holds itself
    gets DeadlockError, SPEC §3).
    """
    first, second = make_locker(), make_locker()
    holder = first.lock("frac")
    held, go = threading.Event(), threading.Event()

    def hold_then_release() -> None:
        holder.acquire()
        held.set()
        go.wait(30)
        time.sleep(0.3)
        holder.release()

    thread = threading.Thread(target=hold_then_release, daemon=True)
    thread.start()
    assert held.wait(30)
    start = time.monotonic()
    assert not second.lock("frac").acquire(timeout=0.15)
    assert time.monotonic() - start < 2.0
    go.set()
    forever = second.lock("frac", timeout=None)
    assert forever.acquire()
    forever.release()
    thread.join(30)


def test_several_locks_on_one_connection_and_lock_many(make_locker: Any) -> None:
    """lock_many takes all keys (on one connection) or none, and gives back what it took."""
    first, second = make_locker(), make_locker()
    many = first.lock_many(["a", "b", "c"])
    assert many.acquire(timeout=0)
    holders = {second.holders(k)[0].pid for k in "abc"}
    assert len(holders) == 1  # one server connection holds all three
    partial = second.lock_many(["c", "d"])
    assert partial.acquire(timeout=0.1) is False
    assert not second.held("d")  # d was given back
    many.release()
    assert partial.acquire(timeout=0)
    partial.release()
    assert not any(second.held(k) for k in "abcd")


def test_long_hostile_and_colliding_keys(make_locker: Any, raw: Any) -> None:
    """Long, hostile and near-identical keys lock independently and leave the database intact."""
    locker = make_locker()
    keys = [
        "k" * 500,
        "k" * 500 + "!",
        "a" * 64 + "one",
        "a" * 64 + "two",
        "Case",
        "case",
        "CASE",
        "'; DROP TABLE kannuki_x; --",
        "quote \" and ' and \\ backslash",
        "nul\x00byte",
        "emoji 🔒 ключ",
    ]
    locks = [locker.lock(key) for key in keys]
    for lock in locks:
        assert lock.acquire(timeout=0), lock.key
    for key in keys:
        assert locker.held(key)
    for lock in locks:
        lock.release()
    assert not any(locker.held(key) for key in keys)
    assert _scalar(raw, "SELECT 1") == 1


def test_shared_transaction_and_ttl_are_not_supported(make_locker: Any) -> None:
    """Shared locks, transaction-level locks and leases raise NotSupportedError saying what to do."""
    locker = make_locker()
    with pytest.raises(NotSupportedError, match="exclusive"):
        locker.lock("s", shared=True)
    with pytest.raises(NotSupportedError, match="session lock"):
        locker.lock("t", transaction=True).acquire()
    with pytest.raises(NotSupportedError, match="ttl"):
        locker.lock("l", ttl=5).acquire()
    assert not locker.held("t") and not locker.held("l")


def test_unreachable_server_raises_backend_error_quickly() -> None:
    """A closed port gives BackendError within the connect timeout, not a hang."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    locker = kannuki.Locker(f"mysql://root@127.0.0.1:{port}/test", connect_timeout=2)
    start = time.monotonic()
    with pytest.raises(BackendError, match="cannot connect"):
        locker.lock("x").acquire(timeout=0)
    assert time.monotonic() - start < 10
    with pytest.raises(BackendError):  # and again: nothing stayed queued in the local table
        locker.lock("x").acquire(timeout=0)
    locker.close()


def test_bad_options_and_urls() -> None:
    """Unknown or bad options and URL parameters are refused naming the option."""
    with pytest.raises(ConfigurationError, match="pool_sizes"):
        kannuki.Locker("mysql://root@127.0.0.1/test", pool_sizes=3)
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        kannuki.Locker("mysql://root@127.0.0.1/test", connect_timeout=-1)
    with pytest.raises(ConfigurationError, match="fencing_table"):
        kannuki.Locker("mysql://root@127.0.0.1/test", fencing_table="x; drop")
    with pytest.raises(ConfigurationError, match="sslmode"):
        kannuki.Locker("mysql://root@127.0.0.1/test?sslmode=1")


def test_killed_connection_turns_into_lock_lost(make_locker: Any, raw: Any) -> None:
    """KILL of the holder's connection: release raises LockLostError, a lost event fires, the lock is free."""
    locker = make_locker()
    events: list[str] = []
    unsubscribe = kannuki.subscribe(lambda event: events.append(event.name))
    try:
        lock = locker.lock("victim")
        assert lock.acquire(timeout=0)
        conn_id = locker.holders("victim")[0].pid
        raw.cursor().execute(f"KILL {int(conn_id)}")
        assert wait_until(lambda: not locker.held("victim"))
        with pytest.raises(LockLostError):
            lock.release()
        assert locker.stats().lost == 1 and "lost" in events
        assert lock.acquire(timeout=0)  # a fresh connection, the lock works again
        lock.release()
    finally:
        unsubscribe()


def test_ensure_held_asks_the_pinned_session(make_locker: Any, raw: Any) -> None:
    """ensure_held() passes while held and raises LockLostError (reported once) after a KILL of the session."""
    locker = make_locker()
    lock = locker.lock("checked")
    assert lock.acquire(timeout=0)
    lock.ensure_held()
    assert lock.grant is not None
    raw.cursor().execute(f"KILL {int(lock.grant.pid)}")
    assert wait_until(lambda: not locker.held("checked"))
    with pytest.raises(LockLostError):
        lock.ensure_held()
    assert lock.lost and locker.stats().lost == 1
    with pytest.raises(LockLostError):
        lock.release()
    assert locker.stats().lost == 1  # reported once


def test_force_release_refuses_then_kills_the_holder(make_locker: Any) -> None:
    """force_release names the holding connection and refuses; terminate=True KILLs it and frees the lock."""
    holder_locker, operator = make_locker(), make_locker()
    lock = holder_locker.lock("stranded")
    assert lock.acquire(timeout=0)
    assert lock.grant is not None
    conn_id = lock.grant.pid
    with pytest.raises(NotSupportedError, match=rf"connection {conn_id}\b.*terminate=True"):
        operator.force_release("stranded")
    assert operator.held("stranded")
    assert operator.force_release("stranded", terminate=True) == 1
    assert wait_until(lambda: not operator.held("stranded"))
    with pytest.raises(LockLostError):
        lock.release()
    assert operator.force_release("stranded", terminate=True) == 0  # nothing held: nothing freed
    assert operator.try_lock("stranded", lambda: "free") == "free"


def test_keyboard_interrupt_during_release_never_pools_a_locked_connection(
    mysql_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while RELEASE_LOCK is in flight: that connection is closed (freeing the lock), never reused."""
    from kannuki.backends import mysql as module

    backend = MySQLBackend.from_url(mysql_url)
    other = MySQLBackend.from_url(mysql_url)
    name = f"{prefix}:interrupted"
    real = module._scalar

    def interrupted(db: Any, sql: bytes) -> Any:
        if b"RELEASE_LOCK" in sql:
            raise KeyboardInterrupt  # as if Ctrl-C landed before the answer was read
        return real(db, sql)

    try:
        grant = backend.acquire(name, 1, timeout=0)
        assert grant is not None
        monkeypatch.setattr(module, "_scalar", interrupted)
        with pytest.raises(KeyboardInterrupt):
            backend.release(grant)
        monkeypatch.setattr(module, "_scalar", real)
        assert wait_until(lambda: not other.held(name, 1))  # its connection was closed: the lock is free
        fresh = backend.acquire(f"{name}-2", 2, timeout=0)
        assert fresh is not None and fresh.pid != grant.pid  # the interrupted connection never came back
        backend.release(fresh)
        backend.abort(grant)  # what the hold owner does next: nothing left to do, and no error
    finally:
        backend.close()
        other.close()


def test_release_is_compare_and_delete_on_the_session(mysql_url: str, prefix: str) -> None:
    """A grant whose session ID does not match the connection (a proxy) frees nothing and is LockLostError."""
    backend = MySQLBackend.from_url(mysql_url)
    name = f"{prefix}:proxied"
    try:
        grant = backend.acquire(name, 1, timeout=0)
        assert grant is not None and backend.check(grant)
        real_pid, grant.pid = grant.pid, grant.pid + 1_000_000  # as if a proxy switched server sessions
        assert not backend.check(grant)
        with pytest.raises(LockLostError, match="proxy"):
            backend.release(grant)
        grant.pid = real_pid
        assert not backend.check(grant)  # released or written off: never held again
        assert wait_until(lambda: not backend.held(name, 1))  # the connection was closed, not pooled
    finally:
        backend.close()


def test_abort_closes_the_pinned_connection(mysql_url: str, prefix: str) -> None:
    """abort() frees the lock by closing its connection, never raises, and is idempotent."""
    backend = MySQLBackend.from_url(mysql_url)
    name = f"{prefix}:aborted"
    try:
        grant = backend.acquire(name, 1, timeout=0)
        assert grant is not None
        backend.abort(grant)
        backend.abort(grant)
        assert wait_until(lambda: not backend.held(name, 1))
        with pytest.raises(LockLostError):
            backend.release(grant)
        again = backend.acquire(name, 1, timeout=0)
        assert again is not None and again.pid != grant.pid
        backend.release(again)
    finally:
        backend.close()


def _hold_forever(url: str, key: str, prefix: str, ready: Any) -> None:
    locker = kannuki.Locker(url, key_prefix=prefix)
    lock = locker.lock(key)  # kept referenced: a collected Lock releases its lock
    lock.acquire()
    ready.set()
    time.sleep(120)


def test_sigkilled_holder_frees_the_lock(mysql_url: str, make_locker: Any, prefix: str) -> None:
    """A holder process killed with SIGKILL leaves the lock free for others."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    process = ctx.Process(target=_hold_forever, args=(mysql_url, "orphan", prefix, ready))
    process.start()
    try:
        assert ready.wait(30)
        locker = make_locker()
        assert locker.held("orphan")
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        assert locker.lock("orphan").acquire(timeout=10)
    finally:
        if process.is_alive():
            process.kill()
        process.join(10)


def _increment(url: str, prefix: str, table: str, rounds: int) -> None:
    locker = kannuki.Locker(url, key_prefix=prefix)
    conn = mysql_connect(url)
    cur = conn.cursor()
    for _ in range(rounds):
        with locker.lock("counter", timeout=60):
            cur.execute(f"SELECT n FROM {table} WHERE id = 1")
            (value,) = cur.fetchone()
            time.sleep(0.001)  # widen the race window a lost update would need
            cur.execute(f"UPDATE {table} SET n = %s WHERE id = 1", (value + 1,))
    conn.close()
    locker.close()


def test_four_processes_read_modify_write_lose_no_update(mysql_url: str, raw: Any, prefix: str) -> None:
    """4 processes x 50 read-modify-writes under the lock: the counter ends at exactly 200."""
    table = f"t_{uuid.uuid4().hex[:10]}"
    raw.cursor().execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB")
    try:
        raw.cursor().execute(f"INSERT INTO {table} VALUES (1, 0)")
        ctx = multiprocessing.get_context("spawn")
        processes = [ctx.Process(target=_increment, args=(mysql_url, prefix, table, 50)) for _ in range(4)]
        for process in processes:
            process.start()
        assert join_all(processes, 90) == [0, 0, 0, 0]
        assert _scalar(raw, f"SELECT n FROM {table} WHERE id = 1") == 200
    finally:
        raw.cursor().execute(f"DROP TABLE IF EXISTS {table}")


def test_fencing_tokens_increase(make_locker: Any, raw: Any) -> None:
    """With fencing=True each acquisition gets a larger token from the server counter."""
    table = f"t_fence_{uuid.uuid4().hex[:8]}"
    first = make_locker(fencing=True, fencing_table=table)
    second = make_locker(fencing=True, fencing_table=table)
    try:
        tokens = []
        for locker in (first, second, first, second):
            with locker.lock("fenced") as lock:
                tokens.append(lock.token)
        assert tokens == sorted(tokens) and len(set(tokens)) == 4
        many = first.lock_many(["fenced", "other"])
        assert many.acquire(timeout=0) and all(many.tokens)
        many.release()
    finally:
        raw.cursor().execute(f"DROP TABLE IF EXISTS {table}")


def test_holders_name_the_connection(make_locker: Any, raw: Any) -> None:
    """holders() reports the server connection id, user and host of the holder."""
    first, second = make_locker(), make_locker()
    lock = first.lock("who")
    lock.acquire()
    (holder,) = second.holders("who")
    assert lock.grant is not None and holder.pid == lock.grant.pid
    assert holder.pid == _scalar(raw, "SELECT IS_USED_LOCK(%s)", mysql_lock_name(lock.name))
    assert holder.user and holder.host and holder.token is None  # the server knows no tokens
    assert first.holders("who") == [holder]
    listed = first.list_held()
    if _can_list_locks(raw):
        assert any(h.name == lock.name and h.pid == holder.pid for h in listed)
    else:  # MariaDB without the METADATA_LOCK_INFO plugin cannot list user locks
        assert listed == []
    lock.release()
    assert second.holders("who") == []


def _can_list_locks(raw: Any) -> bool:
    """Can the server list user locks: MariaDB's METADATA_LOCK_INFO, or a performance_schema that records them?"""
    try:
        _scalar(raw, "SELECT COUNT(*) FROM information_schema.METADATA_LOCK_INFO")
        return True
    except MySQLdb.Error:
        pass
    try:
        return bool(_scalar(raw, "SELECT @@performance_schema")) and _scalar(
            raw,
            "SELECT ENABLED FROM performance_schema.setup_instruments WHERE NAME = 'wait/lock/metadata/sql/mdl'",
        ) in ("YES", b"YES")
    except (MySQLdb.Error, TypeError):
        return False


def test_wrapped_connection(raw: Any, prefix: str, make_locker: Any) -> None:
    """Locker(conn) locks on the caller's MySQLdb connection and leaves it open."""
    locker = kannuki.Locker(raw, key_prefix=prefix)
    other = make_locker()
    assert isinstance(locker.backend, MySQLBackend)
    with locker.lock("mine"):
        with locker.lock("also"):
            assert other.held("mine") and other.held("also")
        assert not other.lock("mine").acquire(timeout=0.1)
    assert not other.held("mine")
    locker.close()
    assert _scalar(raw, "SELECT 1") == 1
    with pytest.raises(ConfigurationError, match="fencing"):
        kannuki.Locker(raw, fencing=True)


def test_cluster_detection() -> None:
    """A Galera node (wsrep_on=ON) is refused unless allow_cluster; other servers pass."""
    assert cluster_refusal(None, False) is None
    assert cluster_refusal("OFF", False) is None
    assert "Galera" in (cluster_refusal("ON", False) or "")
    assert cluster_refusal("ON", True) is None


def test_this_server_passes_the_cluster_check(make_locker: Any) -> None:
    """The test server is not Galera: the connect-time check lets locking proceed."""
    locker = make_locker()
    assert locker.try_lock("plain", lambda: True) is True


_CTRL_C_CHILD = textwrap.dedent(
    """
    import sys, time, kannuki
    url, prefix = sys.argv[1], sys.argv[2]
    locker = kannuki.Locker(url, key_prefix=prefix)
    print("waiting", flush=True)
    try:
        locker.lock("ctrl-c").acquire(timeout=60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


def test_ctrl_c_during_a_wait_ends_it_on_the_server(
    mysql_url: str, make_locker: Any, raw: Any, prefix: str
) -> None:
    """SIGINT while waiting in GET_LOCK raises KeyboardInterrupt and leaves no wait or lock on the server."""
    holder = make_locker()
    lock = holder.lock("ctrl-c")
    lock.acquire()
    env = subprocess_env()
    child = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_CHILD, mysql_url, prefix], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "waiting"
        name = mysql_lock_name(lock.name)
        pattern = f"%GET_LOCK('{name}'%"
        count = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s"
        assert wait_until(lambda: _scalar(raw, count, pattern) == 1)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=20)
        assert "interrupted" in out
        assert wait_until(lambda: _scalar(raw, count, pattern) == 0)
        lock.release()
        assert not holder.held("ctrl-c")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_fork_child_does_not_end_the_parents_session(make_locker: Any) -> None:
    """A forked child drops the parent's connections without closing the parent's server sessions."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    locker = make_locker()
    lock = locker.lock("forked")
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # child: forget, free every object, exit without touching the parent
        import gc

        code = 0 if not lock.locked() and lock.grant is None else 1
        gc.collect()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert locker.held("forked")
    lock.release()  # the parent's connection still works
    assert not locker.held("forked")


def test_every_server_name_is_short_and_needs_no_escaping() -> None:
    """Whatever the key, the server name is <= 64 chars of an alphabet without quotes, backslash or NUL."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from kannuki.backends.mysql import _name_literal

    @settings(max_examples=300, deadline=None)
    @given(st.text(min_size=1, max_size=300).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
    def check(name: str) -> None:
        sent = mysql_lock_name(name)
        assert len(sent) <= 64 and not set(sent) & set("'\"\\\x00 ")
        assert _name_literal(name) == b"'" + sent.encode() + b"'"

    check()


# -- item 4: fencing tokens strictly increasing across processes by default ------------

TOKEN_PRINTER = """
import sys, kannuki
locker = kannuki.Locker(sys.argv[1], key_prefix=sys.argv[2])
with locker.lock("fenced", timeout=30) as lock:
    print(lock.token, locker.backend.tokens_fenced, flush=True)
locker.close()
"""


def test_item_4_tokens_strictly_increase_across_processes_by_default(mysql_url: str, prefix: str) -> None:
    """Three processes, one after another, default options: three strictly increasing tokens (not 1, 1, 1)."""
    tokens = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", TOKEN_PRINTER, mysql_url, prefix],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        token, fenced = done.stdout.split()
        assert fenced == "True"
        tokens.append(int(token))
    assert tokens == sorted(set(tokens)) and len(tokens) == 3


def _questions(db: Any) -> int:
    """Statements the server counted on this session (this one included)."""
    return int(
        _scalar(
            db,
            "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'QUESTIONS'",
        )
    )


def test_item_4_the_token_comes_with_get_lock_in_one_statement(make_locker: Any) -> None:
    """MariaDB: the token is drawn by the GET_LOCK statement itself: a try + release is two statements."""
    locker = make_locker()
    with locker.lock("one", timeout=0):
        pass  # the first connection sets the sequence up, once
    lock = locker.lock("one")
    assert lock.acquire(timeout=0)
    assert lock.grant is not None
    db = lock.grant.conn.db
    counts = []
    for _ in range(5):  # the fewest of five: the watcher may slip a statement of its own in
        before = _questions(db)
        first = lock.token
        lock.release()
        assert lock.acquire(timeout=0) and lock.grant.conn.db is db  # the pooled connection again
        counts.append(_questions(db) - before)
        assert lock.token > first
    assert min(counts) == 3  # RELEASE_LOCK, GET_LOCK (with NEXTVAL), the question itself
    assert locker.backend.tokens_fenced
    lock.release()


def test_item_4_wrapped_and_url_lockers_share_the_sequence(raw: Any, make_locker: Any, prefix: str) -> None:
    """A wrapped connection and a URL locker (two in-process tables): tokens still strictly increase."""
    wrapped = kannuki.Locker(raw, key_prefix=prefix)
    pooled = make_locker()
    try:
        tokens = []
        for locker in (wrapped, pooled, wrapped, pooled):
            with locker.lock("shared-seq", timeout=5) as lock:
                tokens.append(lock.token)
        assert tokens == sorted(set(tokens)) and len(tokens) == 4
        many = wrapped.lock_many(["shared-seq", "other"])
        assert many.acquire(timeout=0) and many.tokens is not None and min(many.tokens) > tokens[-1]
        many.release()
    finally:
        wrapped.close()


def test_item_4_no_usable_sequence_warns_once_and_says_so(mysql_url: str, prefix: str) -> None:
    """No database to keep the sequence in: one RuntimeWarning naming it, tokens_fenced False, locks still work."""
    import warnings

    url = mysql_url.rsplit("/", 1)[0]  # no database selected
    locker = kannuki.Locker(url, key_prefix=prefix)
    try:
        with pytest.warns(RuntimeWarning, match="kannuki_fencing_seq"):
            with locker.lock("unfenced", timeout=0) as lock:
                assert lock.locked() and lock.token is None  # no fencing token rather than a local one
        assert not locker.backend.tokens_fenced
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with locker.lock("unfenced", timeout=0) as lock:
                assert lock.locked() and lock.token is None
    finally:
        locker.close()


def test_item_4_fencing_false_and_the_counter_table(make_locker: Any, raw: Any) -> None:
    """fencing=False: in-process tokens, nothing on the server; the counter table (MySQL's fencing=True) still counts up."""
    assert not make_locker(fencing=False).backend.tokens_fenced
    table = f"t_fence_{uuid.uuid4().hex[:8]}"
    lockers = [make_locker(fencing=True, fencing_table=table) for _ in range(2)]
    for locker in lockers:
        locker.backend._token_mode = "table"  # what a MySQL server (no sequences) gets with fencing=True
    try:
        tokens = []
        for locker in (*lockers, *lockers):
            with locker.lock("counted", timeout=5) as lock:
                tokens.append(lock.token)
        assert tokens == [1, 2, 3, 4]
    finally:
        raw.cursor().execute(f"DROP TABLE IF EXISTS {table}")


# -- item 14: a wrapped connection shared by threads ------------------------------------


def test_item_14_a_wait_on_a_wrapped_connection_does_not_stall_its_other_threads(
    raw: Any, make_locker: Any, prefix: str
) -> None:
    """One thread waits 30 s on the wrapped connection; another's 20 try+release rounds get through meanwhile."""
    wrapped = kannuki.Locker(raw, key_prefix=prefix)
    holder = make_locker().lock("busy")
    assert holder.acquire(timeout=0)
    waiting = threading.Event()
    unsubscribe = kannuki.subscribe(lambda event: waiting.set(), events={"waiting"})
    results: list[bool] = []
    busy = wrapped.lock("busy")
    waiter = threading.Thread(target=lambda: results.append(busy.acquire(timeout=30)))
    rounds: list[int] = []

    def others() -> None:
        for i in range(20):
            lock = wrapped.lock(f"free-{i}")
            assert lock.acquire(timeout=0)
            lock.release()
            rounds.append(i)

    worker = threading.Thread(target=others)
    waiter.start()
    try:
        assert waiting.wait(10)
        worker.start()
        worker.join(10)  # liveness bound: a third of the waiter's wait
        assert not worker.is_alive() and len(rounds) == 20, f"{len(rounds)} of 20 rounds got through"
        assert not results  # the waiter is still waiting
        holder.release()
        waiter.join(10)
        assert results == [True]
        busy.release()
    finally:
        unsubscribe()
        if holder.locked():
            holder.release()
        waiter.join(30)
        if worker.ident is not None:
            worker.join(60)
        wrapped.close()
