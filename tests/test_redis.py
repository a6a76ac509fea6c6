"""The Redis lease backend against the real server on 127.0.0.1:6379 (each test in its own namespace)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kannuki
from kannuki.backends.redis import RedisBackend
from support import join_all, redis_namespace

redis = pytest.importorskip("redis")

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A fresh key namespace; every key under it is deleted afterwards."""
    with redis_namespace(redis_url) as name:
        yield name


@pytest.fixture
def make_locker(make_lockers: Any, redis_url: str, namespace: str) -> Any:
    """Factory of lockers on the test namespace, all closed afterwards."""
    return lambda **options: make_lockers(redis_url, **{"namespace": namespace, **options})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- workers for other processes (module level, so spawn can import them) -----------


def increment_worker(url: str, namespace: str, counter_key: str, rounds: int, go: object) -> None:
    """Read-modify-write a plain Redis key ``rounds`` times under the kannuki lock."""
    locker = kannuki.Locker(url, namespace=namespace, ttl=10)
    client = redis.Redis.from_url(url)
    go.wait(30)  # type: ignore[attr-defined]
    for _ in range(rounds):
        with locker.lock("counter", timeout=60):
            value = int(client.get(counter_key) or 0)
            time.sleep(0.0005)  # widen the window a lost update would need
            client.set(counter_key, value + 1)
    locker.close()


def hold_forever_worker(url: str, namespace: str, ready: object) -> None:
    """Take the lock with a short lease, say so, then hang until killed."""
    locker = kannuki.Locker(url, namespace=namespace, ttl=0.5)
    lock = locker.lock("victim")
    lock.acquire()
    ready.put(lock.token)  # type: ignore[attr-defined]
    time.sleep(60)


# -- basics ---------------------------------------------------------------------------


def test_two_lockers_exclude_each_other(make_locker: object) -> None:
    """A key held by one locker cannot be taken by another until it is released."""
    first, second = make_locker(), make_locker()  # type: ignore[operator]
    holder = first.lock("job")
    assert holder.acquire(timeout=0)
    assert not second.lock("job").acquire(blocking=False)
    assert second.held("job")
    holder.release()
    other = second.lock("job")
    assert other.acquire(blocking=False)
    assert not first.lock("job").acquire(blocking=False)
    other.release()
    assert not first.held("job")


def test_waiter_wakes_on_release_through_pubsub(make_locker: object, redis_url: str, namespace: str) -> None:
    """A waiter subscribes to the release channel and gets the lock when the holder releases."""
    first, second = make_locker(ttl=30), make_locker(ttl=30)  # type: ignore[operator]
    holder = first.lock("job")
    holder.acquire()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(second.lock("job").acquire(timeout=20)))
    waiter.start()
    client = redis.Redis.from_url(redis_url)
    channel = f"{namespace}:released:job"
    for _ in range(200):  # up to ~10 s for the waiter to subscribe
        if client.pubsub_numsub(channel)[0][1] == 1:
            break
        time.sleep(0.05)
    assert client.pubsub_numsub(channel)[0][1] == 1
    holder.release()
    waiter.join(20)
    client.close()
    assert result == [True]


def test_threads_of_one_process_queue_locally(make_locker: object) -> None:
    """Threads of one locker wait on the local table and each gets the lock in turn."""
    locker = make_locker()  # type: ignore[operator]
    inside, overlaps, done = [0], [0], []

    def work() -> None:
        for _ in range(5):
            with locker.lock("shared-resource", timeout=30):
                inside[0] += 1
                overlaps[0] = max(overlaps[0], inside[0])
                time.sleep(0.002)
                inside[0] -= 1
        done.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(done) == 4
    assert overlaps[0] == 1


