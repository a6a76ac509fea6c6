"""The async twin of :mod:`kannuki.backends.base`: the interface of the stores ``AsyncLocker`` drives.

Same contract as :class:`~kannuki.backends.base.Backend`, as coroutines: the
backend is handed the validated full name and the 64-bit ID and answers with a
fencing token (> 0) or 0 for "not acquired"; the token is the handle that
``release`` takes back. Timeouts: None waits forever, 0 tries once.

One extra rule the sync interface does not need: **cancellation**. A task
cancelled inside ``acquire`` or ``release`` must leave nothing held; the
helpers here (:func:`run_to_completion`, :class:`KeyQueue`) are how the
backends keep it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from kannuki.backends.base import NO_WAIT_CALLBACK, Holder, LockRequest, StoreTraits
from kannuki.errors import ConfigurationError, NotSupportedError

__all__ = ["ASYNC_SCHEMES", "AsyncBackend", "KeyQueue", "async_backend_for", "run_to_completion"]

T = TypeVar("T")

# scheme -> (module, class), the async counterpart of kannuki.backends.SCHEMES.
ASYNC_SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("kannuki.backends.memory_async", "AsyncMemoryBackend"),
    "postgresql": ("kannuki.backends.postgres_async", "AsyncPostgresBackend"),
    "postgres": ("kannuki.backends.postgres_async", "AsyncPostgresBackend"),
}
# Asked in this order whether they can wrap a user's connection or pool.
ASYNC_CONNECTION_BACKENDS = ("postgresql",)


class AsyncBackend(StoreTraits):
    """Base class of the async stores; class flags mean what they mean on ``Backend`` (see ``StoreTraits``)."""

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "AsyncBackend":
        """Build from a URL of this backend's scheme; unknown options raise ConfigurationError. Connects lazily."""
        raise NotImplementedError

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> "AsyncBackend":
        raise NotImplementedError

    # -- locking ------------------------------------------------------------

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
        """Take the lock; its fencing token (> 0), or 0 when not acquired in ``timeout``.

        Must leave nothing held when it raises, including ``CancelledError``.
        """
        raise NotImplementedError

    async def release(self, name: str, lock_id: int, token: int) -> None:
        """Compare-and-delete release of ``token``; LockLostError if it was lost.

        Once started, a release finishes even if the calling task is cancelled.
        """
        raise NotImplementedError

    async def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        raise NotSupportedError(f"the {self.scheme} backend has no leases to renew")

    async def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[int] | None:
        """All or none, in the given (sorted) order, under one deadline; a token per request, or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tokens: list[int] = []
        try:
            for request in requests:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                token = await self.acquire(
                    request.name, request.lock_id, shared=request.shared, timeout=remaining, on_wait=on_wait
                )
                if not token:
                    break
                tokens.append(token)
            else:
                return tokens
        except BaseException:
            await run_to_completion(self._give_back(requests, tokens))
            raise
        await run_to_completion(self._give_back(requests, tokens))
        return None

    async def _give_back(self, requests: Sequence[LockRequest], tokens: list[int]) -> None:
        for request, token in zip(reversed(requests[: len(tokens)]), reversed(tokens)):
            await self.release(request.name, request.lock_id, token)

    # -- inspection ---------------------------------------------------------

    async def held(self, name: str, lock_id: int) -> bool:
        raise NotImplementedError

    async def holders(self, name: str, lock_id: int) -> list[Holder]:
        return []

    async def list_held(self) -> list[Holder]:
        return []

    # -- life cycle ---------------------------------------------------------

    async def aclose(self) -> None:
        """Close what the backend opened. Held locks are lost."""


def async_backend_class(scheme: str) -> type[AsyncBackend]:
    """The async backend class for ``scheme``; ConfigurationError when there is none."""
    import importlib

    try:
        module_name, class_name = ASYNC_SCHEMES[scheme]
    except KeyError:
        known = ", ".join(sorted(ASYNC_SCHEMES))
        raise ConfigurationError(
            f"unknown or sync-only URL scheme {scheme!r} in url; AsyncLocker supports: {known}"
        ) from None
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]


def async_backend_for(target: Any, **options: Any) -> AsyncBackend:
    """Build the async backend for a URL string or an async connection / pool object."""
    from urllib.parse import urlsplit

    if isinstance(target, AsyncBackend):
        if options:
            raise ConfigurationError(f"options {sorted(options)} cannot be applied to an already built backend")
        return target
    if isinstance(target, str):
        if "://" not in target:
            raise ConfigurationError(f"url must look like 'scheme://...', got {target!r}")
        return async_backend_class(urlsplit(target).scheme.lower()).from_url(target, **options)
    if target is None:
        raise ConfigurationError("url is required: a URL string, or an async connection or pool")
    for scheme in ASYNC_CONNECTION_BACKENDS:
        cls = async_backend_class(scheme)
        if cls.wraps(target):
            return cls.from_connection(target, **options)
    raise ConfigurationError(
        f"url must be a URL string or a supported async connection or pool, not {type(target).__qualname__}"
    )


async def run_to_completion(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the calling task is cancelled meanwhile; then re-raise the cancellation.

    For short, bounded steps that must not be cut in half (a release, an
    undo after a failed acquire): cancelling them midway would leave a lock
    held that nobody knows about.
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
                raise asyncio.CancelledError() from None
            raise
    if cancelled:
        raise asyncio.CancelledError()
    return result


class KeyQueue:
    """In-process FIFO turns per key, so one waiter per key (per event loop) waits on the store at a time.

    Later waiters queue on asyncio futures in arrival order, which gives
    FIFO order among this process's async waiters and keeps every other
    waiter off the store (no extra connection, no extra polling). Leaving
    the queue, by success, timeout, error or cancellation, hands the turn on.
    """

    def __init__(self) -> None:
        self._queues: dict[tuple[asyncio.AbstractEventLoop, str], collections.deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, name: str, deadline: float | None) -> AsyncIterator[bool]:
        """Wait for this key's turn until ``deadline`` (monotonic); yields True when it is ours, False on timeout."""
        loop = asyncio.get_running_loop()
        slot = (loop, name)
        queue = self._queues.setdefault(slot, collections.deque())
        mine: asyncio.Future[None] = loop.create_future()
        queue.append(mine)
        try:
            if queue[0] is not mine:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                await asyncio.wait((mine,), timeout=remaining)
            yield queue[0] is mine
        finally:
            was_first = queue[0] is mine
            queue.remove(mine)
            if was_first and queue and not queue[0].done():
                queue[0].set_result(None)
            if not queue:
                self._queues.pop(slot, None)

    def waiting(self, name: str) -> int:
        """How many of the running loop's tasks wait for ``name`` or have its turn."""
        queue = self._queues.get((asyncio.get_running_loop(), name))
        return len(queue) if queue else 0
