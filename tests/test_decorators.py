"""Decorators: ``locked`` (key template or callable) and ``unique`` (name + canonical arguments)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import decimal
import enum
import functools
import inspect
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import kannuki
from kannuki import _default as default_module
from kannuki import decorators


@pytest.fixture
def locker() -> Iterator[kannuki.Locker]:
    """A memory locker on a table of its own."""
    loc = kannuki.Locker(f"memory://dec-{uuid.uuid4().hex[:8]}")
    yield loc
    loc.close()


def hold_in_thread(locker: kannuki.Locker, key: str) -> tuple[threading.Event, threading.Thread]:
    """Hold ``key`` in another thread until the returned event is set."""
    taken, release = threading.Event(), threading.Event()

    def run() -> None:
        with locker.lock(key):
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert taken.wait(5)
    return release, thread


class User:
    def __init__(self, id: int) -> None:
        self.id = id


# -- locked: keys ------------------------------------------------------------------


def test_template_filled_from_bound_arguments_with_defaults(locker: kannuki.Locker) -> None:
    """The template sees positional, keyword and default arguments, and attribute lookups."""
    seen = []

    @locker.locked("import/{import_id}/{user.id}/{mode}")
    def run(import_id: int, user: User, mode: str = "full") -> str:
        seen.append(locker.held(f"import/{import_id}/{user.id}/{mode}"))
        return "done"

    assert run(7, User(3)) == "done"
    assert run(import_id=8, user=User(4), mode="delta") == "done"
    assert seen == [True, True]
    assert not locker.held("import/7/3/full")


def test_template_fields_from_var_keyword(locker: kannuki.Locker) -> None:
    """A function taking **kwargs can use their names in the template."""

    @locker.locked("job/{name}")
    def run(**options: object) -> bool:
        return locker.held(f"job/{options['name']}")

    assert run(name="x") is True


def test_callable_key_gets_the_arguments_as_passed(locker: kannuki.Locker) -> None:
    """A callable key receives exactly the call's args and kwargs."""
    calls = []

    def key(*args: object, **kwargs: object) -> str:
        calls.append((args, kwargs))
        return "k/" + str(args[0])

    @locker.locked(key)
    def run(a: int, b: int = 2) -> bool:
        return locker.held("k/1")

    assert run(1, b=5) is True
    assert calls == [((1,), {"b": 5})]


def test_bad_decorator_arguments_fail_when_decorating(locker: kannuki.Locker) -> None:
    """Bad on_conflict / key / timeout / shared / template fields raise at decoration time."""
    with pytest.raises(ValueError, match="on_conflict"):
        locker.locked("k", on_conflict="ignore")
    with pytest.raises(ValueError, match="on_conflict"):
        locker.unique(on_conflict="later")
    with pytest.raises(TypeError, match="key"):
        locker.locked(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        locker.locked("")
    with pytest.raises(ValueError, match="timeout"):
        locker.locked("k", timeout=-1)
    with pytest.raises(TypeError, match="shared"):
        locker.locked("k", shared="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing"):
        locker.locked("job/{missing}")(lambda present: None)
    with pytest.raises(ValueError, match="parameters"):
        locker.locked("job/{0}")(lambda present: None)


def test_keeps_metadata_and_signature(locker: kannuki.Locker) -> None:
    """functools.wraps metadata and the signature survive; async functions stay coroutine functions."""

    def plain(a: int, b: str = "x") -> int:
        """Plain doc."""
        return a

    async def coro(a: int) -> int:
        """Coro doc."""
        return a

    for decorate in (locker.locked("k/{a}"), locker.unique()):
        wrapped = decorate(plain)
        assert wrapped.__name__ == "plain" and wrapped.__doc__ == "Plain doc."
        assert inspect.signature(wrapped) == inspect.signature(plain)
        assert not inspect.iscoroutinefunction(wrapped)
        wrapped_coro = decorate(coro)
        assert wrapped_coro.__name__ == "coro" and wrapped_coro.__wrapped__ is coro
        assert inspect.iscoroutinefunction(wrapped_coro)


# -- locked: conflicts -------------------------------------------------------------


def test_skip_returns_none_without_calling(locker: kannuki.Locker) -> None:
    """on_conflict='skip' does not call the function when the key is held."""
    calls = []
    run = locker.locked("job/{n}", on_conflict="skip")(lambda n: calls.append(n) or "ran")
    with locker.lock("job/1"):
        assert run(1) is None
        assert run(2) == "ran"
    assert calls == [2]


def test_raise_fails_at_once_even_with_wait_forever_default(locker: kannuki.Locker) -> None:
    """on_conflict='raise' raises LockNotAcquiredError at once, whatever the locker's default timeout."""
    run = locker.locked("job", on_conflict="raise")(lambda: "ran")
    with locker.lock("job"):
        with pytest.raises(kannuki.LockNotAcquiredError, match="job"):
            run()
    assert run() == "ran"


def test_wait_times_out_with_explicit_and_default_timeout() -> None:
    """on_conflict='wait' raises LockNotAcquiredError after timeout; timeout=None uses default_timeout."""
    loc = kannuki.Locker(f"memory://dec-{uuid.uuid4().hex[:8]}", default_timeout=0.05)
    explicit = loc.locked("job", timeout=0.05)(lambda: "ran")
    default = loc.locked("job")(lambda: "ran")
    with loc.lock("job"):
        for run in (explicit, default):
            with pytest.raises(kannuki.LockNotAcquiredError):
                run()
    assert loc.stats().timeouts == 2
    assert explicit() == "ran"


def test_wait_gets_the_lock_when_released(locker: kannuki.Locker) -> None:
    """A waiting call runs once the holder lets go."""
    release, thread = hold_in_thread(locker, "job")
    threading.Timer(0.05, release.set).start()
    assert locker.locked("job", timeout=10)(lambda: "ran")() == "ran"
    thread.join(5)


def test_releases_when_the_function_raises(locker: kannuki.Locker) -> None:
    """An exception from the function propagates and the lock is released, in every mode."""
    for on_conflict in ("wait", "skip", "raise"):

        @locker.locked("job", on_conflict=on_conflict)
        def boom() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError):
            boom()
        assert not locker.held("job")


