# WARNING: generated from src/kannuki/_lock_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""``Lock`` and ``MultiLock`` (async source; ``_lock.py`` with ``Lock`` / ``MultiLock`` is generated).

A Lock is one key, acquired and released like a ``threading.Lock``. Strategies
(blocking, non_blocking, retry), the circuit breaker and the wait events live
here, once; what an acquisition holds is kept by the locker's hold owner
(:mod:`kannuki._hold`). A Lock object is not reentrant and belongs to one
acquirer at a time; make one per thread or task (``locker.lock(key)`` is cheap).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from kannuki import _fork, _handoff
from kannuki import events as _events
from kannuki._compat import finish, sleep
from kannuki._core import Backoff, SyncLockBase
from kannuki._hold import Hold, debugging
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, LockRequest
from kannuki.errors import (
    AlreadyHeldError,
    BackendError,
    LockLostError,
    LockNotAcquiredError,
    NotHeldError,
    NotSupportedError,
)
from kannuki.options import LockerOptions, check_seconds

if TYPE_CHECKING:
    from kannuki._locker import Locker

__all__ = ["Lock", "MultiLock", "not_acquired_error", "retry_pauses"]

_monotonic = time.monotonic


class RetryPause(NamedTuple):
    seconds: float
    first: bool  # the first pause: the moment to emit ``waiting``


def retry_pauses(options: LockerOptions, timeout: float | None) -> Iterator[RetryPause]:
    """The pauses of the ``retry`` strategy, one before each further attempt, within attempts and ``timeout``."""
    backoff = Backoff(
        options.retry_backoff, options.retry_interval, options.retry_max_interval, options.retry_jitter
    )
    deadline = None if timeout is None else _monotonic() + timeout
    for attempt in range(1, options.retry_attempts):
        remaining = None if deadline is None else deadline - _monotonic()
        if remaining is not None and remaining <= 0:
            return
        yield RetryPause(backoff.next_delay(remaining), attempt == 1)


def not_acquired_error(lock: Any, holders: Sequence[Holder]) -> LockNotAcquiredError:
    """The LockNotAcquiredError for ``lock`` that its strategy could not take."""
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


