"""RQ with a REAL worker (an ``rq worker`` subprocess) on Redis.

The decorators on plain job functions (``@locker.unique()``, ``@locker.locked()``), and
:func:`kannuki.contrib.rq.unique_job` (unique at enqueue time: the sender takes the lock, the
worker releases it), with the locks on Redis or on a sqlite file. The job functions are in
tests/rq_jobs.py, which the worker imports. Every queue name and key prefix is unique to the
run, every wait is bounded, and each worker is stopped (killed, if it must be) in a finalizer.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

rq = pytest.importorskip("rq")
redis = pytest.importorskip("redis")

import kannuki  # noqa: E402  (after the importorskips)
from kannuki.errors import LockNotAcquiredError, NotSupportedError  # noqa: E402
from support import WORKER_BOUND, WorkerRun, environment  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

TESTS = Path(__file__).parent


@dataclass
class Run(WorkerRun):
    """One worker, its queue, and the job module as the test side sees it."""

    url: str
    queue: Any
    prefix: str
    dir: Path
    jobs: ModuleType
    worker: subprocess.Popen[bytes]
    log: Path

    @property
    def locker(self) -> kannuki.Locker:
        return self.jobs.locker  # type: ignore[no-any-return]

    def finished(self, job: Any) -> Any:
        """The job's return value once the worker finished it (a failure fails the test)."""
        self.until(
            lambda: job.get_status(refresh=True) in ("finished", "failed"), f"job {job.id} never ended"
        )
        assert job.get_status() == "finished", job.latest_result().exc_string
        return job.return_value()

    def failed(self, job: Any) -> str:
        self.until(
            lambda: job.get_status(refresh=True) in ("finished", "failed"), f"job {job.id} never ended"
        )
        assert job.get_status() == "failed"
        return job.latest_result().exc_string  # type: ignore[no-any-return]

    def held_keys(self) -> list[str]:
        return [h.name for h in self.locker.backend.list_held() if h.name.startswith(self.prefix + ":")]


