"""The one owner of every hold (async source; ``_hold.py`` is generated from it).

Every acquisition a locker makes, whatever the verb (a Lock, ``lock_many``, a
decorator, a record lock) and whatever the store, is recorded here as a
:class:`Hold` by the locker's :class:`AsyncHoldKeeper`, which alone keeps the
guarantees of SPEC §8:

- **Renewal** of every leased hold (a grant with a ``ttl``) every ttl/3, on one
  worker (a thread in sync code, a task in async code) that nothing stops: a
  callback that raises anything, SystemExit included, is logged, and a worker
  that died anyway is started again by the next acquisition.
- **A loss is reported exactly once** per acquisition, whoever finds it (a
  failed renewal, ``ensure_held()``, the release): ``on_lost`` of the locker
  and of the lock, the ``lost`` event, ``stats().lost``, ``lock.lost``.
- **Release is the store's compare-and-delete**; a release that raises or is
  interrupted ends in the backend's ``abort`` (close the pinned connection),
  so the store never keeps a lock that kannuki forgot.
- **A held Lock that is garbage-collected** is released, with a ResourceWarning
  naming its key; ``close()`` releases every hold.
- **After fork()** the child forgets every hold, the worker and the backend's
  connections (``kannuki._fork``).
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from kannuki import _core, _fork
from kannuki import events as _events
from kannuki._compat import AMutex, AWorker, acancelled, afinish, aspawn, atable_release
from kannuki._core import TokenSet
from kannuki.backends._types import Grant
from kannuki.errors import LockLostError

__all__ = ["IDLE_STOP", "RETRY_CAP", "AsyncHoldKeeper", "Hold"]

log = logging.getLogger("kannuki")
_monotonic = time.monotonic
_emit = _events.emit

# "Is debug logging off?" without ``log.isEnabledFor`` on the hot path: CPython's Logger caches
# that answer per level in ``_cache``, a dict that a level change empties in place. Only a cached
# False is trusted; no answer sends the caller to ``isEnabledFor``, which fills the cache again.
_DEBUG = logging.DEBUG
_log_cache = getattr(log, "_cache", None)
_log_levels: dict[int, bool] = _log_cache if isinstance(_log_cache, dict) else {}  # not CPython's logging: {}
_cached_level = _log_levels.get


def debugging() -> bool:
    """True when the ``kannuki`` logger logs at DEBUG (cheap when it does not)."""
    return _cached_level(_DEBUG) is not False and log.isEnabledFor(_DEBUG)


# Longest pause between retries of a renewal that raised.
RETRY_CAP = 1.0
# Seconds with nothing to renew before the worker stops (the next lease starts it again).
IDLE_STOP = 5.0

LostCallback = Callable[[Any, str], object]


class Hold:
    """One acquisition of one key, as its owner keeps it."""

    __slots__ = (
        "backend",
        "due",
        "expires",
        "fenced",
        "generation",
        "grant",
        "key",
        "lost",
        "on_lost",
        "owner",
        "since",
    )

    def __init__(
        self, key: str, grant: Grant, backend: Any, since: float, owner: Any, on_lost: LostCallback | None
    ) -> None:
        self.key = key
        self.grant = grant
        self.backend = backend  # the store that made the grant (test mode may swap the locker's)
        self.since = since
        self.lost: str | None = None  # why it was lost; None while held
        self.owner = owner  # a weakref to the Lock (or MultiLock) that holds it, or None
        self.on_lost = on_lost
        self.due = 0.0  # monotonic time of the next renewal (leases only)
        self.expires = 0.0  # monotonic time the lease runs out, as far as we know
        self.generation = _fork.GENERATION
        # Is grant.token a fencing token (strictly increasing per key across processes)? Not when the
        # store could not draw one from the server (PostgreSQL / MySQL without a usable sequence).
        self.fenced: bool = getattr(backend, "tokens_fenced", True)

    @property
    def token(self) -> int | None:
        """The fencing token of this acquisition; None when the store could not give a real one."""
        return self.grant.token if self.fenced else None

    def __repr__(self) -> str:
        state = f"lost: {self.lost}" if self.lost else "held"
        return f"<Hold {self.key!r} token={self.grant.token} {state}>"


def _call_supervised(callback: LostCallback, lock: Any, reason: str, key: str) -> None:
    """A user's ``on_lost(lock, reason)``: whatever it raises (SystemExit too) is logged, never propagated."""
    try:
        callback(lock, reason)
    except BaseException:  # a callback must never stop renewals or the caller's release
        log.exception("kannuki: the on_lost callback for %r raised", key)


