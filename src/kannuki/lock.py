"""``Lock``: one key, acquired and released like a ``threading.Lock``.

Strategies, waiting, retry, events and stats live here, once, for every
backend. A Lock object is not reentrant and belongs to one acquirer at a time;
make one per thread (``locker.lock(key)`` is cheap).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

from kannuki import events as _events
from kannuki._core import Backoff
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, LockRequest
from kannuki.errors import (
    AlreadyHeldError,
    BackendError,
    LockLostError,
    LockNotAcquiredError,
    NotHeldError,
)
from kannuki.options import LockerOptions, check_seconds

if TYPE_CHECKING:
    from kannuki.locker import Locker

__all__ = ["Lock", "MultiLock", "MultiLockBase"]

log = logging.getLogger("kannuki")
_monotonic = time.monotonic
_emit = _events.emit

# Bumped in a forked child, so no Lock there believes it holds its parent's locks.
FORK_GENERATION = 0

# Set by kannuki.testing: while not None every locker uses this backend instead of its own.
TEST_BACKEND: Backend | None = None

# "Is debug logging off?" on the hot path without ``log.isEnabledFor`` (two Python calls):
# CPython's Logger (3.7 and later) caches that answer per level in ``_cache``, a dict that
# ``Manager._clear_cache`` empties in place whenever a level changes. Only a cached False is
# trusted; no answer sends the acquire down the general path, whose isEnabledFor call fills
# the cache again. A logging module without that dict leaves this one empty: general path.
_DEBUG = logging.DEBUG
_log_levels_cache: dict[int, bool] = getattr(log, "_cache", None)
if not isinstance(_log_levels_cache, dict):  # pragma: no cover - not CPython's logging
    _log_levels_cache = {}
_cached_log_level = _log_levels_cache.get  # bound once: the dict is only ever cleared in place


def _forked() -> None:
    global FORK_GENERATION
    FORK_GENERATION += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def current_backend(locker: "Locker") -> Backend:
    """The backend a locker's operations go to now (the test-mode table when test mode is on)."""
    return TEST_BACKEND or locker._backend


class RetryPause(NamedTuple):
    seconds: float
    first: bool  # the first pause: the moment to emit ``waiting``


def retry_pauses(options: LockerOptions, timeout: float | None) -> Iterator[RetryPause]:
    """The pauses of the ``retry`` strategy, one before each further attempt, within attempts and ``timeout``.

    Shared by :class:`Lock` (``time.sleep``) and ``kannuki.aio.AsyncLock`` (``asyncio.sleep``).
    """
    backoff = Backoff(options.retry_backoff, options.retry_interval, options.retry_max_interval, options.retry_jitter)
    deadline = None if timeout is None else _monotonic() + timeout
    for attempt in range(1, options.retry_attempts):
        remaining = None if deadline is None else deadline - _monotonic()
        if remaining is not None and remaining <= 0:
            return
        yield RetryPause(backoff.next_delay(remaining), attempt == 1)


def not_acquired_error(lock: Any, holders: Sequence[Holder]) -> LockNotAcquiredError:
    """The LockNotAcquiredError for ``lock`` (a Lock or AsyncLock) that its strategy could not take."""
    who = f"; held by {holders[0].describe()}" if holders else ""
    if lock.strategy == "non_blocking" or lock.timeout == 0:
        how = "at once"
    elif lock.strategy == "retry":
        how = f"after {lock.locker.options.retry_attempts} attempts"
    else:
        how = f"within {lock.timeout:g}s" if lock.timeout is not None else ""
    return LockNotAcquiredError(
        f"could not acquire the lock {lock.key!r} {how}{who}".rstrip(),
        key=lock.key,
        holder=holders[0] if holders else None,
    )


