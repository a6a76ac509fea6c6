"""``kannuki.contrib.celery.UniqueTask`` in one process (Celery's eager mode, a memory store).

The real worker, brokers and lease stores are in ``test_celery.py``; here are the options, the
errors and the paths a worker never shows (a send that fails, a store that cannot hand off).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery")

import kannuki  # noqa: E402  (after the importorskip)
from kannuki import testing  # noqa: E402
from kannuki.contrib.celery import DuplicateTask, DuplicateTaskError, UniqueTask  # noqa: E402


@pytest.fixture
def app() -> Iterator[Any]:
    app = celery.Celery(f"kannuki-eager-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield app
    app.close()


@pytest.fixture
def locker() -> Iterator[kannuki.Locker]:
    loc = kannuki.Locker(f"memory://celery-{uuid.uuid4().hex[:8]}")
    yield loc
    assert loc.backend.list_held() == []
    loc.close()


def test_a_duplicate_sent_from_inside_the_running_task_is_skipped(app: Any, locker: kannuki.Locker) -> None:
    """bind=True: the key leaves ``self`` out; while the task runs, the same send is a DuplicateTask."""
    seen: list[Any] = []

    @app.task(bind=True, base=UniqueTask, unique_locker=locker, name="t.report")
    def report(self: Any, account_id: int, month: str = "2024-05") -> str:
        seen.append(self.delay(account_id, month=month))
        seen.append(locker.held(report.unique_key_for((account_id,), {})))
        return f"report {account_id}"

    assert report.unique_key_for((7,), {}) == 'celery:t.report({"account_id":7,"month":"2024-05"})'
    assert report.delay(7).get() == "report 7"
    duplicate, held = seen
    assert isinstance(duplicate, DuplicateTask) and duplicate.get() is None and held is True
    assert duplicate.key == report.unique_key_for((7,), {}) and duplicate.holder is not None
    assert report(8) == "report 8"  # a direct call runs holding the key too


def test_raise_mode(app: Any, locker: kannuki.Locker) -> None:
    """unique_on_duplicate="raise": DuplicateTaskError (a LockNotAcquiredError) naming the task and key."""

    @app.task(base=UniqueTask, unique_locker=locker, unique_on_duplicate="raise", name="t.strict")
    def strict(n: int) -> int:
        return n

    key = strict.unique_key_for((1,), {})
    with locker.lock(key):
        with pytest.raises(DuplicateTaskError, match=r"t\.strict .* already queued or running") as info:
            strict.delay(1)
        assert isinstance(info.value, kannuki.LockNotAcquiredError) and info.value.key == key
        with pytest.raises(DuplicateTaskError):
            strict(1)  # run without a message: the same rule
    assert strict.delay(1).get() == 1


def test_key_options(app: Any, locker: kannuki.Locker) -> None:
    """unique_key as a template over the task's parameters, or a callable; bad ones raise naming the task."""

    @app.task(base=UniqueTask, unique_locker=locker, unique_key="shop/{shop_id}", name="t.template")
    def by_template(shop_id: int, full: bool = False) -> int:
        return shop_id

    @app.task(
        base=UniqueTask, unique_locker=locker, unique_key=lambda n, **_: f"n/{n % 2}", name="t.callable"
    )
    def by_callable(n: int) -> int:
        return n

    assert by_template.unique_key_for((3,), {"full": True}) == "shop/3"
    assert by_callable.unique_key_for((5,), {}) == "n/1"
    with locker.lock("n/1"):
        assert isinstance(by_callable.delay(3), DuplicateTask)
        assert by_callable.delay(4).get() == 4

    @app.task(base=UniqueTask, unique_locker=locker, unique_key=42, name="t.bad_key")
    def bad_key(n: int) -> int:
        return n

    @app.task(base=UniqueTask, unique_locker=locker, unique_key="x/{nope}", name="t.bad_field")
    def bad_field(n: int) -> int:
        return n

    @app.task(base=UniqueTask, unique_locker=locker, unique_on_duplicate="ignore", name="t.bad_mode")
    def bad_mode(n: int) -> int:
        return n

    @app.task(base=UniqueTask, unique_locker=locker, unique_ttl=-1, name="t.bad_ttl")
    def bad_ttl(n: int) -> int:
        return n

    @app.task(base=UniqueTask, unique_locker=locker, unique_run_ttl=0, name="t.bad_run_ttl")
    def bad_run_ttl(n: int) -> int:
        return n

    with pytest.raises(ValueError, match=r"t\.bad_ttl: unique_ttl"):
        bad_ttl.delay(1)
    with pytest.raises(ValueError, match=r"t\.bad_run_ttl: unique_run_ttl must be > 0"):
        bad_run_ttl.delay(1)
    with pytest.raises(TypeError, match=r"t\.bad_key: unique_key"):
        bad_key.delay(1)
    with pytest.raises(ValueError, match="nope"):
        bad_field.delay(1)
    with pytest.raises(ValueError, match=r"t\.bad_mode: unique_on_duplicate"):
        bad_mode.delay(1)


