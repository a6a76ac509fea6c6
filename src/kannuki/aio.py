"""``AsyncLocker`` and ``AsyncLock``: the API of :mod:`kannuki.locker` and :mod:`kannuki.lock`, as coroutines.

Kept parallel to the sync modules, section by section, so the two read side
by side: same options, validation, strategies, errors, events and stats (the
shared pieces live in lock.py / locker.py and are imported from there). What
differs is only what must: ``await`` on the backend, ``asyncio.sleep`` between
retries, and the cancellation rule (a task cancelled while acquiring or
releasing never leaves the lock held; the async backends keep it).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

from kannuki import _core
from kannuki import events as _events
from kannuki.backends.async_base import AsyncBackend, async_backend_for
from kannuki.backends.base import NO_WAIT_CALLBACK, Holder, LockRequest
from kannuki.circuit import CircuitBreaker, CircuitState
from kannuki.errors import (
    AlreadyHeldError,
    BackendError,
    LockLostError,
    LockNotAcquiredError,
    NotHeldError,
)
from kannuki.events import LockerStats
from kannuki.lock import MultiLockBase, not_acquired_error, retry_pauses
from kannuki.locker import LockerBookkeeping, lock_arguments
from kannuki.options import DEFAULT, LockerOptions, check_seconds

__all__ = ["AsyncLock", "AsyncLocker", "AsyncMultiLock"]

log = logging.getLogger("kannuki")
# The module, for its live TEST_BACKEND / FORK_GENERATION (``kannuki.lock`` the attribute is the verb).
_lock = importlib.import_module("kannuki.lock")
T = TypeVar("T")
_monotonic = time.monotonic
_emit = _events.emit

# Test mode's table seen through the async interface, rebuilt when test mode's backend changes.
_test_adapter: tuple[Any, AsyncBackend] | None = None


def current_backend(locker: "AsyncLocker") -> AsyncBackend:
    """The async backend a locker's operations go to now (test mode's table when test mode is on)."""
    global _test_adapter
    sync_test_backend = _lock.TEST_BACKEND
    if sync_test_backend is None:
        return locker._backend
    if _test_adapter is None or _test_adapter[0] is not sync_test_backend:
        from kannuki.backends.memory_async import AsyncMemoryBackend

        _test_adapter = (sync_test_backend, AsyncMemoryBackend.over(sync_test_backend))
    return _test_adapter[1]


async def _call(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)``, awaited when it returns an awaitable (so fn may be sync or async)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class AsyncLock:
    """An advisory lock on one key, owned by this object while it holds it; the async :class:`~kannuki.Lock`.

    Create it with :meth:`AsyncLocker.lock`. ``async with lock:`` acquires by
    the lock's strategy and raises :class:`~kannuki.LockNotAcquiredError` when
    it cannot; ``await lock.acquire()`` returns a bool.
    """

    __slots__ = (
        "locker", "key", "name", "lock_id", "shared", "timeout", "strategy", "ttl", "transaction",
        "_token", "_backend", "_acquired_at", "_generation", "_busy", "__weakref__",
    )

    def __init__(
        self,
        locker: "AsyncLocker",
        key: str,
        name: str,
        lock_id: int,
        *,
        timeout: float | None,
        shared: bool,
        strategy: str,
        ttl: float | None = None,
        transaction: Any = None,
    ) -> None:
        self.locker = locker
        self.key = key
        self.name = name
        self.lock_id = lock_id
        self.shared = shared
        self.timeout = timeout
        self.strategy = strategy
        self.ttl = ttl
        self.transaction = transaction
        self._token: int | None = None
        self._backend: AsyncBackend | None = None
        self._acquired_at = 0.0
        self._generation = _lock.FORK_GENERATION
        self._busy = False

    def __repr__(self) -> str:
        state = "held" if self.locked() else "free"
        mode = " shared" if self.shared else ""
        return f"<kannuki.AsyncLock {self.key!r}{mode} id={self.lock_id} {state} on {self.locker.scheme}>"

    # -- state ----------------------------------------------------------------

    @property
    def token(self) -> int | None:
        """The fencing token of the current acquisition, or None when not held."""
        return self._token if self._generation == _lock.FORK_GENERATION else None

    def locked(self) -> bool:
        """True when THIS lock object holds its lock now (not whether anyone does: see ``held()``)."""
        return self._token is not None and self._generation == _lock.FORK_GENERATION

    async def held(self) -> bool:
        """True when anyone, anywhere, holds this key."""
        return await self.locker.held(self.key)

    async def holders(self) -> list[Holder]:
        """Who holds this key now, as far as the backend can tell."""
        return await current_backend(self.locker).holders(self.name, self.lock_id)

    # -- acquire / release ----------------------------------------------------

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; True when acquired.

        ``blocking=False`` tries once. Otherwise the lock's strategy applies,
        waiting up to ``timeout`` seconds (None: the lock's own timeout).
        Cancelling the task while it waits leaves nothing held or queued.

        Raises AlreadyHeldError if this object already holds the lock,
        ValueError for a bad timeout, BackendError when the store fails.
        """
        if timeout is None:
            timeout = self.timeout
        elif not blocking:
            raise ValueError("timeout cannot be given for a non-blocking acquire (blocking=False)")
        else:
            timeout = check_seconds(timeout, "timeout")
        return await self._acquire(self.strategy if blocking else "non_blocking", timeout)

    async def release(self) -> None:
        """Release the lock; it finishes even if the task is cancelled meanwhile.

        Raises NotHeldError when this object does not hold it, LockLostError
        when the backend lost it while it was held (the lock is gone either way).
        """
        token = self._token
        if token is None or self._generation != _lock.FORK_GENERATION:
            raise NotHeldError(
                f"release() of the lock {self.key!r}, which this AsyncLock object does not hold", key=self.key
            )
        backend = self._backend
        assert backend is not None
        self._token = None
        self._backend = None
        locker = self.locker
        try:
            await backend.release(self.name, self.lock_id, token)
        except LockLostError as exc:
            locker._count_lost(self, token, _monotonic() - self._acquired_at, str(exc))  # type: ignore[arg-type]
            raise
        except BackendError:
            locker._count_failure()
            raise
        held = locker._stats.released(self._acquired_at)
        if locker._instrumented and _events.SUBSCRIBERS:
            _emit("released", self.key, self.lock_id, locker.scheme, held, token, self.shared)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("released %r after %.6fs (token %s)", self.key, held, token)

    async def __aenter__(self) -> "AsyncLock":
        if not await self._acquire(self.strategy, self.timeout):
            raise await self._not_acquired()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    # -- internals ------------------------------------------------------------

    async def _acquire(self, strategy: str, timeout: float | None) -> bool:
        if self._token is not None and self._generation == _lock.FORK_GENERATION:
            raise AlreadyHeldError(
                f"this AsyncLock object already holds {self.key!r}; kannuki locks are not reentrant", key=self.key
            )
        if self._busy:
            raise AlreadyHeldError(f"another task is acquiring {self.key!r} with this same AsyncLock object", key=self.key)
        locker = self.locker
        backend = current_backend(locker)
        circuit = locker._circuit
        if circuit is not None:
            circuit.check(self.key)
        instrumented = locker._instrumented and bool(_events.SUBSCRIBERS)
        start = _monotonic()
        self._busy = True
        try:
            if strategy == "retry":
                token = await self._acquire_retry(backend, timeout, instrumented)
            else:
                token = await backend.acquire(
                    self.name,
                    self.lock_id,
                    shared=self.shared,
                    timeout=0.0 if strategy == "non_blocking" else timeout,
                    ttl=self.ttl,
                    on_wait=self._emit_waiting if instrumented else NO_WAIT_CALLBACK,
                    transaction=self.transaction,
                )
        except BackendError:
            locker._count_failure()
            raise
        finally:
            self._busy = False
        # No await from here on: a cancellation cannot land between the grant and the bookkeeping.
        if circuit is not None:
            circuit.succeeded()
        if token:
            self._token = token
            self._backend = backend
            self._acquired_at = now = locker._stats.acquired()
            self._generation = _lock.FORK_GENERATION
            if instrumented:
                _emit("acquired", self.key, self.lock_id, locker.scheme, now - start, token, self.shared)
            return True
        timed_out = strategy == "blocking" and timeout != 0
        locker._count_not_acquired(self, timed_out, _monotonic() - start)  # type: ignore[arg-type]
        return False

    async def _acquire_retry(self, backend: AsyncBackend, timeout: float | None, instrumented: bool) -> int:
        import asyncio

        token: int = await backend.acquire(
            self.name, self.lock_id, shared=self.shared, timeout=0.0, ttl=self.ttl, transaction=self.transaction
        )
        for pause in retry_pauses(self.locker.options, timeout):
            if token:
                break
            if instrumented and pause.first:
                self._emit_waiting()
            await asyncio.sleep(pause.seconds)
            token = await backend.acquire(
                self.name, self.lock_id, shared=self.shared, timeout=0.0, ttl=self.ttl, transaction=self.transaction
            )
        return token

    def _emit_waiting(self) -> None:
        _emit("waiting", self.key, self.lock_id, self.locker.scheme, 0.0, None, self.shared)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("waiting for %r", self.key)

    async def _not_acquired(self) -> LockNotAcquiredError:
        try:
            holders = await self.holders()
        except Exception:  # who-holds-it is a courtesy; never mask the real outcome
            holders = []
        return not_acquired_error(self, holders)


