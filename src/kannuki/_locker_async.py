"""``AsyncLocker`` (async source; ``_locker.py`` with ``Locker`` is generated): one per store.

A locker holds its backend (and its connections), the defaults every lock it
makes inherits, its stats, its circuit breaker and the owner of its holds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar, overload

from kannuki import _core, _decorate, _handoff, _override
from kannuki._compat import acall
from kannuki._hold_async import AsyncHoldKeeper, LostCallback
from kannuki._lock_async import AsyncLock, AsyncMultiLock
from kannuki.backends._types import Holder
from kannuki.backends.memory_async import AsyncMemoryBackend
from kannuki.backends.registry import backend_for
from kannuki.circuit import CircuitBreaker, CircuitState
from kannuki.errors import ConfigurationError, NotSupportedError
from kannuki.events import LockerStats
from kannuki.options import DEFAULT, LockerOptions, check_seconds

__all__ = ["AsyncLocker", "lock_arguments"]

R = TypeVar("R")

# Which twin this module is: the registry hands the async API the async backend classes.
ASYNCHRONOUS = True  # sync: ASYNCHRONOUS = False


def lock_arguments(
    options: LockerOptions, backend: Any, key: str, timeout: Any, shared: Any, strategy: Any, ttl: Any
) -> tuple[str, int, float | None, str, float | None]:
    """Validate the arguments of ``lock()``: ``(name, lock_id, timeout, strategy, ttl)``.

    Raises TypeError / ValueError naming the bad parameter, NotSupportedError
    for a shared lock on a ``backend`` without them.
    """
    name, lock_id = _core.name_and_id(key, options.key_prefix)
    if timeout is DEFAULT:
        timeout = options.default_timeout
    else:
        timeout = check_seconds(timeout, "timeout")
    if strategy is None:
        strategy = options.strategy
    elif strategy not in ("blocking", "non_blocking", "retry"):
        raise ValueError(f"strategy must be 'blocking', 'non_blocking' or 'retry'; got {strategy!r}")
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be True or False, not {shared!r}")
    if ttl is not None:
        ttl = check_seconds(ttl, "ttl")
        if not ttl:
            raise ValueError("ttl must be > 0 seconds, or None")
    if shared and not backend.supports_shared:
        raise NotSupportedError(
            f"the {backend.scheme} backend has no shared locks; use an exclusive lock (shared=False)", key=key
        )
    return name, lock_id, timeout, strategy, ttl


class AsyncLocker:
    """Advisory locks on one store.

    ``url_or_connection`` is a URL (``postgresql://``, ``mysql://``,
    ``memory://``, ``sqlite:///path``, ``file:///dir``, ``redis://``) or a
    connection / pool / client the caller already has. Options: ``key_prefix``,
    ``default_timeout`` (seconds; None waits forever), ``strategy``
    (``"blocking"``, ``"non_blocking"``, ``"retry"``), ``retry_attempts``,
    ``retry_interval``, ``retry_max_interval``, ``retry_backoff``,
    ``retry_jitter``, ``instrumentation``, ``circuit_failures``,
    ``circuit_reset``, ``auto_renew``, ``on_lost``; anything else goes to the
    backend (pool size, ttl, connect timeout ...).

    Example::

        locker = kannuki.AsyncLocker("postgresql://app@db/app", key_prefix="billing")
        async with locker.lock("invoice/42", timeout=5):
            ...

    Raises ConfigurationError for a bad URL or option. Connections are made
    on first use, not here.
    """

    def __init__(self, url_or_connection: Any = None, /, **options: Any) -> None:
        self.options, backend_options = LockerOptions.split(options)
        if url_or_connection is None:
            url_or_connection = os.environ.get("KANNUKI_URL") or None
            if url_or_connection is None:
                raise ConfigurationError(
                    "url is required: pass a URL (or a connection, pool or client), or set $KANNUKI_URL"
                )
        backend = backend_for(url_or_connection, asynchronous=ASYNCHRONOUS, **backend_options)
        self._own_backend = backend
        self.scheme: str = backend.scheme
        self._stats = _core.Counters()
        self._circuit = (
            CircuitBreaker(self.options.circuit_failures, self.options.circuit_reset)
            if self.options.circuit_failures
            else None
        )
        self._keeper = AsyncHoldKeeper(
            backend,
            stats=self._stats,
            scheme=self.scheme,
            instrumented=self.options.instrumentation,
            on_lost=self.options.on_lost,
            auto_renew=self.options.auto_renew,
            watch_interval=self.options.watch_interval,
        )
        # ``lock(key)`` with every option defaulted is made by the core, which remembers recent keys' names.
        path = self._keeper.path
        path.set_defaults(
            self.options.key_prefix, self.options.default_timeout, self.options.strategy, DEFAULT
        )
        self._make_lock = path.make
        # The store's uncontended entry for plain locks; an open circuit must be able to refuse, so none then.
        self._fast = backend.fast_path() if self._circuit is None else None
        self._keeper.use_table(self._fast)
        _override.track(self)

    def __repr__(self) -> str:
        return f"<kannuki.AsyncLocker {self.backend.describe()}>"

    @property
    def backend(self) -> Any:
        """The store behind this locker (test mode's table while test mode is on)."""
        return self._keeper.backend

    # -- test mode (kannuki._override) -------------------------------------------

    def _use_table(self, table: Any) -> None:
        backend = AsyncMemoryBackend(table)
        self._keeper.backend = backend
        self._fast = backend.fast_path() if self._circuit is None else None
        self._keeper.use_table(self._fast)

    def _use_own_backend(self) -> None:
        self._keeper.backend = self._own_backend
        self._fast = self._own_backend.fast_path() if self._circuit is None else None
        self._keeper.use_table(self._fast)

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
        on_lost: LostCallback | None = None,
        cancel_on_lost: bool = False,
    ) -> AsyncLock:
        """A :class:`AsyncLock` on ``key`` (not yet acquired).

        ``timeout`` defaults to the locker's ``default_timeout`` (None waits
        forever); ``strategy`` to the locker's. ``shared=True`` asks for a
        shared (reader) lock; ``ttl`` for a lease on stores that have them;
        ``transaction`` for a transaction-level lock (PostgreSQL);
        ``on_lost(lock, reason)`` is called once if this lock is lost while
        held, besides the locker's ``on_lost``; ``cancel_on_lost`` (async) cancels
        the ``async with`` body's task when the lock is lost and raises
        LockLostError out of the block.
        Raises TypeError / ValueError naming the bad parameter.
        """
        # Every option defaulted (the common ``with locker.lock(key):``): the core makes it in one call.
        made = self._make_lock(
            AsyncLock, self, key, timeout, shared, strategy, ttl, transaction, on_lost, cancel_on_lost
        )
        if made is not None:
            return made
        name, lock_id, timeout, strategy, ttl = lock_arguments(
            self.options, self.backend, key, timeout, shared, strategy, ttl
        )
        if on_lost is not None and not callable(on_lost):
            raise TypeError(
                f"on_lost must be a callable(lock, reason) or None, not {type(on_lost).__qualname__}"
            )
        if cancel_on_lost is not False and cancel_on_lost is not True:
            raise TypeError(f"cancel_on_lost must be True or False, not {type(cancel_on_lost).__qualname__}")
        return AsyncLock(
            self._keeper.path,
            self,
            key,
            name,
            lock_id,
            timeout,
            shared,
            strategy,
            ttl,
            transaction,
            on_lost,
            cancel_on_lost,
        )

    def lock_many(
        self,
        keys: Iterable[str],
        *,
        timeout: float | None = DEFAULT,
        shared: bool = False,
        ttl: float | None = None,
    ) -> AsyncMultiLock:
        """A :class:`AsyncMultiLock` that takes every key or none, in a fixed (lock ID) order."""
        if isinstance(keys, str):
            raise TypeError("keys must be an iterable of keys, not a single str")
        locks = [self.lock(key, timeout=timeout, shared=shared, ttl=ttl) for key in keys]
        if not locks:
            raise ValueError("keys must name at least one key")
        return AsyncMultiLock(self, locks, locks[0].timeout, locks[0].ttl)

    # -- the three verbs --------------------------------------------------------

    @overload  # async-only
    async def with_lock(
        self,
        key: str,
        fn: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> R | Literal[False]: ...  # async-only

    @overload  # async-only
    async def with_lock(
        self, key: str, fn: Callable[..., R], /, *args: Any, timeout: float | None = ..., **kwargs: Any
    ) -> R | Literal[False]: ...  # async-only

    async def with_lock(
        self,
        key: str,
        fn: Callable[..., Any],  # sync: fn: Callable[..., R],
        /,
        *args: Any,
        timeout: float | None = DEFAULT,
        **kwargs: Any,
    ) -> Any:  # sync: ) -> R | Literal[False]:
        """Run ``fn(*args, **kwargs)`` holding ``key``, waiting up to ``timeout``; its result, or False if not acquired."""
        lock = self.lock(key, timeout=timeout)
        if not await lock.acquire():
            return False
        try:
            return await acall(fn, *args, **kwargs)
        finally:
            await lock.release()

    @overload  # async-only
    async def try_lock(
        self, key: str, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any
    ) -> R | Literal[False]: ...  # async-only

    @overload  # async-only
    async def try_lock(
        self, key: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> R | Literal[False]: ...  # async-only

    async def try_lock(
        self,
        key: str,
        fn: Callable[..., Any],  # sync: fn: Callable[..., R],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Any:  # sync: ) -> R | Literal[False]:
        """Run ``fn`` only if ``key`` is free right now; its result, or False at once."""
        lock = self.lock(key)
        if not await lock.acquire(blocking=False):
            return False
        try:
            return await acall(fn, *args, **kwargs)
        finally:
            await lock.release()

    @overload  # async-only
    async def lock_or_raise(
        self,
        key: str,
        fn: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        timeout: float | None = ...,
        **kwargs: Any,
    ) -> R: ...  # async-only

    @overload  # async-only
    async def lock_or_raise(
        self, key: str, fn: Callable[..., R], /, *args: Any, timeout: float | None = ..., **kwargs: Any
    ) -> R: ...  # async-only

    async def lock_or_raise(
        self,
        key: str,
        fn: Callable[..., Any],  # sync: fn: Callable[..., R],
        /,
        *args: Any,
        timeout: float | None = DEFAULT,
        **kwargs: Any,
    ) -> Any:  # sync: ) -> R:
        """Run ``fn`` holding ``key``; raise LockNotAcquiredError when the lock cannot be had in ``timeout``."""
        async with self.lock(key, timeout=timeout):
            return await acall(fn, *args, **kwargs)

    async def held(self, key: str) -> bool:
        """Is ``key`` held by anyone, anywhere the store can see?"""
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return bool(await self.backend.held(name, lock_id))

    async def holders(self, key: str) -> list[Holder]:
        """Who holds ``key`` now (pid, host, application, since ...), as far as the store can tell."""
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return list(await self.backend.holders(name, lock_id))

    async def list_held(self) -> list[Holder]:
        """Every lock held in the store now, as far as it can see (``kannuki list``).

        Stores that know locks only by ID (PostgreSQL) name them ``#<id>``; the
        locks this locker holds are shown by their names.
        """
        known = self._keeper.names()
        return [
            dataclasses.replace(holder, name=known[holder.lock_id])
            if holder.name.startswith("#") and holder.lock_id in known
            else holder
            for holder in await self.backend.list_held()
        ]

    async def force_release(self, key: str, *, terminate: bool = False) -> int:
        """The operator's tool for a stranded lock: free ``key`` whoever holds it; how many holds were freed.

        Lease stores delete the record. PostgreSQL and MySQL end the holder's
        session only with ``terminate=True``, and otherwise refuse naming the
        holder. The holder's side sees a loss as usual.
        """
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return int(await self.backend.force_release(name, lock_id, terminate=terminate))

    async def adopt(
        self, ticket: str, *, ttl: float | None = None, on_lost: LostCallback | None = None
    ) -> AsyncLock:
        """Take over a lock that ``Lock.detach()`` handed off (often in another process): a Lock that holds it.

        The store is asked first: the lease is renewed now (to ``ttl`` when given, else
        to its own length) and from then on renewed every ttl/3 by this locker, like any
        lease. The new Lock releases it with the store's compare-and-delete, so a stale
        ticket never frees a newer holder's lock.

        Example::

            lock = locker.adopt(ticket, ttl=60)
            try:
                ...
            finally:
                lock.release()

        Raises LockLostError when the hold is gone (lease expired, released,
        force-released), TypeError / ValueError naming ``ticket`` when it is not a
        ticket, or is one of another store or key prefix.
        """
        parsed = _handoff.parse(ticket)
        if parsed.store != self.backend.scheme:
            raise ValueError(
                f"ticket names a lock on the {parsed.store} store; this locker uses {self.backend.scheme}"
            )
        grant = parsed.grant
        name, lock_id = _core.name_and_id(parsed.key, self.options.key_prefix)
        if (name, lock_id) != (grant.name, grant.lock_id):
            raise ValueError(
                f"ticket names the lock {grant.name!r}, which is {parsed.key!r} under another key_prefix "
                f"than this locker's ({self.options.key_prefix!r})"
            )
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl")
            if not ttl:
                raise ValueError("ttl must be > 0 seconds, or None")
        lock = self.lock(parsed.key, shared=grant.shared, ttl=ttl or grant.ttl, on_lost=on_lost)
        await lock._take_over(grant, ttl)
        return lock

    def lock_id(self, key: str) -> int:
        """The 64-bit ID of ``key`` under this locker's prefix."""
        return _core.lock_id(key, self.options.key_prefix)

    # -- decorators ----------------------------------------------------------------

    @overload
    def locked(
        self,
        key: str | Callable[..., str],
        *,
        on_conflict: Literal["skip"],
        timeout: float | None = None,
        shared: bool = False,
    ) -> _decorate.SkipDecorator: ...

    @overload
    def locked(
        self,
        key: str | Callable[..., str],
        *,
        on_conflict: Literal["wait", "raise"] = "wait",
        timeout: float | None = None,
        shared: bool = False,
    ) -> _decorate.LockDecorator: ...

    def locked(
        self,
        key: str | Callable[..., str],
        *,
        on_conflict: str = "wait",
        timeout: float | None = None,
        shared: bool = False,
    ) -> Any:
        """Decorator: run the function holding ``key`` (a template or a callable); see :func:`kannuki.locked`."""
        return _decorate.locked(key, on_conflict=on_conflict, timeout=timeout, shared=shared, locker=self)  # type: ignore[call-overload]

    @overload
    def unique(
        self, *, on_conflict: Literal["skip"] = "skip", timeout: float | None = None
    ) -> _decorate.SkipDecorator: ...

    @overload
    def unique(
        self, *, on_conflict: Literal["wait", "raise"], timeout: float | None = None
    ) -> _decorate.LockDecorator: ...

    def unique(self, *, on_conflict: str = "skip", timeout: float | None = None) -> Any:
        """Decorator: one call per distinct arguments at a time; see :func:`kannuki.unique`."""
        return _decorate.unique(on_conflict=on_conflict, timeout=timeout, locker=self)  # type: ignore[call-overload]

    # -- stats and health -------------------------------------------------------

    def stats(self) -> LockerStats:
        """Counts since this locker was made (acquired, failed, timeouts, released, lost, renewals) and hold time."""
        return LockerStats(*self._stats.snapshot())

    def circuit_state(self) -> CircuitState | None:
        """The circuit breaker's state, or None when ``circuit_failures`` is not set."""
        return self._circuit.state() if self._circuit is not None else None

    async def aclose(self) -> None:
        """Release every lock this locker holds, then close the backend's connections."""
        await self._keeper.close()
        if self._keeper.backend is not self._own_backend:
            await self._own_backend.aclose()

    async def __aenter__(self) -> AsyncLocker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
