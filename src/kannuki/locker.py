"""``Locker``: the entry point. One per store; makes locks and runs the three verbs.

A Locker holds its backend (and its connections) and the defaults every lock
it makes inherits. ``kannuki.configure()`` sets a module default locker that
the module-level verbs (``kannuki.with_lock`` ...) use.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Callable, Iterable, TypeVar

from kannuki import _core
from kannuki import events as _events
from kannuki import lock as _lock
from kannuki.backends import backend_for
from kannuki.backends.base import Backend, BackendListener, Holder
from kannuki.circuit import CircuitBreaker, CircuitState
from kannuki.errors import ConfigurationError, NotSupportedError
from kannuki.events import LockerStats
from kannuki.lock import Lock, MultiLock
from kannuki.options import DEFAULT, LockerOptions, check_seconds

__all__ = [
    "Locker",
    "configure",
    "get_locker",
    "held",
    "lock",
    "lock_or_raise",
    "try_lock",
    "with_lock",
]

log = logging.getLogger("kannuki")
T = TypeVar("T")

_live_backends: "weakref.WeakSet[Backend]" = weakref.WeakSet()


def _forget_parent_connections() -> None:
    for backend in list(_live_backends):
        backend.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_connections)


class _Listener(BackendListener):
    """Turns a backend's out-of-band reports into stats and events of its locker."""

    def __init__(self, locker: "Locker") -> None:
        self._locker = weakref.ref(locker)

    def _find(self, lock_id: int, token: int) -> Lock | None:
        locker = self._locker()
        return None if locker is None else locker._held_by_id.get((lock_id, token))

    def lost(self, name: str, lock_id: int, token: int, reason: str) -> None:
        lock = self._find(lock_id, token)
        if lock is not None:
            lock._mark_lost(reason)

    def renewed(self, name: str, lock_id: int, token: int) -> None:
        locker, lock = self._locker(), self._find(lock_id, token)
        if locker is not None:
            locker._count_renewal(lock, ok=True)

    def renew_failed(self, name: str, lock_id: int, token: int, error: BaseException) -> None:
        locker, lock = self._locker(), self._find(lock_id, token)
        if locker is not None:
            locker._count_renewal(lock, ok=False)