def test_an_eager_retry_runs_under_the_same_rules(app: Any, locker: kannuki.Locker) -> None:
    """An eager retry re-runs the task holding its key again; nothing is left held."""
    app.conf.task_eager_propagates = False  # Celery's eager retries need it off (else Retry propagates)
    tries: list[bool] = []

    @app.task(bind=True, base=UniqueTask, unique_locker=locker, max_retries=2, name="t.flaky")
    def flaky(self: Any, n: int) -> int:
        tries.append(locker.held(flaky.unique_key_for((n,), {})))
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return n

    assert flaky.delay(1).get() == 1
    assert tries == [True, True, True]


def test_a_send_that_fails_releases_the_key(
    app: Any, locker: kannuki.Locker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the broker refuses the message, the lock taken for it is released and the error raised."""

    @app.task(base=UniqueTask, unique_locker=locker, name="t.unsent")
    def unsent(n: int) -> int:
        return n

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery.Task, "apply_async", refuse)
    with pytest.raises(ConnectionError, match="broker down"):
        unsent.delay(1)
    assert not locker.held(unsent.unique_key_for((1,), {}))


def test_stores_that_cannot_hand_off_are_refused_with_nothing_held(app: Any, tmp_path: Path) -> None:
    """A file store's hold is a descriptor of the sender: NotSupportedError at send, the key free again."""
    file_locker = kannuki.Locker(f"file://{tmp_path}/locks")

    @app.task(base=UniqueTask, unique_locker=file_locker, name="t.file")
    def on_file(n: int) -> int:
        return n

    try:
        with pytest.raises(kannuki.NotSupportedError, match="handed off"):
            on_file.delay(1)
        assert not file_locker.held(on_file.unique_key_for((1,), {}))
    finally:
        file_locker.close()


def test_an_async_locker_is_refused(app: Any) -> None:
    """Celery tasks are sync: an AsyncLocker as unique_locker is a TypeError naming the task."""
    alocker = kannuki.AsyncLocker(f"memory://celery-{uuid.uuid4().hex[:8]}")

    @app.task(base=UniqueTask, unique_locker=alocker, name="t.async")
    def on_async(n: int) -> int:
        return n

    with pytest.raises(TypeError, match=r"t\.async: unique_locker must be a kannuki.Locker"):
        on_async.delay(1)


def test_the_default_locker_in_test_mode(app: Any) -> None:
    """unique_locker None uses the default locker; in kannuki's test mode, simulate_lock_held applies."""

    @app.task(base=UniqueTask, name="t.default")
    def by_default(n: int) -> int:
        return n

    with testing.test_mode():
        assert by_default.delay(1).get() == 1
        testing.simulate_lock_held(by_default.unique_key_for((2,), {}))
        assert isinstance(by_default.delay(2), DuplicateTask)


def test_clear_import_error_without_celery() -> None:
    """Without Celery, importing the integration names the extra kannuki[celery]."""
    code = (
        "import sys; sys.modules['celery'] = None\n"
        "try:\n    import kannuki.contrib.celery\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "kannuki[celery]" in out.stdout, out.stderr
