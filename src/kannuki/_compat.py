"""The primitive pairs that the async sources use and their generated sync twins get instead.

kannuki's API and backends are written once, as coroutines (``*_async.py``);
``tools/async_to_sync.py`` turns them into the sync modules by dropping
``async`` / ``await`` and renaming the names below, async spelling -> sync:

================================  ==========================================
async (source)                    sync (generated)
================================  ==========================================
``await asleep(s)``               ``sleep(s)`` (``time.sleep``)
``await arun_blocking(f, *a)``    ``run_blocking(f, *a)``: just ``f(*a)``
``await atable_acquire(t, ...)``  ``table_acquire(t, ...)``: the table's own GIL-free wait
``await atable_release(t, ...)``  ``table_release(t, ...)``
``await afinish(work)``           ``finish(work)``: the work, already done
``AMutex()``                      ``Mutex()`` (``threading.Lock``)
``AWorker(...)``                  ``Worker(...)``: a daemon thread
``await acall(fn, *a)``           ``call(fn, *a)``
``aspawn(loop, fn, *a)``          ``spawn(loop, fn, *a)``: ``fn(*a)`` now
``acancelled(exc)``               ``cancelled(exc)``: always False
``await asocket_wait(fd, d, w)``  ``socket_wait(fd, d, w)``: ``poll()`` until a deadline
================================  ==========================================

Nothing else in kannuki may tell sync from async: this module is the seam.
Both halves live here so that a change to one is seen beside the other.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import math
import select
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

from kannuki._core import Backoff

__all__ = [
    "AMutex",
    "AWorker",
    "Mutex",
    "Worker",
    "acall",
    "acancelled",
    "afinish",
    "arun_blocking",
    "asleep",
    "asocket_wait",
    "aspawn",
    "atable_acquire",
    "atable_release",
    "call",
    "cancelled",
    "finish",
    "run_blocking",
    "sleep",
    "socket_wait",
    "spawn",
    "table_acquire",
    "table_release",
]

T = TypeVar("T")
log = logging.getLogger("kannuki")

# ---------------------------------------------------------------------------------------------
# sync
# ---------------------------------------------------------------------------------------------

sleep = time.sleep
Mutex = threading.Lock


def run_blocking(fn: Callable[..., T], /, *args: Any) -> T:
    """Call a blocking driver function (the async twin runs it in a worker thread)."""
    return fn(*args)


def finish(result: T) -> T:
    """The result of work that must not be cut in half; sync code has already run it to the end."""
    return result


def call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call a user's function (the async twin also awaits it when it is a coroutine function)."""
    return fn(*args, **kwargs)


def spawn(loop: Any, fn: Callable[..., object], /, *args: Any) -> None:
    """Run ``fn(*args)`` now (the async twin schedules the coroutine on ``loop``)."""
    fn(*args)


def cancelled(exc: BaseException) -> bool:
    """Is ``exc`` the cancellation of the running task? Sync code has no tasks: never."""
    return False


def table_acquire(table: Any, key: Hashable, shared: bool, timeout: float | None, ttl: float | None) -> int:
    """Take ``key`` in an in-process lock table, waiting (GIL released, FIFO, Ctrl-C safe) up to ``timeout``."""
    return table.acquire(key, shared, timeout, ttl)  # type: ignore[no-any-return]


def table_release(table: Any, key: Hashable, token: int) -> bool:
    """Compare-and-delete in an in-process lock table."""
    return table.release(key, token)  # type: ignore[no-any-return]


def socket_wait(fd: int, deadline: float | None, write: bool = False) -> bool:
    """Wait until ``fd`` is readable (writable if ``write``) or the monotonic clock passed ``deadline`` (None: never).

    True when it is ready, False when the time ran out. The GIL is released
    meanwhile; the wait goes in slices of SIGNAL_SLICE_MS, so Ctrl-C (and a
    signal another thread handled, or ``_thread.interrupt_main``) ends it with
    KeyboardInterrupt within a slice.
    """
    poller = _pollers.get(~fd if write else fd)
    if poller is None:
        poller = _new_poller(fd, write)
    while True:
        if deadline is None:
            ms = SIGNAL_SLICE_MS
        else:
            ms = min(SIGNAL_SLICE_MS, math.ceil((deadline - time.monotonic()) * 1000))
            if ms < 0:
                return False
        try:
            if poller.poll(ms):
                return True
        except RuntimeError:  # another thread polls this descriptor number (a socket since reused): our own
            poller = _new_poller(fd, write, keep=False)


