"""A ``unique`` task under Celery's ``@app.task``, run by a real Celery worker with a Redis broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

celery = pytest.importorskip("celery")
pytest.importorskip("redis")

TASKS = """
import os, time
import kannuki
from celery import Celery

BROKER = os.environ["KANNUKI_CELERY_BROKER"]
app = Celery("kannuki_celery_tasks", broker=BROKER, backend=BROKER)
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue=os.environ["KANNUKI_CELERY_QUEUE"],
                worker_prefetch_multiplier=1)
locker = kannuki.Locker(os.environ["KANNUKI_CELERY_LOCKS"], key_prefix=os.environ["KANNUKI_CELERY_PREFIX"])

@app.task(name="kannuki_test.import_batch")
@locker.unique(on_conflict="skip")
def import_batch(batch_id, marker_dir):
    open(os.path.join(marker_dir, f"ran-{batch_id}-{time.monotonic_ns()}"), "w").close()
    time.sleep(1.5)  # long enough for the duplicate to arrive while this one holds the lock
    return f"imported {batch_id}"
"""


def broker_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


@pytest.mark.redis
@pytest.mark.slow
def test_duplicate_unique_tasks_one_runs_one_is_skipped(redis_url: str, tmp_path: Path) -> None:
    """Two duplicate tasks in flight on a 2-thread worker: one runs, the other returns None at once."""
    import kannuki

    (tmp_path / "kannuki_celery_tasks.py").write_text(textwrap.dedent(TASKS))
    markers = tmp_path / "markers"
    markers.mkdir()
    prefix, queue = f"t-{uuid.uuid4().hex[:8]}", f"kannuki-test-{uuid.uuid4().hex[:8]}"
    broker = broker_url(redis_url)
    src = str(Path(kannuki.__file__).parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), src]),
        "KANNUKI_CELERY_BROKER": broker,
        "KANNUKI_CELERY_QUEUE": queue,
        "KANNUKI_CELERY_LOCKS": broker,  # the Redis lease store: seen by the worker and by this test
        "KANNUKI_CELERY_PREFIX": prefix,
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kannuki_celery_tasks",
            "worker",
            "--pool=threads",
            "--concurrency=2",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    app = celery.Celery("kannuki_test_client", broker=broker, backend=broker)
    app.conf.update(broker_connection_retry_on_startup=True)
    locks = kannuki.Locker(broker, key_prefix=prefix)
    try:
        first = app.send_task("kannuki_test.import_batch", args=[7, str(markers)], queue=queue)
        second = app.send_task("kannuki_test.import_batch", args=[7, str(markers)], kwargs={}, queue=queue)
        other = app.send_task("kannuki_test.import_batch", args=[8, str(markers)], queue=queue)
        results = sorted([str(first.get(timeout=20)), str(second.get(timeout=20))])
        assert results == ["None", "imported 7"]
        assert other.get(timeout=20) == "imported 8"
        assert sorted(p.name.rsplit("-", 1)[0] for p in markers.iterdir()) == ["ran-7", "ran-8"]
        assert not any(h.name.startswith(prefix + ":") for h in locks.backend.list_held())  # all released
        for result in (first, second, other):
            result.forget()
    finally:
        locks.close()
        app.close()
        worker.send_signal(signal.SIGTERM)
        try:
            output, _ = worker.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate(timeout=10)
        subprocess.run(
            [sys.executable, "-c", f"import redis; redis.Redis.from_url({broker!r}).delete({queue!r})"],
            timeout=30,
            check=False,
        )
    assert "Traceback" not in (output or ""), output