def test_shared_decorated_calls_share(locker: kannuki.Locker) -> None:
    """shared=True takes a shared lock: two shared holders coexist, an exclusive one is refused."""
    exclusive = locker.locked("report", on_conflict="skip")(lambda: "ran")

    @locker.locked("report", shared=True, on_conflict="raise")
    def reader() -> object:
        with locker.lock("report", shared=True, timeout=0):
            return exclusive()

    assert reader() is None


def test_module_level_decorators_find_the_default_locker_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kannuki's module-level locked/unique use the default locker configured after decoration."""
    monkeypatch.setattr(default_module, "_default", None)
    run = decorators.locked("late/{n}")(lambda n: kannuki.held(f"late/{n}"))
    once = decorators.unique()(lambda n: n)
    with pytest.raises(kannuki.ConfigurationError):
        run(1)
    kannuki.configure(f"memory://dec-{uuid.uuid4().hex[:8]}")
    assert run(1) is True
    assert once(5) == 5


# -- unique ------------------------------------------------------------------------


def test_unique_same_call_shapes_share_one_key(locker: kannuki.Locker) -> None:
    """f(1, b=2), f(1, 2) and f(a=1, b=2) are the same call; other arguments are not."""
    calls = []

    @locker.unique()
    def g(a: int, b: int = 2) -> object:
        calls.append((a, b))
        if len(calls) == 1:  # the outer call holds g(1, 2) while making these
            return [g(1, 2), g(a=1, b=2), g(1), g(1, 3)]
        return "ran"

    assert g(1, b=2) == [None, None, None, "ran"]


class Color(enum.Enum):
    RED = 1