def _new_poller(fd: int, write: bool, *, keep: bool = True) -> Any:
    """A poll object watching ``fd`` (kept per descriptor number: registering anew costs more than the wait)."""
    if _poll is None:  # pragma: no cover - platforms without poll(): select, with its 1024-descriptor limit
        return _SelectPoller(fd, write)
    poller = _poll()
    poller.register(fd, _POLL_OUT if write else _POLL_IN)
    if keep:
        _pollers[~fd if write else fd] = poller
    return poller


class _SelectPoller:  # pragma: no cover - platforms without poll()
    def __init__(self, fd: int, write: bool) -> None:
        self.watched: tuple[list[int], list[int], list[int]] = ([], [fd], []) if write else ([fd], [], [])

    def poll(self, ms: int) -> bool:
        return any(select.select(*self.watched, ms / 1000))


# Longest stretch (ms) a blocking socket wait spends in poll() before Python may run its signal handlers.
SIGNAL_SLICE_MS = 100
# Poll objects by descriptor number (~fd for writing). One holds nothing but the number and the events,
# so it serves whichever socket has that number now; two threads never wait on one socket at once.
_pollers: dict[int, Any] = {}
_poll = getattr(select, "poll", None)
# An error or a hang-up counts as ready: the driver's next call reads it and says what happened.
_POLL_IN = getattr(select, "POLLIN", 1) | getattr(select, "POLLERR", 8) | getattr(select, "POLLHUP", 16)
_POLL_OUT = getattr(select, "POLLOUT", 4) | getattr(select, "POLLERR", 8) | getattr(select, "POLLHUP", 16)


class Worker:
    """One background daemon thread running ``target(worker)`` until it returns; restartable.

    ``wait(seconds)`` sleeps until ``wake()`` or the time is up; ``alive`` says
    whether the thread runs. The owner restarts it with ``start()`` when it died.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._woken = False

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, target: Callable[[Worker], object]) -> None:
        if self.alive:
            return
        thread = threading.Thread(target=target, args=(self,), name=self.name, daemon=True)
        self._thread = thread
        thread.start()

    def wait(self, seconds: float) -> None:
        with self._cond:
            if not self._woken and seconds > 0:
                self._cond.wait(seconds)
            self._woken = False

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify()

    def in_worker(self) -> bool:
        return self._thread is threading.current_thread()

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def forget(self) -> None:
        """After fork(): the thread is the parent's; this worker starts afresh."""
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self._woken = False