class AsyncHoldKeeper:
    """Keeps the holds of one locker: records, renewal, loss, release, close, GC and fork.

    ``stats`` is the locker's ``Counters``; ``on_lost`` the locker-wide
    callback; ``instrumented`` whether events are emitted; ``auto_renew``
    whether leases are renewed by the worker.
    """

    def __init__(
        self,
        backend: Any,
        *,
        stats: Any,
        scheme: str,
        instrumented: bool = True,
        on_lost: LostCallback | None = None,
        auto_renew: bool = True,
        watch_interval: float | None = 1.0,
    ) -> None:
        self.backend = backend
        self.stats = stats
        self.scheme = scheme
        self.instrumented = instrumented
        self.on_lost = on_lost
        self.auto_renew = auto_renew
        self.watch_interval = watch_interval
        self.idle_stop = IDLE_STOP
        self._held: dict[int, Hold] = {}
        self._leases: dict[int, Hold] = {}
        # Holds whose session the worker watches (stores that set ``watches``), and when it looks next.
        self._watched: dict[int, Hold] = {}
        self._next_watch = 0.0
        self._sleep_until = 0.0  # when the sleeping worker wakes by itself (monotonic)
        # Plain holds (a store's in-process table, no lease): their tokens, one set per table; no
        # Hold or Grant object at all. ``plain`` is the set of the table the locker uses now, and
        # ``path`` the compiled core's way there that every Lock of the locker takes (one C call).
        self._plain_sets: dict[int, TokenSet] = {}
        self.plain: TokenSet | None = None
        self.path = _core.PlainPath(self, stats, instrumented, _fork.GENERATION, _log_levels)
        self._mutex = AMutex()
        self._worker = AWorker("kannuki-renewer")
        self._closed = False
        self._loop: Any = None  # async: the loop the holds were taken on, for releases scheduled from GC
        _fork.track(self)

    # -- what is held ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._held) + sum(len(tokens) for tokens in list(self._plain_sets.values()))

    def use_table(self, table: Any) -> TokenSet | None:
        """The in-process table plain holds go to from now on (None: no such table); its token set."""
        if table is None:
            self.plain = None
            self.path.use(None, None)
            return None
        tokens = self._plain_sets.get(id(table))
        if tokens is None:
            tokens = self._plain_sets[id(table)] = TokenSet(table)
        self.plain = tokens
        self.path.use(table, tokens)
        return tokens

    def names(self) -> dict[int, str]:
        """The full names of the locks held here now, by lock ID."""
        names = {hold.grant.lock_id: hold.grant.name for hold in list(self._held.values())}
        for tokens in list(self._plain_sets.values()):
            for name, _token in _plain_holds(tokens):
                names.setdefault(_core.lock_id(str(name)), str(name))
        return names

    def is_held(self, hold: Hold) -> bool:
        """True while ``hold`` is recorded here, not lost, and taken in this process (not a parent's)."""
        return hold.lost is None and hold.generation == _fork.GENERATION and self._held.get(id(hold)) is hold

    @property
    def renewing(self) -> bool:
        """True while the worker (renewals and the session watcher) runs."""
        return self._worker.alive

    # -- taking ---------------------------------------------------------------

    async def adopt(
        self,
        key: str,
        grant: Grant,
        owner: Any = None,
        on_lost: LostCallback | None = None,
        waited: float = 0.0,
    ) -> Hold:
        """Record a grant the backend just made: from here on this keeper owns it.

        ``owner`` is the Lock (kept weakly, for ``on_lost(lock, reason)``).
        Counts the acquisition and emits ``acquired``. Nothing awaits before the
        record is made, so a cancellation cannot fall between the grant and its
        record; when the renewal worker cannot start (a thread limit), the grant
        is given back and the error raised: a failed acquire leaves nothing held.
        """
        since = self.stats.acquired()
        hold = Hold(key, grant, self.backend, since, None if owner is None else weakref.ref(owner), on_lost)
        self._held[id(hold)] = hold
        self._loop = _running_loop()  # async-only
        if grant.ttl is not None and self.auto_renew:
            hold.due = since + grant.ttl / 3
            hold.expires = since + grant.ttl
            self._leases[id(hold)] = hold
        if self.watch_interval is not None and getattr(hold.backend, "watches", False):
            self._watched[id(hold)] = hold
        if (grant.ttl is not None and self.auto_renew) or id(hold) in self._watched:
            try:
                self._start_worker(
                    hold.due if grant.ttl is not None else since + (self.watch_interval or 0.0)
                )
            except BaseException:
                self._held.pop(id(hold), None)
                self._leases.pop(id(hold), None)
                self._watched.pop(id(hold), None)
                await afinish(hold.backend.abort(grant))
                raise
        if self.instrumented and _events.SUBSCRIBERS:
            _emit("acquired", key, grant.lock_id, self.scheme, waited, grant.token, grant.shared)
        if debugging():
            log.debug("acquired %r after %.6fs (token %s)", key, waited, grant.token)
        return hold

    # Plain holds: the Lock's hot path is the core's (``_core.LockBase`` through ``path``); it calls
    # the methods below only when someone listens, or for what is not the common case.

    def plain_acquired(self, lock: Any, token: int) -> None:
        """Emit and log a plain acquisition (called only when someone listens)."""
        if _events.SUBSCRIBERS and self.instrumented:
            _emit("acquired", lock.key, lock.lock_id, self.scheme, 0.0, token, lock.shared)
        if debugging():
            log.debug("acquired %r after %.6fs (token %s)", lock.key, 0.0, token)

    def plain_released(self, lock: Any, token: int, held_for: float) -> None:
        """Emit and log a plain release (called only when someone listens)."""
        if _events.SUBSCRIBERS and self.instrumented:
            _emit("released", lock.key, lock.lock_id, self.scheme, held_for, token, lock.shared)
        if debugging():
            log.debug("released %r after %.6fs (token %s)", lock.key, held_for, token)

    def plain_not_released(self, lock: Any, token: int, since: float, recorded: bool) -> LockLostError:
        """The error (and the one report of the loss) for a plain release that found nothing to free."""
        if not recorded:
            return LockLostError(
                f"the lock {lock.key!r} is no longer held: released by Locker.close()", key=lock.key
            )
        reason = "the in-process table no longer holds it (cleared, or its lease expired)"
        self._report_lost(lock.key, lock.lock_id, lock.shared, token, since, reason, lock, lock.on_lost)
        return LockLostError(f"the lock {lock.key!r} was lost while held: {reason}", key=lock.key)

    def check_plain(self, lock: Any) -> None:
        """``ensure_held`` of a plain hold: its table must still list its token; LockLostError, reported once, if not."""
        tokens: TokenSet = lock._plain_set
        token = lock._plain
        if token not in tokens:
            raise LockLostError(
                f"the lock {lock.key!r} is no longer held: released by Locker.close()", key=lock.key
            )
        if any(held == token for held, _shared, _expires in tokens.table.holders(lock.name)):
            return
        try:
            tokens.remove(token)
        except KeyError:  # released meanwhile by close(): that is not a loss to report
            raise LockLostError(
                f"the lock {lock.key!r} is no longer held: released by Locker.close()", key=lock.key
            ) from None
        lock._spent = True
        raise self.plain_not_released(lock, token, lock._since, True)

    def abandon_plain(self, lock: Any) -> None:
        """A Lock holding a plain hold was garbage-collected: warn naming its key, then release it."""
        tokens: TokenSet = lock._plain_set
        try:
            tokens.remove(lock._plain)
        except KeyError:  # released by close() already
            return
        warnings.warn(
            f"kannuki: a Lock holding {lock.key!r} was garbage-collected without release(); releasing it now",
            ResourceWarning,
            stacklevel=2,
        )
        tokens.table.release(lock.name, lock._plain)  # a C call: nothing to wait for

    def not_acquired(self, key: str, lock_id: int, shared: bool, timed_out: bool, waited: float) -> None:
        """Count (and emit) an acquisition that did not happen."""
        self.stats.add("failed")
        if timed_out:
            self.stats.add("timeouts")
        if self.instrumented and _events.SUBSCRIBERS:
            _emit("timeout" if timed_out else "failed", key, lock_id, self.scheme, waited, None, shared)

    def waiting(self, key: str, lock_id: int, shared: bool) -> None:
        """Emit ``waiting``: an acquire is about to wait because the key is held."""
        if self.instrumented and _events.SUBSCRIBERS:
            _emit("waiting", key, lock_id, self.scheme, 0.0, None, shared)
        if debugging():
            log.debug("waiting for %r", key)

    # -- releasing --------------------------------------------------------------

    async def release(self, hold: Hold, owner: Any = None) -> float:
        """Release ``hold`` in the store; the seconds it was held.

        Raises LockLostError when it was lost while held (reported once, here
        if nobody had noticed before) or released by ``close()``. A release
        that fails or is interrupted aborts the grant: the store keeps nothing.
        """
        recorded = self._held.pop(id(hold), None) is hold
        if hold.grant.ttl is not None:
            self._leases.pop(id(hold), None)
        if self._watched:
            self._watched.pop(id(hold), None)
        if not recorded or hold.generation != _fork.GENERATION:
            raise LockLostError(
                f"the lock {hold.key!r} is no longer held: {hold.lost or 'released'}", key=hold.key
            )
        if hold.lost is not None:
            await afinish(hold.backend.abort(hold.grant))
            raise LockLostError(f"the lock {hold.key!r} was lost while held: {hold.lost}", key=hold.key)
        try:
            await afinish(hold.backend.release(hold.grant))
        except LockLostError as exc:
            if self._mark_lost(hold, str(exc)):
                self._report_hold_lost(hold, str(exc), owner)
            await afinish(hold.backend.abort(hold.grant))
            raise
        except BaseException:
            # A failed or interrupted release: never leave the store holding what we now forget.
            await afinish(hold.backend.abort(hold.grant))
            raise
        held_for: float = self.stats.released(hold.since)
        if self.instrumented and _events.SUBSCRIBERS:
            grant = hold.grant
            _emit("released", hold.key, grant.lock_id, self.scheme, held_for, grant.token, grant.shared)
        if debugging():
            log.debug("released %r after %.6fs (token %s)", hold.key, held_for, hold.grant.token)
        return held_for

    def detach(self, hold: Hold) -> None:
        """Stop owning ``hold`` without releasing it (``Lock.detach``): no renewal, watch or release here.

        Raises LockLostError when it is no longer held (lost, released, or a parent's).
        """
        with self._mutex:
            if not self.is_held(hold):
                raise LockLostError(
                    f"the lock {hold.key!r} is no longer held: {hold.lost or 'released'}", key=hold.key
                )
            self._held.pop(id(hold), None)
            self._leases.pop(id(hold), None)
            self._watched.pop(id(hold), None)
        if debugging():
            log.debug("handed off %r (token %s)", hold.key, hold.grant.token)

    def abandon(self, hold: Hold) -> None:
        """A held Lock was garbage-collected: warn naming its key, then release it."""
        if self._held.get(id(hold)) is not hold or hold.generation != _fork.GENERATION:
            return
        warnings.warn(
            f"kannuki: a Lock holding {hold.key!r} was garbage-collected without release(); releasing it now",
            ResourceWarning,
            stacklevel=2,
        )
        aspawn(self._loop, self._release_quietly, hold)

    async def _release_quietly(self, hold: Hold) -> None:
        try:
            await self.release(hold)
        except Exception as exc:  # nobody is left to tell but the log
            log.warning("kannuki: releasing %r failed: %s", hold.key, exc)

    # -- loss -------------------------------------------------------------------

    def lose(self, hold: Hold, reason: str, owner: Any = None) -> bool:
        """The store no longer holds ``hold``: report it, once. True when this call reported it."""
        if self._held.get(id(hold)) is not hold or not self._mark_lost(hold, reason):
            return False
        self._report_hold_lost(hold, reason, owner)
        return True

    def _mark_lost(self, hold: Hold, reason: str) -> bool:
        with self._mutex:
            if hold.lost is not None:
                return False
            hold.lost = reason
            self._leases.pop(id(hold), None)
            self._watched.pop(id(hold), None)
            return True

    def _report_hold_lost(self, hold: Hold, reason: str, owner: Any) -> None:
        grant = hold.grant
        if owner is None and hold.owner is not None:
            owner = hold.owner()
        self._report_lost(
            hold.key, grant.lock_id, grant.shared, grant.token, hold.since, reason, owner, hold.on_lost
        )

    def _report_lost(
        self,
        key: str,
        lock_id: int,
        shared: bool,
        token: int,
        since: float,
        reason: str,
        owner: Any,
        on_lost: LostCallback | None,
    ) -> None:
        """The one report of a loss: stats, a warning, the ``lost`` event, the callbacks."""
        held_for = _monotonic() - since
        self.stats.add("lost")
        log.warning("kannuki lost the lock %r (token %s) after %.3fs: %s", key, token, held_for, reason)
        if self.instrumented and _events.SUBSCRIBERS:
            _emit("lost", key, lock_id, self.scheme, held_for, token, shared)
        for callback in (self.on_lost, on_lost):
            if callback is not None:
                _call_supervised(callback, owner, reason, key)

    async def check(self, hold: Hold, owner: Any = None) -> None:
        """Ask the store whether ``hold`` still holds (``ensure_held``); LockLostError, reported once, if not."""
        if hold.lost is None and hold.generation == _fork.GENERATION and self._held.get(id(hold)) is hold:
            if await hold.backend.check(hold.grant):
                return
            self.lose(hold, "the store no longer holds it", owner)
        raise LockLostError(
            f"the lock {hold.key!r} was lost while held: {hold.lost or 'released'}", key=hold.key
        )

    async def extend(self, hold: Hold, ttl: float | None, owner: Any = None) -> None:
        """Renew ``hold``'s lease now, optionally to a new ``ttl``; LockLostError if it is already gone."""
        if not self.is_held(hold):
            raise LockLostError(
                f"the lock {hold.key!r} was lost while held: {hold.lost or 'released'}", key=hold.key
            )
        grant = hold.grant
        started = _monotonic()
        if not await hold.backend.renew(grant, grant.ttl if ttl is None else ttl):
            self.lose(hold, "lease expired", owner)
            raise LockLostError(f"the lock {hold.key!r} was lost while held: {hold.lost}", key=hold.key)
        if ttl is not None:
            grant.ttl = ttl
        if grant.ttl is not None:
            hold.expires = started + grant.ttl
            hold.due = started + grant.ttl / 3
        self._count_renewal(hold, ok=True)

    # -- renewal ------------------------------------------------------------------

    def _start_worker(self, due: float) -> None:
        """Make sure the worker runs, and wakes by ``due`` (monotonic) at the latest."""
        if not self._worker.alive:
            self._sleep_until = 0.0
            self._worker.start(self._run)
        elif due < self._sleep_until and not self._worker.in_worker():
            self._worker.wake()  # it sleeps past this hold's first turn (rare: waking costs the GIL)

    async def renew_due(self) -> float | None:
        """Renew every lease that is due now; the monotonic time of the next due one (None: none left)."""
        now = _monotonic()
        with self._mutex:
            due = [hold for hold in self._leases.values() if hold.due <= now]
        for hold in due:
            await self._renew(hold)
        with self._mutex:
            return min((hold.due for hold in self._leases.values()), default=None)

    def watch_due(self) -> float | None:
        """Look at the sessions of watched holds when due; the monotonic time of the next look (None: none)."""
        if not self._watched or self.watch_interval is None:
            return None
        now = _monotonic()
        if now >= self._next_watch:
            for hold in list(self._watched.values()):
                try:
                    reason = hold.backend.gone(hold.grant)
                except Exception as exc:  # a look that fails is no verdict: the next one may tell
                    log.debug("kannuki: watching %r failed: %s", hold.key, exc)
                    continue
                if reason is not None:
                    self.lose(hold, reason)
            self._next_watch = now + self.watch_interval
        return self._next_watch

    async def _renew(self, hold: Hold) -> None:
        grant = hold.grant
        ttl = grant.ttl
        if ttl is None:
            return
        started = _monotonic()
        try:
            ok = await hold.backend.renew(grant, ttl)
        except Exception as exc:
            self._count_renewal(hold, ok=False)
            if _monotonic() >= hold.expires:
                self.lose(hold, f"lease expired: renewal failed until the lease ran out ({exc})")
            else:
                log.debug("kannuki: renewing %r failed, will retry: %s", hold.key, exc)
                hold.due = _monotonic() + min(ttl / 3, RETRY_CAP)
            return
        if self._leases.get(id(hold)) is not hold:
            return  # released (or lost) while the renewal was on its way: not ours to judge
        if not ok:
            self.lose(hold, "lease expired")
            return
        hold.expires = started + ttl
        hold.due = started + ttl / 3
        self._count_renewal(hold, ok=True)

    def _count_renewal(self, hold: Hold, *, ok: bool) -> None:
        self.stats.add("renewed" if ok else "renew_failed")
        if ok and self.instrumented and _events.SUBSCRIBERS:
            grant = hold.grant
            _emit("renewed", hold.key, grant.lock_id, self.scheme, 0.0, grant.token, grant.shared)

    async def _run(self, worker: AWorker) -> None:
        """The worker: renew what is due, sleep until the next one; stop when idle, closed or forked."""
        generation = _fork.GENERATION
        idle_since: float | None = None
        while not self._closed and generation == _fork.GENERATION:
            try:
                next_due = await self.renew_due()
                next_watch = self.watch_due()
                if next_watch is not None:
                    next_due = next_watch if next_due is None else min(next_due, next_watch)
            except BaseException as exc:  # supervised: nothing may stop the renewals
                if acancelled(exc) or self._closed:
                    return
                log.exception("kannuki: the renewal worker hit an error; it goes on")
                next_due = _monotonic() + RETRY_CAP
            now = _monotonic()
            if not self._leases and not self._watched:
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= self.idle_stop:
                    return
                wait = self.idle_stop - (now - idle_since)
                if self.watch_interval is not None and getattr(self.backend, "watches", False):
                    # Wake by itself within a watch interval: a lock taken meanwhile is then looked at
                    # in time without waking the worker (waking it on every acquisition costs each one
                    # a thread switch).
                    wait = min(wait, self.watch_interval)
            else:
                idle_since = None
                wait = RETRY_CAP if next_due is None else max(0.0, next_due - now)
            self._sleep_until = now + wait
            try:
                await worker.wait(wait)
            except BaseException as exc:
                if acancelled(exc) or self._closed:
                    return
                raise

    # -- the end ----------------------------------------------------------------------

    async def close(self) -> None:
        """Release every hold (errors logged), stop the worker, close the backend."""
        self._closed = True
        for tokens in list(self._plain_sets.values()):
            plain = _plain_holds(tokens)
            tokens.clear()
            for name, token in plain:
                await atable_release(tokens.table, name, token)
        with self._mutex:
            holds = list(self._held.values())
        for hold in holds:
            if hold.generation != _fork.GENERATION:
                continue
            if hold.lost is None:
                try:
                    await self.release(hold)
                except Exception as exc:
                    log.warning("kannuki: releasing %r at close failed: %s", hold.key, exc)
            else:
                await self.release_lost_quietly(hold)
            hold.lost = hold.lost or "released by Locker.close()"
        self._worker.wake()
        self._worker.join(1.0)
        await self.backend.aclose()

    async def release_lost_quietly(self, hold: Hold) -> None:
        with self._mutex:
            self._held.pop(id(hold), None)
            self._leases.pop(id(hold), None)
        await afinish(hold.backend.abort(hold.grant))

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's holds, worker and connections are not ours."""
        self._mutex = AMutex()
        self._held = {}
        self._leases = {}
        self._watched = {}
        for tokens in self._plain_sets.values():
            tokens.clear()  # in place: held Lock objects point at these sets
        self.path.generation = _fork.GENERATION  # a Lock copied from the parent holds nothing here
        self._worker.forget()
        self._loop = None
        self.backend.after_fork_in_child()


def _plain_holds(tokens: TokenSet) -> list[tuple[Any, int]]:
    """``(name, token)`` of each plain hold in ``tokens``, read from its table."""
    mine = set(tokens)
    if not mine:
        return []
    table = tokens.table
    return [
        (key, token)
        for key in table.keys()
        for token, _shared, _expires in table.holders(key)
        if token in mine
    ]


def _running_loop() -> Any:  # async-only
    import asyncio  # async-only

    try:  # async-only
        return asyncio.get_running_loop()  # async-only
    except RuntimeError:  # async-only
        return None  # async-only
