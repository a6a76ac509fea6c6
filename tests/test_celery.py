"""Celery with a REAL worker (a subprocess) on RabbitMQ and on Redis as broker.

The decorators (``@locker.unique()`` under ``@app.task``, ``bind=True`` and retries included) and
:class:`kannuki.contrib.celery.UniqueTask` (unique at enqueue time: the sender takes the lock, the
worker releases it). The lock stores are leases seen by both processes: Redis with the Redis
broker, a sqlite file with RabbitMQ. Every queue name and key prefix is unique to the run, every
wait is bounded, and each worker is stopped (killed, if it must be) in a finalizer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

celery = pytest.importorskip("celery")
pytest.importorskip("redis")

import kannuki  # noqa: E402  (after the importorskips)
from servers import REQUIRE_DBS  # noqa: E402
from support import WORKER_BOUND, WorkerRun, environment  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

RABBITMQ_URL = os.environ.get("KANNUKI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
MODULE = "kannuki_celery_tasks"

TASKS = """
import os, time
import kannuki
from celery import Celery
from kannuki.contrib.celery import UniqueTask

E = os.environ
app = Celery("kannuki_celery_tasks", broker=E["KANNUKI_CELERY_BROKER"], backend=E["KANNUKI_CELERY_BACKEND"])
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue=E["KANNUKI_CELERY_QUEUE"],
                worker_prefetch_multiplier=1, result_expires=600)
locker = kannuki.Locker(E["KANNUKI_CELERY_LOCKS"], key_prefix=E["KANNUKI_CELERY_PREFIX"])
DIR = E["KANNUKI_CELERY_DIR"]


def mark(name):
    open(os.path.join(DIR, f"{name}@{time.monotonic_ns()}"), "w").close()


def wait_for_gate(name):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(DIR, "gate-" + name)) and time.monotonic() < deadline:
        time.sleep(0.02)


@app.task(name="kannuki_test.import_batch")
@locker.unique(on_conflict="skip")
def import_batch(batch_id):
    mark(f"ran-{batch_id}")
    wait_for_gate(f"batch-{batch_id}")
    return f"imported {batch_id}"