# ---------------------------------------------------------------------------------------------
# async
# ---------------------------------------------------------------------------------------------


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def afinish(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the calling task is cancelled meanwhile; then re-raise the cancellation.

    For short, bounded steps that must not be cut in half (a release, the undo
    of a half-made acquire): cancelling them midway would leave a lock held
    that nobody knows about.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled, not us
                raise
            cancelled = True
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError from None
            raise
    if cancelled:
        raise asyncio.CancelledError
    return result


async def arun_blocking(fn: Callable[..., T], /, *args: Any) -> T:
    """Run a blocking driver call in a worker thread, so the event loop never waits for it.

    The call always runs to its end: a task cancelled meanwhile gets its
    CancelledError only after the call returned (its outcome, a lock taken
    say, is then the caller's to undo), never while a thread still works.
    """
    loop = asyncio.get_running_loop()
    return await afinish(loop.run_in_executor(None, lambda: fn(*args)))


async def acall(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call a user's function, sync or async: a coroutine's result is awaited."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def aspawn(loop: Any, fn: Callable[..., Coroutine[Any, Any, object]], /, *args: Any) -> None:
    """Run the coroutine ``fn(*args)`` as a task on ``loop`` (from any thread; e.g. a finalizer).

    When the loop is gone there is nobody to run it: the work is dropped with a log line.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    target: asyncio.AbstractEventLoop | None = running or loop
    if target is None or target.is_closed():
        log.warning("kannuki: no running event loop to finish %s on", getattr(fn, "__qualname__", fn))
        return
    if target is running:
        task: asyncio.Task[object] = target.create_task(fn(*args))
        _background.add(task)
        task.add_done_callback(_background.discard)
    else:
        target.call_soon_threadsafe(aspawn, target, fn, *args)


# Tasks started by aspawn, kept alive until they finish (the loop holds only weak references).
_background: set[asyncio.Task[object]] = set()


def acancelled(exc: BaseException) -> bool:
    """Is ``exc`` the cancellation of the running task?"""
    return isinstance(exc, asyncio.CancelledError)


async def asocket_wait(fd: int, deadline: float | None, write: bool = False) -> bool:
    """Wait, on the event loop, until ``fd`` is readable (writable if ``write``) or the monotonic clock passed ``deadline``.

    True when it is ready, False when the time ran out (None: no limit). A
    cancelled task leaves no reader, writer or timer behind.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()
    watch, unwatch = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    watch(fd, _settle, ready, True)
    timer = (
        None
        if deadline is None
        else loop.call_later(max(0.0, deadline - time.monotonic()), _settle, ready, False)
    )
    try:
        return await ready
    finally:
        unwatch(fd)
        if timer is not None:
            timer.cancel()


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class AMutex:
    """The async twin of ``threading.Lock`` for state touched between awaits: a no-op.

    One event loop runs one task at a time and nothing awaits while holding it,
    so there is nothing to exclude; the sync twin is a real lock.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


# The polling schedule of an async waiter on an in-process table: 1 ms doubling to 50 ms.
TABLE_POLL_INTERVAL = 0.001
TABLE_POLL_CAP = 0.05

# Per (loop, table, key): the FIFO of async waiters; the first one polls the table.
_turns: dict[tuple[int, int, Hashable], collections.deque[asyncio.Future[None]]] = {}
# Per (loop, table, key): what the polling waiter sleeps on; an async release sets it.
_wakeups: dict[tuple[int, int, Hashable], asyncio.Future[None]] = {}


async def atable_acquire(
    table: Any, key: Hashable, shared: bool, timeout: float | None, ttl: float | None
) -> int:
    """Take ``key`` in an in-process lock table without blocking the event loop.

    One non-blocking try first (a C call). Then the tasks of this loop that
    wait for the key line up FIFO on futures and only the first polls the
    table (capped backoff; an async release on the same table wakes it at
    once). Cancellation is safe by construction: every table call is
    synchronous, so a cancel lands only in a sleep, while nothing is held.
    """
    token: int = table.acquire(key, shared, 0.0, ttl)
    if token or timeout == 0:
        return token
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else time.monotonic() + timeout
    slot = (id(loop), id(table), key)
    queue = _turns.setdefault(slot, collections.deque())
    mine: asyncio.Future[None] = loop.create_future()
    queue.append(mine)
    try:
        if queue[0] is not mine:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait((mine,), timeout=remaining)
            if queue[0] is not mine:
                return 0
        backoff = Backoff("exponential", TABLE_POLL_INTERVAL, TABLE_POLL_CAP, "full")
        while True:
            token = table.acquire(key, shared, 0.0, ttl)
            if token:
                return token
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return 0
            wakeup: asyncio.Future[None] = loop.create_future()
            _wakeups[slot] = wakeup
            try:
                await asyncio.wait((wakeup,), timeout=backoff.next_delay(remaining))
            finally:
                if _wakeups.get(slot) is wakeup:
                    del _wakeups[slot]
    finally:
        was_first = queue[0] is mine
        queue.remove(mine)
        if was_first and queue and not queue[0].done():
            queue[0].set_result(None)
        if not queue:
            _turns.pop(slot, None)


async def atable_release(table: Any, key: Hashable, token: int) -> bool:
    """Compare-and-delete in an in-process table, waking this loop's polling waiter for ``key``."""
    released: bool = table.release(key, token)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return released
    wakeup = _wakeups.get((id(loop), id(table), key))
    if wakeup is not None and not wakeup.done():
        wakeup.set_result(None)
    return released


class AWorker:
    """The async twin of :class:`Worker`: one task on the event loop it was started from.

    ``target(worker)`` is a coroutine function; ``await worker.wait(s)`` sleeps
    until ``wake()`` or the time is up. A worker whose loop has stopped is not
    alive, and ``start()`` begins a new task on the running loop.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[object] | None = None
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._event: asyncio.Event | None = None

    @property
    def alive(self) -> bool:
        task = self._task
        loop = self._loop() if self._loop is not None else None
        return task is not None and not task.done() and loop is not None and not loop.is_closed()

    def start(self, target: Callable[[AWorker], Coroutine[Any, Any, object]]) -> None:
        if self.alive:
            return
        loop = asyncio.get_running_loop()
        self._loop = weakref.ref(loop)
        self._event = asyncio.Event()
        self._task = loop.create_task(target(self), name=self.name)

    async def wait(self, seconds: float) -> None:
        event = self._event
        if event is None:
            return
        if not event.is_set() and seconds > 0:
            try:
                await asyncio.wait_for(event.wait(), seconds)
            except asyncio.TimeoutError:
                pass
        event.clear()

    def wake(self) -> None:
        event, loop = self._event, self._loop() if self._loop is not None else None
        if event is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    def in_worker(self) -> bool:
        try:
            return asyncio.current_task() is self._task
        except RuntimeError:
            return False

    def join(self, timeout: float) -> None:
        """Stop the task (its loop finishes the cancellation)."""
        task = self._task
        if task is not None and not task.done() and not self.in_worker():
            loop = self._loop() if self._loop is not None else None
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    def forget(self) -> None:
        """After fork(): the task and loop are the parent's; this worker starts afresh."""
        self._task = None
        self._loop = None
        self._event = None
