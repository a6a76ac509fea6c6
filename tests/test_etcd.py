"""The etcd backend against a real 3-member etcd cluster on loopback (tests/etcd_cluster.py).

The cluster is the session's (started once); each test works in its own key namespace, deleted
afterwards. Tests that kill, stop or freeze members heal the cluster before the next test (the
``cluster`` fixture checks). Every wait is bounded by a count and by time; the bounds of "within
ttl + 2 s" are liveness bounds, not performance checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import etcd_cluster as etcd
import kannuki
from etcd_cluster import EtcdCluster, b64
from kannuki.backends.etcd import EtcdBackend
from servers import REQUIRE_DBS, etcd_cluster  # noqa: F401 (etcd_cluster: the session's cluster, a fixture)
from support import contend, killed_holder, subprocess_env, wait_until


@pytest.fixture
def cluster(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:  # noqa: F811 (the fixture above)
    """The shared cluster, healed after a test that stopped or froze a member."""
    yield etcd_cluster
    if any(not m.running or m.paused for m in etcd_cluster.members):
        etcd_cluster.heal()


@pytest.fixture
def namespace(cluster: EtcdCluster) -> Iterator[str]:
    """A fresh key namespace; every key under it is deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    cluster.post("/v3/kv/deleterange", {"key": b64(name + "/"), "range_end": b64(name + "0")})


@pytest.fixture
def url(cluster: EtcdCluster, namespace: str) -> str:
    """The cluster's URL, every member, on this test's namespace."""
    return cluster.url(namespace=namespace)


@pytest.fixture
def make_locker(url: str, make_lockers: Any) -> Any:
    """Factory of lockers on the whole cluster and the test namespace, all closed afterwards (before
    the namespace is deleted: ``url`` comes first)."""
    return lambda **options: make_lockers(url, **options)