@app.task(bind=True, name="kannuki_test.bound_report", max_retries=1)
@locker.unique(on_conflict="skip")
def bound_report(self, account_id, month="2024-05"):
    mark(f"report-{account_id}-try{self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=3)
    return f"report {account_id} {month}"


@app.task(bind=True, base=UniqueTask, name="kannuki_test.rebuild", unique_locker=locker, unique_ttl=60,
          unique_run_ttl=2, max_retries=1)
def rebuild(self, shop_id, mode="ok"):
    mark(f"rebuild-{shop_id}-try{self.request.retries}")
    wait_for_gate(f"shop-{shop_id}")
    if mode == "fail":
        raise ValueError(f"shop {shop_id} failed")
    if mode == "retry" and self.request.retries == 0:
        raise self.retry(countdown=2)
    return f"rebuilt {shop_id}"


@app.task(base=UniqueTask, name="kannuki_test.long_run", unique_locker=locker, unique_run_ttl=120)
def long_run(n):
    mark(f"long-{n}")
    wait_for_gate(f"long-{n}")
    return n


@app.task(base=UniqueTask, name="kannuki_test.short_lease", unique_locker=locker, unique_ttl=1.5)
def short_lease(n):
    return n
"""


def _reachable(url: str, default_port: int) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Run(WorkerRun):
    """One worker and what the test side needs to talk to it."""

    broker: str
    queue: str
    prefix: str
    dir: Path
    tasks: ModuleType
    worker: subprocess.Popen[str]
    env: dict[str, str]

    @property
    def locker(self) -> kannuki.Locker:
        return self.tasks.locker  # type: ignore[no-any-return]


def start_worker(tmp: Path, broker: str, backend: str, locks: str, *, pool: str = "threads") -> Run:
    tag = uuid.uuid4().hex[:8]
    queue, prefix = f"kannuki-test-{tag}", f"t-{tag}"
    (tmp / f"{MODULE}.py").write_text(textwrap.dedent(TASKS))
    markers = tmp / "markers"
    markers.mkdir()
    src = str(Path(kannuki.__file__).parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp), src]),
        "KANNUKI_CELERY_BROKER": broker,
        "KANNUKI_CELERY_BACKEND": backend,
        "KANNUKI_CELERY_QUEUE": queue,
        "KANNUKI_CELERY_LOCKS": locks,
        "KANNUKI_CELERY_PREFIX": prefix,
        "KANNUKI_CELERY_DIR": str(markers),
        "KANNUKI_CELERY_POOL": pool,
    }
    command = [sys.executable, "-m", "celery", "-A", MODULE, "worker", f"--pool={pool}"]
    command += ["--concurrency=4"] if pool != "solo" else []
    command += [
        "-Q",
        queue,
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
    ]
    with open(tmp / "worker.log", "w") as log:  # a file, not a pipe nobody drains while the test runs
        worker = subprocess.Popen(
            command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    tasks = load_tasks(tmp, env)
    run = Run(broker, queue, prefix, markers, tasks, worker, env)
    try:  # the worker answers a ping once it consumes (revoke needs it listening)
        run.until(lambda: bool(tasks.app.control.ping(timeout=0.5)), "the worker never answered a ping")
    except BaseException:
        stop_worker(run)
        raise
    return run


def load_tasks(tmp: Path, env: dict[str, str]) -> ModuleType:
    """The tasks module in this process too (the sending side), configured like the worker's."""
    import importlib.util

    with environment({k: v for k, v in env.items() if k.startswith("KANNUKI_CELERY_")}):
        spec = importlib.util.spec_from_file_location(MODULE, tmp / f"{MODULE}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE] = module  # the worker's module name: task names and unique() keys agree
        spec.loader.exec_module(module)
    return module


def stop_worker(run: Run) -> str:
    worker = run.worker
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    output = (run.dir.parent / "worker.log").read_text()
    try:
        with run.tasks.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(run.queue)
    except Exception:  # the queue is per run; a leftover costs nothing
        pass
    run.tasks.locker.close()
    close_app(run.tasks.app)
    sys.modules.pop(MODULE, None)
    return output


def close_app(app: Any) -> None:
    """Close the sending side's broker connections here, in this process. Celery.close() only drops its
    pool, and kombu closes a dropped pool's connections in every child forked later: there, a Redis
    channel left waiting on BRPOP (the ping's reply queue) blocks the child for good, and the fork
    tests of other modules would meet it."""
    from kombu import pools

    app.close()
    pools.reset()  # kombu's pools are per broker URL, shared by apps: closed and forgotten, the next app opens anew


@pytest.fixture(scope="module", params=["redis", "rabbitmq", "redis-prefork"])
def run(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """One worker per broker for the module's tests (each uses arguments of its own): the Redis
    broker with Redis locks, or RabbitMQ with a sqlite file of locks, on a threads pool; and
    Celery's default prefork pool (forked children run the tasks) on Redis."""
    tmp_path = tmp_path_factory.mktemp(f"celery-{request.param}")
    db1 = redis_url.rsplit("/", 1)[0] + "/1"
    pool = "prefork" if request.param.endswith("prefork") else "threads"
    if request.param.startswith("redis"):
        broker, locks = db1, db1
    else:
        if not _reachable(RABBITMQ_URL, 5672):
            message = f"RabbitMQ is not reachable at {RABBITMQ_URL}"
            if REQUIRE_DBS:
                pytest.fail(message + " and KANNUKI_REQUIRE_DBS=1", pytrace=False)
            pytest.skip(message)
        broker, locks = RABBITMQ_URL, f"sqlite:///{tmp_path}/locks.db"
    run = start_worker(tmp_path, broker, db1, locks, pool=pool)
    try:
        yield run
    finally:
        output = stop_worker(run)
    assert_only_expected_tracebacks(output)


def assert_only_expected_tracebacks(output: str) -> None:
    """The worker's log shows no traceback but the one of the task that fails on purpose."""
    for chunk in output.split("Traceback (most recent call last):")[1:]:
        assert "ValueError: shop 3 failed" in chunk, output


def held_keys(run: Run) -> list[str]:
    return [h.name for h in run.locker.backend.list_held() if h.name.startswith(run.prefix + ":")]


# -- the decorators under @app.task -----------------------------------------------------


def test_unique_decorator_duplicate_in_flight_is_skipped(run: Run) -> None:
    """Two duplicate import_batch tasks on the worker: one runs, the other returns None; other arguments run."""
    t = run.tasks
    first = t.import_batch.delay(7)
    run.until(lambda: run.markers("ran-7") == ["ran-7"], "the first import never started")
    second = t.import_batch.delay(7)
    assert second.get(timeout=WORKER_BOUND) is None  # skipped on the worker: the first one holds the key
    run.open_gate("batch-7")
    run.open_gate("batch-8")
    assert first.get(timeout=WORKER_BOUND) == "imported 7"
    assert t.import_batch.delay(8).get(timeout=WORKER_BOUND) == "imported 8"
    assert run.markers("ran-") == ["ran-7", "ran-8"]
    assert held_keys(run) == []


def test_unique_decorator_on_a_bound_task_with_a_retry(run: Run) -> None:
    """bind=True + unique(): the key leaves the task out; a retry runs again, and the lock is free in its countdown."""
    t = run.tasks
    arguments = json.dumps({"account_id": 5, "month": "2024-05"}, separators=(",", ":"))
    key = f"{MODULE}.{t.bound_report.run.__qualname__}({arguments})"
    result = t.bound_report.delay(5)
    run.until(lambda: run.markers("report-5") == ["report-5-try0"], "the first try never ran")
    # Between the tries (a 3 s countdown) the key is free: the first try released it.
    run.until(lambda: not run.locker.held(key), "the key stayed held after the first try")
    assert run.markers("report-5") == ["report-5-try0"], "the retry ran before the key was seen free"
    assert result.get(timeout=WORKER_BOUND) == "report 5 2024-05"
    assert run.markers("report-5") == ["report-5-try0", "report-5-try1"]
    assert held_keys(run) == []


# -- UniqueTask: unique at enqueue time -------------------------------------------------


def test_unique_task_skips_duplicates_while_queued_or_running(run: Run) -> None:
    """A duplicate send while one is running is skipped (a DuplicateTask); after it finishes, the key is free."""
    from kannuki.contrib.celery import DuplicateTask

    t = run.tasks
    first = t.rebuild.delay(1)
    assert not isinstance(first, DuplicateTask)
    duplicate = t.rebuild.delay(1)  # queued or already running: the sender's lock is still held
    assert isinstance(duplicate, DuplicateTask) and duplicate.get() is None and duplicate.id is None
    assert duplicate.state == "REJECTED" and duplicate.key == t.rebuild.unique_key_for((1,), {})
    run.until(lambda: run.markers("rebuild-1") == ["rebuild-1-try0"], "the task never started")
    # Running now: still skipped, however the same arguments are spelt (defaults applied).
    assert isinstance(t.rebuild.apply_async(args=(1,), kwargs={"mode": "ok"}), DuplicateTask)
    other = t.rebuild.delay(2)
    assert not isinstance(other, DuplicateTask)
    run.open_gate("shop-1")
    run.open_gate("shop-2")
    assert first.get(timeout=WORKER_BOUND) == "rebuilt 1" and other.get(timeout=WORKER_BOUND) == "rebuilt 2"
    assert held_keys(run) == []  # released by the worker when the task returned
    again = t.rebuild.delay(1)
    assert not isinstance(again, DuplicateTask) and again.get(timeout=WORKER_BOUND) == "rebuilt 1"
    assert run.markers("rebuild-1") == ["rebuild-1-try0", "rebuild-1-try0"]


def test_unique_task_failure_releases(run: Run) -> None:
    """A task that raises releases its key: the next send is queued."""
    t = run.tasks
    run.open_gate("shop-3")
    failing = t.rebuild.delay(3, mode="fail")
    with pytest.raises(ValueError, match="shop 3 failed"):
        failing.get(timeout=WORKER_BOUND)
    assert held_keys(run) == []
    assert t.rebuild.delay(3).get(timeout=WORKER_BOUND) == "rebuilt 3"


def test_unique_task_retry_keeps_the_key_across_its_countdown(run: Run) -> None:
    """A retry passes the hold on to the retried message: a duplicate in the countdown is skipped."""
    from kannuki.contrib.celery import DuplicateTask

    t = run.tasks
    run.open_gate("shop-4")
    result = t.rebuild.delay(4, mode="retry")
    run.until(lambda: run.markers("rebuild-4") == ["rebuild-4-try0"], "the first try never ran")
    key = t.rebuild.unique_key_for((4,), {"mode": "retry"})
    assert run.locker.held(key)
    assert isinstance(t.rebuild.delay(4, mode="retry"), DuplicateTask)
    assert result.get(timeout=WORKER_BOUND) == "rebuilt 4"
    assert run.markers("rebuild-4") == ["rebuild-4-try0", "rebuild-4-try1"]
    assert held_keys(run) == []


def test_unique_task_revoked_before_it_ran_releases(run: Run) -> None:
    """A task revoked while it waits (a countdown) is discarded by the worker, which releases its key."""
    t = run.tasks
    run.open_gate("shop-5")
    result = t.rebuild.apply_async(args=(5,), countdown=3)
    key = t.rebuild.unique_key_for((5,), {})
    assert run.locker.held(key)
    t.app.control.revoke(result.id)
    run.until(lambda: not run.locker.held(key), "the revoked task's key was never released")
    assert run.markers("rebuild-5") == []  # it never ran
    assert t.rebuild.delay(5).get(timeout=WORKER_BOUND) == "rebuilt 5"


def test_unique_task_terminated_while_running_releases(run: Run) -> None:
    """prefork: revoke(terminate=True) kills the child running it; the worker releases the key at once
    (its lease of 120 s is not what frees it)."""
    if run.env.get("KANNUKI_CELERY_POOL") != "prefork":
        pytest.skip("only the prefork pool can terminate a running task")
    t = run.tasks
    result = t.long_run.delay(1)
    key = t.long_run.unique_key_for((1,), {})
    run.until(lambda: run.markers("long-1") == ["long-1"], "the task never started")
    t.app.control.revoke(result.id, terminate=True, signal="SIGKILL")
    run.until(lambda: not run.locker.held(key), "the terminated task's key was not released")
    run.open_gate("long-1")
    assert t.long_run.delay(1).get(timeout=WORKER_BOUND) == 1


# -- leases: nobody left to release ------------------------------------------------------


def test_unique_task_lease_runs_out_when_nobody_runs_it(redis_url: str, tmp_path: Path) -> None:
    """A message nobody consumes keeps its key for unique_ttl only; then a new send is queued, and the
    stale hold's release (by its ticket) frees nothing of the newer holder's."""
    from kannuki.contrib.celery import DuplicateTask, _release

    db1 = redis_url.rsplit("/", 1)[0] + "/1"
    tag = uuid.uuid4().hex[:8]
    (tmp_path / "markers").mkdir()
    env = {
        "KANNUKI_CELERY_BROKER": db1,
        "KANNUKI_CELERY_BACKEND": db1,
        "KANNUKI_CELERY_QUEUE": f"kannuki-test-idle-{tag}",  # no worker consumes it
        "KANNUKI_CELERY_LOCKS": db1,
        "KANNUKI_CELERY_PREFIX": f"t-{tag}",
        "KANNUKI_CELERY_DIR": str(tmp_path / "markers"),
    }
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(TASKS))
    t = load_tasks(tmp_path, env)
    locker, key = t.locker, t.short_lease.unique_key_for((1,), {})
    try:
        first = t.short_lease.apply_async((1,), headers={"trace": "x"})
        assert not isinstance(first, DuplicateTask)
        assert isinstance(t.short_lease.delay(1), DuplicateTask)
        stale = locker.holders(key)[0]
        deadline = time.monotonic() + WORKER_BOUND
        while locker.held(key):  # the 1.5 s lease runs out: nobody renews a queued task's hold
            assert time.monotonic() < deadline, "the queued task's lease never ran out"
            time.sleep(0.05)
        second = t.short_lease.delay(1)
        assert not isinstance(second, DuplicateTask)
        newer = locker.holders(key)[0]
        assert newer.token != stale.token
        # The first message's ticket (as the worker would get it) can no longer free the key.
        with t.app.connection_for_read() as conn:
            message = conn.default_channel.basic_get(env["KANNUKI_CELERY_QUEUE"])
        assert message is not None and message.headers["id"] == first.id
        assert message.headers["trace"] == "x"  # the caller's own headers travel too
        assert _release(locker, message.headers["kannuki_ticket"]) is False
        assert locker.holders(key)[0].token == newer.token
    finally:
        with t.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(env["KANNUKI_CELERY_QUEUE"])
        locker.force_release(key)
        locker.close()
        close_app(t.app)
        sys.modules.pop(MODULE, None)


def test_unique_task_worker_that_dies_frees_the_key_by_its_lease(redis_url: str, tmp_path: Path) -> None:
    """A worker killed (SIGKILL) while it runs the task stops renewing: the key frees within unique_run_ttl."""
    from kannuki.contrib.celery import DuplicateTask

    db1 = redis_url.rsplit("/", 1)[0] + "/1"
    run = start_worker(tmp_path, db1, db1, db1, pool="solo")
    try:
        t = run.tasks
        key = t.rebuild.unique_key_for((6,), {})
        t.rebuild.delay(6)  # waits for a gate that never opens
        run.until(lambda: run.markers("rebuild-6") == ["rebuild-6-try0"], "the task never started")
        os.killpg(run.worker.pid, signal.SIGKILL)
        run.worker.wait(WORKER_BOUND)
        assert run.locker.held(key)  # nobody released it
        assert isinstance(t.rebuild.delay(6), DuplicateTask)
        deadline = time.monotonic() + WORKER_BOUND
        while run.locker.held(key):  # unique_run_ttl=2: the lease the dead worker renewed runs out
            assert time.monotonic() < deadline, "the dead worker's lease never ran out"
            time.sleep(0.05)
        assert not isinstance(t.rebuild.delay(6), DuplicateTask)
        run.locker.force_release(key)
    finally:
        stop_worker(run)