def lock_arguments(
    options: LockerOptions, backend: Any, key: str, timeout: Any, shared: Any, strategy: Any, ttl: Any
) -> tuple[str, int, float | None, str, float | None]:
    """Validate the arguments of ``lock()`` (shared by Locker and AsyncLocker): ``(name, lock_id, timeout, strategy, ttl)``.

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


class LockerBookkeeping:
    """Stats, events and the circuit breaker's counts, shared by :class:`Locker` and ``kannuki.aio.AsyncLocker``.

    Needs ``_stats``, ``_instrumented``, ``_circuit`` and ``scheme`` on the instance.
    """

    _stats: "_core.Counters"
    _instrumented: bool
    _circuit: CircuitBreaker | None
    scheme: str

    def _count_failure(self) -> None:
        if self._circuit is not None:
            self._circuit.failed()

    def _count_not_acquired(self, lock: Lock, timed_out: bool, waited: float) -> None:
        self._stats.add("failed")
        if timed_out:
            self._stats.add("timeouts")
        if self._instrumented and _events.SUBSCRIBERS:
            name = "timeout" if timed_out else "failed"
            _events.emit(name, lock.key, lock.lock_id, self.scheme, waited, None, lock.shared)

    def _count_lost(self, lock: Lock, token: int, held: float, reason: str) -> None:
        self._stats.add("lost")
        log.warning("kannuki lost the lock %r (token %s) after %.3fs: %s", lock.key, token, held, reason)
        if self._instrumented and _events.SUBSCRIBERS:
            _events.emit("lost", lock.key, lock.lock_id, self.scheme, held, token, lock.shared)

    def _count_renewal(self, lock: Lock | None, *, ok: bool) -> None:
        self._stats.add("renewed" if ok else "renew_failed")
        if ok and lock is not None and self._instrumented and _events.SUBSCRIBERS:
            _events.emit("renewed", lock.key, lock.lock_id, self.scheme, 0.0, lock._token, lock.shared)


class Locker(LockerBookkeeping):
    """Advisory locks on one store.

    ``url_or_connection`` is a URL (``postgresql://``, ``mysql://``,
    ``memory://``, ``sqlite:///path``, ``file:///dir``, ``redis://``) or a
    connection / pool the caller already has. Options: ``key_prefix``,
    ``default_timeout`` (seconds; None waits forever), ``strategy``
    (``"blocking"``, ``"non_blocking"``, ``"retry"``), ``retry_attempts``,
    ``retry_interval``, ``retry_max_interval``, ``retry_backoff``,
    ``retry_jitter``, ``instrumentation``, ``circuit_failures``,
    ``circuit_reset``, ``auto_renew``; anything else goes to the backend
    (pool size, ttl, connect timeout ...).

    Example::

        locker = kannuki.Locker("postgresql://app@db/app", key_prefix="billing")
        with locker.lock("invoice/42", timeout=5):
            ...

    Raises ConfigurationError for a bad URL or option. Connections are made
    on first use, not here.
    """

    def __init__(self, url_or_connection: Any = None, /, **options: Any) -> None:
        self.options, backend_options = LockerOptions.split(options)
        if url_or_connection is None:
            url_or_connection = os.environ.get("KANNUKI_URL") or None
        self._backend: Backend = backend_for(url_or_connection, **backend_options)
        self.scheme = self._backend.scheme
        self._instrumented = self.options.instrumentation
        self._stats = _core.Counters()
        self._circuit = (
            CircuitBreaker(self.options.circuit_failures, self.options.circuit_reset)
            if self.options.circuit_failures
            else None
        )
        # Locks held now, by (lock_id, token): kept only for stores that report losses out of
        # band or renew leases, so the memory hot path pays nothing for it.
        self._held_by_id: "weakref.WeakValueDictionary[tuple[int, int], Lock]" = weakref.WeakValueDictionary()
        self._renewer: Any = None
        self._track_held = self._backend.reports_loss
        if self._track_held and self._backend.supports_ttl and self.options.auto_renew:
            from kannuki.renewal import Renewer

            self._renewer = Renewer(self)
        # The store's uncontended entry for plain locks; an open circuit must be able to refuse, so none then.
        self._fast_path = self._backend.fast_path() if self._circuit is None else None
        self._backend.set_listener(_Listener(self))
        _live_backends.add(self._backend)

    def __repr__(self) -> str:
        return f"<kannuki.Locker {self._backend.describe()}>"

    @property
    def backend(self) -> Backend:
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
    ) -> Lock:
        """A :class:`Lock` on ``key`` (not yet acquired).

        ``timeout`` defaults to the locker's ``default_timeout`` (None waits
        forever); ``strategy`` to the locker's. ``shared=True`` asks for a
        shared (reader) lock; ``ttl`` for a lease on stores that have them;
        ``transaction`` for a transaction-level lock (PostgreSQL).
        Raises TypeError / ValueError naming the bad parameter.
        """
        options = self.options
        if timeout is DEFAULT and shared is False and strategy is None and ttl is None:
            # Every lock option defaulted (the common ``with locker.lock(key):``): the locker's
            # defaults were validated when it was made, so only the key needs checking.
            name, lock_id = _core.name_and_id(key, options.key_prefix)
            timeout, strategy = options.default_timeout, options.strategy
        else:
            name, lock_id, timeout, strategy, ttl = lock_arguments(
                options, _lock.current_backend(self), key, timeout, shared, strategy, ttl
            )
        return Lock(self, key, name, lock_id, timeout, shared, strategy, ttl, transaction)

    def lock_many(self, keys: Iterable[str], *, timeout: float | None = DEFAULT, shared: bool = False) -> MultiLock:
        """A :class:`MultiLock` that takes every key or none, in a fixed (lock ID) order."""
        if isinstance(keys, str):
            raise TypeError("keys must be an iterable of keys, not a single str")
        locks = [self.lock(key, timeout=timeout, shared=shared) for key in keys]
        if not locks:
            raise ValueError("keys must name at least one key")
        return MultiLock(self, locks, locks[0].timeout)

    # -- the three verbs --------------------------------------------------------

    def with_lock(self, key: str, fn: Callable[..., T], /, *args: Any, timeout: float | None = DEFAULT, **kwargs: Any) -> T | bool:
        """Run ``fn(*args, **kwargs)`` holding ``key``, waiting up to ``timeout``; its result, or False if not acquired."""
        lock = self.lock(key, timeout=timeout)
        if not lock.acquire():
            return False
        try:
            return fn(*args, **kwargs)
        finally:
            lock.release()

    def try_lock(self, key: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | bool:
        """Run ``fn`` only if ``key`` is free right now; its result, or False at once."""
        lock = self.lock(key)
        if not lock.acquire(blocking=False):
            return False
        try:
            return fn(*args, **kwargs)
        finally:
            lock.release()

    def lock_or_raise(self, key: str, fn: Callable[..., T], /, *args: Any, timeout: float | None = DEFAULT, **kwargs: Any) -> T:
        """Run ``fn`` holding ``key``; raise LockNotAcquiredError when the lock cannot be had in ``timeout``."""
        with self.lock(key, timeout=timeout):
            return fn(*args, **kwargs)

    def held(self, key: str) -> bool:
        """Is ``key`` held by anyone, anywhere the store can see?"""
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return _lock.current_backend(self).held(name, lock_id)

    def holders(self, key: str) -> list[Holder]:
        """Who holds ``key`` now (pid, host, application, since ...), as far as the store can tell."""
        name, lock_id = _core.name_and_id(key, self.options.key_prefix)
        return _lock.current_backend(self).holders(name, lock_id)

    def lock_id(self, key: str) -> int:
        """The 64-bit ID of ``key`` under this locker's prefix."""
        return _core.lock_id(key, self.options.key_prefix)

    # -- decorators (kannuki.decorators) -----------------------------------------

    def locked(self, key: Any, *, on_conflict: str = "wait", timeout: float | None = None, shared: bool = False) -> Any:
        """Decorator: run the function holding ``key`` (a template or callable); see :func:`kannuki.decorators.locked`."""
        from kannuki.decorators import locked

        return locked(key, on_conflict=on_conflict, timeout=timeout, shared=shared, locker=self)

    def unique(self, *, on_conflict: str = "skip", timeout: float | None = None) -> Any:
        """Decorator: one call per distinct arguments at a time; see :func:`kannuki.decorators.unique`."""
        from kannuki.decorators import unique

        return unique(on_conflict=on_conflict, timeout=timeout, locker=self)

    # -- stats and health -------------------------------------------------------

    def stats(self) -> LockerStats:
        """Counts since this locker was made (acquired, failed, timeouts, released, lost, renewals) and hold time."""
        return LockerStats(*self._stats.snapshot())

    def circuit_state(self) -> CircuitState | None:
        """The circuit breaker's state, or None when ``circuit_failures`` is not set."""
        return self._circuit.state() if self._circuit is not None else None

    def close(self) -> None:
        """Close the backend's connections and stop its threads. Locks still held are lost."""
        if self._renewer is not None:
            self._renewer.stop()
        self._backend.close()

    def __enter__(self) -> "Locker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- the module default locker ---------------------------------------------------