def test_unique_encoding_is_canonical_and_process_independent() -> None:
    """The encoding of sets, dicts and special types is the same in another process with another hash seed."""

    def f(a, b=None, *rest, **extra):  # type: ignore[no-untyped-def]
        pass

    args = ({"z": 1, "a": [1, 2.5, None, True]}, frozenset({"x", "y", "zz", "q"}))
    kwargs = {
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9),
        "day": datetime.date(2024, 1, 2),
        "amount": decimal.Decimal("1.10"),
        "id": uuid.UUID(int=5),
        "raw": b"\x00\xff",
        "color": Color.RED,
    }
    here = decorators.unique_key(inspect.signature(f), args, kwargs)
    code = (
        "import datetime, decimal, enum, inspect, uuid, sys\n"
        "from kannuki import decorators\n"
        "class Color(enum.Enum):\n    RED = 1\n"
        f"Color.__module__ = {__name__!r}\n"
        "def f(a, b=None, *rest, **extra): pass\n"
        f"args = ({{'a': [1, 2.5, None, True], 'z': 1}}, frozenset({{'q', 'zz', 'y', 'x'}}))\n"
        "kwargs = dict(color=Color.RED, raw=b'\\x00\\xff', id=uuid.UUID(int=5), amount=decimal.Decimal('1.10'),\n"
        "              day=datetime.date(2024, 1, 2), when=datetime.datetime(2024, 5, 6, 7, 8, 9))\n"
        "sys.stdout.write(decorators.unique_key(inspect.signature(f), args, kwargs))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here
    assert "sha256:" in here  # this call is long enough to be hashed


def test_unique_distinguishes_types_and_hashes_long_arguments(locker: kannuki.Locker) -> None:
    """1, '1' and True give different keys; long encodings become a short hash, still distinct."""
    sig = inspect.signature(lambda a: None)
    keys = {decorators.unique_key(sig, (value,), {}) for value in (1, "1", True, 1.5, None, [1], {"1": 1})}
    assert len(keys) == 7
    long_a = decorators.unique_key(sig, ("a" * 5000,), {})
    long_b = decorators.unique_key(sig, ("a" * 4999 + "b",), {})
    assert long_a != long_b and len(long_a) < 80


def test_unique_refuses_unencodable_arguments_naming_them(locker: kannuki.Locker) -> None:
    """An argument with no stable encoding is a TypeError naming it; nothing is held afterwards."""
    calls = []
    run = locker.unique()(lambda job, items=(): calls.append(job))
    with pytest.raises(TypeError, match="'job'"):
        run(object())
    with pytest.raises(TypeError, match=r"items\[1\]"):
        run("ok", [1, object()])
    with pytest.raises(TypeError, match="dict key"):
        run({1: "int key"})
    assert calls == [] and locker.backend.list_held() == []


def test_unique_on_methods_needs_a_record_self(locker: kannuki.Locker) -> None:
    """self must be a saved record (stable identity); otherwise TypeError names 'self'; classmethods encode cls."""

    class Service:
        @locker.unique()
        def run(self, n: int) -> int:
            return n

    class Account:
        __kannuki_namespace__ = "accounts"

        def __init__(self, id: int | None) -> None:
            self.id = id

        @locker.unique()
        def sync(self) -> bool:
            return locker.held(
                f"{__name__}.{type(self).__qualname__}.sync" + '({"self":{"$record":"accounts/9"}})'
            )

        @classmethod
        @locker.unique()
        def rebuild(cls) -> str:
            return cls.__name__

    with pytest.raises(TypeError, match="'self'"):
        Service().run(1)
    assert Account(9).sync() is True
    with pytest.raises(ValueError, match="Account.id"):
        Account(None).sync()
    assert Account.rebuild() == "Account"


# -- async -------------------------------------------------------------------------


def test_async_wait_does_not_block_the_event_loop(locker: kannuki.Locker) -> None:
    """While a decorated coroutine waits, the loop runs the coroutine that releases the lock."""

    @locker.locked("job/{n}", timeout=10)
    async def job(n: int) -> str:
        await asyncio.sleep(0)
        return f"ran {n}"

    async def main() -> str:
        holder = locker.lock("job/1")
        holder.acquire()

        async def release_soon() -> None:
            await asyncio.sleep(0.05)
            holder.release()

        waiter = asyncio.ensure_future(job(1))
        await release_soon()
        return await asyncio.wait_for(waiter, 10)

    assert asyncio.run(main()) == "ran 1"
    assert not locker.held("job/1")


def test_async_skip_raise_timeout_and_exception(locker: kannuki.Locker) -> None:
    """Async: skip returns None, raise and a timed-out wait raise, an exception releases the lock."""

    @locker.locked("a", on_conflict="skip")
    async def skipper() -> str:
        return "ran"

    @locker.locked("a", on_conflict="raise")
    async def raiser() -> str:
        return "ran"

    @locker.locked("a", timeout=0.05)
    async def waiter() -> str:
        return "ran"

    @locker.unique(on_conflict="wait")
    async def boom(n: int) -> None:
        raise KeyError(n)

    async def main() -> None:
        with locker.lock("a"):
            assert await skipper() is None
            with pytest.raises(kannuki.LockNotAcquiredError):
                await raiser()
            with pytest.raises(kannuki.LockNotAcquiredError):
                await waiter()
        assert await skipper() == "ran" and await raiser() == "ran" and await waiter() == "ran"
        with pytest.raises(KeyError):
            await boom(1)

    asyncio.run(main())
    assert locker.backend.list_held() == []


def test_async_cancelled_while_waiting_leaves_nothing_held(locker: kannuki.Locker) -> None:
    """A task cancelled while its worker thread waits releases the lock the thread later gets."""
    ran = []

    @locker.locked("job", timeout=10)
    async def job() -> None:
        ran.append(True)

    release, thread = hold_in_thread(locker, "job")

    async def main() -> None:
        task = asyncio.ensure_future(job())
        await asyncio.sleep(0.05)  # the task is now waiting in its worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()  # the worker thread now gets the lock, after its task is gone

    asyncio.run(main())
    thread.join(5)
    deadline = time.monotonic() + 5
    for _ in range(500):  # the worker thread gets the lock, then gives it back
        if not locker.held("job") and locker.stats().released == locker.stats().acquired == 2:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not locker.held("job")
    assert locker.stats().acquired == locker.stats().released == 2
    assert ran == []


def test_unique_needs_a_named_function(locker: kannuki.Locker) -> None:
    """unique() refuses callables without a qualified name (their key would not be stable)."""

    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="qualified name"):
        locker.unique()(functools.partial(add, 1))