class Lock:
    """An advisory lock on one key, owned by this object while it holds it.

    Create it with :meth:`kannuki.Locker.lock`. ``with lock:`` acquires by the
    lock's strategy and raises :class:`~kannuki.LockNotAcquiredError` when it
    cannot; ``acquire()`` returns a bool like ``threading.Lock.acquire``.
    """

    __slots__ = (
        "locker", "key", "name", "lock_id", "shared", "timeout", "strategy", "ttl", "transaction",
        "_token", "_backend", "_acquired_at", "_generation", "_busy", "_lost", "_debug", "_fast", "__weakref__",
    )

    def __init__(
        self,
        locker: "Locker",
        key: str,
        name: str,
        lock_id: int,
        timeout: float | None,
        shared: bool,
        strategy: str,
        ttl: float | None = None,
        transaction: Any = None,
    ) -> None:
        # Positional parameters: Locker.lock() passes them so, as a class call with keywords
        # would build a dict on every ``with locker.lock(key):``.
        self.locker = locker
        self.key = key
        self.name = name  # the full name: prefix and key
        self.lock_id = lock_id
        self.shared = shared
        self.timeout = timeout
        self.strategy = strategy
        self.ttl = ttl
        self.transaction = transaction
        self._token: int | None = None
        self._backend: Backend | None = None
        self._acquired_at = 0.0
        self._generation = FORK_GENERATION
        self._debug = False  # log this hold at debug level (decided at acquire: one logger check per hold)
        self._busy = False
        self._lost: str | None = None
        # The store's uncontended entry when this lock is plain (no TTL, no transaction, no circuit).
        self._fast = locker._fast_path if ttl is None and transaction is None else None

    def __repr__(self) -> str:
        state = "held" if self.locked() else "free"
        mode = " shared" if self.shared else ""
        return f"<kannuki.Lock {self.key!r}{mode} id={self.lock_id} {state} on {self.locker.scheme}>"

    # -- state ----------------------------------------------------------------

    @property
    def token(self) -> int | None:
        """The fencing token of the current acquisition, or None when not held."""
        return self._token if self._generation == FORK_GENERATION else None

    def locked(self) -> bool:
        """True when THIS lock object holds its lock now (not whether anyone does: see ``held()``)."""
        return self._token is not None and self._generation == FORK_GENERATION and self._lost is None

    def held(self) -> bool:
        """True when anyone, anywhere, holds this key."""
        return self.locker.held(self.key)

    def holders(self) -> list[Holder]:
        """Who holds this key now, as far as the backend can tell."""
        return current_backend(self.locker).holders(self.name, self.lock_id)

    # -- acquire / release ----------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; True when acquired.

        ``blocking=False`` tries once. Otherwise the lock's strategy applies,
        waiting up to ``timeout`` seconds (None: the timeout this lock was
        made with, which may itself be None for "forever").

        Raises AlreadyHeldError if this object already holds the lock,
        ValueError for a bad timeout, BackendError when the store fails.
        """
        if timeout is None:
            timeout = self.timeout
        elif not blocking:
            raise ValueError("timeout cannot be given for a non-blocking acquire (blocking=False)")
        else:
            timeout = check_seconds(timeout, "timeout")
        if self._token is not None and self._generation == FORK_GENERATION:
            raise AlreadyHeldError(
                f"this Lock object already holds {self.key!r}; kannuki locks are not reentrant", key=self.key
            )
        if self._busy:
            raise AlreadyHeldError(f"another thread is acquiring {self.key!r} with this same Lock object", key=self.key)
        locker = self.locker
        token = 0
        fast = self._fast
        if fast is not None and TEST_BACKEND is None and not _events.SUBSCRIBERS and _cached_log_level(_DEBUG) is False:
            # A plain lock and nothing to emit or log: the uncontended case is one C call. Its
            # try is the first one of every strategy; on 0 the general path below does the rest.
            token = fast.try_acquire(self.name, self.shared)
        if token:
            backend = locker._backend
            instrumented = debug = False
            start = 0.0
        else:  # the general path: test mode, circuit, events, logs, waiting, retries
            strategy = self.strategy if blocking else "non_blocking"
            backend = TEST_BACKEND or locker._backend
            circuit = locker._circuit
            if circuit is not None:
                circuit.check(self.key)
            instrumented = locker._instrumented and bool(_events.SUBSCRIBERS)
            debug = log.isEnabledFor(_DEBUG)
            start = _monotonic() if instrumented or debug else 0.0  # only events and logs report the wait
            self._busy = True
            try:
                if strategy == "retry":
                    token = self._acquire_retry(backend, timeout, instrumented or debug)
                else:
                    token = backend.acquire(
                        self.name,
                        self.lock_id,
                        shared=self.shared,
                        timeout=0.0 if strategy == "non_blocking" else timeout,
                        ttl=self.ttl,
                        on_wait=self._emit_waiting if instrumented or debug else NO_WAIT_CALLBACK,
                        transaction=self.transaction,
                    )
            except BackendError:
                locker._count_failure()
                raise
            finally:
                self._busy = False
            if circuit is not None:
                circuit.succeeded()
            if not token:
                timed_out = strategy == "blocking" and timeout != 0
                locker._count_not_acquired(self, timed_out, _monotonic() - start if start else 0.0)
                return False
        self._token = token
        self._backend = backend
        self._acquired_at = now = locker._stats.acquired()
        self._generation = FORK_GENERATION
        self._lost = None
        self._debug = debug
        if locker._track_held:
            locker._held_by_id[self.lock_id, token] = self
            if locker._renewer is not None:
                locker._renewer.add(self)
        if instrumented:
            _emit("acquired", self.key, self.lock_id, locker.scheme, now - start, token, self.shared)
        if debug:
            log.debug("acquired %r after %.6fs (token %s)", self.key, now - start, token)
        return True

    def release(self) -> None:
        """Release the lock.

        Raises NotHeldError when this object does not hold it, LockLostError
        when the backend lost it while it was held (the lock is gone either way).
        """
        token = self._token
        if token is None or self._generation != FORK_GENERATION:
            raise NotHeldError(f"release() of the lock {self.key!r}, which this Lock object does not hold", key=self.key)
        backend = self._backend
        self._token = None
        self._backend = None
        locker = self.locker
        if locker._track_held:
            locker._held_by_id.pop((self.lock_id, token), None)
            if locker._renewer is not None:
                locker._renewer.discard(self)
        fast = self._fast
        # The store's compare-and-delete in C when it is the store we took the lock from; the
        # backend's release for everything else, including reporting a loss (fast says False).
        if self._lost is not None or fast is None or backend is not locker._backend or not fast.release(self.name, token):
            self._release_from(backend, token)
        held = locker._stats.released(self._acquired_at)
        if _events.SUBSCRIBERS and locker._instrumented:
            _emit("released", self.key, self.lock_id, locker.scheme, held, token, self.shared)
        if self._debug:
            log.debug("released %r after %.6fs (token %s)", self.key, held, token)

    def __enter__(self) -> "Lock":
        if not self.acquire():
            raise self._not_acquired()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        # Three named parameters, not *exc_info: a call CPython specialises, no tuple built.
        self.release()

    # -- internals ------------------------------------------------------------

    def _release_from(self, backend: Backend | None, token: int) -> None:
        """The backend's release of ``token``, counting a loss or a failure it reports."""
        assert backend is not None  # set with the token
        lost, self._lost = self._lost, None
        try:
            backend.release(self.name, self.lock_id, token)
        except LockLostError as exc:
            if lost is None:
                self.locker._count_lost(self, token, _monotonic() - self._acquired_at, str(exc))
            raise
        except BackendError:
            self.locker._count_failure()
            raise
        if lost is not None:
            raise LockLostError(f"the lock {self.key!r} was lost while held: {lost}", key=self.key)

    def _acquire_retry(self, backend: Backend, timeout: float | None, instrumented: bool) -> int:
        token: int = backend.acquire(
            self.name, self.lock_id, shared=self.shared, timeout=0.0, ttl=self.ttl, transaction=self.transaction
        )
        for pause in retry_pauses(self.locker.options, timeout):
            if token:
                break
            if instrumented and pause.first:
                self._emit_waiting()
            time.sleep(pause.seconds)
            token = backend.acquire(
                self.name, self.lock_id, shared=self.shared, timeout=0.0, ttl=self.ttl, transaction=self.transaction
            )
        return token

    def _emit_waiting(self) -> None:
        if self.locker._instrumented:  # also called just to log the wait at debug level
            _emit("waiting", self.key, self.lock_id, self.locker.scheme, 0.0, None, self.shared)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("waiting for %r", self.key)

    def _mark_lost(self, reason: str) -> None:
        """Called when the backend or the renewer finds the lock gone while this object holds it."""
        token = self._token
        if token is None or self._lost is not None:
            return
        self._lost = reason
        self.locker._count_lost(self, token, _monotonic() - self._acquired_at, reason)
        if self.locker.options.on_lost is not None:
            from kannuki.renewal import call_on_lost

            call_on_lost(self.locker.options.on_lost, self, reason)

    def _not_acquired(self) -> LockNotAcquiredError:
        try:
            holders = self.holders()
        except Exception:  # who-holds-it is a courtesy; never mask the real outcome
            holders = []
        return not_acquired_error(self, holders)