def lock_keys(cluster: EtcdCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The etcd keys of one lock (holders and waiters), by create revision."""
    return cluster.keys(f"{namespace}/lock/{name}/")


class Lost:
    """An ``on_lost`` callback that records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    def __call__(self, lock: Any, reason: str) -> None:
        self.calls.append((lock, reason))


# -- basics ---------------------------------------------------------------------------


def test_two_lockers_exclude_each_other(make_locker: Any) -> None:
    """A key held by one locker cannot be taken by another until it is released."""
    first, second = make_locker(), make_locker()
    holder = first.lock("job")
    assert holder.acquire(timeout=0)
    assert not second.lock("job").acquire(blocking=False)
    assert second.held("job")
    holder.release()
    assert not first.held("job")
    other = second.lock("job")
    assert other.acquire(blocking=False)
    assert not first.lock("job").acquire(blocking=False)
    other.release()


def test_the_lock_is_a_key_under_its_own_lease(
    make_locker: Any, cluster: EtcdCluster, namespace: str
) -> None:
    """One key per acquisition, under a lease of the locker's ttl; the token is its create revision."""
    locker = make_locker(ttl=7)
    with locker.lock("keyed", timeout=5) as lock:
        (kv,) = lock_keys(cluster, namespace, "keyed")
        assert kv["key"].startswith(f"{namespace}/lock/keyed/w/")
        assert int(kv["create_revision"]) == lock.token
        ttl = cluster.post("/v3/lease/timetolive", {"ID": kv["lease"]})
        assert int(ttl["grantedTTL"]) == 7
        record = json.loads(kv["value"])
        assert (record["pid"], record["app"]) == (os.getpid(), "kannuki")
    assert lock_keys(cluster, namespace, "keyed") == []
    assert cluster.post("/v3/lease/timetolive", {"ID": kv["lease"]}).get("TTL") == "-1"  # revoked


def test_tokens_are_create_revisions_increasing_across_keys(make_locker: Any) -> None:
    """Tokens are cluster-wide revisions: they grow across acquisitions, keys, lockers and modes."""
    lockers = [make_locker(), make_locker()]
    tokens = []
    for i in range(8):
        lock = lockers[i % 2].lock(f"fence-{i % 3}", shared=i % 4 == 0)
        assert lock.acquire(timeout=5)
        tokens.append(lock.token)
        lock.release()
    assert tokens == sorted(set(tokens))
    assert all(isinstance(token, int) and token > 0 for token in tokens)


def test_waiter_wakes_when_the_holder_releases(make_locker: Any) -> None:
    """A blocking acquire waits while the lock is held and gets it once the holder releases."""
    first, second = make_locker(), make_locker()
    holder = first.lock("job")
    holder.acquire()
    result: list[bool] = []
    waiter = second.lock("job")
    thread = threading.Thread(target=lambda: result.append(waiter.acquire(timeout=30)))
    thread.start()
    assert wait_until(lambda: len(second.backend.waiters("job", 0)) == 1)
    first_token = holder.token
    holder.release()
    thread.join(30)
    assert result == [True]
    assert waiter.token is not None and first_token is not None and waiter.token > first_token
    waiter.release()


def test_timeout_and_strategies(make_locker: Any) -> None:
    """A timed wait on a held key gives up after its timeout, leaving no key behind; try and retry too."""
    first = make_locker()
    second = make_locker(strategy="retry", retry_attempts=2, retry_interval=0.05)
    holder = first.lock("busy")
    holder.acquire()
    started = time.monotonic()
    assert not first.lock("busy").acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    with pytest.raises(kannuki.LockNotAcquiredError):
        with second.lock("busy"):
            pass
    assert first.try_lock("busy", lambda: 1) is False
    assert first.backend.waiters("busy", 0) == []
    holder.release()
    assert second.with_lock("busy", lambda: 42) == 42


def test_waiters_queue_in_order_and_watch_only_their_predecessor(
    make_locker: Any, cluster: EtcdCluster, namespace: str
) -> None:
    """FIFO by create revision; each waiter watches the key just before its own, not the holder's."""
    holder_locker, waiting = make_locker(), make_locker()
    watched: list[str] = []
    real_watch = waiting.backend._watch_deleted

    def watch(key64: str, start: int, until: float) -> int:
        watched.append(key64)
        return real_watch(key64, start, until)

    waiting.backend._watch_deleted = watch
    holder = holder_locker.lock("fifo")
    holder.acquire()
    order: list[int] = []
    threads = []
    for i in range(3):
        lock = waiting.lock("fifo")

        def take(lock: Any = lock, i: int = i) -> None:
            assert lock.acquire(timeout=30)
            order.append(i)
            lock.release()

        threads.append(threading.Thread(target=take))
        threads[-1].start()
        assert wait_until(lambda i=i: len(waiting.backend.waiters("fifo", 0)) == i + 1)
    queue = [holder.token] + [h.token for h in waiting.backend.waiters("fifo", 0)]
    assert wait_until(lambda: len(set(watched)) >= 3)
    # Each waiter watched exactly one key: the one queued just before it.
    keys = {int(kv["create_revision"]): b64(kv["key"]) for kv in lock_keys(cluster, namespace, "fifo")}
    assert set(watched) == {keys[token] for token in queue[:3]}
    holder.release()
    for thread in threads:
        thread.join(30)
    assert order == [0, 1, 2]


def test_shared_holders_coexist_and_readers_wait_only_for_earlier_writers(make_locker: Any) -> None:
    """Readers share; a writer waits for them; a reader behind a waiting writer waits for it (no barging)."""
    first, second = make_locker(), make_locker()
    reader1, reader2 = first.lock("rw", shared=True), second.lock("rw", shared=True)
    assert reader1.acquire(timeout=0) and reader2.acquire(timeout=0)
    assert [h.shared for h in first.holders("rw")] == [True, True]
    assert not first.lock("rw").acquire(timeout=0)
    writer = second.lock("rw")
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(writer.acquire(timeout=30)))
    thread.start()
    assert wait_until(lambda: len(first.backend.waiters("rw", 0)) == 1)
    assert not first.lock("rw", shared=True).acquire(timeout=0)  # a writer is queued before it
    reader1.release()
    assert got == []
    reader2.release()
    thread.join(30)
    assert got == [True]
    assert [h.shared for h in first.holders("rw")] == [False]
    late_reader = first.lock("rw", shared=True)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(late_reader.acquire(timeout=30)))
    thread.start()
    assert wait_until(lambda: len(first.backend.waiters("rw", 0)) == 1)
    writer.release()
    thread.join(30)
    assert result == [True]
    late_reader.release()