class Lock(SyncLockBase):
    """An advisory lock on one key, owned by this object while it holds it.

    Create it with :meth:`Locker.lock`. ``with lock:`` acquires by
    the lock's strategy and raises :class:`~kannuki.LockNotAcquiredError` when
    it cannot; ``lock.acquire()`` returns a bool like ``threading.Lock.acquire``.
    """

    # The state lives in the core's base class (kannuki._core.LockBase), which also takes and
    # releases a plain hold in one C call: ``lock.acquire()``, ``release()`` and ``with`` of the
    # sync Lock are the core's own methods (SyncLockBase), which call the methods below for the rest.
    #
    # A hold is either plain (``_plain``: the token of a hold taken on the store's in-process table,
    # with nothing else to keep; ``_plain_set``, the keeper's token set that records it; ``_since``,
    # when it began, monotonic; ``_generation``, the fork generation it was taken in) or a ``Hold``
    # that the locker's keeper owns (``_hold``). ``_spent``: the current hold was lost and its
    # release already reported it. ``_busy``: an acquire that may wait is under way.
    __slots__ = ()
    locker: Locker  # the core types them loosely: it knows no locker, no Hold
    _hold: Hold | None

    def __repr__(self) -> str:
        state = "held" if self.locked() else "lost" if self.lost else "free"
        mode = " shared" if self.shared else ""
        return f"<kannuki.Lock {self.key!r}{mode} id={self.lock_id} {state} on {self.locker.scheme}>"

    def _abandon(self) -> None:
        """Garbage-collected while it may hold: the keeper releases what it still records (the core's ``__del__``)."""
        if self._plain:
            if self._generation == _fork.GENERATION and not self._spent:
                self.locker._keeper.abandon_plain(self)  # released only if still recorded
            return
        hold = self._hold
        if hold is not None and hold.lost is None and hold.generation == _fork.GENERATION:
            self.locker._keeper.abandon(hold)

    # -- state ----------------------------------------------------------------

    @property
    def token(self) -> int | None:
        """The fencing token of the current acquisition; None when not held, or when the store could not give
        one that is strictly increasing across processes (PostgreSQL or MySQL without a usable sequence:
        ``locker.backend.tokens_fenced`` is then False and one RuntimeWarning said why)."""
        if self._plain:
            token: int = self._plain
            return token if self._generation == _fork.GENERATION else None
        hold = self._hold
        return hold.token if hold is not None and hold.generation == _fork.GENERATION else None

    @property
    def grant(self) -> Grant | None:
        """What the store holds for the current acquisition (connection, server PID, lease), or None."""
        if self._plain:
            if self._generation != _fork.GENERATION:
                return None
            return Grant(self.name, self.lock_id, self.shared, self._plain)
        hold = self._hold
        return hold.grant if hold is not None and hold.generation == _fork.GENERATION else None

    @property
    def lost(self) -> bool:
        """True once the current acquisition was found gone (until the next acquire)."""
        if self._plain:
            return self._generation == _fork.GENERATION and self._plain not in self._plain_set
        hold = self._hold
        return hold is not None and hold.lost is not None and hold.generation == _fork.GENERATION

    def locked(self) -> bool:
        """True when THIS lock object holds its lock now (not whether anyone does: see ``held()``)."""
        if self._plain:
            return self._generation == _fork.GENERATION and self._plain in self._plain_set
        hold = self._hold
        return hold is not None and hold.lost is None and hold.generation == _fork.GENERATION

    def held(self) -> bool:
        """True when anyone, anywhere, holds this key."""
        return self.locker.held(self.key)

    def holders(self) -> list[Holder]:
        """Who holds this key now, as far as the store can tell."""
        return list(self.locker.backend.holders(self.name, self.lock_id))

    def _current(self, verb: str) -> Hold | None:
        """The keeper's Hold of the current acquisition (None for a plain one); NotHeldError when none."""
        if self._plain:
            if self._generation == _fork.GENERATION and not self._spent:
                return None
        else:
            hold = self._hold
            if hold is not None and hold.generation == _fork.GENERATION and not self._spent:
                return hold
        raise NotHeldError(
            f"{verb}() of the lock {self.key!r}, which this Lock object does not hold", key=self.key
        )

    def ensure_held(self) -> None:
        """Ask the store now (one round trip at most) whether this lock still holds; LockLostError if not.

        Raises NotHeldError when this object never acquired (or already released) the lock.
        """
        hold = self._current("ensure_held")
        if hold is not None:
            self.locker._keeper.check(hold, self)
        else:
            self.locker._keeper.check_plain(self)

    def extend(self, ttl: float | None = None) -> None:
        """Renew this lock's lease now, optionally to a new ``ttl`` (seconds).

        Raises LockLostError if it was already lost, NotHeldError if not held,
        NotSupportedError on a store (or a lock) without a lease.
        """
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl")
            if not ttl:
                raise ValueError("ttl must be > 0 seconds, or None")
        hold = self._current("extend")
        if hold is None or hold.grant.ttl is None:
            raise NotSupportedError(
                f"the lock {self.key!r} is not a lease on the {self.locker.scheme} store", key=self.key
            )
        self.locker._keeper.extend(hold, ttl, self)

    # -- acquire / release ----------------------------------------------------
    # The sync Lock's acquire(), release(), __enter__ and __exit__ are the core's (SyncLockBase).

    def _acquire(self, blocking: bool, timeout: float | None) -> bool:
        """``acquire()`` beyond an uncontended plain hold: checks, strategies, the circuit, the keeper."""
        if timeout is None:
            timeout = self.timeout
        elif not blocking:
            raise ValueError("timeout cannot be given for a non-blocking acquire (blocking=False)")
        else:
            timeout = check_seconds(timeout, "timeout")
        if self._plain or self._hold is not None:
            if self.locked():
                raise AlreadyHeldError(
                    f"this Lock object already holds {self.key!r}; kannuki locks are not reentrant",
                    key=self.key,
                )
            self._plain, self._hold = 0, None  # a lost or forked hold: forget it and take anew
        if self._busy:
            raise AlreadyHeldError(
                f"another caller is acquiring {self.key!r} with this same Lock object", key=self.key
            )
        # A plain lock's first try of every strategy is the core's; on False the general path does the rest.
        if self._try_plain():
            return True
        self._spent = False
        locker = self.locker
        keeper = locker._keeper
        strategy = self.strategy if blocking else "non_blocking"
        circuit = locker._circuit
        probe = circuit is not None and circuit.check(self.key)
        start = _monotonic()
        backend = keeper.backend
        self._busy = True
        try:
            if strategy == "retry":
                grant = self._acquire_retry(backend, timeout)
            else:
                grant = backend.acquire(
                    self.name,
                    self.lock_id,
                    shared=self.shared,
                    timeout=0.0 if strategy == "non_blocking" else timeout,
                    ttl=self.ttl,
                    on_wait=self._emit_waiting if _events.SUBSCRIBERS or debugging() else NO_WAIT_CALLBACK,
                    transaction=self.transaction,
                )
            if grant is not None:
                self._hold = keeper.adopt(self.key, grant, self, self.on_lost, _monotonic() - start)
        except BackendError:
            if circuit is not None:
                circuit.failed()
            raise
        except BaseException:
            if probe and circuit is not None:
                circuit.abandon_probe()  # the probe was interrupted: the next call may probe again
            raise
        finally:
            self._busy = False
        if circuit is not None:
            circuit.succeeded()
        if grant is None:
            keeper.not_acquired(
                self.key,
                self.lock_id,
                self.shared,
                strategy == "blocking" and timeout != 0,
                _monotonic() - start,
            )
            return False
        return True

    def _release_hold(self) -> None:
        """``release()`` of a hold the keeper owns (not a plain one); NotHeldError when there is none."""
        hold = self._current("release")
        assert hold is not None  # a plain hold was released by the core
        try:
            self.locker._keeper.release(hold, self)
        except LockLostError:
            self._spent = True  # keep the hold: ``lock.lost`` stays True until the next acquire
            raise
        except BaseException:
            self._hold = None
            raise
        self._hold = None

    def detach(self) -> str:
        """Stop owning the held lock WITHOUT releasing it, and return a ticket for whoever takes it over.

        The hold stays in the store (its lease runs on, unrenewed) and this object no longer
        holds it: another locker on the same store, in another process or on another host,
        takes it over with ``locker.adopt(ticket)`` and releases it there. Only stores whose
        holds live in the store alone can do this: redis, sqlite, and memory (within one
        process); others raise NotSupportedError, still holding. A ticket names the hold's
        fencing token (and Redis's owner value), so releasing through a stale ticket never
        frees a newer holder: LockLostError instead.

        Example::

            ticket = lock.detach()             # e.g. in a task message's headers
            ...                                # elsewhere:
            other_locker.adopt(ticket).release()

        Raises NotHeldError when this object does not hold the lock, LockLostError when it
        was lost.
        """
        hold = self._current("detach")
        keeper = self.locker._keeper
        if hold is None:  # a plain hold of the store's in-process table: nothing pins it here
            token, tokens = self._plain, self._plain_set
            try:
                tokens.remove(token)
            except KeyError:  # released meanwhile by close()
                raise NotHeldError(
                    f"detach() of the lock {self.key!r}, which Locker.close() released", key=self.key
                ) from None
            if not tokens.table.disown(self.name, token):  # the table was cleared: lost
                self._spent = True
                raise keeper.plain_not_released(self, token, self._since, True)
            self._plain = 0
            grant = Grant(self.name, self.lock_id, self.shared, token)
            store = keeper.backend.scheme
        else:
            grant = hold.grant
            if not keeper.is_held(hold):
                raise LockLostError(
                    f"the lock {self.key!r} is no longer held: {hold.lost or 'released'}", key=self.key
                )
            data = grant.data  # Redis's owner value is ASCII bytes: the ticket carries it as text
            portable = grant.conn is None and (
                data is None or isinstance(data, str) or (isinstance(data, bytes) and data.isascii())
            )
            if not (portable and hold.backend.hand_off(grant)):
                raise NotSupportedError(
                    f"the lock {self.key!r} lives in a connection or descriptor of this process on the "
                    f"{self.locker.scheme} store and cannot be handed off (redis, sqlite and memory can)",
                    key=self.key,
                )
            keeper.detach(hold)
            self._hold = None
            store = hold.backend.scheme
        return _handoff.ticket_for(store, self.key, grant)

    def _take_over(self, grant: Grant, ttl: float | None) -> None:
        """``Locker.adopt``: make this (fresh) object the holder of ``grant``, renewing its lease to ``ttl``."""
        backend = self.locker._keeper.backend
        lease = ttl if ttl is not None else grant.ttl
        if lease is not None:
            still = backend.renew(grant, lease)
            grant.ttl = lease
        else:
            still = backend.check(grant)
        if not still:
            raise LockLostError(
                f"the handed-off lock {self.key!r} (token {grant.token}) is no longer held: "
                "its lease expired, or it was released or force-released",
                key=self.key,
            )
        self._spent = False
        self._hold = self.locker._keeper.adopt(self.key, grant, self, self.on_lost)

    def _enter(self) -> Lock:
        """``with`` / ``with`` when the core's plain path did not take the lock."""
        if not self._acquire(True, None):
            raise self._not_acquired()
        return self

    # -- internals ------------------------------------------------------------

    def _acquire_retry(self, backend: Any, timeout: float | None) -> Grant | None:
        grant: Grant | None = backend.acquire(
            self.name,
            self.lock_id,
            shared=self.shared,
            timeout=0.0,
            ttl=self.ttl,
            transaction=self.transaction,
        )
        for pause in retry_pauses(self.locker.options, timeout):
            if grant is not None:
                break
            if pause.first:
                self._emit_waiting()
            sleep(pause.seconds)
            grant = backend.acquire(
                self.name,
                self.lock_id,
                shared=self.shared,
                timeout=0.0,
                ttl=self.ttl,
                transaction=self.transaction,
            )
        return grant

    def _emit_waiting(self) -> None:
        self.locker._keeper.waiting(self.key, self.lock_id, self.shared)

    def _not_acquired(self) -> LockNotAcquiredError:
        try:
            holders = self.holders()
        except Exception:  # who-holds-it is a courtesy; never mask the real outcome
            holders = []
        return not_acquired_error(self, holders)