class MultiLockBase:
    """The state of several keys taken all or none, in lock-ID order so two callers never deadlock.

    Shared by :class:`MultiLock` and ``kannuki.aio.AsyncMultiLock``, which add acquire / release.
    """

    __slots__ = ("locker", "keys", "locks", "timeout", "_tokens", "_backend", "_acquired_at")

    def __init__(self, locker: Any, locks: Sequence[Any], timeout: float | None) -> None:
        self.locker = locker
        # One lock per ID, ascending: every caller takes them in the same order.
        unique = {lock.lock_id: lock for lock in locks}
        self.locks = [unique[lock_id] for lock_id in sorted(unique)]
        self.keys = [lock.key for lock in self.locks]
        self.timeout = timeout
        self._tokens: list[int] | None = None
        self._backend: Any = None
        self._acquired_at = 0.0

    def __repr__(self) -> str:
        return f"<kannuki.{type(self).__name__} {self.keys!r} {'held' if self.locked() else 'free'}>"

    def locked(self) -> bool:
        return self._tokens is not None

    @property
    def tokens(self) -> list[int] | None:
        return list(self._tokens) if self._tokens is not None else None


class MultiLock(MultiLockBase):
    """Several keys taken all or none, in lock-ID order so two callers never deadlock.

    Made by :meth:`kannuki.Locker.lock_many`; used like a Lock.
    """

    __slots__ = ()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take every key or none; True when all are held."""
        if self._tokens is not None:
            raise AlreadyHeldError(f"this MultiLock already holds {self.keys!r}", key=self.keys)
        if timeout is None:
            timeout = self.timeout
        else:
            timeout = check_seconds(timeout, "timeout")
        if not blocking:
            timeout = 0.0
        locker = self.locker
        backend = TEST_BACKEND or locker._backend
        requests = [LockRequest(lock.name, lock.lock_id, lock.shared) for lock in self.locks]
        start = _monotonic()
        try:
            tokens = backend.acquire_many(requests, timeout=timeout)
        except BackendError:
            locker._count_failure()
            raise
        now = _monotonic()
        if tokens is None:
            locker._count_not_acquired(self.locks[0], timeout != 0, now - start)
            return False
        instrumented = locker._instrumented and bool(_events.SUBSCRIBERS)
        for lock, token in zip(self.locks, tokens):
            self._acquired_at = locker._stats.acquired()
            if instrumented:
                _emit("acquired", lock.key, lock.lock_id, locker.scheme, now - start, token, lock.shared)
        self._tokens, self._backend = list(tokens), backend
        return True

    def release(self) -> None:
        """Release every key, in reverse order; LockLostError after all if any was lost."""
        tokens, backend = self._tokens, self._backend
        if tokens is None or backend is None:
            raise NotHeldError(f"release() of {self.keys!r}, which this MultiLock does not hold", key=self.keys)
        self._tokens = self._backend = None
        locker = self.locker
        first_error: BaseException | None = None
        for lock, token in reversed(list(zip(self.locks, tokens))):
            try:
                backend.release(lock.name, lock.lock_id, token)
            except LockLostError as exc:
                locker._count_lost(lock, token, _monotonic() - self._acquired_at, str(exc))
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

    def __enter__(self) -> "MultiLock":
        if not self.acquire():
            raise LockNotAcquiredError(
                f"could not acquire all of {self.keys!r}"
                + (f" within {self.timeout:g}s" if self.timeout else " at once" if self.timeout == 0 else ""),
                key=self.keys,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