class AsyncMultiLock(MultiLockBase):
    """Several keys taken all or none, in lock-ID order; the async :class:`~kannuki.MultiLock`.

    Made by :meth:`AsyncLocker.lock_many`; used like an AsyncLock.
    """

    __slots__ = ()

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take every key or none; True when all are held."""
        if self._tokens is not None:
            raise AlreadyHeldError(f"this AsyncMultiLock already holds {self.keys!r}", key=self.keys)
        if timeout is None:
            timeout = self.timeout
        else:
            timeout = check_seconds(timeout, "timeout")
        if not blocking:
            timeout = 0.0
        locker = self.locker
        backend = current_backend(locker)
        requests = [LockRequest(lock.name, lock.lock_id, lock.shared) for lock in self.locks]
        start = _monotonic()
        try:
            tokens = await backend.acquire_many(requests, timeout=timeout)
        except BackendError:
            locker._count_failure()
            raise
        if tokens is None:
            locker._count_not_acquired(self.locks[0], timeout != 0, _monotonic() - start)  # type: ignore[arg-type]
            return False
        instrumented = locker._instrumented and bool(_events.SUBSCRIBERS)
        for lock, token in zip(self.locks, tokens):
            now = locker._stats.acquired()
            if instrumented:
                _emit("acquired", lock.key, lock.lock_id, locker.scheme, now - start, token, lock.shared)
        self._tokens, self._backend, self._acquired_at = list(tokens), backend, now
        return True

    async def release(self) -> None:
        """Release every key, in reverse order; LockLostError after all if any was lost."""
        tokens, backend = self._tokens, self._backend
        if tokens is None or backend is None:
            raise NotHeldError(f"release() of {self.keys!r}, which this AsyncMultiLock does not hold", key=self.keys)
        self._tokens = self._backend = None
        locker = self.locker
        first_error: BaseException | None = None
        for lock, token in reversed(list(zip(self.locks, tokens))):
            try:
                await backend.release(lock.name, lock.lock_id, token)
            except LockLostError as exc:
                locker._count_lost(lock, token, _monotonic() - self._acquired_at, str(exc))  # type: ignore[arg-type]
                first_error = first_error or exc
                continue
            except BackendError as exc:
                first_error = first_error or exc
                continue
            held = locker._stats.released(self._acquired_at)
            if locker._instrumented and _events.SUBSCRIBERS:
                _emit("released", lock.key, lock.lock_id, locker.scheme, held, token, lock.shared)
        if first_error is not None:
            raise first_error

    async def __aenter__(self) -> "AsyncMultiLock":
        if not await self.acquire():
            raise LockNotAcquiredError(
                f"could not acquire all of {self.keys!r}"
                + (f" within {self.timeout:g}s" if self.timeout else " at once" if self.timeout == 0 else ""),
                key=self.keys,
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class AsyncLocker(LockerBookkeeping):
    """Advisory locks on one store, for asyncio code; the async :class:`~kannuki.Locker`.

    ``url_or_connection`` is a ``postgresql://`` or ``memory://`` URL, or a
    psycopg ``AsyncConnection`` / psycopg_pool ``AsyncConnectionPool`` the
    caller already has. Options are the Locker's (``key_prefix``,
    ``default_timeout``, ``strategy``, ``retry_*``, ``instrumentation``,
    ``circuit_*``); the rest go to the backend.

    Example::

        async with kannuki.AsyncLocker("postgresql://app@db/app") as locker:
            async with locker.lock("invoice/42", timeout=5):
                ...

    Raises ConfigurationError for a bad URL or option. Connections are made
    on first use, not here.
    """

    def __init__(self, url_or_connection: Any = None, /, **options: Any) -> None:
        self.options, backend_options = LockerOptions.split(options)
        if url_or_connection is None:
            url_or_connection = os.environ.get("KANNUKI_URL") or None
        self._backend: AsyncBackend = async_backend_for(url_or_connection, **backend_options)
        self.scheme = self._backend.scheme
        self._instrumented = self.options.instrumentation
        self._stats = _core.Counters()
        self._circuit = (
            CircuitBreaker(self.options.circuit_failures, self.options.circuit_reset)
            if self.options.circuit_failures
            else None
        )

    def __repr__(self) -> str:
        return f"<kannuki.AsyncLocker {self._backend.describe()}>"

    @property
    def backend(self) -> AsyncBackend:
        """The store behind this locker."""
        return self._backend

    # -- making locks -----------------------------------------------------------

    def lock(
        self,
        key: str,
        *,
        timeout: float | None = DEFAULT,
        shared: bool = False,
        strategy: str | None = None,
        ttl: float | None = None,
        transaction: Any = None,
    ) -> AsyncLock:
        """An :class:`AsyncLock` on ``key`` (not yet acquired); arguments as :meth:`kannuki.Locker.lock`.

        Raises TypeError / ValueError naming the bad parameter.
        """
        name, lock_id, timeout, strategy, ttl = lock_arguments(
            self.options, current_backend(self), key, timeout, shared, strategy, ttl
        )
        return AsyncLock(
            self, key, name, lock_id,
            timeout=timeout, shared=shared, strategy=strategy, ttl=ttl, transaction=transaction,
        )

    def lock_many(self, keys: Iterable[str], *, timeout: float | None = DEFAULT, shared: bool = False) -> AsyncMultiLock:
        """An :class:`AsyncMultiLock` that takes every key or none, in a fixed (lock ID) order."""
        if isinstance(keys, str):
            raise TypeError("keys must be an iterable of keys, not a single str")
        locks = [self.lock(key, timeout=timeout, shared=shared) for key in keys]
        if not locks:
            raise ValueError("keys must name at least one key")
        return AsyncMultiLock(self, locks, locks[0].timeout)

    # -- the three verbs --------------------------------------------------------

    async def with_lock(
        self, key: str, fn: Callable[..., T | Awaitable[T]], /, *args: Any, timeout: float | None = DEFAULT, **kwargs: Any
    ) -> T | bool:
        """Run ``fn(*args, **kwargs)`` (sync or async) holding ``key``, waiting up to ``timeout``; its result, or False."""
        lock = self.lock(key, timeout=timeout)
        if not await lock.acquire():
            return False
        try:
            return await _call(fn, args, kwargs)  # type: ignore[no-any-return]
        finally:
            await lock.release()

    async def try_lock(self, key: str, fn: Callable[..., T | Awaitable[T]], /, *args: Any, **kwargs: Any) -> T | bool:
        """Run ``fn`` (sync or async) only if ``key`` is free right now; its result, or False at once."""
        lock = self.lock(key)
        if not await lock.acquire(blocking=False):
            return False
        try:
            return await _call(fn, args, kwargs)  # type: ignore[no-any-return]
        finally:
            await lock.release()

    async def lock_or_raise(
        self, key: str, fn: Callable[..., T | Awaitable[T]], /, *args: Any, timeout: float | None = DEFAULT, **kwargs: Any
    ) -> T:
        """Run ``fn`` (sync or async) holding ``key``; raise LockNotAcquiredError when it cannot be had in ``timeout``."""
        async with self.lock(key, timeout=timeout):
            return await _call(fn, args, kwargs)  # type: ignore[no-any-return]

    async def held(self, key: str) -> bool:
        """Is ``key`` held by anyone, anywhere the store can see?"""
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return await current_backend(self).held(name, lock_id)

    async def holders(self, key: str) -> list[Holder]:
        """Who holds ``key`` now (pid, host, application, since ...), as far as the store can tell."""
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return await current_backend(self).holders(name, lock_id)

    def lock_id(self, key: str) -> int:
        """The 64-bit ID of ``key`` under this locker's prefix."""
        return _core.lock_id(key, self.options.key_prefix)

    # -- stats and health -------------------------------------------------------

    def stats(self) -> LockerStats:
        """Counts since this locker was made (acquired, failed, timeouts, released, lost, renewals) and hold time."""
        return LockerStats(*self._stats.snapshot())

    def circuit_state(self) -> CircuitState | None:
        """The circuit breaker's state, or None when ``circuit_failures`` is not set."""
        return self._circuit.state() if self._circuit is not None else None

    async def aclose(self) -> None:
        """Close the backend's connections. Locks still held are lost."""
        await self._backend.aclose()

    async def __aenter__(self) -> "AsyncLocker":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
