"""``memory://`` for ``AsyncLocker``: the same in-process lock table as the sync memory backend.

An ``AsyncLocker("memory://x")`` and a ``Locker("memory://x")`` share one
table, so they exclude each other. How it waits without blocking the event
loop:

- First one non-blocking try on the table (a C call, no thread, no await).
- Then a :class:`~kannuki.backends.async_base.KeyQueue` turn: the tasks of
  this process waiting for one key line up FIFO on asyncio futures, and only
  the first of them polls the table.
- That first waiter retries with capped exponential backoff (asyncio sleeps,
  never a thread), and an async release on the same table and loop wakes it
  at once, so async-to-async hand-offs do not wait for the next poll.

Why not a worker thread blocking in the table's FIFO wait: a thread cannot be
interrupted when its task is cancelled (it could take the lock after the task
is gone) and the default executor has only a few threads. The cost of polling:
against *sync* waiters queued inside the table the async waiter is not in the
table's FIFO and can be overtaken; among async waiters the order is FIFO.
Cancellation is safe by construction: every table call is synchronous, so a
cancel can only land in a sleep, when nothing is held.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from kannuki._core import Backoff
from kannuki.backends.async_base import AsyncBackend, KeyQueue
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder
from kannuki.backends.memory import MemoryBackend

__all__ = ["AsyncMemoryBackend"]

# The first waiter's polling schedule: from 1 ms, doubling, never above 50 ms (full jitter).
POLL_INTERVAL = 0.001
POLL_CAP = 0.05

# (loop, store, name) -> the future the polling waiter of that key sleeps on; a release sets it.
_wakeups: dict[tuple[asyncio.AbstractEventLoop, int, str], "asyncio.Future[None]"] = {}


class AsyncMemoryBackend(AsyncBackend):
    """Coroutine front of a sync in-process backend (its own ``memory://`` table, or test mode's)."""

    scheme = "memory"
    supports_shared = True
    supports_ttl = True

    def __init__(self, sync: Backend) -> None:
        self.sync = sync
        self.supports_shared = sync.supports_shared  # type: ignore[misc]
        # Wake-ups are per store, so two lockers on the same table wake each other.
        self._store = id(getattr(sync, "table", sync))
        self._turns = KeyQueue()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "AsyncMemoryBackend":
        return cls(MemoryBackend.from_url(url, **options))

    @classmethod
    def over(cls, sync: Backend) -> "AsyncMemoryBackend":
        """The async front of an existing sync backend whose one-try acquire never blocks (test mode's table)."""
        return cls(sync)

    async def acquire(
        self,
        name: str,
        lock_id: int,
        *,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
        transaction: Any = None,
    ) -> int:
        token = self.sync.acquire(name, lock_id, shared=shared, timeout=0.0, ttl=ttl, transaction=transaction)
        if token or timeout == 0:
            return token
        on_wait()
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self._turns.turn(name, deadline) as ours:
            if not ours:
                return 0
            return await self._poll(name, lock_id, shared, ttl, deadline)

    async def _poll(self, name: str, lock_id: int, shared: bool, ttl: float | None, deadline: float | None) -> int:
        backoff = Backoff("exponential", POLL_INTERVAL, POLL_CAP, "full")
        while True:
            token = self.sync.acquire(name, lock_id, shared=shared, timeout=0.0, ttl=ttl)
            if token:
                return token
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return 0
            await self._sleep(name, backoff.next_delay(remaining))

    async def _sleep(self, name: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        slot = (loop, self._store, name)
        wakeup: asyncio.Future[None] = loop.create_future()
        _wakeups[slot] = wakeup
        try:
            await asyncio.wait((wakeup,), timeout=seconds)
        finally:
            if _wakeups.get(slot) is wakeup:
                del _wakeups[slot]

    async def release(self, name: str, lock_id: int, token: int) -> None:
        try:
            self.sync.release(name, lock_id, token)
        finally:
            self._wake(name)

    def _wake(self, name: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        wakeup = _wakeups.get((loop, self._store, name))
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        return self.sync.renew(name, lock_id, token, ttl)

    async def held(self, name: str, lock_id: int) -> bool:
        return self.sync.held(name, lock_id)

    async def holders(self, name: str, lock_id: int) -> list[Holder]:
        return self.sync.holders(name, lock_id)

    async def list_held(self) -> list[Holder]:
        return self.sync.list_held()

    async def aclose(self) -> None:
        self.sync.close()

    def describe(self) -> str:
        return self.sync.describe()