class MultiLock:
    """Several keys taken all or none, in lock-ID order so two callers never deadlock.

    Made by :meth:`Locker.lock_many`; used like a Lock. Each key's hold is
    kept by the locker's hold owner like any other (renewed, watched, released).
    """

    __slots__ = ("__weakref__", "_holds", "keys", "locker", "locks", "timeout", "ttl")

    def __init__(
        self, locker: Locker, locks: Sequence[Lock], timeout: float | None, ttl: float | None = None
    ) -> None:
        self.locker = locker
        # One lock per ID, ascending: every caller takes them in the same order.
        unique = {lock.lock_id: lock for lock in locks}
        self.locks = [unique[lock_id] for lock_id in sorted(unique)]
        self.keys = [lock.key for lock in self.locks]
        self.timeout = timeout
        self.ttl = ttl
        self._holds: list[Hold] | None = None

    def __repr__(self) -> str:
        return f"<kannuki.{type(self).__name__} {self.keys!r} {'held' if self.locked() else 'free'}>"

    def __del__(self) -> None:
        holds = self._holds
        if holds:
            try:
                for hold in holds:
                    if hold.lost is None and hold.generation == _fork.GENERATION:
                        self.locker._keeper.abandon(hold)
            except Exception:  # at interpreter exit the modules may be half gone
                pass

    def locked(self) -> bool:
        """True while every key is held by this object."""
        holds = self._holds
        return holds is not None and all(h.lost is None and h.generation == _fork.GENERATION for h in holds)

    @property
    def lost(self) -> bool:
        """True once any key of the current acquisition was reported gone."""
        holds = self._holds
        return holds is not None and any(h.lost is not None for h in holds)

    @property
    def tokens(self) -> list[int | None] | None:
        holds = self._holds
        if holds is None or any(h.generation != _fork.GENERATION for h in holds):
            return None
        return [hold.token for hold in holds]  # None where unfenced: see Lock.token

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take every key or none; True when all are held."""
        if self._holds is not None and all(h.generation == _fork.GENERATION for h in self._holds):
            raise AlreadyHeldError(f"this MultiLock already holds {self.keys!r}", keys=self.keys)
        timeout = self.timeout if timeout is None else check_seconds(timeout, "timeout")
        if not blocking:
            timeout = 0.0
        locker = self.locker
        keeper = locker._keeper
        circuit = locker._circuit
        probe = circuit is not None and circuit.check(self.keys[0])
        requests = [LockRequest(lock.name, lock.lock_id, lock.shared) for lock in self.locks]
        start = _monotonic()
        try:
            grants = keeper.backend.acquire_many(requests, timeout=timeout, ttl=self.ttl)
            if grants is not None:
                waited = _monotonic() - start
                holds: list[Hold] = []
                try:
                    for lock, grant in zip(self.locks, grants, strict=True):
                        holds.append(keeper.adopt(lock.key, grant, self, None, waited))
                except BaseException:
                    for hold in reversed(holds):  # all or none: give back what was recorded
                        keeper.release_lost_quietly(hold)
                    for grant in grants[len(holds) :]:
                        finish(keeper.backend.abort(grant))
                    raise
                self._holds = holds
        except BackendError:
            if circuit is not None:
                circuit.failed()
            raise
        except BaseException:
            if probe and circuit is not None:
                circuit.abandon_probe()
            raise
        if circuit is not None:
            circuit.succeeded()
        if grants is None:
            first = self.locks[0]
            keeper.not_acquired(first.key, first.lock_id, first.shared, timeout != 0, _monotonic() - start)
            return False
        return True

    def release(self) -> None:
        """Release every key, in reverse order; the first error (LockLostError ...) after all are done."""
        holds = self._holds
        if holds is None or any(h.generation != _fork.GENERATION for h in holds):
            raise NotHeldError(
                f"release() of {self.keys!r}, which this MultiLock does not hold", keys=self.keys
            )
        self._holds = None
        keeper = self.locker._keeper
        first_error: BaseException | None = None
        for hold in reversed(holds):
            try:
                keeper.release(hold, self)
            except (LockLostError, BackendError) as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> MultiLock:
        if not self.acquire():
            how = f" within {self.timeout:g}s" if self.timeout else " at once" if self.timeout == 0 else ""
            raise LockNotAcquiredError(f"could not acquire all of {self.keys!r}{how}", keys=self.keys)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