def test_holders_and_waiters_come_from_the_keys(make_locker: Any) -> None:
    """holders() reads pid, host, application and since from the key's value; waiters() the queue."""
    locker = make_locker(application_name="billing-job")
    before = time.time()
    lock = locker.lock("who")
    lock.acquire()
    (holder,) = locker.holders("who")
    assert (holder.pid, holder.application, holder.token, holder.shared) == (
        os.getpid(),
        "billing-job",
        lock.token,
        False,
    )
    assert holder.host and holder.since is not None and before - 1 <= holder.since <= time.time() + 1
    assert "billing-job" in holder.describe()
    listed = locker.list_held()
    assert [(h.name, h.token) for h in listed] == [("who", lock.token)]
    assert listed[0].lock_id == kannuki.lock_id("who")
    lock.release()
    assert locker.holders("who") == [] and locker.list_held() == []


def test_hostile_names_are_taken_literally(make_locker: Any) -> None:
    """Names with '/', '%', prefixes of each other and non-ASCII stay distinct locks, listed by name."""
    locker = make_locker()
    names = ["a", "a/w", "a/w/x", "%2F", "/", "ключ", "a%"]
    locks = [locker.lock(name) for name in names]
    for lock in locks:
        assert lock.acquire(timeout=0), lock.key
    assert sorted(h.name for h in locker.list_held()) == sorted(names)
    for lock in locks:
        lock.release()
    assert locker.list_held() == []


def test_foreign_value_still_counts_as_a_holder(
    make_locker: Any, cluster: EtcdCluster, namespace: str
) -> None:
    """A key kannuki did not write under a lock holds it (with what the key tells: its revision)."""
    put = cluster.post("/v3/kv/put", {"key": b64(f"{namespace}/lock/odd/w/1"), "value": b64("x")})
    locker = make_locker()
    (holder,) = locker.holders("odd")
    assert holder.token == int(put["header"]["revision"]) and holder.pid is None
    assert not locker.lock("odd").acquire(timeout=0)


# -- leases and loss ------------------------------------------------------------------


def test_auto_renewal_keeps_a_short_lease_alive(make_locker: Any) -> None:
    """The hold owner keeps the lease alive past its ttl; the lock stays ours."""
    locker = make_locker(ttl=2)
    lock = locker.lock("renewed")
    lock.acquire()
    assert wait_until(lambda: locker.stats().renewed >= 4, 10)
    lock.ensure_held()
    assert not make_locker().lock("renewed").acquire(timeout=0)
    lock.release()


@pytest.mark.parametrize("how", ["lease revoked", "key deleted"])
def test_loss_is_reported_once(make_locker: Any, cluster: EtcdCluster, namespace: str, how: str) -> None:
    """A revoked lease or a deleted key: on_lost once, the lost event, stats, lock.lost, LockLostError."""
    lost = Lost()
    events: list[str] = []
    unsubscribe = kannuki.subscribe(lambda event: events.append(event.name), events=["lost"])
    try:
        locker = make_locker(ttl=3, on_lost=lost)
        lock = locker.lock("stolen")
        lock.acquire()
        (kv,) = lock_keys(cluster, namespace, "stolen")
        if how == "lease revoked":
            cluster.post("/v3/lease/revoke", {"ID": kv["lease"]})
        else:
            cluster.post("/v3/kv/deleterange", {"key": b64(kv["key"])})
        assert wait_until(lambda: lock.lost, 10)
        with pytest.raises(kannuki.LockLostError, match="stolen"):
            lock.release()
        assert len(lost.calls) == 1 and lost.calls[0][0] is lock
        assert events == ["lost"]
        assert locker.stats().lost == 1
    finally:
        unsubscribe()


def test_ensure_held_reads_the_key(make_locker: Any, cluster: EtcdCluster, namespace: str) -> None:
    """ensure_held() passes while our key is there and raises LockLostError once it was deleted."""
    locker = make_locker(ttl=30)
    lock = locker.lock("asked")
    lock.acquire()
    lock.ensure_held()
    (kv,) = lock_keys(cluster, namespace, "asked")
    cluster.post("/v3/kv/deleterange", {"key": b64(kv["key"])})
    with pytest.raises(kannuki.LockLostError):
        lock.ensure_held()
    assert lock.lost
    with pytest.raises(kannuki.LockLostError):
        lock.release()