def start_worker(tmp: Path, url: str, locks: str | None = None) -> Run:
    """An ``rq worker`` on ``url`` (Redis), with its locks on ``locks`` (None: the same Redis)."""
    tag = uuid.uuid4().hex[:8]
    queue_name, prefix = f"kannuki-test-{tag}", f"t-{tag}"
    markers = tmp / "markers"
    markers.mkdir()
    src = str(Path(kannuki.__file__).parent.parent)
    settings = {"KANNUKI_RQ_LOCKS": locks or url, "KANNUKI_RQ_PREFIX": prefix, "KANNUKI_RQ_DIR": str(markers)}
    env = {**os.environ, **settings, "PYTHONPATH": os.pathsep.join([str(TESTS), src])}
    command = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--url",
        url,
        "--logging_level",
        "WARNING",
        queue_name,
    ]
    with environment(settings):
        sys.modules.pop("rq_jobs", None)
        jobs = importlib.import_module("rq_jobs")  # this process's copy: the same locker and key prefix
    queue = rq.Queue(queue_name, connection=redis.Redis.from_url(url))
    log = tmp / "worker.log"
    with open(log, "wb") as out:  # a file, not a pipe nobody drains while the test runs
        worker = subprocess.Popen(
            command, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Run(url, queue, prefix, markers, jobs, worker, log)


def work_horses(pid: int) -> list[int]:
    """The children of the worker ``pid``: the work horses it forked (each in a process group of its own)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # exited meanwhile
            pass
    return children


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_worker(run: Run) -> str:
    worker = run.worker
    horses = work_horses(worker.pid) if worker.poll() is None else []
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    for horse in horses:  # not in the worker's process group: RQ gives each its own
        kill_quietly(horse)
    try:
        run.queue.empty()
        run.queue.delete(delete_jobs=True)
    except Exception:  # the queue is per run; a leftover costs nothing
        pass
    run.locker.close()
    run.queue.connection.close()
    sys.modules.pop("rq_jobs", None)
    return run.log.read_text()


def _db2(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/2"


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def run(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """One worker for the module's tests (each uses arguments of its own): locks on Redis, or on a
    sqlite file the worker and the test process share."""
    tmp = tmp_path_factory.mktemp(f"rq-{request.param}")
    locks = f"sqlite:///{tmp}/locks.db" if request.param == "sqlite" else None
    run = start_worker(tmp, _db2(redis_url), locks)
    try:
        yield run
    finally:
        output = stop_worker(run)
    for chunk in output.split("Traceback (most recent call last):")[1:]:
        assert "shop 3 failed" in chunk, output


# -- the decorators on plain job functions ---------------------------------------------


def test_unique_decorator_duplicate_in_flight_is_skipped(run: Run) -> None:
    """Two duplicate jobs of a @locker.unique() function: one runs, the other returns None; other arguments run."""
    j = run.jobs
    first = run.queue.enqueue(j.import_batch, 7)
    run.until(lambda: run.markers("ran-7") == ["ran-7"], "the first import never started")
    # The worker runs one job at a time: the duplicate runs in this process, against the same store.
    assert j.import_batch(7) is None
    run.open_gate("batch-7")
    assert run.finished(first) == "imported 7"
    run.open_gate("batch-8")
    assert run.finished(run.queue.enqueue(j.import_batch, 8)) == "imported 8"
    assert run.markers("ran-") == ["ran-7", "ran-8"]
    assert run.held_keys() == []


def test_locked_decorator_holds_while_the_job_runs(run: Run) -> None:
    """@locker.locked("report/{account_id}") on a job: the worker holds the key in the job, not after."""
    assert run.finished(run.queue.enqueue(run.jobs.report, 5)) == "report 5 held=True"
    assert run.held_keys() == []


# -- unique_job: unique at enqueue time ------------------------------------------------


def test_unique_job_skips_duplicates_while_queued_or_running(run: Run) -> None:
    """A duplicate enqueue while one is queued or running is skipped (None); after it ends, the key is free."""
    j = run.jobs
    first = j.rebuild.enqueue(run.queue, 1)
    assert first is not None and first.meta["kannuki_ticket"]
    assert j.rebuild.enqueue(run.queue, 1) is None  # queued or running: the sender's lock is held
    run.until(lambda: run.markers("rebuild-1") == ["rebuild-1"], "the job never started")
    # Running now: still skipped, however the same arguments are spelt (defaults applied).
    assert j.rebuild.enqueue(run.queue, shop_id=1, mode="ok") is None
    assert j.rebuild.enqueue(run.queue, args=(1,), job_timeout=60) is None  # RQ's own options pass through
    assert run.locker.held(j.rebuild.key_for(1))
    run.open_gate("shop-1")
    assert run.finished(first) == "rebuilt 1"
    assert run.held_keys() == []  # released by the worker when the job returned
    again = j.rebuild.enqueue(run.queue, 1)
    assert again is not None and run.finished(again) == "rebuilt 1"
    assert run.markers("rebuild-1") == ["rebuild-1", "rebuild-1"]


def test_unique_job_failure_releases(run: Run) -> None:
    """A job that raises releases its key: the next enqueue is queued."""
    j = run.jobs
    run.open_gate("shop-3")
    assert "shop 3 failed" in run.failed(j.rebuild.enqueue(run.queue, 3, mode="fail"))
    assert run.held_keys() == []
    assert run.finished(j.rebuild.enqueue(run.queue, 3)) == "rebuilt 3"


def test_unique_job_raise_mode(run: Run) -> None:
    """on_duplicate="raise": a duplicate enqueue raises JobAlreadyQueuedError (a LockNotAcquiredError)."""
    from kannuki.contrib.rq import JobAlreadyQueuedError

    j = run.jobs
    first = j.sync_account.enqueue(run.queue, 9)
    with pytest.raises(JobAlreadyQueuedError, match="already queued or running") as caught:
        j.sync_account.enqueue(run.queue, 9)
    assert isinstance(caught.value, LockNotAcquiredError) and caught.value.key == "sync/9"
    run.open_gate("sync-9")
    assert run.finished(first) == "synced 9"
    assert run.held_keys() == []


def test_unique_job_enqueue_failure_releases(run: Run) -> None:
    """RQ refuses the job (a bad option): the key taken for it is released at once."""
    j = run.jobs
    with pytest.raises(rq.exceptions.TimeoutFormatError):
        j.rebuild.enqueue(run.queue, 6, job_timeout="not a timeout")
    assert not run.locker.held(j.rebuild.key_for(6))
    run.open_gate("shop-6")
    assert run.finished(j.rebuild.enqueue(run.queue, 6)) == "rebuilt 6"


def test_unique_job_called_directly_takes_the_key_itself(run: Run) -> None:
    """Outside a job of its own (a plain call), a unique_job function locks around its body; a duplicate is skipped."""
    j = run.jobs
    run.open_gate("shop-11")
    assert j.rebuild(11) == "rebuilt 11"
    lock = run.locker.lock(j.rebuild.key_for(11))
    with lock:
        assert j.rebuild(11) is None
    assert run.held_keys() == []


def test_unique_job_enqueued_the_plain_rq_way_takes_the_key_in_the_worker(run: Run) -> None:
    """queue.enqueue(fn, ...) of a unique_job function (no ticket): the worker takes the key while it runs."""
    j = run.jobs
    job = run.queue.enqueue(j.rebuild, 12)
    run.until(lambda: run.markers("rebuild-12") == ["rebuild-12"], "the job never started")
    assert run.locker.held(j.rebuild.key_for(12))
    assert j.rebuild.enqueue(run.queue, 12) is None  # held by the running job
    run.open_gate("shop-12")
    assert run.finished(job) == "rebuilt 12"
    assert run.held_keys() == []


# -- leases: nobody left to release ------------------------------------------------------


def test_killed_worker_frees_the_key_by_its_run_lease(redis_url: str, tmp_path: Path) -> None:
    """SIGKILL the worker (and its work horse) mid-job: nobody releases, and the run lease (1.5 s) frees the key."""
    run = start_worker(tmp_path, _db2(redis_url))
    try:
        j = run.jobs
        key = j.long_run.key_for(1)
        assert j.long_run.enqueue(run.queue, 1) is not None
        run.until(lambda: run.markers("long-1") == ["long-1"], "the job never started")
        assert run.locker.held(key)  # the enqueue lease (3600 s) became the run lease (1.5 s)
        horses = work_horses(run.worker.pid)
        assert horses, "the worker forked no work horse for the job"
        for pid in [*horses, run.worker.pid]:  # the horse runs the job (and renews its lease)
            kill_quietly(pid)
        run.worker.wait(timeout=10)
        deadline = time.monotonic() + WORKER_BOUND
        while run.locker.held(key):
            assert time.monotonic() < deadline, "the dead worker's key was never freed"
            time.sleep(0.05)
        assert (
            j.long_run.enqueue(run.queue, 1) is not None
        )  # queued again (nobody runs it: the worker is gone)
    finally:
        stop_worker(run)


def test_deleted_job_keeps_its_key_for_the_enqueue_lease_only(redis_url: str, tmp_path: Path) -> None:
    """A job deleted before any worker ran it: its key is held by the enqueue lease (ttl), not forever."""
    from kannuki.contrib.rq import unique_job

    url = _db2(redis_url)
    queue = rq.Queue(f"kannuki-test-idle-{uuid.uuid4().hex[:8]}", connection=redis.Redis.from_url(url))
    locker = kannuki.Locker(url, key_prefix=f"t-{uuid.uuid4().hex[:8]}")
    import rq_jobs

    short = unique_job(rq_jobs.mark, locker=locker, ttl=1.0)
    try:
        job = short.enqueue(queue, "x")
        assert job is not None and short.enqueue(queue, "x") is None
        job.delete()
        deadline = time.monotonic() + WORKER_BOUND
        while locker.held(short.key_for("x")):
            assert time.monotonic() < deadline, "the deleted job's key was never freed"
            time.sleep(0.05)
        assert short.enqueue(queue, "x") is not None
    finally:
        queue.delete(delete_jobs=True)
        locker.close()
        queue.connection.close()


# -- bad options -------------------------------------------------------------------------


def test_bad_options_are_refused_clearly(tmp_path: Path) -> None:
    import rq_jobs
    from kannuki.contrib.rq import unique_job

    fn = rq_jobs.mark
    with pytest.raises(ValueError, match="ttl"):
        unique_job(fn, ttl=0)
    with pytest.raises(ValueError, match="run_ttl"):
        unique_job(fn, run_ttl=-1)
    with pytest.raises(ValueError, match="on_duplicate"):
        unique_job(fn, on_duplicate="wait")
    with pytest.raises(TypeError, match="key"):
        unique_job(fn, key=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        unique_job(fn, key="")
    with pytest.raises(ValueError, match="nope"):
        unique_job(fn, key="{nope}")
    with pytest.raises(TypeError, match="locker"):
        unique_job(fn, locker="redis://")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="module level"):
        unique_job(lambda: None)


@pytest.mark.parametrize("store", ["memory", "file"])
def test_stores_without_handoff_are_refused_holding_nothing(store: str, tmp_path: Path) -> None:
    import rq_jobs
    from kannuki.contrib.rq import unique_job

    url = "memory://rq-refused" if store == "memory" else f"file://{tmp_path}/locks"
    with kannuki.Locker(url) as locker:
        job = unique_job(rq_jobs.mark, locker=locker)
        queue = rq.Queue("kannuki-never-used", connection=redis.Redis())  # never reached: refused first
        with pytest.raises(NotSupportedError, match="redis:// or sqlite://"):
            job.enqueue(queue, "y")
        assert not locker.held(job.key_for("y"))


def test_clear_import_error_without_rq() -> None:
    """Without RQ, importing the integration names the extra kannuki[rq]."""
    code = (
        "import sys; sys.modules['rq'] = None\n"
        "try:\n    import kannuki.contrib.rq\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "kannuki[rq]" in out.stdout, out.stderr


def test_an_async_locker_is_refused_at_call_time() -> None:
    """unique_job takes a kannuki.Locker: an AsyncLocker is refused naming it, before anything is held."""
    import rq_jobs
    from kannuki.contrib.rq import unique_job

    with pytest.raises(TypeError, match="locker"):
        unique_job(rq_jobs.mark, locker=kannuki.AsyncLocker("memory://rq-async"))  # type: ignore[arg-type]
