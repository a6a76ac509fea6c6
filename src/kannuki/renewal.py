"""Lease renewal: one background thread per locker keeps its held leases alive.

How a lease store plugs in (sqlite, file, redis): the backend class sets
``supports_ttl = True`` and ``reports_loss = True``, keeps its default lease
length in ``self.ttl`` (seconds, > 0), and implements
``renew(name, lock_id, token, ttl) -> bool`` (True: extended by ``ttl`` from
now; False: ``token`` no longer holds; an exception: the store failed, try
again later). The Locker then makes a :class:`Renewer` (when its option
``auto_renew`` is on) and ``Lock`` calls :meth:`Renewer.add` after each
acquire and :meth:`Renewer.discard` on release. Nothing else is needed: the
backend never imports this module.

Rules:
- Each held lease is renewed every ``ttl / 3`` (the lock's own ``ttl`` if it
  was given one, else the backend's).
- ``renew`` returns False: the lock is lost at once (``lost`` event, stats,
  warning log, the locker's ``on_lost`` callback; ``release()`` then raises
  :class:`~kannuki.LockLostError`).
- ``renew`` raises: counted as ``renew_failed`` and tried again at the next
  tick (``min(ttl / 3, 1 s)`` later); once the last known expiry has passed
  without a successful renewal the lock is lost ("lease expired").
- The thread starts on the first ``add`` (``import kannuki`` starts none),
  stops by itself after ``idle_stop`` seconds with nothing held, and on
  ``locker.close()``.
- In a forked child the parent's thread does not exist and the parent's
  leases are not the child's: the renewer forgets them and starts a fresh
  thread lazily for the child's own locks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from kannuki.lock import Lock
    from kannuki.locker import Locker

__all__ = ["Renewer", "call_on_lost"]

log = logging.getLogger("kannuki")

# Longest pause between retries of a renewal that raised.
RETRY_CAP = 1.0
# Seconds with nothing held before the thread exits.
IDLE_STOP = 5.0


def call_on_lost(callback: Callable[[Any, str], object] | None, lock: "Lock", reason: str) -> None:
    """Run a user's ``on_lost(lock, reason)``; its exceptions are logged, never raised into kannuki."""
    if callback is None:
        return
    try:
        callback(lock, reason)
    except Exception:
        log.exception("kannuki: the on_lost callback for %r raised", lock.key)


@dataclasses.dataclass
class _Lease:
    lock: "weakref.ref[Lock]"
    token: int
    ttl: float
    due: float  # renewer clock time of the next renewal
    expires: float  # renewer clock time the lease runs out, as far as we know


class Renewer:
    """Renews the leases a locker holds, on one daemon thread started on demand.

    ``clock`` (monotonic seconds) is injectable; with ``autostart=False`` no
    thread is started and a test drives renewals with :meth:`tick`.
    """

    def __init__(
        self,
        locker: "Locker",
        *,
        clock: Callable[[], float] = time.monotonic,
        autostart: bool = True,
        idle_stop: float = IDLE_STOP,
    ) -> None:
        self._locker = weakref.ref(locker)
        self._clock = clock
        self._autostart = autostart
        self.idle_stop = idle_stop
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._leases: dict[int, _Lease] = {}  # id(lock) -> lease
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_at = 0.0  # when the sleeping thread wakes up by itself

    def _check_fork(self) -> None:
        # The parent's thread did not survive fork() and its leases are not ours to renew.
        if self._pid != os.getpid():
            self._reset_state()

    # -- called by Lock -------------------------------------------------------

    def add(self, lock: "Lock") -> None:
        """Start renewing ``lock``'s current lease (called right after a successful acquire)."""
        locker = self._locker()
        token = lock._token
        if locker is None or token is None or lock._backend is not locker._backend:
            return  # test mode (another backend stands in): nothing real to renew
        ttl = lock.ttl or getattr(locker._backend, "ttl", None)
        if not ttl:
            return
        self._check_fork()
        now = self._clock()
        lease = _Lease(weakref.ref(lock), token, ttl, now + ttl / 3, now + ttl)
        with self._cond:
            self._stopping = False
            self._leases[id(lock)] = lease
            if self._autostart and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kannuki-renewer", daemon=True)
                self._thread.start()
            elif lease.due < self._wake_at:
                self._cond.notify()  # due before the thread's own wake-up: rouse it (rare: waking costs the GIL)

    def discard(self, lock: "Lock") -> None:
        """Stop renewing ``lock`` (called on release)."""
        self._check_fork()
        with self._cond:
            self._leases.pop(id(lock), None)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and forget every lease (``locker.close()``); waits up to ``timeout`` for it."""
        self._check_fork()
        with self._cond:
            self._stopping = True
            self._leases.clear()
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the renewal thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def __len__(self) -> int:
        return len(self._leases)

    # -- the work -------------------------------------------------------------

    def tick(self) -> float | None:
        """Renew every lease that is due now; return the clock time of the next due one (None: none left)."""
        now = self._clock()
        with self._cond:
            due = [(key, lease) for key, lease in self._leases.items() if lease.due <= now]
        for key, lease in due:
            self._renew_one(key, lease)
        with self._cond:
            return min((lease.due for lease in self._leases.values()), default=None)

    def _renew_one(self, key: int, lease: _Lease) -> None:
        lock = lease.lock()
        locker = self._locker()
        if lock is None or locker is None or lock._token != lease.token or lock._backend is None:
            self._forget(key, lease)  # released, re-acquired, or dropped without release
            return
        started = self._clock()
        try:
            ok = lock._backend.renew(lock.name, lock.lock_id, lease.token, lease.ttl)
        except Exception as exc:
            locker._count_renewal(lock, ok=False)
            if self._clock() >= lease.expires:
                self._lose(key, lease, lock, f"lease expired: renewal failed until the lease ran out ({exc})")
            else:
                log.debug("kannuki: renewing %r failed, will retry: %s", lock.key, exc)
                lease.due = self._clock() + min(lease.ttl / 3, RETRY_CAP)
            return
        if not ok:
            self._lose(key, lease, lock, "lease expired")
            return
        lease.expires = started + lease.ttl
        lease.due = started + lease.ttl / 3
        locker._count_renewal(lock, ok=True)

    def _lose(self, key: int, lease: _Lease, lock: "Lock", reason: str) -> None:
        if not self._forget(key, lease) or lock._token != lease.token:
            return  # released meanwhile: not a loss
        lock._mark_lost(reason)

    def _forget(self, key: int, lease: _Lease) -> bool:
        with self._cond:
            if self._leases.get(key) is lease:
                del self._leases[key]
                return True
            return False

    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            next_due = self.tick()
            with self._cond:
                if self._stopping:
                    self._thread = None
                    return
                now = self._clock()
                if not self._leases:
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= self.idle_stop:
                        self._thread = None  # add() will start a new one
                        return
                    wait = self.idle_stop - (now - idle_since)
                else:
                    idle_since = None
                    next_due = min((lease.due for lease in self._leases.values()), default=next_due)
                    wait = 0.0 if next_due is None else max(0.0, next_due - now)
                if wait > 0:
                    self._wake_at = now + wait
                    self._cond.wait(wait)
                    self._wake_at = 0.0