def test_contended_read_modify_write_loses_no_update(redis_url: str, namespace: str) -> None:
    """Four processes incrementing a plain key under the lock, 50 times each, end at exactly 200."""
    counter_key = f"{namespace}:data:counter"
    go = SPAWN.Event()
    workers = [
        SPAWN.Process(target=increment_worker, args=(redis_url, namespace, counter_key, 50, go))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    go.set()
    assert join_all(workers, 90) == [0, 0, 0, 0]
    client = redis.Redis.from_url(redis_url)
    assert int(client.get(counter_key)) == 200
    client.close()


# -- leases and fencing -----------------------------------------------------------------


def test_expired_lease_lets_another_holder_in(make_locker: object) -> None:
    """An unrenewed lease expires; another locker takes the key; the first release raises LockLostError."""
    first = make_locker(ttl=0.3, auto_renew=False)  # type: ignore[operator]
    second = make_locker(ttl=5)  # type: ignore[operator]
    stale = first.lock("lease")
    stale.acquire()
    newer = second.lock("lease")
    assert newer.acquire(timeout=10)  # wakes when the 0.3 s lease runs out
    assert newer.token > stale.token
    with pytest.raises(kannuki.LockLostError):
        stale.release()
    assert second.held("lease")
    assert [h.token for h in second.holders("lease")] == [newer.token]
    newer.release()


def test_auto_renewal_keeps_a_short_lease_alive(make_locker: object) -> None:
    """The locker's renewal thread extends a 0.3 s lease while it is held for much longer."""
    holder, other = make_locker(ttl=0.3), make_locker()  # type: ignore[operator]
    lock = holder.lock("renewed")
    lock.acquire()
    for _ in range(5):  # 1 s, over three lease lengths
        time.sleep(0.2)
        assert not other.lock("renewed").acquire(blocking=False)
    lock.release()
    assert holder.stats().renewed >= 2


def test_renewal_reports_a_lease_taken_away(make_locker: object, redis_url: str, namespace: str) -> None:
    """When the lease key vanishes behind its back the lock is lost, and release raises LockLostError."""
    locker = make_locker(ttl=0.3)  # type: ignore[operator]
    lock = locker.lock("stolen")
    lock.acquire()
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{namespace}:lock:stolen")
    client.close()
    for _ in range(100):  # up to ~5 s for the next renewal to notice
        if not lock.locked():
            break
        time.sleep(0.05)
    assert not lock.locked()
    assert locker.stats().lost == 1
    with pytest.raises(kannuki.LockLostError):
        lock.release()


def test_stale_grant_cannot_release_extend_or_check_newer_holder(redis_url: str, namespace: str) -> None:
    """Compare-and-delete, -extend and -check: an old grant touches nothing of the new holder."""
    backend = RedisBackend.from_url(redis_url, namespace=namespace, ttl=0.2)
    other = RedisBackend.from_url(redis_url, namespace=namespace, ttl=30)
    name, lock_id = "fenced", kannuki.lock_id("fenced")
    try:
        old = backend.acquire(name, lock_id, timeout=0)
        assert old is not None and old.ttl == 0.2 and old.token > 0
        new = other.acquire(name, lock_id, timeout=10)
        assert new is not None and new.token > old.token
        assert backend.renew(old, 30) is False
        assert backend.check(old) is False
        with pytest.raises(kannuki.LockLostError, match="'fenced'"):
            backend.release(old)
        backend.abort(old)  # never raises, never frees the newer holder
        assert [h.token for h in other.holders(name, lock_id)] == [new.token]
        assert other.check(new) is True
        assert other.renew(new, 30) is True
        other.release(new)
        assert not other.held(name, lock_id)
        assert other.check(new) is False
    finally:
        backend.close()
        other.close()


def test_renew_extends_the_lease(redis_url: str, namespace: str) -> None:
    """renew() pushes the expiry out by the given ttl from now; without one, by the grant's own."""
    backend = RedisBackend.from_url(redis_url, namespace=namespace, ttl=0.5)
    name, lock_id = "renewed", kannuki.lock_id("renewed")
    try:
        grant = backend.acquire(name, lock_id, timeout=0)
        assert grant is not None and grant.ttl == 0.5
        before = backend.holders(name, lock_id)[0].expires_at
        assert backend.renew(grant, 60)
        after = backend.holders(name, lock_id)[0].expires_at
        assert after - before > 50
        assert backend.renew(grant)
        assert backend.holders(name, lock_id)[0].expires_at - time.time() < 5
        backend.release(grant)
    finally:
        backend.close()


def test_interrupted_acquire_is_undone(redis_url: str, namespace: str) -> None:
    """A KeyboardInterrupt after the acquire script ran (its reply lost) leaves nothing held."""
    backend = RedisBackend.from_url(redis_url, namespace=namespace, ttl=30)
    name, lock_id = "interrupted", kannuki.lock_id("interrupted")
    real_evalsha = backend.client.evalsha
    calls: list[int] = []

    def evalsha_then_interrupt(*args: Any) -> Any:
        reply = real_evalsha(*args)
        if not calls:  # only the acquire script; the undo that follows must go through
            calls.append(1)
            raise KeyboardInterrupt
        return reply

    backend.client.evalsha = evalsha_then_interrupt  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            backend.acquire(name, lock_id, timeout=0)
        assert calls == [1]
        assert not backend.held(name, lock_id)
    finally:
        backend.close()


def test_force_release_frees_any_holder(make_locker: object, redis_url: str, namespace: str) -> None:
    """force_release() deletes the record whoever holds it and says how many holders it freed."""
    first, second = make_locker(ttl=30), make_locker(ttl=30)  # type: ignore[operator]
    reader1, reader2 = first.lock("stuck", shared=True), second.lock("stuck", shared=True)
    assert reader1.acquire(timeout=0) and reader2.acquire(timeout=0)
    assert second.force_release("stuck") == 2
    assert not first.held("stuck")
    writer = second.lock("stuck")
    assert writer.acquire(timeout=0)
    assert first.force_release("stuck") == 1
    assert first.force_release("stuck") == 0
    with pytest.raises(kannuki.LockLostError):
        writer.release()
    for reader in (reader1, reader2):
        with pytest.raises(kannuki.LockLostError):
            reader.release()


def test_ensure_held_asks_the_store(make_locker: object, redis_url: str, namespace: str) -> None:
    """ensure_held() passes while the lease is ours and raises LockLostError once it was deleted."""
    locker = make_locker(ttl=30)  # type: ignore[operator]
    lock = locker.lock("asked")
    lock.acquire()
    lock.ensure_held()
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{namespace}:lock:asked")
    client.close()
    with pytest.raises(kannuki.LockLostError):
        lock.ensure_held()
    assert lock.lost
    with pytest.raises(kannuki.LockLostError):
        lock.release()


def test_tokens_survive_the_store_losing_its_data(
    make_locker: object, redis_url: str, namespace: str
) -> None:
    """After the token counters are gone (FLUSHALL, a restart without persistence) tokens still only grow."""
    locker = make_locker()  # type: ignore[operator]
    tokens = []
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(3):
            with locker.lock("amnesia", timeout=5) as lock:
                tokens.append(lock.token)
            client.delete(f"{namespace}:token:amnesia")
    finally:
        client.close()
    assert tokens == sorted(set(tokens))


def test_tokens_strictly_increase_per_key(make_locker: object) -> None:
    """Fencing tokens grow with every acquisition of a key, across lockers and modes."""
    lockers = [make_locker(), make_locker()]  # type: ignore[operator]
    tokens = []
    for i in range(10):
        lock = lockers[i % 2].lock("fence", shared=i % 3 == 0)
        lock.acquire(timeout=5)
        tokens.append(lock.token)
        lock.release()
    assert tokens == sorted(set(tokens))
    assert all(isinstance(token, int) and token > 0 for token in tokens)


def test_sigkilled_holder_loses_lock_when_lease_expires(
    make_locker: object, redis_url: str, namespace: str
) -> None:
    """A holder killed with SIGKILL keeps the key only until its lease runs out."""
    ready = SPAWN.Queue()
    child = SPAWN.Process(target=hold_forever_worker, args=(redis_url, namespace, ready))
    child.start()
    try:
        child_token = ready.get(timeout=30)
        locker = make_locker()  # type: ignore[operator]
        assert locker.held("victim")
        assert locker.holders("victim")[0].pid == child.pid
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        lock = locker.lock("victim")
        assert lock.acquire(timeout=10)
        assert lock.token > child_token
        lock.release()
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


# -- shared locks -----------------------------------------------------------------------


def test_shared_holders_coexist_and_exclude_writers(make_locker: object) -> None:
    """Readers share a key; a writer waits for them all; readers wait for a writer."""
    first, second = make_locker(), make_locker()  # type: ignore[operator]
    reader1, reader2 = first.lock("doc", shared=True), second.lock("doc", shared=True)
    assert reader1.acquire(timeout=0) and reader2.acquire(timeout=0)
    assert sorted(h.token for h in first.holders("doc")) == sorted([reader1.token, reader2.token])
    assert all(h.shared for h in first.holders("doc"))
    writer = first.lock("doc")
    assert not writer.acquire(blocking=False)
    reader1.release()
    assert not second.lock("doc").acquire(blocking=False)
    released = threading.Timer(0.2, reader2.release)
    released.start()
    assert writer.acquire(timeout=10)
    released.join(10)
    assert not second.lock("doc", shared=True).acquire(blocking=False)
    writer.release()


def test_expired_reader_does_not_block_a_writer(make_locker: object) -> None:
    """A shared lease that ran out is purged: it neither blocks a writer nor releases cleanly."""
    readers = make_locker(ttl=0.3, auto_renew=False)  # type: ignore[operator]
    writers = make_locker()  # type: ignore[operator]
    reader = readers.lock("doc", shared=True)
    reader.acquire()
    writer = writers.lock("doc")
    assert writer.acquire(timeout=10)
    with pytest.raises(kannuki.LockLostError):
        reader.release()
    writer.release()


# -- inspection ---------------------------------------------------------------------------


def test_holders_describe_the_holder(make_locker: object) -> None:
    """holders() names pid, host, token, since and lease expiry; list_held() finds the key."""
    locker = make_locker(ttl=20)  # type: ignore[operator]
    with locker.lock("report", timeout=5) as lock:
        (holder,) = locker.holders("report")
        assert holder.pid == os.getpid()
        assert holder.host == socket.gethostname()
        assert holder.token == lock.token
        assert holder.lock_id == locker.lock_id("report")
        assert not holder.shared
        assert 19 < holder.expires_at - holder.since <= 20.5
        assert abs(holder.since - time.time()) < 60  # server and client clocks roughly agree
        listed = locker.backend.list_held()
        assert [(h.name, h.token) for h in listed] == [("report", lock.token)]
    assert locker.holders("report") == []
    assert locker.backend.list_held() == []


def test_foreign_value_still_counts_as_a_holder(make_locker: object, redis_url: str, namespace: str) -> None:
    """A lock key someone else wrote (no expiry, foreign format) blocks the lock and shows as a holder."""
    locker = make_locker()  # type: ignore[operator]
    client = redis.Redis.from_url(redis_url)
    client.set(f"{namespace}:lock:squatted", "hello")
    client.close()
    assert not locker.lock("squatted").acquire(timeout=0.1)
    (holder,) = locker.holders("squatted")
    assert (holder.token, holder.pid, holder.expires_at) == (None, None, None)


@pytest.mark.parametrize(
    "key",
    ["a*b?[c]", "a:lock:b", "x|1|2|3", "\x00nul", "emoji-🔒", "line\nbreak", "k" * 2048, "{tag}"],
)
def test_hostile_keys_are_taken_literally(make_locker: object, key: str) -> None:
    """Glob characters, separators, NUL, non-ASCII and long keys lock exactly their own key."""
    locker = make_locker(key_prefix="p*")  # type: ignore[operator]
    with locker.lock(key, timeout=5) as lock:
        assert locker.held(key)
        assert not locker.held(key + "x")
        assert locker.holders(key)[0].token == lock.token
        assert [h.name for h in locker.backend.list_held()] == [f"p*:{key}"]
    assert not locker.held(key)


def test_glob_in_namespace_does_not_list_other_namespaces(make_locker: object, namespace: str) -> None:
    """list_held() matches the namespace literally, never as a pattern."""
    wild = make_locker(namespace=namespace + "*")  # type: ignore[operator]
    tame = make_locker(namespace=namespace + "-other")  # type: ignore[operator]
    with tame.lock("elsewhere", timeout=5):
        assert wild.backend.list_held() == []


# -- failures and configuration -------------------------------------------------------------


def test_unreachable_server_is_backend_error_then_circuit_open() -> None:
    """Nothing listening: BackendError (with the redis error as cause), then CircuitOpenError."""
    locker = kannuki.Locker(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1, circuit_failures=2)
    try:
        for _ in range(2):
            with pytest.raises(kannuki.BackendError) as info:
                locker.lock("down").acquire(timeout=0)
            assert not isinstance(info.value, kannuki.CircuitOpenError)
            assert isinstance(info.value.__cause__, redis.RedisError)
        with pytest.raises(kannuki.CircuitOpenError):
            locker.lock("down").acquire(timeout=0)
        assert locker.circuit_state().state == "open"
    finally:
        locker.close()


def test_server_error_is_backend_error_and_leaves_nothing_queued(
    make_locker: object, redis_url: str, namespace: str
) -> None:
    """A ResponseError (the lock key holds a list) is a BackendError; the local queue is left empty."""
    locker = make_locker()  # type: ignore[operator]
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{namespace}:readers:clash", "not-a-hash")
    with pytest.raises(kannuki.BackendError) as info:
        locker.lock("clash").acquire(timeout=0)
    assert isinstance(info.value.__cause__, redis.ResponseError)
    client.delete(f"{namespace}:readers:clash")
    client.close()
    lock = locker.lock("clash")
    assert lock.acquire(timeout=0)  # nothing stranded in the in-process table
    lock.release()


def test_wraps_a_client_the_caller_made(redis_url: str, namespace: str) -> None:
    """Locker(redis.Redis(...)) drives that client, decode_responses or not."""
    for decode in (False, True):
        client = redis.Redis.from_url(redis_url, decode_responses=decode)
        locker = kannuki.Locker(client, namespace=namespace, ttl=5)
        assert isinstance(locker.backend, RedisBackend)
        with locker.lock("wrapped", timeout=5):
            assert locker.holders("wrapped")[0].pid == os.getpid()
            assert len(locker.backend.list_held()) == 1
        locker.close()


class Proxy:
    """A client that is not redis-py's but has its interface (like valkey-py's): duck-typed."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.connection_pool = client.connection_pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_wraps_a_duck_typed_client(redis_url: str, namespace: str) -> None:
    """Any client with redis-py's interface is driven: acquire, contention, check, release."""
    client = redis.Redis.from_url(redis_url)
    proxy = Proxy(client)
    assert RedisBackend.wraps(proxy)
    first = RedisBackend.from_connection(proxy, namespace=namespace, ttl=5)
    second = RedisBackend.from_url(redis_url, namespace=namespace)
    name, lock_id = "duck", kannuki.lock_id("duck")
    try:
        grant = first.acquire(name, lock_id, timeout=0)
        assert grant is not None and first.check(grant)
        assert second.acquire(name, lock_id, timeout=0) is None
        assert [h.token for h in first.holders(name, lock_id)] == [grant.token]
        first.release(grant)
        assert not second.held(name, lock_id)
    finally:
        first.close()
        second.close()
        client.close()
    locker = kannuki.Locker(Proxy(redis.Redis.from_url(redis_url)), namespace=namespace)
    try:
        assert isinstance(locker.backend, RedisBackend)
        with locker.lock("duck", timeout=5):
            assert locker.held("duck")
    finally:
        locker.close()


def test_valkey_urls_are_redis_urls(redis_url: str, namespace: str) -> None:
    """valkey:// and valkeys:// reach the server as redis:// and rediss:// do, with the password hidden."""
    valkey = kannuki.Locker(redis_url.replace("redis://", "valkey://", 1), namespace=namespace)
    plain = kannuki.Locker(redis_url, namespace=namespace)
    try:
        assert isinstance(valkey.backend, RedisBackend)
        with valkey.lock("v", timeout=5):
            assert plain.held("v")
    finally:
        valkey.close()
        plain.close()
    tls = RedisBackend.from_url("valkeys://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in tls.describe() and tls.describe().startswith("valkeys://")
    assert "SSL" in tls.client.connection_pool.connection_class.__name__
    tls.close()


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"pool_size": 3}, "pool_size"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({"connect_timeout": "5"}, "connect_timeout"),
        ({"namespace": ""}, "namespace"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, object], word: str) -> None:
    """Each bad option is a ConfigurationError naming it."""
    with pytest.raises(kannuki.ConfigurationError, match=word):
        kannuki.Locker("redis://127.0.0.1:6379/0", **options)