def test_stale_grant_cannot_release_extend_or_check_newer_holder(url: str) -> None:
    """A holder whose lease ran out (paused past it) touches nothing of the next holder's."""
    old_side = EtcdBackend.from_url(url, ttl=1)
    new_side = EtcdBackend.from_url(url, ttl=30)
    name, lock_id = "fenced", kannuki.lock_id("fenced")
    try:
        old = old_side.acquire(name, lock_id, timeout=0)
        assert old is not None and old.ttl is not None and old.ttl >= 1
        new = new_side.acquire(name, lock_id, timeout=30)  # nobody renews `old`: its lease runs out
        assert new is not None and new.token > old.token
        assert old_side.renew(old) is False
        assert old_side.renew(old, 60) is False
        assert old_side.check(old) is False
        with pytest.raises(kannuki.LockLostError, match="'fenced'"):
            old_side.release(old)
        old_side.abort(old)  # never raises, never frees the newer holder
        assert [h.token for h in new_side.holders(name, lock_id)] == [new.token]
        assert new_side.check(new) and new_side.renew(new)
        new_side.release(new)
        assert not new_side.held(name, lock_id) and not new_side.check(new)
    finally:
        old_side.close()
        new_side.close()


def test_extend_to_a_new_ttl_moves_the_key_to_a_new_lease(
    make_locker: Any, cluster: EtcdCluster, namespace: str
) -> None:
    """lock.extend(ttl) keeps the key (same token) under a lease of the new length."""
    locker = make_locker(ttl=5)
    lock = locker.lock("extended")
    lock.acquire()
    (before,) = lock_keys(cluster, namespace, "extended")
    lock.extend(ttl=40)
    (after,) = lock_keys(cluster, namespace, "extended")
    assert int(after["create_revision"]) == lock.token == int(before["create_revision"])
    assert after["lease"] != before["lease"]
    assert int(cluster.post("/v3/lease/timetolive", {"ID": after["lease"]})["grantedTTL"]) == 40
    assert cluster.post("/v3/lease/timetolive", {"ID": before["lease"]}).get("TTL") == "-1"
    lock.extend()
    lock.release()
    assert lock_keys(cluster, namespace, "extended") == []


def test_force_release_frees_the_holders_and_keeps_the_queue(make_locker: Any) -> None:
    """force_release() deletes the holders' keys (how many); the first waiter then holds."""
    first, second = make_locker(), make_locker()
    reader1, reader2 = first.lock("stuck", shared=True), second.lock("stuck", shared=True)
    assert reader1.acquire(timeout=0) and reader2.acquire(timeout=0)
    writer = second.lock("stuck")
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(writer.acquire(timeout=30)))
    thread.start()
    assert wait_until(lambda: len(first.backend.waiters("stuck", 0)) == 1)
    assert first.force_release("stuck") == 2
    thread.join(30)
    assert got == [True]
    assert first.force_release("stuck") == 1
    assert first.force_release("stuck") == 0
    for lock in (writer, reader1, reader2):
        with pytest.raises(kannuki.LockLostError):
            lock.release()


def test_interrupted_acquire_is_undone(url: str) -> None:
    """A KeyboardInterrupt right after the put went through leaves nothing held (the lease is revoked)."""
    backend = EtcdBackend.from_url(url)
    name, lock_id = "interrupted", kannuki.lock_id("interrupted")
    real_take = backend._take

    def take_then_interrupt(*args: Any, **kwargs: Any) -> bool:
        real_take(*args, **kwargs)
        raise KeyboardInterrupt

    backend._take = take_then_interrupt  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            backend.acquire(name, lock_id, timeout=0)
        del backend._take
        assert not backend.held(name, lock_id)
    finally:
        backend.close()


# -- processes ------------------------------------------------------------------------


def test_contended_read_modify_write_loses_no_update(url: str, tmp_path: Path) -> None:
    """4 processes x read-modify-write of a file under the lock: no lost update, tokens in lock order."""
    contend(url, tmp_path, processes=4, rounds=25)


def test_sigkilled_holder_is_taken_over_within_ttl(url: str) -> None:
    """A holder SIGKILLed while holding: its lease runs out and a waiter takes over within ttl + 2 s."""
    ttl = 2.0
    with killed_holder(url, ttl) as (locker, dead_token):
        lock = locker.lock("victim")
        assert lock.acquire(timeout=ttl + 2)
        assert lock.token is not None and lock.token > dead_token
        lock.release()