# -- AsyncLocker ----------------------------------------------------------------------


class NoThreadsExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that refuses work: any use of a worker thread fails the test."""

    def submit(self, *args: object, **kwargs: object) -> concurrent.futures.Future:  # type: ignore[override]
        raise AssertionError("a worker thread was asked for")


def test_async_locker_waits_on_the_event_loop_without_a_thread() -> None:
    """AsyncLocker + async def: the wait is on the loop (no worker thread), satisfied by an async release."""
    order = []

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(NoThreadsExecutor())
        async with kannuki.AsyncLocker(f"memory://dec-{uuid.uuid4().hex[:8]}") as alocker:

            @alocker.locked("job/{n}", timeout=10)
            async def job(n: int) -> str:
                order.append(("job", await alocker.held(f"job/{n}")))
                return f"ran {n}"

            holder = alocker.lock("job/1")
            assert await holder.acquire()
            threads = threading.active_count()
            waiter = asyncio.ensure_future(job(1))
            await asyncio.sleep(0.05)
            assert not waiter.done()  # waiting on the loop for the holder
            assert threading.active_count() == threads
            order.append(("release", True))
            await holder.release()
            assert await asyncio.wait_for(waiter, 10) == "ran 1"
            assert threading.active_count() == threads
            assert not await alocker.held("job/1")
            assert alocker.stats().acquired == alocker.stats().released == 2

    asyncio.run(main())
    assert order == [("release", True), ("job", True)]


def test_async_locker_skip_raise_timeout_and_exception() -> None:
    """AsyncLocker: skip returns None, raise and a timed-out wait raise (naming the key), an exception releases."""

    async def main() -> None:
        async with kannuki.AsyncLocker(f"memory://dec-{uuid.uuid4().hex[:8]}") as alocker:

            @alocker.locked("a", on_conflict="skip")
            async def skipper() -> str:
                return "ran"

            @alocker.locked("a", on_conflict="raise")
            async def raiser() -> str:
                return "ran"

            @decorators.locked("a", timeout=0.05, locker=alocker)
            async def waiter() -> str:
                return "ran"

            @alocker.unique(on_conflict="wait")
            async def boom(n: int) -> None:
                raise KeyError(n)

            @alocker.unique()
            async def once(n: int) -> bool:
                return await alocker.held(
                    f"{__name__}.{once.__qualname__}" + json.dumps({"n": n}, separators=(",", ":")).join("()")
                )

            async with alocker.lock("a"):
                assert await skipper() is None
                with pytest.raises(kannuki.LockNotAcquiredError, match="'a'"):
                    await raiser()
                with pytest.raises(kannuki.LockNotAcquiredError, match="within"):
                    await waiter()
            assert await skipper() == "ran" and await raiser() == "ran" and await waiter() == "ran"
            with pytest.raises(KeyError):
                await boom(1)
            assert await once(3) is True
            assert await alocker.list_held() == []
            assert alocker.stats().timeouts == 1

    asyncio.run(main())


def test_async_locker_refuses_plain_functions() -> None:
    """An AsyncLocker cannot hold a lock around a plain function: TypeError when decorating, naming it."""
    alocker = kannuki.AsyncLocker(f"memory://dec-{uuid.uuid4().hex[:8]}")

    def plain(n: int) -> int:
        return n

    for decorate in (alocker.locked("k/{n}"), alocker.unique(), decorators.locked("k", locker=alocker)):
        with pytest.raises(TypeError, match=r"plain.*AsyncLocker.*async def"):
            decorate(plain)


# -- Celery -----------------------------------------------------------------------------


def test_unique_on_a_bound_celery_task_leaves_the_task_out_of_the_key(locker: kannuki.Locker) -> None:
    """@app.task(bind=True) over unique(): self (the Task) is not encoded; duplicates are skipped, eager mode."""
    celery = pytest.importorskip("celery")
    app = celery.Celery(f"kannuki-eager-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    seen = []

    @app.task(bind=True, name="kannuki_test.bound_report")
    @locker.unique()
    def report(self: object, account_id: int, month: str = "2024-05") -> str:
        seen.append((self.request.id is not None, locker.held(key(account_id, month))))  # type: ignore[attr-defined]
        return f"report {account_id} {month}"

    def key(account_id: int, month: str) -> str:
        qualname = report.run.__qualname__
        arguments = json.dumps({"account_id": account_id, "month": month}, separators=(",", ":"))
        return f"{__name__}.{qualname}({arguments})"

    assert isinstance(report, celery.Task)
    assert report.delay(7).get(timeout=10) == "report 7 2024-05"
    assert report.apply_async(args=(7,), kwargs={"month": "2024-06"}).get(timeout=10) == "report 7 2024-06"
    assert report(8) == "report 8 2024-05"  # a direct call passes the bound task too
    assert seen == [(True, True), (True, True), (False, True)]  # (run as a task, held on the self-free key)
    with locker.lock(key(7, "2024-05")):
        assert report.delay(7).get(timeout=10) is None  # the duplicate is skipped
        assert report.delay(7, month="2024-07").get(timeout=10) == "report 7 2024-07"
    assert locker.backend.list_held() == []
    app.close()


# -- AsyncLocker: on the event loop only ----------------------------------------------------


class NoThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that refuses work: any ``run_in_executor(None, ...)`` fails the test."""

    def submit(self, fn: object, /, *args: object, **kwargs: object) -> concurrent.futures.Future[object]:
        raise AssertionError(f"a worker thread was asked to run {fn!r}")


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_async_locker_decorator_waits_and_releases_on_the_event_loop(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """@alocker.locked on an async def: the wait, the acquire and the release all run on the loop's thread.

    No thread is started and the loop's executor is never used; every lock event is emitted
    from the loop's thread (a wait in a worker thread would emit from there).
    """
    url = (
        f"memory://dec-{uuid.uuid4().hex[:8]}" if store == "memory" else request.getfixturevalue("redis_url")
    )
    started: list[str] = []
    real_start = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    threads_started: list[str] = []
    events: list[tuple[str, str]] = []
    unsubscribe = kannuki.subscribe(lambda e: events.append((e.name, threading.current_thread().name)))

    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(NoThreadExecutor())
        alocker = kannuki.AsyncLocker(url, key_prefix=f"dec-{uuid.uuid4().hex[:8]}")
        try:

            @alocker.locked("job/{n}")
            async def job(n: int) -> int:
                await asyncio.sleep(0)
                return n

            async with alocker.lock("job/1"):  # held, so the first job(1) has to wait
                first = asyncio.ensure_future(job(1))
                for _ in range(2000):  # a liveness bound: until the job waits for the key
                    if ("waiting", threading.current_thread().name) in events:
                        break
                    await asyncio.sleep(0.005)
                assert not first.done()
            results = [await first, *await asyncio.gather(job(1), job(2))]
        finally:
            await alocker.aclose()
        threads_started.extend(started)  # before asyncio.run's own shutdown thread
        return results

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    try:
        assert asyncio.run(asyncio.wait_for(main(), 30)) == [1, 1, 2]
    finally:
        unsubscribe()
    loop_thread = threading.current_thread().name
    names = [name for name, _ in events]
    assert names.count("waiting") >= 1 and names.count("acquired") == names.count("released") == 4
    assert {thread for _, thread in events} == {loop_thread}
    assert threads_started == []