_default: Locker | None = None
_default_guard = threading.Lock()


def configure(url: Any = None, **options: Any) -> Locker:
    """Set the module default locker used by ``kannuki.lock``, ``with_lock``, ``try_lock`` ... and return it.

    ``url`` defaults to the ``KANNUKI_URL`` environment variable. The previous
    default locker, if any, is closed.
    """
    global _default
    locker = Locker(url, **options)
    with _default_guard:
        previous, _default = _default, locker
    if previous is not None:
        previous.close()
    return locker


def get_locker() -> Locker:
    """The module default locker; ConfigurationError until ``kannuki.configure()`` was called.

    In test mode (``kannuki.testing.enable()``) a memory locker stands in when none was configured.
    """
    locker = _default
    if locker is not None:
        return locker
    if _lock.TEST_BACKEND is not None:
        from kannuki import testing

        return testing.default_locker()
    raise ConfigurationError("no default locker: call kannuki.configure(url, ...) first")


def lock(key: str, **options: Any) -> Lock:
    """``get_locker().lock(key, ...)``."""
    return get_locker().lock(key, **options)


def with_lock(key: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | bool:
    """``get_locker().with_lock(...)``."""
    return get_locker().with_lock(key, fn, *args, **kwargs)


def try_lock(key: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | bool:
    """``get_locker().try_lock(...)``."""
    return get_locker().try_lock(key, fn, *args, **kwargs)


def lock_or_raise(key: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``get_locker().lock_or_raise(...)``."""
    return get_locker().lock_or_raise(key, fn, *args, **kwargs)


def held(key: str) -> bool:
    """``get_locker().held(key)``."""
    return get_locker().held(key)