def test_cli_list_and_run(url: str, make_locker: Any) -> None:
    """`kannuki list` shows an etcd lock with its holder; `kannuki run` takes it, or exits 75 while held."""
    env = subprocess_env()
    locker = make_locker()
    lock = locker.lock("cli-job")
    lock.acquire()
    listed = subprocess.run(
        [sys.executable, "-m", "kannuki", "list", "--url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "cli-job" in listed.stdout and str(os.getpid()) in listed.stdout
    busy = subprocess.run(
        [sys.executable, "-m", "kannuki", "run", "--url", url, "--try", "cli-job", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert busy.returncode == 75 and f"pid {os.getpid()}" in busy.stderr, busy.stderr
    lock.release()
    ran = subprocess.run(
        [sys.executable, "-m", "kannuki", "run", "--url", url, "cli-job", "--", "sh", "-c", "exit 3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 3, ran.stderr


def test_forked_child_does_not_share_connections_or_holds(make_locker: Any) -> None:
    """After fork() the child's backend opens its own connections and sees the parent's hold as another's."""
    import multiprocessing

    locker = make_locker(auto_renew=False)
    lock = locker.lock("forked")
    lock.acquire()
    _FORKED["lock"] = lock
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_forked_child, args=(locker, result))
    child.start()
    try:
        assert result.get(timeout=30) == (False, True, False, [lock.token])
    finally:
        child.join(10)
        _FORKED.clear()
    assert child.exitcode == 0
    lock.ensure_held()  # the parent's connections still work
    lock.release()


def _forked_child(locker: Any, result: Any) -> None:
    """In the forked child: the parent's lock is not held here, yet the key is (by the parent)."""
    lock = _FORKED["lock"]
    other = locker.lock("forked")
    result.put(
        (
            lock.locked(),
            locker.held("forked"),
            other.acquire(blocking=False),
            [h.token for h in locker.holders("forked")],
        )
    )


_FORKED: dict[str, Any] = {}


# -- the cluster losing members -------------------------------------------------------


@pytest.mark.slow
def test_leader_killed_while_held_keeps_the_lock(
    cluster: EtcdCluster, namespace: str, make_lockers: Any
) -> None:
    """SIGKILL the leader (the member the locker talks to first) while a lock is held: the holder keeps it
    through the election, renewals go on through the new leader, and it releases normally."""
    leader = cluster.leader()
    others = [m for m in cluster.members if m is not leader]
    lost = Lost()
    ttl = 6
    url = cluster.url(leader, *others, namespace=namespace, request_timeout=1, connect_timeout=1)
    locker = make_lockers(url, ttl=ttl, on_lost=lost)
    lock = locker.lock("through-election")
    assert lock.acquire(timeout=5)
    cluster.kill(leader)
    new_leader = cluster.leader()
    assert new_leader is not leader
    renewed = locker.stats().renewed
    time.sleep(ttl + 2)  # past the lease the old leader knew: only renewals through the new one keep it
    assert locker.stats().renewed > renewed
    assert lost.calls == [] and not lock.lost
    lock.ensure_held()
    assert (
        not make_lockers(cluster.url(*others, namespace=namespace))
        .lock("through-election")
        .acquire(timeout=0)
    )
    lock.release()
    assert not locker.held("through-election")


@pytest.mark.slow
def test_majority_stopped_reports_the_loss_then_a_new_locker_works(
    cluster: EtcdCluster, namespace: str, make_lockers: Any
) -> None:
    """Two of three members stopped: the lease cannot be renewed, on_lost comes within ttl + 2 s; once
    the majority is back, a new locker takes the lock."""
    lost = Lost()
    ttl = 3
    url = cluster.url(namespace=namespace, request_timeout=1, connect_timeout=1)
    locker = make_lockers(url, ttl=ttl, on_lost=lost)
    lock = locker.lock("quorum")
    assert lock.acquire(timeout=5)
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    cluster.kill(leader, signal.SIGTERM)
    cluster.kill(follower, signal.SIGTERM)
    assert wait_until(lambda: lost.calls, ttl + 2), "no on_lost within ttl + 2 s of losing the majority"
    assert lock.lost and len(lost.calls) == 1
    cluster.heal()
    with pytest.raises(kannuki.LockLostError):
        lock.release()
    fresh = make_lockers(url, ttl=ttl)
    again = fresh.lock("quorum")
    assert again.acquire(timeout=ttl + 10)
    assert again.token is not None and lock.token is not None and again.token > lock.token
    again.release()
    assert len(lost.calls) == 1


@pytest.mark.slow
def test_paused_member_causes_no_false_loss(cluster: EtcdCluster, namespace: str, make_lockers: Any) -> None:
    """SIGSTOP the member the locker talks to first (the leader, the hardest case): requests to it time
    out and fail over, renewals go on, and nothing is reported lost; other lockers still get locks."""
    frozen = cluster.leader()
    others = [m for m in cluster.members if m is not frozen]
    lost = Lost()
    ttl = 6
    url = cluster.url(frozen, *others, namespace=namespace, request_timeout=1, connect_timeout=1)
    locker = make_lockers(url, ttl=ttl, on_lost=lost)
    lock = locker.lock("frozen-member")
    assert lock.acquire(timeout=5)
    cluster.pause(frozen)
    time.sleep(ttl + 2)
    assert lost.calls == [] and not lock.lost
    lock.ensure_held()
    other = make_lockers(url).lock("elsewhere")
    assert other.acquire(timeout=10)
    other.release()
    lock.release()


# -- bad URLs, unreachable and silent members -----------------------------------------


@pytest.mark.parametrize(
    ("target", "options", "word"),
    [
        ("etcd://", {}, "host"),
        ("etcd://h1:2379,", {}, "host"),
        ("etcd://h:abc", {}, "port"),
        ("etcd://h:0", {}, "port"),
        ("etcd://h:70000", {}, "port"),
        ("etcd://h:2379/some/path", {}, "path"),
        ("etcd://h?bogus=1", {}, "bogus"),
        ("etcd://h?ttl=abc", {}, "ttl"),
        ("etcd://h?ttl=-1", {}, "ttl"),
        ("etcd://h", {"ttl": 0}, "ttl"),
        ("etcd://h", {"request_timeout": -1}, "request_timeout"),
        ("etcd://h", {"connect_timeout": float("nan")}, "connect_timeout"),
        ("etcd://h", {"namespace": ""}, "namespace"),
        ("etcd://h", {"pool_size": 3}, "pool_size"),
        ("etcd://h?ttl=5", {"ttl": 5}, "ttl"),
        ("etcd://u@h", {}, "password"),
        ("etcd://h?ca_cert=/tmp/ca.pem", {}, "etcds://"),
        ("etcds://h?cert_cert=/tmp/c.pem", {}, "cert_key"),
        ("etcds://h?ca_cert=/nonexistent/ca.pem", {}, "TLS"),
        ("etcds://h", {"ssl_context": "yes"}, "ssl_context"),
    ],
)
def test_bad_urls_and_options_are_configuration_errors(
    target: str, options: dict[str, Any], word: str
) -> None:
    """Each bad URL or option is a ConfigurationError naming what is wrong, before any connection."""
    with pytest.raises(kannuki.ConfigurationError, match=word):
        kannuki.Locker(target, **options)


def test_describe_hides_the_password() -> None:
    locker = kannuki.Locker("etcd://app:s3cret@h1:2379,h2?ttl=5")
    try:
        assert "s3cret" not in locker.backend.describe() and "app:***@" in locker.backend.describe()
        assert "s3cret" not in repr(locker)
    finally:
        locker.close()


def test_transaction_is_not_supported(make_locker: Any) -> None:
    with pytest.raises(kannuki.NotSupportedError):
        make_locker().lock("tx", transaction=object()).acquire()


def test_unreachable_members_are_a_backend_error_within_connect_timeout() -> None:
    """Members that refuse connections, or addresses that do not answer: BackendError within connect_timeout."""
    ports = etcd.free_ports(2)
    url = f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]},192.0.2.1:2379"
    locker = kannuki.Locker(url, connect_timeout=1.5, request_timeout=30)
    try:
        started = time.monotonic()
        with pytest.raises(kannuki.BackendError, match="no etcd member reachable"):
            locker.lock("nowhere").acquire(timeout=0)
        assert time.monotonic() - started < 1.5 + 2
    finally:
        locker.close()


def test_a_member_that_accepts_and_never_answers_is_a_backend_error(make_lockers: Any) -> None:
    """A silent listener (a frozen process): each request gives up after request_timeout."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        locker = make_lockers(f"etcd://127.0.0.1:{server.getsockname()[1]}", request_timeout=1)
        started = time.monotonic()
        with pytest.raises(kannuki.BackendError):
            locker.lock("silent").acquire(timeout=0)
        assert time.monotonic() - started < 1 + 5
    finally:
        server.close()


def test_a_member_that_is_not_etcd_is_a_backend_error(make_lockers: Any, redis_url: str) -> None:
    """Pointed at Redis by mistake: a clear BackendError, not a hang or a parse crash."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    locker = make_lockers(f"etcd://{parts.hostname}:{parts.port}", request_timeout=2)
    with pytest.raises(kannuki.BackendError, match="etcd"):
        locker.lock("wrong-server").acquire(timeout=0)


# -- TLS and authentication -----------------------------------------------------------

PASSWORD = "pa ss/w@rd"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A one-member cluster serving clients over TLS, with authentication on (user root)."""
    base = tmp_path_factory.mktemp("etcd-tls")
    try:
        certs = etcd.make_certs(base / "certs")
        cluster = EtcdCluster(base / "data", size=1, certs=certs, extra=("--auth-token-ttl", "1"))
        cluster.start()
    except etcd.EtcdUnavailable as exc:
        if REQUIRE_DBS:
            pytest.fail(f"{exc} and KANNUKI_REQUIRE_DBS=1", pytrace=False)
        pytest.skip(str(exc))
    try:
        etcd.enable_auth(cluster, PASSWORD)
        yield cluster
    finally:
        cluster.close()


def secure_url(cluster: EtcdCluster, *, user: str = "root", password: str = PASSWORD, **query: Any) -> str:
    from urllib.parse import quote

    assert cluster.certs is not None
    query.setdefault("ca_cert", cluster.certs["ca"])
    address = cluster.members[0].address
    options = "&".join(f"{k}={v}" for k, v in query.items())
    return f"etcds://{quote(user)}:{quote(password, safe='')}@{address}?{options}"


def test_tls_and_password_from_the_url(secure: EtcdCluster, make_lockers: Any) -> None:
    """etcds:// with ca_cert and user:password@: locks work; an expired token is renewed by logging in again."""
    locker = make_lockers(secure_url(secure), ttl=30)
    lock = locker.lock("secure")
    assert lock.acquire(timeout=5)
    assert [h.token for h in locker.holders("secure")] == [lock.token]
    time.sleep(2.5)  # past --auth-token-ttl 1 with nothing sent: the token has expired
    lock.ensure_held()
    lock.release()
    assert not locker.held("secure")


def test_tls_and_password_as_options(secure: EtcdCluster, make_lockers: Any) -> None:
    import ssl

    assert secure.certs is not None
    context = ssl.create_default_context(cafile=str(secure.certs["ca"]))
    url = f"etcds://{secure.members[0].address}"
    locker = make_lockers(url, user="root", password=PASSWORD, ssl_context=context)
    with locker.lock("secure-options", timeout=5) as lock:
        assert lock.token


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda c: secure_url(c, password="wrong"), "authentication"),
        (lambda c: f"etcds://{c.members[0].address}?ca_cert={c.certs['ca']}", "user and password"),
        (lambda c: f"etcds://root:x@{c.members[0].address}", "CERTIFICATE_VERIFY_FAILED|certificate"),
        (lambda c: f"etcd://root:x@{c.members[0].address}", "etcds://"),
    ],
    ids=["wrong password", "no credentials", "unknown CA", "plain http to a TLS member"],
)
def test_tls_and_auth_failures_are_backend_errors(
    secure: EtcdCluster, make_lockers: Any, build: Any, match: str
) -> None:
    locker = make_lockers(build(secure), connect_timeout=2, request_timeout=2)
    started = time.monotonic()
    with pytest.raises(kannuki.BackendError, match=match):
        locker.lock("refused").acquire(timeout=0)
    assert time.monotonic() - started < 10