def test_non_client_objects_are_not_wrapped() -> None:
    """Objects from redis_lock or redis.asyncio are refused, not mistaken for a client."""
    import redis.asyncio

    assert not RedisBackend.wraps(object())
    with pytest.raises(kannuki.ConfigurationError, match="url"):
        kannuki.Locker(redis.asyncio.Redis())


def test_describe_hides_the_password() -> None:
    """describe() and repr never show the password of the URL."""
    locker = kannuki.Locker("redis://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(locker)
    assert "s3cret" not in locker.backend.describe()
    locker.close()


def test_transaction_is_not_supported(make_locker: object) -> None:
    """transaction= has no meaning for Redis and is refused clearly."""
    with pytest.raises(kannuki.NotSupportedError):
        make_locker().lock("t", transaction=True).acquire(timeout=0)  # type: ignore[operator]


def _forked_child_check(url: str, namespace: str, token: int, result: object) -> None:
    locker = _FORK_STATE["locker"]
    lock = _FORK_STATE["lock"]
    result.put(  # type: ignore[attr-defined]
        (lock.locked(), lock.token, locker.held("forked"), locker.lock("forked").acquire(blocking=False))
    )


_FORK_STATE: dict[str, object] = {}


def test_forked_child_does_not_hold_parents_locks(
    make_locker: object, redis_url: str, namespace: str
) -> None:
    """After fork() the child holds nothing of its parent's and cannot take the parent's key."""
    locker = make_locker(auto_renew=False)  # type: ignore[operator]  # no renewal thread across fork()
    lock = locker.lock("forked")
    lock.acquire()
    _FORK_STATE.update(locker=locker, lock=lock)
    result = FORK.Queue()
    child = FORK.Process(target=_forked_child_check, args=(redis_url, namespace, lock.token, result))
    child.start()
    try:
        # The child sees the parent's lease as someone else's: held, and not its to take.
        assert result.get(timeout=30) == (False, None, True, False)
    finally:
        child.join(10)
        _FORK_STATE.clear()
    assert child.exitcode == 0
    assert lock.locked()
    lock.release()


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(10_000):  # bounded: 0.2 s per round, the test ends it much sooner
            if self.stop.is_set():
                return
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # kept open, never read, never answered

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_item_12_connect_timeout_bounds_a_server_that_never_answers() -> None:
    """connect_timeout=1, socket_timeout=20: a server that accepts and stays silent is a BackendError in ~1 s."""
    server = SilentServer()
    locker = kannuki.Locker(f"redis://127.0.0.1:{server.port}/0", connect_timeout=1, socket_timeout=20)
    try:
        started = time.monotonic()
        with pytest.raises(kannuki.BackendError) as info:
            locker.lock("silent").acquire(timeout=0)
        elapsed = time.monotonic() - started
        assert server.accepted, "the client never connected"
        assert isinstance(info.value.__cause__, redis.RedisError)
        assert elapsed < 10, f"took {elapsed:.1f}s: the 20 s socket_timeout, not connect_timeout, applied"
    finally:
        locker.close()
        server.close()


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


def test_item_23_waiting_writer_is_not_starved_by_overlapping_readers(make_locker: Any) -> None:
    """redis: a waiting writer's mark (N:writers:name, short PX) stops new readers; it gets in within the bound."""
    _writer_gets_in_among_readers(make_locker(), make_locker(), "doc")


def test_item_23_a_dead_writers_mark_expires(make_locker: Any, redis_url: str, namespace: str) -> None:
    """redis: the mark of a writer killed while waiting keeps readers out only until it expires."""
    _dead_writers_mark_runs_out(make_locker(), redis_url, "doc", namespace)
